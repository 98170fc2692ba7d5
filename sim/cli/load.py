"""``ringflow load``: load-test a served topology's HTTP API at a fixed rate."""

from __future__ import annotations

import argparse
import json
import os
import sys

import attrs
import trio
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..console import make_console
from ..exitcode import ExitCode
from ..load import LoadError, LoadResult, LoadSettings, run_load
from .errors import refuse
from .options import Command, flag, option, positive


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1,000,000, got {text}")
    return value


def load(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow load``; return its exit code."""
    err = make_console(stderr=True)
    if args.token_env and not os.environ.get(args.token_env):
        return refuse(
            err,
            f"--token-env {args.token_env}: the variable is unset or empty; set it to the token",
        )
    settings = LoadSettings(
        url=args.url,
        rps=args.rps,
        duration=args.duration,
        connections=args.connections,
        batch=args.batch,
        mix=args.mix,
        seed=args.seed,
        token=os.environ.get(args.token_env) if args.token_env else None,
    )
    bar = Progress(
        TextColumn("load"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json or not err.is_terminal,
    )
    task = bar.add_task("requests", total=None)
    try:
        with bar:
            result = trio.run(
                run_load,
                settings,
                lambda done, total: bar.update(task, completed=done, total=total),
            )
    except LoadError as exc:
        return refuse(err, exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    if args.json:
        print(json.dumps(attrs.asdict(result), indent=2))
    else:
        _print(result, settings)
    return ExitCode.OK if not result.errors else ExitCode.FAILED


def _print(result: LoadResult, settings: LoadSettings) -> None:
    out = make_console()
    table = Table(show_header=False, box=None)
    table.add_row("target", f"{settings.rps:,.0f} requests/s for {settings.duration:g} s")
    table.add_row("achieved", f"{result.achieved_rps:,.1f} requests/s answered 202")
    table.add_row("events accepted", f"{result.events_accepted:,}")
    latency = result.latency_ms
    if latency:
        table.add_row(
            "latency (ms)",
            " / ".join(f"{name} {value:,.1f}" for name, value in latency.items()),
        )
    table.add_row("answers", ", ".join(f"{s}: {n:,}" for s, n in result.statuses.items()) or "-")
    table.add_row(
        "errors",
        ", ".join(f"{s}: {n:,}" for s, n in result.errors.items())
        + f" ({result.error_rate:.2%} of requests)"
        if result.errors
        else "none",
    )
    lag = result.storage_lag_s
    table.add_row(
        "API -> storage lag (s)",
        " / ".join(f"{q} {v:.3f}" for q, v in lag.items()) if lag else "not reported",
    )
    out.print(table)
    sys.stdout.flush()


LOAD = Command(
    name="load",
    help="load-test a served topology's HTTP API at a fixed rate",
    description=(
        "Send events to the API of 'ringflow serve' at a fixed rate over keep-alive "
        "connections (open loop: each request's latency counts from the moment it was due, "
        "so a stalled server is not hidden), then print the rate achieved, latency "
        "percentiles, errors by status and, from the API's /metrics, the lag from acceptance "
        "to storage. Exit code: 0 when every request was answered 202, 1 otherwise, 2 for "
        "a bad argument or when nothing answers at URL."
    ),
    options=(
        option("url", metavar="URL", help="the API, http://HOST:PORT"),
        option("--rps", type=_rate, default=1000.0, help="requests a second (default: 1000)"),
        option("--duration", type=_rate, default=10.0, help="seconds to send for (default: 10)"),
        option(
            "--connections",
            type=positive,
            default=256,
            help="keep-alive connections (default: 256)",
        ),
        option("--batch", type=positive, default=1, help="events per request (default: 1)"),
        option(
            "--mix",
            choices=("ugc", "ess"),
            default="ugc",
            help="ugc: clicks, page views, custom events, watch progress (typed routes for "
            "single events); ess: playback events (default: ugc)",
        ),
        option("--seed", type=int, default=0, help="seed of the events sent (default: 0)"),
        option(
            "--token-env",
            metavar="NAME",
            help="the environment variable holding the API's bearer token",
        ),
        flag("--json", "print one JSON object instead of the table"),
    ),
    handler=load,
)
"""The ``load`` command."""
