"""Running one chaos schedule: the real pipeline on a virtual clock, its faults, its checks.

A schedule is a whole run of the topology in this process, under ``trio.testing.MockClock``
with its own seed for Trio's scheduler, so that the same seed gives the same interleaving,
the same faults at the same moments and the same outcome. It runs exactly as ``ringflow run
--state`` does (the same :class:`~sim.run.Run`: rollbacks to the newest epoch when an actor
crashes), with a checkpoint store in a temporary folder. A ``node_crash`` cancels the whole
process at its moment, with no cleanup and no final epoch; after its delay a new pipeline is
built from nothing and resumed from the store, as a restarted process would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from topology import CheckpointSettings, CheckpointSpec, Pipeline, Registry, Topology

from ..report import Report
from ..run import REGISTRY, Run
from .faults import Fault
from .inject import FaultBox, FaultyStore, Fired, faulty_registry

LIVENESS_SLACK = 10.0
"""Simulated seconds a run may take, beyond what the fault-free run took, after the last
fault has healed."""

EPOCHS_PER_RUN = 8
"""Epochs a schedule writes over the fault-free run's length when the file has no
``checkpoint`` section: enough that crashes land between them, few enough to stay fast."""


@attrs.frozen
class Violation:
    """An invariant a schedule broke."""

    seed: int
    """The schedule's seed."""
    invariant: str
    """``digest``, ``no_loss``, ``per_key_order``, ``totals_match``, ``ring_depth``,
    ``liveness``."""
    message: str


