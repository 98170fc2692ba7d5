"""``ringflow chaos``: run a topology under many seeded fault schedules and check that every
guarantee holds; replay any schedule exactly from its seed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from topology import MAX_EVENTS, TopologyError

from ..chaos.campaign import Campaign, Schedule, run_campaign, targets_of
from ..chaos.faults import (
    FAULT_KINDS,
    NETWORK_KINDS,
    SINK_KINDS,
    SPLIT_KINDS,
    WHOLE_KINDS,
    seed_fits,
)
from ..chaos.harness import Chaos
from ..console import make_console
from ..exitcode import ExitCode
from ..run import load_topology, refuse_served
from .errors import refuse
from .options import Command, flag, non_negative, option, topology_file, whole

DEFAULT_EVENTS = 20_000
"""Events of each schedule unless ``--events`` says otherwise."""

MAX_SCHEDULES = 1_000_000
"""The most schedules one campaign runs."""


def schedules(text: str) -> int:
    """Parse a number of schedules: 1 to :data:`MAX_SCHEDULES`."""
    return whole(text, 1, MAX_SCHEDULES)


def schedule_events(text: str) -> int:
    """Parse a number of events for each schedule: 1 to ``MAX_EVENTS``."""
    return whole(text, 1, MAX_EVENTS)


def kinds_of(text: str | None, split: bool, sinks: bool = False) -> tuple[str, ...]:
    """The fault kinds ``--faults`` names, checked; all that can be injected when None.

    Args:
        split: The topology has nodes that talk to each other (the network between them
            can fail).
        sinks: Its consumers write to other systems (which can fail).

    Raises:
        ValueError: A kind is unknown, or needs nodes the topology does not have, or is not
            injected by this ringflow.
    """
    offered = (SPLIT_KINDS if split else WHOLE_KINDS) + (SINK_KINDS if sinks else ())
    if text is None:
        return offered
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds:
        raise ValueError("--faults: name at least one fault kind")
    for kind in kinds:
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"--faults: unknown fault kind {kind!r}; kinds are: {', '.join(offered)}"
            )
        if kind in SINK_KINDS and not sinks:
            raise ValueError(
                f"--faults: {kind} strikes the system a sink writes to, and no consumer of "
                f"this topology has a sink; it can be tested with {', '.join(offered)}"
            )
        if kind in NETWORK_KINDS and not split:
            raise ValueError(
                f"--faults: {kind} strikes the network between nodes, and no two nodes of "
                f"this topology talk to each other; it can be tested with {', '.join(offered)}"
            )
        if kind not in offered:
            raise ValueError(
                f"--faults: {kind} is not injected by this ringflow; it injects "
                f"{', '.join(offered)}"
            )
    return kinds


def chaos(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow chaos``; return its exit code."""
    err = make_console(stderr=True)
    try:
        topology = load_topology(args.topology)
        refuse_served(topology, args.topology, "chaos")
        run = Chaos.of(topology, args.events)
        targets = targets_of(run)
        kinds = kinds_of(args.faults, bool(targets.links), bool(targets.sinks))
        fingerprint = run.fingerprint
    except (TopologyError, ValueError) as exc:
        return refuse(err, exc)
    if args.replay is not None and not seed_fits(args.replay, fingerprint):
        return refuse(
            err,
            f"--replay {args.replay}: no schedule of this topology with these --events has "
            "that seed; use the topology file and --events of the run that printed it",
        )
    finished: list[Schedule] = []
    with _terminated_as_interrupt() as stopped:
        try:
            return _campaign(args, run, kinds, err, finished, stopped)
        except (KeyboardInterrupt, _Terminated) as stop:
            broken = sum(len(schedule.outcome.violations) for schedule in finished)
            err.print(
                f"interrupted after {len(finished):,} schedules, {broken:,} violations so far"
            )
            return ExitCode.TERMINATED if isinstance(stop, _Terminated) else ExitCode.INTERRUPTED


