"""How the ``ringflow`` commands tell the user about a problem: one line, with the
command-line flag added wherever a message of the lower layers names a setting."""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape

from ..exitcode import ExitCode

FLAG_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\(checkpoint\.path\)"), "(checkpoint.path in the file, or --state)"),
    (re.compile(r"the same seed and events"), "the same --seed and --events"),
    (re.compile(r"(?<![\w.$])peers\.([^:\s]+):"), r"--peer \1:"),
    (re.compile(r"(?<![\w.$-])listen:"), "--listen:"),
    (re.compile(r"; run it whole$", re.MULTILINE), "; run it whole with 'ringflow run'"),
)
"""How settings named in messages of the lower layers are set on the command line."""


def with_flags(message: str) -> str:
    """Return ``message`` with the command-line flag added wherever it names a setting."""
    for pattern, replacement in FLAG_HINTS:
        message = pattern.sub(replacement, message)
    return message


def refuse(err: Console, problem: BaseException | str) -> ExitCode:
    """Print ``problem`` (with the flags that set what it names) and return
    :attr:`ExitCode.USAGE`: the input was bad, and nothing was run."""
    err.print(escape(with_flags(str(problem))))
    return ExitCode.USAGE
