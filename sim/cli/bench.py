"""``ringflow bench``: measure this machine, the raw Trio channel against the ringflow
pipeline."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import attrs
from rich.table import Table

from ..bench import BenchSettings, run_bench
from ..console import make_console
from ..exitcode import ExitCode
from .options import Command, Option, flag, non_negative, option, positive, seconds

SETTINGS: tuple[tuple[str, Callable[[str], int | float], str], ...] = (
    ("records", positive, "records for the batched measurements"),
    ("batch", positive, "records per batch"),
    ("single_records", positive, "records sent one per send"),
    ("repeat", positive, "rounds of each throughput measurement"),
    ("memory_records", non_negative, "records in the slow-consumer memory run; 0 skips it"),
    (
        "video_events",
        non_negative,
        "events of the video-site run compared with a plain Python loop; 0 skips it",
    ),
    (
        "restore_records",
        non_negative,
        "records held in the epoch whose restore is timed; 0 skips it",
    ),
    (
        "gateway_records",
        non_negative,
        "records sent through a websocket gateway on loopback and through raw "
        "trio-websocket; 0 skips it",
    ),
    (
        "http_seconds",
        seconds,
        "seconds of each HTTP measurement (the ESS example served in a child process, "
        "loaded from this one: durable at 1,000 requests/s, acks ring at 3,500, batches of "
        "100); 0 skips them",
    ),
    (
        "tap_seconds",
        seconds,
        "seconds of a 10,000 records/s stream whose delay to a tap is measured; 0 skips it",
    ),
    (
        "outage_seconds",
        seconds,
        "seconds a served topology's webhook receiver is away while clients send 1,000 "
        "events/s (memory, 503s, every accepted event delivered after); 0 skips it",
    ),
    (
        "relay_events",
        non_negative,
        "events relayed to a webhook receiver on loopback that takes everything, and to one "
        "that fails 30%% of requests with 500 and leaves 5%% unanswered; 0 skips it",
    ),
    (
        "headline_events",
        non_negative,
        "events of the video-site run with checkpoints and Redis logging on, against the "
        "plain loop and Bytewax, each in a fresh process; 0 skips it",
    ),
    (
        "ugc_events",
        non_negative,
        "events of the UGC example run the same way against its plain loop, its producers "
        "at 100,000 events a simulated second (batches that fill); 0 skips it",
    ),
    (
        "ugc_shipped_events",
        non_negative,
        "events of the UGC example exactly as shipped (1,000 a simulated second), everything "
        "on; 0 skips it",
    ),
)
"""One option per field of :class:`~sim.bench.BenchSettings`: its name, its type, its help
(the default is the field's)."""


def _setting_options() -> tuple[Option, ...]:
    defaults = BenchSettings()
    return tuple(
        option(
            "--" + name.replace("_", "-"),
            type=kind,
            default=getattr(defaults, name),
            help=f"{text} (default: %(default)s)",
        )
        for name, kind, text in SETTINGS
    )


def bench(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow bench``; return its exit code."""
    settings = attrs.evolve(
        BenchSettings(),
        bytewax_python=args.bytewax_python,
        **{name: getattr(args, name) for name, _, _ in SETTINGS},
    )
    err = make_console(stderr=True)
    if args.json:
        result = run_bench(settings)
        print(json.dumps(result, indent=2))
        return ExitCode.OK
    with err.status("measuring...") as status:
        result = run_bench(settings, progress=lambda text: status.update(text))
    table = Table(
        title=f"ringflow bench: {settings.records:,} records, batches of {settings.batch:,}"
    )
    table.add_column("measurement")
    table.add_column("figure", justify="right")
    table.add_row("raw Trio channel, batches", f"{result['raw_records_per_s']:,.0f} records/s")
    table.add_row(
        "ringflow pipeline, batches", f"{result['pipeline_records_per_s']:,.0f} records/s"
    )
    table.add_row(
        "ringflow pipeline, one record per send", f"{result['single_records_per_s']:,.0f} records/s"
    )
    table.add_row("ratio pipeline / raw", f"{result['ratio']:.2f}")
    if "video_site_events_per_s" in result:
        _headline_rows(table, result)
    if "video_run_events_per_s" in result:
        table.add_row(
            f"video site, ringflow run, {result['video_events']:,} events, nothing else on "
            "(in this process)",
            f"{result['video_run_events_per_s']:,.0f} events/s",
        )
        table.add_row(
            "video site, plain per-event Python loop, same events (in this process)",
            f"{result['plain_loop_events_per_s']:,.0f} events/s",
        )
        table.add_row("ratio run / plain loop", f"{result['video_ratio']:.2f}")
        table.add_row("same aggregates", "yes" if result["video_same_aggregates"] else "NO")
    if "checkpoint_cost" in result:
        table.add_row(
            "video site, an epoch every simulated second "
            f"({_count(result['checkpoint_epochs'], 'epoch')})",
            f"{result['checkpoint_every_second_events_per_s']:,.0f} events/s",
        )
        table.add_row("checkpoint cost (1 - with / without)", f"{result['checkpoint_cost']:.1%}")
    if "logging_ratio" in result:
        table.add_row(
            "video site, every event logged to Redis",
            f"{result['logging_events_per_s']:,.0f} events/s",
        )
        table.add_row("ratio logging on / off", f"{result['logging_ratio']:.2f}")
    if "gateway_records_per_s" in result:
        table.add_row(
            f"through a websocket gateway, {result['gateway_records']:,} records",
            f"{result['gateway_records_per_s']:,.0f} records/s",
        )
        table.add_row(
            "raw trio-websocket, same batches",
            f"{result['raw_websocket_records_per_s']:,.0f} records/s",
        )
        table.add_row("ratio gateway / raw websocket", f"{result['gateway_ratio']:.2f}")
    if "tap_latency_p99_ms" in result:
        table.add_row(
            "tap latency at 10,000 records/s, p50 / p99",
            f"{result['tap_latency_p50_ms']:.2f} / {result['tap_latency_p99_ms']:.2f} ms",
        )
    if "restore_seconds" in result:
        table.add_row(
            f"restore an epoch of {result['restore_records']:,} buffered records "
            f"({result['restore_epoch_mb']:,.0f} MB)",
            f"{result['restore_seconds']:,.2f} s",
        )
    if "slow_consumer_peak_rss_mb" in result:
        table.add_row(
            f"peak RSS, consumer 10x slower, {result['slow_consumer_records']:,} records",
            f"{result['slow_consumer_peak_rss_mb']:,.0f} MB",
        )
        table.add_row(
            "ring peak depth / capacity",
            f"{result['slow_consumer_peak_depth']:,} / {result['slow_consumer_capacity']:,}",
        )
    for name, label in (
        ("durable_1000", "HTTP, ESS durable, 1,000 requests/s"),
        ("ring_3500", "HTTP, ESS acks ring, 3,500 requests/s"),
        ("ring_batch100", "HTTP, ESS acks ring, 100 events a request"),
    ):
        http = result.get(f"http_{name}")
        if http is None:
            continue
        latency = http["latency_ms"]
        table.add_row(
            f"{label}: achieved; p75 / p95 latency; errors",
            f"{http['achieved_per_s']:,.0f} req/s ({http['events_per_s']:,.0f} events/s); "
            f"{latency.get('p75', 0):,.1f} / {latency.get('p95', 0):,.1f} ms; "
            f"{sum(http['errors'].values()):,}",
        )
    relay = result.get("relay")
    if relay is not None:
        table.add_row(
            f"relay to a webhook, {relay['events']:,} events: clean / failing 35% "
            "(every record delivered)",
            f"{relay['clean_records_per_s']:,.0f} / {relay['failing_records_per_s']:,.0f} "
            f"records/s (ratio {relay['ratio']:.2f})",
        )
    outage = result.get("outage")
    if outage is not None:
        statuses = outage["statuses"]
        table.add_row(
            f"receiver away {outage['outage_s']:g} s under serve: accepted, 503s; peak RSS "
            "before / during; every accepted event delivered",
            f"{outage['events_accepted']:,}, {statuses.get('503', 0):,}; "
            f"{outage['rss_mb']['before']:,.0f} / {outage['rss_mb']['outage']:,.0f} MB; "
            + ("yes" if outage["every_accepted_event_delivered"] else "NO"),
        )
    make_console().print(table)
    return ExitCode.OK


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _headline_rows(table: Table, result: dict[str, Any]) -> None:
    events = f"{result['headline_events']:,} events"
    table.add_row(
        f"video site, {events}, an epoch every second, every event logged (fresh process)",
        f"{result['video_site_events_per_s']:,.0f} events/s",
    )
    table.add_row(
        "plain per-event Python loop, same events (fresh process)",
        f"{result['headline_plain_loop_events_per_s']:,.0f} events/s",
    )
    table.add_row("ratio ringflow / plain loop", f"{result['headline_loop_ratio']:.2f}")
    if result["bytewax_events_per_s"] is not None:
        table.add_row(
            f"Bytewax {result['bytewax']}, counting per video, same number of events",
            f"{result['bytewax_events_per_s']:,.0f} events/s",
        )
        table.add_row("ratio ringflow / Bytewax", f"{result['bytewax_ratio']:.2f}")
    else:
        table.add_row("Bytewax", str(result["bytewax"]))
    table.add_row("peak RSS of the video-site run", f"{result['video_site_peak_rss_mb']:,.0f} MB")
    table.add_row(
        "same aggregates as the plain loop", "yes" if result["headline_same_aggregates"] else "NO"
    )
    if "ugc_events_per_s" in result:
        table.add_row(
            f"UGC example at 100,000 events/s, {result['ugc_events']:,} events, same settings",
            f"{result['ugc_events_per_s']:,.0f} events/s",
        )
        table.add_row(
            "UGC plain per-event loop", f"{result['ugc_plain_loop_events_per_s']:,.0f} events/s"
        )
        table.add_row("ratio UGC ringflow / plain loop", f"{result['ugc_ratio']:.2f}")
    if "ugc_shipped_events_per_s" in result:
        table.add_row(
            f"UGC example as shipped, {result['ugc_shipped_events']:,} events",
            f"{result['ugc_shipped_events_per_s']:,.0f} events/s",
        )


BENCH = Command(
    name="bench",
    help="measure this machine: the raw Trio channel against the ringflow pipeline",
    description=(
        "Measure, in one run, a raw Trio memory channel carrying batches, the ringflow "
        "pipeline (producer -> partition -> consumer) with the same batches and with one "
        "record per send, the video-site example with checkpoints and Redis logging on "
        "against a plain per-event Python loop and Bytewax over as many events (with its "
        "peak memory), the UGC example against its plain loop, checkpoint and logging costs, "
        "a websocket gateway against raw trio-websocket, a tap's latency, restoring a large "
        "epoch, and the peak memory of a run whose consumer is ten times slower than its "
        "producer. Throughputs are medians over --repeat rounds."
    ),
    options=(
        *_setting_options(),
        option(
            "--bytewax",
            dest="bytewax_python",
            metavar="PYTHON",
            default=None,
            help="a Python interpreter with Bytewax installed, for the comparison (default: "
            "this one if it has Bytewax, else $RINGFLOW_BYTEWAX_PYTHON; without one the "
            "comparison says 'not installed')",
        ),
        flag("--json", "print one JSON object instead of a table"),
    ),
    handler=bench,
)
"""The ``bench`` command."""