def _campaign(
    args: argparse.Namespace,
    run: Chaos,
    kinds: tuple[str, ...],
    err: Console,
    finished: list[Schedule],
    stopped: _Stopped,
) -> ExitCode:
    topology = run.topology
    replay = _replay_command(args, kinds)
    out = make_console()
    out.on_broken_pipe = _stop_writing  # type: ignore[method-assign]
    if not args.json:
        out.print(
            f"chaos: {escape(topology.name)}, {run_events(run):,} events a schedule, faults "
            f"{', '.join(kinds)}"
            + ("; every node in this process, over a simulated network" if topology.nodes else "")
        )
    with _progress(err, args) as progress:
        task = progress.add_task("schedules", total=1 if args.replay else args.schedules)

        def done(schedule: Schedule) -> None:
            finished.append(schedule)
            progress.advance(task)
            if not args.json and (schedule.outcome.violations or args.replay is not None):
                _print_schedule(out, schedule, replay)
            stopped.check()

        campaign = run_campaign(
            run,
            seed=args.seed,
            schedules=args.schedules,
            kinds=kinds,
            keep_going=args.keep_going,
            replay=args.replay,
            on_schedule=done,
            check=stopped.check,
        )
    try:
        if args.json:
            print(json.dumps(_as_json(campaign, replay, args.replay is not None)), flush=True)
        else:
            _print_summary(out, campaign)
            sys.stdout.flush()
    except BrokenPipeError:  # read by something that stopped reading (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return ExitCode.FAILED if campaign.violations else ExitCode.OK


def _stop_writing() -> None:
    # What reads the output stopped reading (| head): the campaign ends as it would have,
    # with its exit code, writing nothing more (rich would exit with 1 at once).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Terminated(BaseException):
    """SIGTERM came: the campaign stops after the schedule under way."""


@attrs.define
class _Stopped:
    """Whether SIGTERM or Ctrl-C came."""

    terminated: bool = False
    interrupted: bool = False

    def check(self) -> None:
        """Stop here if SIGTERM or Ctrl-C came.

        Raises:
            _Terminated: SIGTERM came.
            KeyboardInterrupt: Ctrl-C came.
        """
        if self.terminated:
            raise _Terminated
        if self.interrupted:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[_Stopped]:
    # SIGTERM and a first Ctrl-C only note that they came: the campaign stops after the run
    # under way, at a point of its own, and temporary folders are removed on the way out. A
    # KeyboardInterrupt raised by the default handler could land anywhere: in a finalizer,
    # where it is lost, or between taking a lock of the progress display and the 'with'
    # that releases it, which then waited for ever. A second Ctrl-C stops at once.
    stopped = _Stopped()

    def stop(signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            stopped.interrupted = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
        else:
            stopped.terminated = True

    before = signal.signal(signal.SIGTERM, stop)
    before_int = signal.signal(signal.SIGINT, stop)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)


def run_events(run: Chaos) -> int:
    """Events of each schedule."""
    if run.events is not None:
        return run.events
    return sum(spec.total_events for spec in run.topology.producers.values())


def _replay_command(args: argparse.Namespace, kinds: tuple[str, ...]) -> str:
    words = ["ringflow", "chaos", str(args.topology)]
    if args.events is not None:
        words += ["--events", str(args.events)]
    words += ["--faults", ",".join(kinds), "--replay"]
    return shlex.join(words)


def _progress(err: Console, args: argparse.Namespace) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=args.json or args.replay is not None,
        transient=True,
    )


def _print_schedule(console: Console, schedule: Schedule, replay: str) -> None:
    outcome = schedule.outcome
    for violation in outcome.violations:
        console.print(
            f"[red]schedule {outcome.seed} broke {violation.invariant}:[/red] "
            f"{escape(violation.message)}"
        )
    if not outcome.violations:
        console.print(f"schedule {outcome.seed}: every invariant held")
    console.print("  faults:" if outcome.trace else "  no fault struck")
    for fired in outcome.trace:
        console.print(f"    {escape(fired.describe())}")
    console.print(f"  trace digest: {outcome.trace_digest}")
    console.print(f"  replay: {escape(replay)} {outcome.seed}")


