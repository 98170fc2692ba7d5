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
        if len(problems) == 1:  # one line, as a compiler would say it
            super().__init__(f"{source}: {problems[0]}")
        else:
            super().__init__(
                f"{source}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)
            )


class FieldError(RingflowError, ValueError):
    """Raised by a field validator; carries the field's name so the path can name it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def raise_field_errors(errors: list[FieldError]) -> None:
    """Raise every problem found in one block of a topology file at once.

    One problem is raised as itself, several as an :exc:`ExceptionGroup` of them (which the
    topology's error reporting flattens into one line each); nothing is raised for none.
    """
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup(f"{len(errors)} problems", errors)


class CheckpointError(RingflowError):
    """A state folder or checkpoint database cannot be used as it is.

    The message says what was found and what to do; the existing state is never changed.
    """
