"""The ``ringflow`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from .bench import BenchSettings, run_bench


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
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ringflow`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse refuses unknown commands


def _bench(args: argparse.Namespace) -> int:
    settings = BenchSettings(
        records=args.records,
        batch=args.batch,
        single_records=args.single_records,
        repeat=args.repeat,
        memory_records=args.memory_records,
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
