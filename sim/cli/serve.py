"""``ringflow serve``: run a topology on the real clock with its HTTP API until stopped."""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs
from rich.markup import escape

from topology import CheckpointError, Pipeline, TopologyError, intake_settings

from ..console import make_console
from ..exitcode import ExitCode
from ..live import LiveView
from ..resume import open_checkpoints
from ..run import REGISTRY, load_topology
from .errors import refuse
from .node import cannot_listen
from .options import Command, flag, option, report_option, state_option, topology_file
from .report_file import ReportPathError, check_report_path
from .running import announce_checkpoints, open_logging, run_to_the_end, warn_damaged


def serve(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow serve``; return its exit code."""
    err = make_console(stderr=True)
    try:
        topology = load_topology(args.topology)
        if topology.http is None:
            raise TopologyError(
                [
                    "$.http: this topology takes no events over HTTP, so there is nothing to "
                    "serve; add an 'http' section, or run it with 'ringflow run'"
                ],
                str(args.topology),
            )
        topology = attrs.evolve(topology, clock="real")
        settings = intake_settings(topology, args.listen)
        pipeline = Pipeline.build(topology, REGISTRY)
        path = args.report or Path("reports") / f"{topology.name}-served.json"
        check_report_path(path)
        checkpoints, pipeline = open_checkpoints(pipeline, args.state)
    except (TopologyError, CheckpointError, ReportPathError) as exc:
        return refuse(err, exc)
    host, port = settings.listen
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    problem = cannot_listen(address, "the API")
    if problem is not None:
        return refuse(err, problem)
    spec = topology.http
    assert spec is not None
    if spec.acks == "durable" and checkpoints is None:
        return refuse(
            err,
            f"{args.topology}: $.http.acks: 'durable' answers a request once an epoch holds "
            "its events, so it needs checkpoints: add a 'checkpoint' section or give --state",
        )
    out = make_console()
    folder = args.state or (
        checkpoints.store.path.parent if checkpoints else Path("state") / topology.name
    )
    pipeline.serving = settings
    pipeline.state_folder = folder
    warn_damaged(err, checkpoints)
    announce_checkpoints(out, pipeline, checkpoints, node=True)
    logging = open_logging(
        topology,
        args.no_log,
        args.redis,
        folder,
        topology.name,
        out,
        err,
        resumed=pipeline.restored_from is not None,
    )
    if isinstance(logging, ExitCode):
        return logging
    durable = spec.durable(checkpoints is not None)
    out.print(
        f"serving {topology.name}: events are answered once "
        + ("an epoch holds them (acks: durable)" if durable else "in their rings (acks: ring)")
        + "; Ctrl-C or SIGTERM stops taking events, drains the rings and ends"
    )
    assert pipeline.intake is not None
    pipeline.intake.on_listening = lambda url: out.print(f"listening on {url}")
    pipeline.intake.on_error = lambda exc: err.print(
        escape(f"error: a request was answered 500: {type(exc).__name__}: {exc}")
    )
    return run_to_the_end(
        pipeline,
        checkpoints,
        logging,
        report_path=path,
        name=topology.name,
        out=out,
        err=err,
        view=None if args.quiet else LiveView(out, pipeline),
    )


SERVE = Command(
    name="serve",
    help="serve a topology's HTTP API on the real clock until stopped",
    description=(
        "Run a topology with an 'http' section on the real clock: clients POST events to "
        "its API (see docs/http.md), consumers store them. Ctrl-C or SIGTERM stops taking "
        "events (503), drains the rings, writes a final epoch and the report; a second one "
        "stops at once. Running it again with the same state folder carries on from the "
        "last epoch. Exit code: 0 after a clean stop, 1 when an actor crashes or an 'expect' "
        "invariant fails, 2 for a bad file or argument, 130/143 when stopped at once."
    ),
    options=(
        topology_file(help="the topology file (with an 'http' section)"),
        option(
            "--listen",
            metavar="HOST:PORT",
            help="where the API listens (default: http.listen of the file; port 0 picks a "
            "free one)",
        ),
        state_option(
            "keep checkpoints and the embedded ClickHouse in DIR and carry on from the newest "
            "epoch there (also turns checkpoints on when the file has no 'checkpoint' section)"
        ),
        option(
            "--redis",
            metavar="URL",
            help="log to the Redis at URL (default: redis.url of the file, else an embedded one)",
        ),
        report_option("where to write the JSON report (default: reports/NAME-served.json)"),
        flag("--no-log", "do not log events to Redis"),
        flag("--quiet", "no live view"),
    ),
    handler=serve,
)
"""The ``serve`` command."""
