"""The ``ringflow`` command's parser, built from data: each command is a :class:`Command`
holding its :class:`Option` list, and the value types its options share."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from topology import MAX_EVENTS

from ..exitcode import ExitCode


@attrs.frozen
class Option:
    """One argument of a command: what ``ArgumentParser.add_argument`` takes."""

    flags: tuple[str, ...]
    """Its name (``topology``) or flags (``--seed``)."""
    settings: Mapping[str, Any]
    """The keyword arguments of ``add_argument``: ``type``, ``help``, ``default``..."""
    exclusive: str | None = None
    """Options of one command with the same name here exclude one another."""
    env: str | None = None
    """The environment variable whose value, when the parser is built, is the default."""


def option(
    *flags: str, exclusive: str | None = None, env: str | None = None, **settings: Any
) -> Option:
    """An :class:`Option`, written as a call to ``add_argument`` (with ``env``, the default
    is that environment variable's value when the parser is built)."""
    return Option(flags, settings, exclusive, env)


@attrs.frozen
class Command:
    """One ``ringflow`` command: its name, its help, its options and what runs it."""

    name: str
    """What the user types: ``ringflow NAME``."""
    help: str
    """One line in ``ringflow --help``."""
    description: str
    """The paragraph of ``ringflow NAME --help``."""
    options: tuple[Option, ...]
    """Its arguments, in the order ``--help`` lists them."""
    handler: Callable[[argparse.Namespace], ExitCode]
    """Runs the command with the parsed arguments; returns its exit code."""

    def add_to(self, commands: Any) -> None:
        """Add this command's parser to ``commands`` (what ``add_subparsers`` returned)."""
        parser = commands.add_parser(self.name, help=self.help, description=self.description)
        groups: dict[str, Any] = {}
        for opt in self.options:
            target = parser
            if opt.exclusive is not None:
                if opt.exclusive not in groups:
                    groups[opt.exclusive] = parser.add_mutually_exclusive_group()
                target = groups[opt.exclusive]
            settings = dict(opt.settings)
            if opt.env is not None:
                settings["default"] = os.environ.get(opt.env)
            target.add_argument(*opt.flags, **settings)
        parser.set_defaults(handler=self.handler)


def parser_for(commands: Sequence[Command]) -> argparse.ArgumentParser:
    """Return the ``ringflow`` parser with ``commands``; each sets ``handler`` in the
    namespace it parses."""
    parser = argparse.ArgumentParser(
        prog="ringflow",
        description="A message broker and streaming-pipeline simulator built on Trio.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        command.add_to(subparsers)
    return parser


# -- value types -------------------------------------------------------------------------------


def whole(text: str, low: int, high: int | None = None) -> int:
    """Parse a whole number from ``low`` to ``high`` (underscores allowed: ``1_000``).

    Raises:
        argparse.ArgumentTypeError: It is not one, or out of bounds (the message says which).
    """
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {value:,}")
    return value


def positive(text: str) -> int:
    """Parse a whole number of 1 or more."""
    return whole(text, 1)


def non_negative(text: str) -> int:
    """Parse a whole number of 0 or more."""
    return whole(text, 0)


def events(text: str) -> int:
    """Parse a number of events: 0 to ``MAX_EVENTS``."""
    return whole(text, 0, MAX_EVENTS)


def seconds(text: str) -> float:
    """Parse a finite number of seconds, 0 or more.

    Raises:
        argparse.ArgumentTypeError: It is not one.
    """
    return _seconds(text, zero=True)


def positive_seconds(text: str) -> float:
    """Parse a finite number of seconds above 0.

    Raises:
        argparse.ArgumentTypeError: It is not one.
    """
    return _seconds(text, zero=False)


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if zero and not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    if not zero and not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


# -- options of the commands that run a topology -------------------------------------------------


def topology_file(**settings: Any) -> Option:
    """The topology file argument."""
    return option("topology", type=Path, metavar="TOPOLOGY.yaml", **settings)


def seed_option(help: str) -> Option:
    """``--seed``, replacing the file's seed."""
    return option("--seed", type=non_negative, help=help)


def events_option(help: str) -> Option:
    """``--events``, replacing the total number of events."""
    return option("--events", type=events, help=help)


def report_option(help: str) -> Option:
    """``--report PATH``."""
    return option("--report", type=Path, metavar="PATH", help=help)


def state_option(help: str, **settings: Any) -> Option:
    """``--state DIR``."""
    return option("--state", type=Path, metavar="DIR", help=help, **settings)


def flag(name: str, help: str) -> Option:
    """An on/off flag such as ``--no-log``."""
    return option(name, action="store_true", help=help)
