"""``ringflow gen-files`` and ``ringflow totals``: the generator of seed 004's usage files,
and the totals of the central database."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from actors import TransientError

from ..console import make_console
from ..exitcode import ExitCode
from ..gen_files import generate_files, parse_size
from ..postgres_server import PostgresUnavailable
from ..usage import MAX_USER
from ..usage_store import open_totals
from .options import Command, flag, non_negative, option, positive, whole


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction between 0 and 1")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of files a second > 0")
    return value


def _user(text: str) -> int:
    return whole(text, 0, MAX_USER)


def _users(text: str) -> int:
    return whole(text, 1, MAX_USER)


def gen_files(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow gen-files``; return its exit code."""
    err = make_console(stderr=True)
    out = make_console()
    progress = Progress(
        TextColumn("writing"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
    )
    try:
        with progress:
            task = progress.add_task("files", total=args.files)
            made = generate_files(
                args.dir,
                files=args.files,
                size=args.size,
                users=args.users,
                seed=args.seed,
                rate=args.rate,
                bad_fraction=args.bad_lines,
                on_file=lambda _path: progress.advance(task),
            )
    except OSError as exc:
        err.print(f"ringflow gen-files: cannot write into {args.dir}: {exc}")
        return ExitCode.USAGE
    out.print(
        f"{made.files:,} files, {made.bytes / (1 << 20):,.1f} MiB, {made.lines:,} lines "
        f"({made.bad_lines:,} bad) in {args.dir}"
    )
    return ExitCode.OK


def totals(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow totals``; return its exit code."""
    err = make_console(stderr=True)
    sqlite = args.url.removeprefix("sqlite:///") if args.url else None
    if sqlite is not None and sqlite != args.url and not Path(sqlite).is_file():
        err.print(f"ringflow totals: no SQLite database at {args.url}")
        return ExitCode.USAGE
    if args.url is None and args.state is None:
        err.print("ringflow totals: give --state DIR (the embedded database) or --url URL")
        return ExitCode.USAGE
    if args.url is None and not (args.state / "postgres" / "data").exists():
        err.print(
            f"ringflow totals: no embedded database in {args.state} (a run with the "
            "usage_totals sink and no params.url keeps one there); give --url for another"
        )
        return ExitCode.USAGE
    try:
        with open_totals(args.url, args.state) as store:
            rows = list(store.totals(args.user))
    except (TransientError, PostgresUnavailable, ValueError) as exc:
        err.print(f"ringflow totals: {exc}")
        return ExitCode.USAGE
    write = sys.stdout.write
    if args.json:
        write(json.dumps({str(user): amount for user, amount in rows}) + "\n")
    else:
        for user, amount in rows:
            write(f"{user} {amount}\n")
    if args.user is not None and not rows:
        err.print(f"no total for user {args.user}")
        return ExitCode.FAILED
    return ExitCode.OK


GEN_FILES = Command(
    name="gen-files",
    help="write usage files (lines 'USER AMOUNT') into a folder, as seed 004's generator",
    description="Write files of 'USER AMOUNT' lines into DIR, each under a hidden temporary "
    "name renamed into place once complete (the 'rename' readiness rule). The same seed "
    "gives the same files, byte for byte.",
    options=(
        option("dir", type=Path, metavar="DIR", help="the folder to write into"),
        option("--files", type=positive, default=10, help="how many files (default: 10)"),
        option(
            "--size",
            type=_size,
            default=parse_size("16MB"),
            metavar="SIZE",
            help="about how large each file is: 64MB, 1G, 500k... (default: 16MB)",
        ),
        option(
            "--users",
            type=_users,
            default=100_000,
            help="user ids are drawn below this (default: 100000)",
        ),
        option("--seed", type=non_negative, default=0, help="the seed (default: 0)"),
        option(
            "--rate", type=_rate, default=None, help="files a second at most (default: no limit)"
        ),
        option(
            "--bad-lines",
            type=_fraction,
            default=0.0,
            metavar="FRACTION",
            help="the fraction of bad lines mixed in (default: 0)",
        ),
    ),
    handler=gen_files,
)
"""The ``gen-files`` command."""

TOTALS = Command(
    name="totals",
    help="print each user's total from the central database of the file pipeline",
    description="Print 'USER AMOUNT' lines, sorted by user id, from the database the "
    "usage_totals sink writes to: the PostgreSQL embedded in the state folder, or --url. "
    "Exit code: 0; 1 when --user has no total; 2 when the database cannot be opened.",
    options=(
        option(
            "--state",
            type=Path,
            metavar="DIR",
            exclusive="where",
            help="the state folder of the run (its embedded PostgreSQL)",
        ),
        option(
            "--url",
            exclusive="where",
            help="the database instead: postgresql://... or sqlite:///PATH",
        ),
        option("--user", type=_user, help="only this user's total"),
        flag("--json", "print one JSON object {user: amount}"),
    ),
    handler=totals,
)
"""The ``totals`` command."""
