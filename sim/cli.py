"""The ``ringflow`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from topology import Pipeline, TopologyError

from .bench import BenchSettings, run_bench

EXIT_OK = 0
EXIT_FAILED = 1
"""The run completed but an invariant failed, or an actor crashed."""
EXIT_USAGE = 2
"""Bad input: a malformed topology, bad arguments. Nothing was run."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C; a partial report was written."""


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    if text.strip() == "0":
        return 0
    return _positive(text)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ringflow`` command."""
    parser = argparse.ArgumentParser(
        prog="ringflow",
        description="A message broker and streaming-pipeline simulator built on Trio.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a topology file and report on it",
        description=(
            "Run a topology file to completion with a live view, then print a summary and "
            "write a JSON report (and a PNG chart when matplotlib is installed). Ctrl-C stops "
            "cleanly and writes a partial report. Exit code: 0 when every 'expect' invariant "
            "holds, 1 when one fails or an actor crashes, 2 for a bad file, 130 on Ctrl-C."
        ),
    )
    run.add_argument("topology", type=Path, metavar="TOPOLOGY.yaml", help="the topology file")
    run.add_argument("--seed", type=_non_negative, help="replace the file's seed")
    run.add_argument(
        "--events",
        type=_non_negative,
        help="replace the total number of events (split over producers in proportion to the file)",
    )
    run.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="where to write the JSON report (default: reports/NAME-seedSEED.json)",
    )
    run.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    run.add_argument("--quiet", action="store_true", help="no live view; print only the summary")

    validate = commands.add_parser(
        "validate",
        help="check a topology file and explain every problem",
        description="Check a topology file. Exit code 0 when it is valid, 2 otherwise, with "
        "one line per problem naming its place in the file.",
    )
    validate.add_argument("topology", type=Path, metavar="TOPOLOGY.yaml")

    bench = commands.add_parser(
        "bench",
        help="measure this machine: the raw Trio channel against the ringflow pipeline",
        description=(
            "Measure, in one run, a raw Trio memory channel carrying batches, the ringflow "
            "pipeline (producer -> partition -> consumer) with the same batches and with one "
            "record per send, and the peak memory of a run whose consumer is ten times slower "
            "than its producer. Throughputs are medians over --repeat rounds."
        ),
    )
    defaults = BenchSettings()
    bench.add_argument(
        "--records",
        type=_positive,
        default=defaults.records,
        help="records for the batched measurements (default: %(default)s)",
    )
    bench.add_argument(
        "--batch",
        type=_positive,
        default=defaults.batch,
        help="records per batch (default: %(default)s)",
    )
    bench.add_argument(
        "--single-records",
        type=_positive,
        default=defaults.single_records,
        help="records sent one per send (default: %(default)s)",
    )
    bench.add_argument(
        "--repeat",
        type=_positive,
        default=defaults.repeat,
        help="rounds of each throughput measurement (default: %(default)s)",
    )
    bench.add_argument(
        "--memory-records",
        type=_non_negative,
        default=defaults.memory_records,
        help="records in the slow-consumer memory run; 0 skips it (default: %(default)s)",
    )
    bench.add_argument(
        "--video-events",
        type=_non_negative,
        default=defaults.video_events,
        help="events of the video-site run compared with a plain Python loop; 0 skips it "
        "(default: %(default)s)",
    )
    bench.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ringflow`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "run":
        return _run(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse refuses unknown commands


def _bench(args: argparse.Namespace) -> int:
    settings = BenchSettings(
        records=args.records,
        batch=args.batch,
        single_records=args.single_records,
        repeat=args.repeat,
        memory_records=args.memory_records,
        video_events=args.video_events,
    )
    err = Console(stderr=True)
    if args.json:
        result = run_bench(settings)
        print(json.dumps(result, indent=2))
        return 0
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
    if "video_run_events_per_s" in result:
        table.add_row(
            f"video site, ringflow run, {result['video_events']:,} events",
            f"{result['video_run_events_per_s']:,.0f} events/s",
        )
        table.add_row(
            "video site, plain Python loop, same events",
            f"{result['plain_loop_events_per_s']:,.0f} events/s",
        )
        table.add_row("ratio run / plain loop", f"{result['video_ratio']:.2f}")
        table.add_row("same aggregates", "yes" if result["video_same_aggregates"] else "NO")
    if "slow_consumer_peak_rss_mb" in result:
        table.add_row(
            f"peak RSS, consumer 10x slower, {result['slow_consumer_records']:,} records",
            f"{result['slow_consumer_peak_rss_mb']:,.0f} MB",
        )
        table.add_row(
            "ring peak depth / capacity",
            f"{result['slow_consumer_peak_depth']:,} / {result['slow_consumer_capacity']:,}",
        )
    Console().print(table)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _validate(args: argparse.Namespace) -> int:
    from .run import load_topology

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        console.print(escape(str(exc)))
        return EXIT_USAGE
    Console(highlight=False).print(
        f"{escape(str(args.topology))}: valid topology {topology.name!r}: "
        f"{len(topology.topics)} topics, {len(topology.producers)} producers, "
        f"{len(topology.consumers)} consumers"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from .live import LiveView
    from .report import write_chart, write_report
    from .run import REGISTRY, load_topology, run_pipeline

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        topology = load_topology(args.topology)
        pipeline = Pipeline.build(topology, REGISTRY, seed=args.seed, events=args.events)
    except TopologyError as exc:
        err.print(escape(str(exc)))
        return EXIT_USAGE
    out = Console(highlight=False)
    view = None if args.quiet else LiveView(out, pipeline)
    if view is not None:
        view.start()
    try:
        result = run_pipeline(
            pipeline, on_refresh=view.refresh if view else None, handle_sigint=True
        )
    finally:
        if view is not None:
            view.stop()
            out.print()
    report = result.report
    path = args.report or Path("reports") / f"{topology.name}-seed{pipeline.seed}.json"
    write_report(report, path)
    _print_summary(out, report, path)
    if not args.no_chart and report["status"] != "failed":
        chart = path.with_suffix(".png")
        problem = write_chart(report, chart)
        out.print(escape(problem) if problem else f"chart: {escape(str(chart))}")
    if report["status"] == "interrupted":
        return EXIT_INTERRUPTED
    if report["status"] == "failed" or not report["expect_ok"]:
        return EXIT_FAILED
    return EXIT_OK


def _print_summary(console: Console, report: dict[str, Any], path: Path) -> None:
    latency = report["latency_seconds"]
    table = Table(
        title=f"{report['topology']} (seed {report['seed']}): {report['status']}",
        show_header=False,
        title_justify="left",
    )
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("events produced", f"{report['events_produced']:,}")
    table.add_row("events consumed (by every consumer)", f"{report['events_consumed']:,}")
    table.add_row("wall time", f"{report['wall_seconds']:,.2f} s")
    table.add_row("simulated time", f"{report['sim_seconds']:,.2f} s")
    rate = report["events_per_second"]
    table.add_row("throughput", f"{rate:,.0f} events/s" if rate else "-")
    if latency.get("p50") is not None:
        table.add_row(
            "latency p50 / p95 / p99 (simulated)",
            " / ".join(f"{latency[p] * 1000:,.1f} ms" for p in ("p50", "p95", "p99")),
        )
    peak = max(report["partitions"], key=lambda p: p["peak_depth"], default=None)
    if peak:
        capacity = f"{peak['capacity']:,}" if peak["capacity"] else "dynamic"
        table.add_row(
            "deepest ring",
            escape(f"{peak['topic']}[{peak['partition']}]: ")
            + f"{peak['peak_depth']:,} of {capacity}",
        )
    table.add_row(
        "blocked time, all partitions",
        f"{sum(p['blocked_seconds'] for p in report['partitions']):,.2f} s",
    )
    table.add_row("digest of aggregates", report["digest"][:16] + "...")
    console.print(table)
    for name, result in report["expect"].items():
        mark = "[green]ok[/green]" if result["ok"] else "[red]FAILED[/red]"
        console.print(f"expect {name}: {mark} - {escape(result['detail'])}")
    if report["error"]:
        console.print(f"[red]run failed:[/red] {escape(report['error'])}")
    if report["status"] == "interrupted":
        console.print("[yellow]interrupted: the report is partial[/yellow]")
    console.print(f"report: {escape(str(path))}")
