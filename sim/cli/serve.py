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
from .node import announce_api, api_problem
from .options import Command, flag, option, report_option, state_option, topology_file
from .report_file import ReportPathError, check_report_path
from .run import with_idle
from .running import (
    announce_checkpoints,
    check_saved,
    open_logging,
    run_to_the_end,
    warn_damaged,
)


def serve(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow serve``; return its exit code."""
    err = make_console(stderr=True)
    try:
        topology = load_topology(args.topology)
        folders = [p for p in topology.producers.values() if p.files is not None]
        if topology.http is None and not folders:
            raise TopologyError(
                [
                    "$.http: this topology takes no events over HTTP and watches no folder "
                    "('files' producers), so there is nothing to serve; add an 'http' "
                    "section, or run it with 'ringflow run'"
                ],
                str(args.topology),
            )
        if topology.nodes:
            raise TopologyError(
                [
                    "$.nodes: this topology is split into nodes; run each with 'ringflow node "
                    f"{args.topology} --node NAME' (the nodes with an 'api' address serve "
                    "the HTTP API)"
                ],
                str(args.topology),
            )
        topology = with_idle(attrs.evolve(topology, clock="real"), lambda _: None)  # for ever
        settings = None if topology.http is None else intake_settings(topology, args.listen)
        if settings is None and args.listen is not None:
            raise TopologyError(["--listen: this topology has no HTTP API"], str(args.topology))
        pipeline = Pipeline.build(topology, REGISTRY)
        path = args.report or Path("reports") / f"{topology.name}-served.json"
        check_report_path(path)
        checkpoints, pipeline = open_checkpoints(pipeline, args.state)
        check_saved(pipeline, checkpoints, args.topology)
    except (TopologyError, CheckpointError, ReportPathError) as exc:
        return refuse(err, exc)
    pipeline.serving = settings
    problem = None if settings is None else api_problem(pipeline, bool(checkpoints), args.topology)
    if problem is not None:
        return refuse(err, problem)
    out = make_console()
    folder = args.state or (
        checkpoints.store.path.parent if checkpoints else Path("state") / topology.name
    )
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
    if settings is not None:
        announce_api(out, err, pipeline, checkpoints is not None)
    if folders:
        out.print(
            f"watching {', '.join(escape(p.files.dir) for p in folders if p.files)}; Ctrl-C or "
            "SIGTERM stops watching, finishes the files announced and ends (again: at once)"
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
        "its API (see docs/http.md), consumers store them; or one with 'files' producers, "
        "watching their folders until stopped (docs/files.md). Ctrl-C or SIGTERM stops "
        "taking events (503) or watching, drains the rings, writes a final epoch and the "
        "report; a second one stops at once. Running it again with the same state folder "
        "carries on from the last epoch. Exit code: 0 after a clean stop, 1 when an actor "
        "crashes or an 'expect' invariant fails, 2 for a bad file or argument, 130/143 when "
        "stopped at once."
    ),
    options=(
        topology_file(help="the topology file (with an 'http' section or 'files' producers)"),
        option(
            "--listen",
            metavar="HOST:PORT",
            help="where the API listens (default: http.listen of the file; port 0 picks a "
            "free one)",
        ),
        state_option(
            "keep checkpoints and the embedded databases (ClickHouse, PostgreSQL) in DIR and "
            "carry on from the newest "
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