@attrs.frozen
class Outcome:
    """What one schedule did."""

    seed: int
    """The schedule's seed."""
    trace: tuple[Fired, ...]
    """The faults that struck, in order."""
    violations: tuple[Violation, ...]
    sim_seconds: float
    """Simulated seconds from the start to the end of the run."""
    digest: str | None
    """The aggregates' digest of the run's final report."""
    status: str
    """How the run ended: ``completed`` or ``failed``."""

    @property
    def trace_digest(self) -> str:
        """A hash of the trace and the outcome: a replay gives the same one."""
        data = {
            "trace": [[fired.at, *attrs.astuple(fired.fault)] for fired in self.trace],
            "violations": [attrs.astuple(v) for v in self.violations],
            "digest": self.digest,
            "status": self.status,
            "sim_seconds": round(self.sim_seconds, 6),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@attrs.frozen
class Chaos:
    """What every schedule of a chaos run shares: the topology and how it is run."""

    topology: Topology
    events: int | None
    """Replaces the file's total number of events (None keeps it)."""
    checkpoint: CheckpointSpec
    """When epochs are written: the file's section; else only a final one until
    :meth:`paced` knows how long a run takes."""
    registry: Registry = REGISTRY
    """The workloads and processors the topology may name."""

    @classmethod
    def of(cls, topology: Topology, events: int | None) -> Chaos:
        """The chaos run of ``topology``; checkpoints always on, as with ``--state``."""
        spec = topology.checkpoint or CheckpointSpec(every=None)
        return cls(topology, events, spec)

    def paced(self, horizon: float) -> Chaos:
        """Writing :data:`EPOCHS_PER_RUN` epochs over ``horizon`` simulated seconds, unless
        the file says when to write them."""
        if self.topology.checkpoint is not None or horizon <= 0:
            return self
        return attrs.evolve(self, checkpoint=CheckpointSpec(every=horizon / EPOCHS_PER_RUN))

    @property
    def fingerprint(self) -> str:
        """What identifies the run (the topology, its seed, the events)."""
        return Pipeline.build(self.topology, self.registry, events=self.events).fingerprint

    def run(self, seed: int, plan: tuple[Fault, ...]) -> tuple[Outcome, Report]:
        """Run the schedule of ``seed`` with ``plan``; return its outcome (unchecked: its
        violations are empty) and its final report."""
        folder = Path(tempfile.mkdtemp(prefix="ringflow-chaos-"))
        box = FaultBox(list(plan))
        try:
            clock = trio.testing.MockClock(autojump_threshold=0)
            with _deterministic_scheduling(seed):
                report, ended = trio.run(self._lives, folder, box, clock=clock)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        outcome = Outcome(
            seed=seed,
            trace=tuple(box.trace),
            violations=(),
            sim_seconds=ended,
            digest=report.digest,
            status=report.status,
        )
        return outcome, report

    async def _lives(self, folder: Path, box: FaultBox) -> tuple[Report, float]:
        registry = faulty_registry(self.registry, box)
        while True:
            pipeline = Pipeline.build(self.topology, registry, events=self.events)
            store = FaultyStore.open(
                folder, pipeline.fingerprint, keep=self.checkpoint.keep, name=self.topology.name
            )
            assert isinstance(store, FaultyStore)
            store.box = box

            def rebuild(loaded: Any, fresh: Pipeline = pipeline) -> Pipeline:
                return Pipeline.build(
                    fresh.topology, fresh.registry, events=self.events, restore=loaded
                )

            try:
                pipeline = store.load_intact(rebuild) or pipeline
                settings = CheckpointSettings(
                    store,
                    every=self.checkpoint.every,
                    every_records=self.checkpoint.every_records,
                    in_thread=False,
                )
                crash = box.next_of("node_crash")
                with trio.move_on_at(math.inf if crash is None else crash.at) as life:
                    run = Run(pipeline, checkpoints=settings, on_pipeline=box.attach)
                    report = await run.main()
            finally:
                store.close()
            if not life.cancelled_caught:
                return report, trio.current_time()
            assert crash is not None
            box.fire(crash)  # the process is gone: everything in memory with it
            await trio.sleep(crash.lasts)  # until it is started again


@contextlib.contextmanager
def _deterministic_scheduling(seed: int) -> Iterator[None]:
    # Trio runs the tasks that became runnable together in an order that depends on memory
    # addresses (deadlines that expire at the same moment are cancelled in id order) and on a
    # random generator of its own. With the switch Hypothesis uses, it sorts them by when the
    # tasks were made and shuffles them with that generator, which we seed: the interleaving
    # of a schedule is then the same on every replay, in any process.
    run = trio._core._run
    before = run._ALLOW_DETERMINISTIC_SCHEDULING
    run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    run._r.seed(seed)
    try:
        yield
    finally:
        run._ALLOW_DETERMINISTIC_SCHEDULING = before  # type: ignore[misc]


def check(
    outcome: Outcome,
    report: Report,
    reference: Outcome,
    plan: tuple[Fault, ...],
) -> tuple[Violation, ...]:
    """Check a schedule's run against the invariants; return what it broke."""
    seed = outcome.seed
    found = []
    if report.status != "completed":
        found.append(Violation(seed, "liveness", f"the run {report.status}: {report.error}"))
    else:
        if outcome.digest != reference.digest:
            found.append(
                Violation(
                    seed,
                    "digest",
                    f"aggregates digest {outcome.digest} differs from the fault-free run's "
                    f"{reference.digest}",
                )
            )
        for name, result in report.expect.items():
            if not result.ok:
                found.append(Violation(seed, name, result.detail))
        healed = max((f.at + f.lasts for f in plan), default=0.0)
        bound = healed + reference.sim_seconds + LIVENESS_SLACK
        if outcome.sim_seconds > bound:
            found.append(
                Violation(
                    seed,
                    "liveness",
                    f"the run ended at t={outcome.sim_seconds:.3f} s, later than "
                    f"{bound:.3f} s (the last fault healed at {healed:.3f} s)",
                )
            )
    for partition in report.partitions:
        if partition.capacity is not None and partition.peak_depth > partition.capacity:
            found.append(
                Violation(
                    seed,
                    "ring_depth",
                    f"{partition.topic}[{partition.partition}] held {partition.peak_depth:,} "
                    f"records, more than its capacity {partition.capacity:,}",
                )
            )
    return tuple(found)
