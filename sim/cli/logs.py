"""``ringflow logs``: print a run's Redis log as JSON lines, and its counters."""

from __future__ import annotations

import argparse
from pathlib import Path

from actors import CATEGORIES

from ..exitcode import ExitCode
from ..logs import LogQuery, show_logs
from .options import Command, flag, option, positive


def logs(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow logs``; return its exit code."""
    query = LogQuery(
        run=args.run,
        categories=tuple(args.category or CATEGORIES),
        limit=args.limit,
        follow=args.follow,
    )
    return show_logs(query, redis_url=args.redis, state=args.state)


LOGS = Command(
    name="logs",
    help="print a run's Redis log as JSON lines, and its counters",
    description=(
        "Print the entries a run logged to Redis, one JSON object per line on standard "
        "output, oldest first, and its counters as a table on standard error. Reads the "
        "embedded Redis of a state folder (--state, default state/NAME of the newest run "
        "found there) or the Redis at --redis."
    ),
    options=(
        option("--run", metavar="ID", help="the run (default: the newest one)"),
        option(
            "--category",
            choices=CATEGORIES,
            action="append",
            help="only this category (repeatable; default: all)",
        ),
        flag("--follow", "keep printing new entries"),
        option("--limit", type=positive, help="at most this many entries per category"),
        option("--redis", exclusive="where", metavar="URL", help="a Redis URL (redis://, unix://)"),
        option(
            "--state",
            exclusive="where",
            type=Path,
            metavar="DIR",
            help="a state folder with an embedded Redis (default: ./state/*)",
        ),
    ),
    handler=logs,
)
"""The ``logs`` command."""
