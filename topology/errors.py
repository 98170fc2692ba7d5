"""Errors in topology files."""

from __future__ import annotations

from actors import RingflowError


class TopologyError(RingflowError, ValueError):
    """A topology file is malformed or impossible; :attr:`problems` lists every problem.

    Each problem is one line that starts with the place in the file, such as
    ``$.topics.events.partitions: must be >= 1, got 0``.
    """

    def __init__(self, problems: list[str], source: str = "topology") -> None:
        self.problems = problems
        self.source = source
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}:\n" + "\n".join(f"  {p}" for p in problems))


class FieldError(ValueError):
    """Raised by a field validator; carries the field's name so the path can name it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class CheckpointError(RingflowError):
    """A state folder or checkpoint database cannot be used as it is.

    The message says what was found and what to do; the existing state is never changed.
    """
