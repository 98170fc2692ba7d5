"""The ``ringflow`` command."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from actors import DISAGREEMENT, RingflowError, redact
from topology import (
    MAX_EVENTS,
    CheckpointError,
    CheckpointSettings,
    Pipeline,
    Topology,
    TopologyError,
)

from .bench import BenchSettings, run_bench
from .console import make_console

if TYPE_CHECKING:
    from .redis_server import EmbeddedRedis
    from .run import LogSettings

EXIT_OK = 0
EXIT_FAILED = 1
"""The run completed but an invariant failed, or an actor crashed, or the report could not
be written where asked (it was saved elsewhere, and its path printed)."""
EXIT_USAGE = 2
"""Bad input: a malformed topology, bad arguments. Nothing was run."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (SIGINT); a partial report was written."""
EXIT_TERMINATED = 143
"""Stopped by SIGTERM (``docker stop``, a process manager): as Ctrl-C, 128 + 15."""


FLAG_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\(checkpoint\.path\)"), "(checkpoint.path in the file, or --state)"),
    (re.compile(r"the same seed and events"), "the same --seed and --events"),
    (re.compile(r"(?<![\w.$])peers\.([^:\s]+):"), r"--peer \1:"),
)
"""How settings named in messages of the lower layers are set on the command line."""


def with_flags(message: str) -> str:
    """Return ``message`` with the command-line flag added wherever it names a setting."""
    for pattern, replacement in FLAG_HINTS:
        message = pattern.sub(replacement, message)
    return message


