"""The consoles ringflow's commands print to."""

from __future__ import annotations

from rich.console import Console

UNWRAPPED_WIDTH = 10_000
"""The width given to a console that is not a terminal: wide enough that no line of ringflow's
output is ever wrapped and no table cell is ever cut short."""


def make_console(*, stderr: bool = False) -> Console:
    """Return a console for standard output (or standard error).

    On a terminal, tables fit its width and long lines are left for the terminal to wrap. Into
    a pipe, a file or a CI log, nothing is wrapped or truncated, whatever ``COLUMNS`` says:
    every message stays on one line and every number whole, for the reader and for ``grep``.
    """
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = UNWRAPPED_WIDTH
    return console
