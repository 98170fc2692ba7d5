"""``ringflow run``: run a topology file to completion and report on it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import attrs

from topology import CheckpointError, Pipeline, Topology, TopologyError

from ..console import make_console
from ..exitcode import ExitCode
from ..live import LiveView
from ..resume import open_checkpoints
from ..run import REGISTRY, load_topology, refuse_served
from .errors import refuse
from .options import (
    Command,
    events_option,
    flag,
    option,
    positive_seconds,
    report_option,
    seed_option,
    state_option,
    topology_file,
)
from .report_file import ReportPathError, check_report_path
from .running import (
    announce_checkpoints,
    check_saved,
    open_logging,
    run_to_the_end,
    warn_damaged,
)

IDLE = 10.0
"""Seconds a folder of a files producer stays without a new file before ``run`` ends, when
neither ``--idle`` nor the file says."""


def with_idle(topology: Topology, idle_of: Callable[[float | None], float | None]) -> Topology:
    """``topology`` with each files producer's ``idle`` (None: it watches until stopped)
    replaced by ``idle_of(its own)``."""
    producers = {
        name: attrs.evolve(p, files=attrs.evolve(p.files, idle=idle_of(p.files.idle)))
        if p.files is not None
        else p
        for name, p in topology.producers.items()
    }
    return attrs.evolve(topology, producers=producers)


def watching_until_idle(topology: Topology, idle: float | None) -> Topology:
    """``topology`` with each files producer ending once its folder has been idle for
    ``idle`` seconds (for its own ``idle``, or :data:`IDLE`, when None)."""
    return with_idle(topology, lambda own: idle if idle is not None else own or IDLE)


def run(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow run``; return its exit code."""
    err = make_console(stderr=True)
    try:
        topology = watching_until_idle(load_topology(args.topology), args.idle)
        refuse_served(topology, args.topology, "run")
        folders = [p.files is not None for p in topology.producers.values()]
        if args.events is not None and folders and all(folders):
            raise TopologyError(
                [
                    "--events: this topology's producers watch folders, which make no events "
                    "to count; leave it out (--idle says when the run ends)"
                ],
                str(args.topology),
            )
        pipeline = Pipeline.build(topology, REGISTRY, seed=args.seed, events=args.events)
        path = args.report or Path("reports") / f"{topology.name}-seed{pipeline.seed}.json"
        check_report_path(path)
        checkpoints, pipeline = open_checkpoints(pipeline, args.state)
        check_saved(pipeline, checkpoints, args.topology)
    except (TopologyError, CheckpointError, ReportPathError) as exc:
        return refuse(err, exc)
    out = make_console()
    warn_damaged(err, checkpoints)
    announce_checkpoints(out, pipeline, checkpoints, node=False)
    folder = args.state or (
        checkpoints.store.path.parent if checkpoints else Path("state") / topology.name
    )
    pipeline.state_folder = folder  # where sinks keep embedded stores and find their lineage
    logging = open_logging(
        topology,
        args.no_log,
        None,
        folder,
        topology.name,
        out,
        err,
        resumed=pipeline.restored_from is not None,
    )
    if isinstance(logging, ExitCode):
        return logging
    return run_to_the_end(
        pipeline,
        checkpoints,
        logging,
        report_path=path,
        name=topology.name,
        out=out,
        err=err,
        view=None if args.quiet else LiveView(out, pipeline),
        chart=not args.no_chart,
    )


RUN = Command(
    name="run",
    help="run a topology file and report on it",
    description=(
        "Run a topology file to completion with a live view, then print a summary and "
        "write a JSON report (and a PNG chart when matplotlib is installed). Ctrl-C or "
        "SIGTERM stops cleanly and writes a partial report. Exit code: 0 when every "
        "'expect' invariant holds, 1 when one fails, an actor crashes or the run stalls "
        "(or the report could not be written where asked), 2 for a bad file or argument, "
        "130 on Ctrl-C, 143 on SIGTERM."
    ),
    options=(
        topology_file(help="the topology file"),
        seed_option("replace the file's seed"),
        events_option(
            "replace the total number of events (split over producers in proportion to the file)"
        ),
        report_option("where to write the JSON report (default: reports/NAME-seedSEED.json)"),
        state_option(
            "keep checkpoints in DIR and resume from the newest one there (also turns "
            "checkpoints on when the file has no 'checkpoint' section)"
        ),
        flag("--no-chart", "do not draw the PNG chart"),
        flag("--no-log", "do not log events to Redis (as 'redis: {enabled: false}' in the file)"),
        flag("--quiet", "no live view; print only the summary"),
        option(
            "--idle",
            type=positive_seconds,
            metavar="SECONDS",
            help="end once each watched folder (a files producer's) has had no new file "
            f"for this long (default: the file's idle, else {IDLE:g})",
        ),
    ),
    handler=run,
)
"""The ``run`` command."""
