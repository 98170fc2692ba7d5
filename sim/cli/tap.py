"""``ringflow tap``: print a live stream of a topic as JSON lines."""

from __future__ import annotations

import argparse
import os
import sys

import trio

from ..console import make_console
from ..exitcode import ExitCode
from ..tap import stream, tap_url
from .errors import refuse
from .options import Command, non_negative, option, positive, seconds


def tap(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow tap``; return its exit code."""
    err = make_console(stderr=True)
    try:
        url = tap_url(args.url, args.start, args.partition, args.hold)
    except ValueError as exc:
        return refuse(err, exc)
    token = os.environ.get(args.token_env) or None
    try:
        return trio.run(
            lambda: stream(url, sys.stdout, err, token=token, limit=args.limit, wait=args.wait)
        )
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): not an error
        sys.stderr.close()
        return ExitCode.OK


TAP = Command(
    name="tap",
    help="print a live stream of a topic as JSON lines",
    description=(
        "Connect to ws://HOST:PORT/tap/TOPIC on the node that hosts TOPIC and print its "
        "records as JSON lines (offset, key, timestamp, value, with topic and partition) "
        "until the topic ends, --limit records were printed, or Ctrl-C. A tap never "
        "commits for a consumer group. Lines of type 'skipped' say how many records a "
        "slow tap missed."
    ),
    options=(
        option("url", metavar="URL", help="ws://HOST:PORT/tap/TOPIC"),
        option(
            "--from",
            dest="start",
            default="latest",
            metavar="WHERE",
            help="earliest, latest (default) or an offset",
        ),
        option("--partition", type=non_negative, help="only this partition"),
        option("--limit", type=positive, help="stop after this many records"),
        option(
            "--hold",
            action="store_true",
            help="never skip records: the tap's reading holds the topic's readers back instead",
        ),
        option(
            "--wait",
            type=seconds,
            default=10.0,
            metavar="SECONDS",
            help="keep trying a node that cannot be reached yet for this long (default: 10)",
        ),
        option(
            "--token-env",
            default="RINGFLOW_TOKEN",
            metavar="VAR",
            help="the environment variable holding the shared token, if the node needs one "
            "(default: %(default)s)",
        ),
    ),
    handler=tap,
)
"""The ``tap`` command."""