def _print_summary(console: Console, campaign: Campaign) -> None:
    table = Table(show_header=False, title="chaos", title_justify="left")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("schedules", f"{len(campaign.schedules):,}")
    for kind, count in campaign.faults.items():
        table.add_row(f"faults: {kind}", f"{count:,}")
    table.add_row("violations", f"{len(campaign.violations):,}")
    table.add_row("simulated time", f"{campaign.sim_seconds:,.1f} s")
    table.add_row("wall time", f"{campaign.wall_seconds:,.1f} s")
    console.print(table)
    if not campaign.violations:
        console.print(
            f"every schedule reproduced the fault-free digest {campaign.reference.digest}"
        )


def _as_json(campaign: Campaign, replay: str, replaying: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schedules": len(campaign.schedules),
        "seeds": [schedule.outcome.seed for schedule in campaign.schedules],
        "violations": [
            {
                "seed": v.seed,
                "invariant": v.invariant,
                "message": v.message,
                "replay": f"{replay} {v.seed}",
            }
            for v in campaign.violations
        ],
        "faults": campaign.faults,
        "reference_digest": campaign.reference.digest,
        "sim_seconds": round(campaign.sim_seconds, 6),
        "wall_seconds": round(campaign.wall_seconds, 3),
    }
    if replaying:
        (schedule,) = campaign.schedules
        data["trace"] = [fired.describe() for fired in schedule.outcome.trace]
        data["trace_digest"] = schedule.outcome.trace_digest
    return data


CHAOS = Command(
    name="chaos",
    help="run a topology under seeded fault schedules and check every guarantee",
    description=(
        "Run the topology many times in this process on a virtual clock (every node of a "
        "split topology too, over a simulated network), each time with faults drawn from "
        "the schedule's own seed (actors crashing, a process crashing and restarting from "
        "its checkpoints, checkpoint writes torn or refused by a full disk, a consumer "
        "slowed down, the logger's Redis away, and between nodes connections dropped, "
        "delayed or partitioned), and check after each that the aggregates equal those of "
        "the fault-free run, that no record was lost or reordered, that no ring outgrew its "
        "capacity, that memory stayed bounded, that the log holds every entry once and "
        "that the run finished. A schedule that breaks one is printed with its faults and "
        "the command that replays it exactly. Exit code: 0 when every schedule held, 1 "
        "when one broke an invariant, 2 for a bad file or argument, 130 on Ctrl-C, 143 on "
        "SIGTERM."
    ),
    options=(
        topology_file(help="the topology file"),
        option(
            "--schedules",
            type=schedules,
            default=100,
            help="how many schedules to run (default: %(default)s)",
        ),
        option(
            "--seed",
            type=non_negative,
            default=0,
            help="the seed the schedules' seeds are drawn from (default: %(default)s)",
        ),
        option(
            "--events",
            type=schedule_events,
            default=DEFAULT_EVENTS,
            help="events of each schedule (default: %(default)s)",
        ),
        option(
            "--faults",
            metavar="KIND,...",
            help=(
                f"the fault kinds to inject (default: {','.join(WHOLE_KINDS)}; for a "
                f"topology with nodes also {','.join(NETWORK_KINDS)}; with sinks also "
                f"{','.join(SINK_KINDS)})"
            ),
        ),
        option(
            "--replay",
            type=non_negative,
            metavar="SEED",
            help="run only this schedule (with the --events and --faults it was printed with)",
        ),
        flag("--json", "print one JSON object instead of the table"),
        flag("--keep-going", "run every schedule even after one broke an invariant"),
    ),
    handler=chaos,
)
"""The ``chaos`` command."""