def _whole(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {value:,}")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1)


def _non_negative(text: str) -> int:
    return _whole(text, 0)


def _events(text: str) -> int:
    return _whole(text, 0, MAX_EVENTS)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


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
            "write a JSON report (and a PNG chart when matplotlib is installed). Ctrl-C or "
            "SIGTERM stops cleanly and writes a partial report. Exit code: 0 when every "
            "'expect' invariant holds, 1 when one fails, an actor crashes or the run stalls "
            "(or the report could not be written where asked), 2 for a bad file or argument, "
            "130 on Ctrl-C, 143 on SIGTERM."
        ),
    )
    run.add_argument("topology", type=Path, metavar="TOPOLOGY.yaml", help="the topology file")
    run.add_argument("--seed", type=_non_negative, help="replace the file's seed")
    run.add_argument(
        "--events",
        type=_events,
        help="replace the total number of events (split over producers in proportion to the file)",
    )
    run.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="where to write the JSON report (default: reports/NAME-seedSEED.json)",
    )
    run.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="keep checkpoints in DIR and resume from the newest one there (also turns "
        "checkpoints on when the file has no 'checkpoint' section)",
    )
    run.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    run.add_argument(
        "--no-log",
        action="store_true",
        help="do not log events to Redis (as 'redis: {enabled: false}' in the file)",
    )
    run.add_argument("--quiet", action="store_true", help="no live view; print only the summary")

    node = commands.add_parser(
        "node",
        help="run one node of a split topology (one per process or container)",
        description=(
            "Run the part of a topology that its 'nodes' section puts on NODE: its topics' "
            "rings, producers and consumers, with a websocket gateway serving its topics to "
            "the other nodes and to taps. Nodes find each other at their 'listen' addresses "
            "and may start in any order; a peer that cannot be reached is retried for "
            "gateway.connect_timeout seconds. Runs on the real clock. Exit code as 'run'."
        ),
    )
    node.add_argument("topology", type=Path, metavar="TOPOLOGY.yaml", help="the topology file")
    node.add_argument("--node", required=True, metavar="NAME", help="which node to run")
    node.add_argument(
        "--seed", type=_non_negative, help="replace the file's seed (same on every node)"
    )
    node.add_argument(
        "--events",
        type=_events,
        help="replace the total number of events (give the same number to every node)",
    )
    node.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="where to write this node's JSON report (default: reports/NAME-NODE-seedSEED.json)",
    )
    node.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=os.environ.get("RINGFLOW_LISTEN"),
        help="listen here instead of the node's address in the file, 0.0.0.0:PORT in a "
        "container for example (default: $RINGFLOW_LISTEN)",
    )
    node.add_argument(
        "--peer",
        action="append",
        metavar="NODE=HOST:PORT",
        help="reach NODE here instead of at its address in the file, such as "
        "broker=broker:7402 (repeatable; default: $RINGFLOW_PEERS, comma separated)",
    )
    node.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get("RINGFLOW_REDIS_URL"),
        help="log to this Redis instead of the file's (default: $RINGFLOW_REDIS_URL)",
    )
    node.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="keep this node's checkpoints in DIR and resume from the newest one there (also "
        "turns checkpoints on when the file has no 'checkpoint' section; default folder: "
        "state/NAME-NODE)",
    )
    node.add_argument("--no-log", action="store_true", help="do not log events to Redis")

    tap = commands.add_parser(
        "tap",
        help="print a live stream of a topic as JSON lines",
        description=(
            "Connect to ws://HOST:PORT/tap/TOPIC on the node that hosts TOPIC and print its "
            "records as JSON lines (offset, key, timestamp, value, with topic and partition) "
            "until the topic ends, --limit records were printed, or Ctrl-C. A tap never "
            "commits for a consumer group. Lines of type 'skipped' say how many records a "
            "slow tap missed."
        ),
    )
    tap.add_argument("url", metavar="URL", help="ws://HOST:PORT/tap/TOPIC")
    tap.add_argument(
        "--from",
        dest="start",
        default="latest",
        metavar="WHERE",
        help="earliest, latest (default) or an offset",
    )
    tap.add_argument("--partition", type=_non_negative, help="only this partition")
    tap.add_argument("--limit", type=_positive, help="stop after this many records")
    tap.add_argument(
        "--hold",
        action="store_true",
        help="never skip records: the tap's reading holds the topic's readers back instead",
    )
    tap.add_argument(
        "--wait",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="keep trying a node that cannot be reached yet for this long (default: 10)",
    )
    tap.add_argument(
        "--token-env",
        default="RINGFLOW_TOKEN",
        metavar="VAR",
        help="the environment variable holding the shared token, if the node needs one "
        "(default: %(default)s)",
    )

    logs = commands.add_parser(
        "logs",
        help="print a run's Redis log as JSON lines, and its counters",
        description=(
            "Print the entries a run logged to Redis, one JSON object per line on standard "
            "output, oldest first, and its counters as a table on standard error. Reads the "
            "embedded Redis of a state folder (--state, default state/NAME of the newest run "
            "found there) or the Redis at --redis."
        ),
    )
    logs.add_argument("--run", metavar="ID", help="the run (default: the newest one)")
    logs.add_argument(
        "--category",
        choices=("incoming", "outgoing", "errors", "meta"),
        action="append",
        help="only this category (repeatable; default: all)",
    )
    logs.add_argument("--follow", action="store_true", help="keep printing new entries")
    logs.add_argument("--limit", type=_positive, help="at most this many entries per category")
    where = logs.add_mutually_exclusive_group()
    where.add_argument("--redis", metavar="URL", help="a Redis URL (redis://, unix://)")
    where.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="a state folder with an embedded Redis (default: ./state/*)",
    )

    checkpoints = commands.add_parser(
        "checkpoints",
        help="list the checkpoint epochs in a state folder, or show one",
        description="List the epochs kept in a state folder (number, time, records, size, "
        "duration of the write), or show one in detail with --epoch.",
    )
    checkpoints.add_argument("state", type=Path, metavar="DIR", help="the state folder")
    checkpoints.add_argument("--epoch", type=_positive, help="show this epoch in detail")

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
        "--restore-records",
        type=_non_negative,
        default=defaults.restore_records,
        help="records held in the epoch whose restore is timed; 0 skips it (default: %(default)s)",
    )
    bench.add_argument(
        "--gateway-records",
        type=_non_negative,
        default=defaults.gateway_records,
        help="records sent through a websocket gateway on loopback and through raw "
        "trio-websocket; 0 skips it (default: %(default)s)",
    )
    bench.add_argument(
        "--tap-seconds",
        type=_seconds,
        default=defaults.tap_seconds,
        help="seconds of a 10,000 records/s stream whose delay to a tap is measured; 0 skips "
        "it (default: %(default)s)",
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
    if args.command == "checkpoints":
        return _checkpoints(args)
    if args.command == "node":
        return _node(args)
    if args.command == "tap":
        from .tap import run_tap

        return run_tap(args)
    if args.command == "logs":
        from .logs import show_logs

        return show_logs(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse refuses unknown commands


def _bench(args: argparse.Namespace) -> int:
    settings = BenchSettings(
        records=args.records,
        batch=args.batch,
        single_records=args.single_records,
        repeat=args.repeat,
        memory_records=args.memory_records,
        video_events=args.video_events,
        restore_records=args.restore_records,
        gateway_records=args.gateway_records,
        tap_seconds=args.tap_seconds,
    )
    err = make_console(stderr=True)
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
    if "checkpoint_cost" in result:
        table.add_row(
            f"video site, an epoch every simulated second ({result['checkpoint_epochs']} epochs)",
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
    make_console().print(table)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _validate(args: argparse.Namespace) -> int:
    from .run import load_topology

    console = make_console(stderr=True)
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        console.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    counts = ", ".join(
        _count(len(things), what)
        for things, what in (
            (topology.topics, "topic"),
            (topology.producers, "producer"),
            (topology.consumers, "consumer"),
        )
    )
    make_console().print(
        f"{escape(str(args.topology))}: valid topology {topology.name!r}: {counts}"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from .live import LiveView
    from .report import write_chart
    from .run import REGISTRY, load_topology, open_checkpoints, run_pipeline

    err = make_console(stderr=True)
    try:
        topology = load_topology(args.topology)
        pipeline = Pipeline.build(topology, REGISTRY, seed=args.seed, events=args.events)
        path = args.report or Path("reports") / f"{topology.name}-seed{pipeline.seed}.json"
        _check_report_path(path)
        checkpoints, pipeline = open_checkpoints(pipeline, args.state)
    except (TopologyError, CheckpointError, ReportPathError) as exc:
        err.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    out = make_console()
    _warn_damaged(err, checkpoints)
    if pipeline.restored_from is not None and checkpoints is not None:
        epoch = pipeline.restored_from
        where = escape(str(checkpoints.store.path))
        if epoch.completed:
            out.print(
                f"already complete: epoch {epoch.epoch} of {where} is the final epoch of a "
                f"completed run (t={epoch.sim_time:,.2f}s, {epoch.events_produced:,} events "
                "produced); nothing is left to run, its results follow"
            )
        else:
            out.print(
                f"resuming from epoch {epoch.epoch} of {where}: "
                f"t={epoch.sim_time:,.2f}s, {epoch.events_produced:,} events produced, "
                f"{epoch.ring_records:,} records in rings"
                + (" (the run was stopped there)" if epoch.final else "")
            )
    elif checkpoints is not None:
        out.print(f"checkpoints: {escape(str(checkpoints.store.path))}")
    folder = args.state or (
        checkpoints.store.path.parent if checkpoints else Path("state") / topology.name
    )
    opened = _open_logging(
        topology,
        args.no_log,
        None,
        folder,
        topology.name,
        out,
        err,
        resumed=pipeline.restored_from is not None,
    )
    if isinstance(opened, int):
        return opened
    logging, server = opened
    view = None if args.quiet else LiveView(out, pipeline)
    if view is not None:
        view.start()
    try:
        result = run_pipeline(
            pipeline,
            checkpoints=checkpoints,
            logging=logging,
            on_refresh=view.refresh if view else None,
            handle_sigint=True,
        )
    except RingflowError as exc:  # Redis unreachable at start, configured to fail
        err.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    finally:
        if view is not None:
            view.stop()
            out.print()
        if server is not None:
            server.stop()
    report = result.report
    saved, problem = _save_report(report, path, checkpoints, topology.name)
    _print_summary(out, report, saved, problem)
    if not args.no_chart and report["status"] != "failed" and saved is not None:
        chart = saved.with_suffix(".png")
        try:
            drawn = write_chart(report, chart)
        except OSError as exc:
            drawn = f"no chart: cannot write {chart}: {exc.strerror or exc}"
        out.print(escape(drawn) if drawn else f"chart: {escape(str(chart))}")
    return _exit_code(report, problem)


def _node(args: argparse.Namespace) -> int:
    from topology import Placement, parse_address

    from .run import REGISTRY, load_topology, open_checkpoints, run_pipeline

    err = make_console(stderr=True)
    out = make_console()
    try:
        topology = load_topology(args.topology)
        peers = _peers(args.peer or os.environ.get("RINGFLOW_PEERS", "").split(","))
        token_env = topology.gateway.token_env
        token = os.environ.get(token_env) or None if token_env else None
        placement = Placement(args.node, args.listen, peers, token)
        pipeline = Pipeline.build(
            topology, REGISTRY, seed=args.seed, events=args.events, placement=placement
        )
    except (TopologyError, ValueError) as exc:
        err.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    path = args.report or Path("reports") / f"{topology.name}-{args.node}-seed{pipeline.seed}.json"
    try:
        _check_report_path(path)
        checkpoints, pipeline = open_checkpoints(pipeline, args.state)
    except (CheckpointError, ReportPathError) as exc:
        err.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    _warn_damaged(err, checkpoints)
    address = pipeline.address_of(args.node)
    host = parse_address(address)[0]
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        hint = f"set {token_env}" if token_env else "name one in gateway.token_env and set it"
        err.print(
            f"refusing to listen on {escape(address)} without a shared token: any machine "
            f"that reaches it could read and write the topics; {escape(hint)}"
        )
        return EXIT_USAGE
    problem = _cannot_listen(address)
    if problem is not None:
        err.print(escape(problem))
        return EXIT_USAGE
    here = topology.nodes[args.node]
    out.print(
        f"node {escape(args.node)} of {escape(topology.name)}: gateway on ws://{escape(address)}"
        f" (topics: {escape(', '.join(here.topics) or '-')}; producers: "
        f"{escape(', '.join(here.producers) or '-')}; consumers: "
        f"{escape(', '.join(here.consumers) or '-')})" + ("; token required" if token else "")
    )
    if pipeline.restored_from is not None and checkpoints is not None:
        epoch = pipeline.restored_from
        out.print(
            f"resuming from epoch {epoch.epoch} of {escape(str(checkpoints.store.path))}: "
            f"{epoch.events_produced:,} events produced, {epoch.ring_records:,} records in rings"
        )
    elif checkpoints is not None:
        out.print(f"checkpoints: {escape(str(checkpoints.store.path))}")
    folder = (
        checkpoints.store.path.parent
        if checkpoints
        else Path("state") / f"{topology.name}-{args.node}"
    )
    opened = _open_logging(
        topology,
        args.no_log,
        args.redis,
        folder,
        f"{topology.name}-{args.node}",
        out,
        err,
        resumed=pipeline.restored_from is not None,
    )
    if isinstance(opened, int):
        return opened
    logging, server = opened
    try:
        result = run_pipeline(
            pipeline,
            checkpoints=checkpoints,
            logging=logging,
            handle_sigint=True,
            on_gateway_error=lambda message: err.print(f"gateway: {escape(message)}"),
        )
    except RingflowError as exc:
        err.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    finally:
        if server is not None:
            server.stop()
    if result.refused is not None and result.refused.code == DISAGREEMENT:
        err.print(
            escape(f"{result.refused}; give every node the same topology file, --seed and --events")
        )
        return EXIT_USAGE
    report = result.report
    saved, problem = _save_report(report, path, checkpoints, f"{topology.name}-{args.node}")
    _print_summary(out, report, saved, problem)
    return _exit_code(report, problem)


class ReportPathError(RingflowError):
    """The report cannot be written where it is to go."""


def _check_report_path(path: Path) -> None:
    """Make sure the report can be written to ``path`` before anything runs; create its
    folder, leave no file behind.

    Raises:
        ReportPathError: It is a folder, its folder cannot be made, or it cannot be written.
    """
    hint = "choose another path with --report"
    try:
        folder = path.is_dir()
    except OSError as exc:  # a name too long, say
        raise ReportPathError(
            f"cannot write the report to {path}: {exc.strerror}; {hint}"
        ) from None
    if folder:
        raise ReportPathError(f"cannot write the report to {path}: it is a folder; {hint}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ReportPathError(
            f"cannot write the report to {path}: a part of {path.parent} is a file, not a "
            f"folder; {hint}"
        ) from None
    except OSError as exc:
        raise ReportPathError(
            f"cannot write the report to {path}: its folder {path.parent} cannot be created "
            f"({exc.strerror}); {hint}"
        ) from None
    try:
        existed = path.exists()
        with path.open("a"):
            pass
    except OSError as exc:
        raise ReportPathError(
            f"cannot write the report to {path}: {exc.strerror}; {hint}"
        ) from None
    if not existed:
        path.unlink(missing_ok=True)


def _save_report(
    report: dict[str, Any], path: Path, checkpoints: CheckpointSettings | None, name: str
) -> tuple[Path | None, str | None]:
    """Write the report to ``path``; when that fails (a full disk, a path taken meanwhile),
    to the state folder, else to a temporary file.

    Returns:
        Where it was written (None if nowhere), and why not to ``path`` (None if it was).
    """
    from .report import write_report

    try:
        write_report(report, path)
        return path, None
    except OSError as exc:
        problem = f"cannot write the report to {path}: {exc.strerror or exc}"
    if checkpoints is not None:
        fallback = checkpoints.store.path.parent / f"report-{name}-seed{report['seed']}.json"
        try:
            write_report(report, fallback)
            return fallback, problem
        except OSError:
            pass
    try:
        handle, temporary = tempfile.mkstemp(prefix=f"ringflow-{name}-", suffix=".json")
        os.close(handle)
        write_report(report, Path(temporary))
        return Path(temporary), problem
    except OSError:
        return None, problem


def _exit_code(report: dict[str, Any], report_problem: str | None) -> int:
    if report["status"] == "interrupted":
        return EXIT_TERMINATED if report.get("stopped_by") == "SIGTERM" else EXIT_INTERRUPTED
    if report["status"] == "failed" or not report["expect_ok"] or report_problem:
        return EXIT_FAILED
    return EXIT_OK


def _cannot_listen(address: str) -> str | None:
    """Why this node could not listen on ``address`` (HOST:PORT), or None if it can."""
    from topology import parse_address

    host, port = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot listen on {address}: {exc.strerror or exc}"
    for family, kind, protocol, _, where in infos:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway does
            try:
                probe.bind(where)
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
                return (
                    f"cannot listen on {address}: {why}; stop what listens there or give "
                    "this node another address (--listen HOST:PORT)"
                )
    return None


def _warn_damaged(err: Console, checkpoints: CheckpointSettings | None) -> None:
    if checkpoints is None:
        return
    for damage in checkpoints.store.damaged:
        err.print(
            f"[yellow]warning:[/yellow] {escape(str(checkpoints.store.path))}: "
            f"{escape(str(damage))}; passed over for an older epoch"
        )


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _peers(items: Sequence[str]) -> dict[str, str]:
    peers = {}
    for item in items:
        if not item.strip():
            continue
        name, equals, address = item.strip().partition("=")
        if not equals or not name or not address:
            raise ValueError(f"--peer {item!r}: expected NODE=HOST:PORT")
        peers[name] = address
    return peers


def _open_logging(
    topology: Topology,
    no_log: bool,
    url: str | None,
    folder: Path,
    run_name: str,
    out: Console,
    err: Console,
    *,
    resumed: bool = False,
) -> tuple[LogSettings | None, EmbeddedRedis | None] | int:
    """Where a run logs to: the Redis at ``url`` or in the file, or the embedded one of
    ``folder`` (started, or attached to when another command serves it); None when logging is
    off. Redis is checked here, before the run: unavailable, it is said at once, and the run
    goes on without logging (an exit code when that is configured to fail). A run resumed
    from a checkpoint logs on under the run id of the folder's earlier segments."""
    from .redis_server import EmbeddedRedis, RedisUnavailable
    from .run import LogSettings, probe_redis, run_id_for

    spec = topology.redis
    if not spec.enabled or no_log:
        return None, None
    server = None
    url = url or spec.url
    problem = None
    if url is None:
        try:
            url, server = EmbeddedRedis.attach_or_start(
                folder, on_note=lambda line: err.print(escape(line))
            )
        except RedisUnavailable as exc:
            if spec.on_unavailable == "fail":
                err.print(escape(f"cannot log to Redis: {exc}"))
                return EXIT_USAGE
            err.print(escape(f"warning: running without logging: {exc}"))
            return None, None
    else:
        problem = probe_redis(url)
        if problem is not None and spec.on_unavailable == "fail":
            err.print(escape(f"{problem} (redis.on_unavailable is 'fail')"))
            return EXIT_USAGE
        if problem is not None:
            err.print(escape(f"warning: {problem} (running without logging)"))
    logging = LogSettings(
        url,
        run_id_for(folder, run_name, resumed=resumed),
        spec.maxlen,
        fail_if_unavailable=spec.on_unavailable == "fail",
        flush_timeout=spec.flush_timeout,
        unavailable=problem,
    )
    if problem is None:
        out.print(f"logging to Redis at {escape(redact(url))} as run {logging.run_id}")
    return logging, server


def _print_summary(
    console: Console, report: dict[str, Any], path: Path | None, problem: str | None = None
) -> None:
    from .report import broker_rows

    latency = report["latency_seconds"]
    table = Table(
        title=f"{report['topology']}"
        + (f", node {report['node']}" if report.get("node") else "")
        + f" (seed {report['seed']}): {report['status']}",
        show_header=False,
        title_justify="left",
    )
    table.add_column("what")
    table.add_column("figure", justify="right")
    if report["events_planned"] or not report.get("node"):
        table.add_row("events produced", f"{report['events_produced']:,}")
    if report["consumers"] or not report.get("node"):
        table.add_row("events consumed (by every consumer)", f"{report['events_consumed']:,}")
    if report.get("node") and report["partitions"]:  # a node hosting topics: its rings' work
        for what, figure in broker_rows(report):
            table.add_row(escape(what), figure)
    segments = report["segments"]
    several = f" over {len(segments)} segments" if len(segments) > 1 else ""
    table.add_row("wall time", f"{report['wall_seconds']:,.2f} s{several}")
    virtual = report["clock"] == "virtual"
    if virtual:
        table.add_row("simulated time", f"{report['sim_seconds']:,.2f} s")
    rate = report["events_per_second"]
    table.add_row("throughput", f"{rate:,.0f} events/s" if rate else "-")
    if several:
        for segment in segments:
            start = segment["resumed_from_epoch"]
            speed = segment["events_per_second"]
            table.add_row(
                f"  segment {segment['segment']}"
                + ("" if start is None else f" (from epoch {start})")
                + f": {segment['events']:,} events",
                f"{segment['wall_seconds']:,.2f} s, "
                + (f"{speed:,.0f} events/s" if speed else "-"),
            )
    if latency.get("p50") is not None:
        table.add_row(
            f"latency p50 / p95 / p99 ({'simulated' if virtual else 'real'})",
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
    if report["aggregates"]:  # where no consumer runs there are none to digest
        table.add_row("digest of aggregates", report["digest"][:16] + "...")
    console.print(table)
    for name, result in report["expect"].items():
        mark = "[green]ok[/green]" if result["ok"] else "[red]FAILED[/red]"
        console.print(f"expect {name}: {mark} - {escape(result['detail'])}")
    checkpoints = report.get("checkpoints")
    if checkpoints:
        for rollback in checkpoints["rollbacks"]:
            console.print(
                f"[yellow]rolled back to epoch {rollback['to_epoch']}[/yellow] after: "
                f"{escape(rollback['error'])}"
            )
        if not report.get("already_complete"):
            console.print(
                f"checkpoints: {checkpoints['epochs_written']} epochs written "
                f"(last: {checkpoints['last_epoch']}) to {escape(checkpoints['database'])}"
            )
    logging = report.get("logging")
    if logging and logging.get("enabled"):
        written = sum(logging["written"].values())
        dropped = sum(logging["dropped"].values())
        console.print(
            f"logged {written:,} entries to {escape(logging['url'])} as run {logging['run_id']}"
            + (f", dropped {dropped:,} while Redis fell behind" if dropped else "")
            + (f", {logging['failures']} failed writes retried" if logging["failures"] else "")
        )
        if logging["unwritten"]:
            console.print(
                f"[yellow]not written to Redis: {logging['unwritten']:,} entries[/yellow] "
                f"(still failing when the run ended; last error: "
                f"{escape(str(logging['last_error']))})"
            )
    elif logging:
        console.print(f"[yellow]not logged:[/yellow] {escape(logging['reason'])}")
    if report["error"]:
        console.print(f"[red]run failed:[/red] {escape(report['error'])}")
    if report["status"] == "interrupted":
        by = f" by {report['stopped_by']}" if report.get("stopped_by") else ""
        console.print(f"[yellow]interrupted{by}: the report is partial[/yellow]")
    if report.get("already_complete"):
        console.print(
            "already complete: nothing was run; the figures are those of the run that completed it"
        )
    if problem is not None:
        console.print(f"[red]{escape(problem)}[/red]")
        if report["digest"]:
            console.print(f"digest: {report['digest']}")
        if path is None:
            console.print("[red]the report could not be saved anywhere[/red]")
            return
        console.print(f"report saved instead to: {escape(str(path))}")
        return
    console.print(f"report: {escape(str(path))}")


def _checkpoints(args: argparse.Namespace) -> int:
    import datetime

    import msgspec

    from topology import SCHEMA_VERSION, read_store

    err = make_console(stderr=True)
    out = make_console()
    try:
        meta, store = read_store(args.state)
    except CheckpointError as exc:
        err.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    checked = store.version >= SCHEMA_VERSION
    try:
        epochs = store.epochs()
        loaded = store.load(args.epoch, verify=False) if args.epoch else None
        damage = {e.epoch: store.verify(e.epoch) if checked else None for e in epochs}
    except CheckpointError as exc:
        err.print(escape(with_flags(str(exc))))
        return EXIT_USAGE
    finally:
        store.close()
    out.print(
        f"{escape(str(store.path))}: topology {meta.get('topology')!r}, schema "
        f"{meta.get('schema_version')}, fingerprint {meta.get('fingerprint', '?')[:12]}"
        + ("" if checked else " (an older schema: epochs have no checksums to verify)")
    )
    bad = [d for d in damage.values() if d is not None]
    if loaded is None:
        table = Table(
            "epoch",
            "written",
            "sim time",
            "events",
            "in rings",
            "size",
            "write",
            "final",
            "intact",
        )
        for e in epochs:
            written = datetime.datetime.fromtimestamp(e.created_at).strftime("%H:%M:%S")
            table.add_row(
                str(e.epoch),
                written,
                f"{e.sim_time:,.2f} s",
                f"{e.events_produced:,}",
                f"{e.ring_records:,}",
                f"{e.bytes / 1024:,.1f} KiB",
                f"{e.write_seconds * 1000:,.1f} ms",
                ("completed" if e.completed else "yes") if e.final else "",
                "?" if not checked else "yes" if damage[e.epoch] is None else "[red]DAMAGED[/red]",
            )
        out.print(table if epochs else "no epochs yet")
        for found in bad:
            out.print(f"[red]damaged:[/red] {escape(str(found))}")
        return EXIT_OK
    info, parts = loaded
    out.print(
        f"epoch {info.epoch}: t={info.sim_time:,.2f}s, {info.events_produced:,} events "
        f"produced, {info.ring_records:,} records in rings, {info.bytes:,} bytes, "
        f"written in {info.write_seconds * 1000:,.1f} ms{', final' if info.final else ''}"
        + (", the run completed" if info.completed else "")
    )
    problem = damage.get(info.epoch)
    if problem is not None:
        out.print(f"[red]damaged:[/red] {escape(str(problem))}")
    table = Table("part", "name", "bytes", "what")
    for (kind, name), data in sorted(parts.items()):
        if problem is not None and problem.part == f"{kind}/{name}":
            table.add_row(kind, escape(name), f"{len(data):,}", "[red]damaged[/red]")
            continue
        try:
            decoded = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            table.add_row(kind, escape(name), f"{len(data):,}", "[red]not MessagePack[/red]")
            continue
        try:
            what = _describe_part(kind, decoded)
        except (TypeError, KeyError, IndexError, AttributeError, ValueError):
            what = "[red]not what this part holds[/red]"
        table.add_row(kind, escape(name), f"{len(data):,}", what)
    out.print(table)
    return EXIT_OK


def _describe_part(kind: str, decoded: Any) -> str:
    if kind == "partition":
        start, end, committed = decoded[0], decoded[1], decoded[2]
        return f"offsets {start:,}..{end:,}; committed " + ", ".join(
            f"{group}={offset:,}" for group, offset in committed.items()
        )
    if kind == "producer":
        return f"{decoded['done']:,} events made"
    if kind == "consumer":
        return f"{decoded['records']:,} records processed"
    if kind == "topic":
        return f"{decoded[0]:,} records produced"
    return ""
