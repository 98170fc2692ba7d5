"""The ``ringflow`` command: its commands, its parser and its entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..exitcode import ExitCode
from . import options
from .bench import BENCH
from .chaos import CHAOS
from .checkpoints import CHECKPOINTS
from .dlq import DLQ
from .files import GEN_FILES, TOTALS
from .load import LOAD
from .logs import LOGS
from .node import NODE
from .run import RUN
from .serve import SERVE
from .tap import TAP
from .validate import VALIDATE

COMMANDS = (
    RUN,
    SERVE,
    LOAD,
    NODE,
    TAP,
    LOGS,
    CHECKPOINTS,
    DLQ,
    GEN_FILES,
    TOTALS,
    VALIDATE,
    CHAOS,
    BENCH,
)
"""Every command, in the order ``ringflow --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ringflow`` command."""
    return options.parser_for(COMMANDS)


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """Run the ``ringflow`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    code: ExitCode = args.handler(args)
    return code


def run() -> None:
    """Console-script entry point."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling of it began
        sys.exit(ExitCode.INTERRUPTED)
