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
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import redis.exceptions as redis_errors
import trio
import trio.testing

from actors import CATEGORIES, RedisLogger, counters_key, stream_key
from topology import (
    CheckpointSettings,
    CheckpointSpec,
    Pipeline,
    Placement,
    Registry,
    Topology,
)

from ..redis_logging import attach_logger
from ..report import Report
from ..run import REGISTRY, Run
from .faults import Fault
from .inject import FaultBox, FaultyStore, Fired, faulty_registry
from .memory import held_records, memory_bound
from .network import SimNetwork
from .redis import SimRedis, execute_simulated
from .sinks import SimSystem, recovery_time, retrying_for_ever, sink_kinds, with_chaos_sinks

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
    ``memory``, ``liveness``."""
    message: str


@attrs.frozen
class Memory:
    """The most records one process held at once, and what it may hold."""

    node: str
    """The node (``process`` when the topology runs whole)."""
    peak: int
    """The most records it held in its rings and kept for resending, sampled."""
    bound: int | None
    """What its topics' capacities allow: the capacity of every partition it holds, and of
    every partition its producers send to on other nodes (what they keep until it is
    durable there); None when a topic is dynamic."""


@attrs.frozen
class Logged:
    """What a process's Redis log holds at the end of a schedule, by category."""

    node: str
    stored: dict[str, int]
    """Entries in each stream."""
    counted: dict[str, int]
    """Entries the logger's counters say it wrote."""
    unlogged: int
    """Entries the last process had not written when it ended (after its final flush)."""


@attrs.frozen
class Outcome:
    """What one schedule did."""

    seed: int
    """The schedule's seed."""
    trace: tuple[Fired, ...]
    """The faults that struck, in order."""
    violations: tuple[Violation, ...]
    sim_seconds: float
    """Simulated seconds from the start to the end of the run (of its last node)."""
    digests: dict[str, str | None]
    """The aggregates' digest of each node's final report (``process`` when whole; None
    for a node that runs no consumer); missing for a node that did not finish."""
    status: str
    """How the run ended: ``completed``, or the first node's status that was not."""
    memory: tuple[Memory, ...] = ()
    logs: tuple[Logged, ...] = ()
    errors: dict[str, str] = attrs.field(factory=dict)
    """By node, the error a process stopped with instead of ending with a report."""
    delivered: dict[str, int] = attrs.field(factory=dict)
    """By kind of sink, the records its system took (each once)."""

    @property
    def digest(self) -> str | None:
        """The aggregates' digest: of the one node with aggregates, or of them all."""
        found = {node: d for node, d in self.digests.items() if d is not None}
        if len(found) <= 1:
            return next(iter(found.values()), None)
        text = json.dumps(found, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

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


@attrs.define(eq=False)
class Life:
    """One process of a schedule (the whole topology's, or one node's)."""

    node: str
    scope: trio.CancelScope | None = None
    """Its cancel scope while it runs; None while it is down or once it finished."""
    pipeline: Pipeline | None = None
    """The pipeline it runs now."""
    crashed: Fault | None = None
    """The ``node_crash`` that struck it, until it is started again."""
    peak: int = 0
    bound: int | None = 0
    unlogged: int = 0
    """Log entries its last life left unwritten."""
    error: str | None = None
    """The error it stopped with, when it did (rather than end with a report)."""


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
    sample_every: float = 0.01
    """Simulated seconds between samples of what each process holds in memory."""
    linger: float | None = None
    """The longest a producer lingers (None: as the file says); seeds stay the file's."""

    @classmethod
    def of(cls, topology: Topology, events: int | None) -> Chaos:
        """The chaos run of ``topology``; checkpoints always on, as with ``--state``.

        Without a ``checkpoint`` section, the fault-free run writes only a final epoch (but
        nodes write them as ``ringflow node --state`` does: they show other nodes only what
        an epoch holds).
        """
        spec = topology.checkpoint or CheckpointSpec(every=None)
        if topology.nodes and topology.checkpoint is None:
            spec = CheckpointSpec()
        return cls(topology, events, spec)

    def paced(self, horizon: float) -> Chaos:
        """Writing :data:`EPOCHS_PER_RUN` epochs over ``horizon`` simulated seconds, unless
        the file says when to write them; sampling memory :data:`SAMPLES_PER_RUN` times; no
        linger longer than an epoch's share (a short run could be one batch, and a fault would
        always strike before anything flowed; batching never changes the digest)."""
        if horizon <= 0:
            return self
        paced = attrs.evolve(
            self, sample_every=horizon / SAMPLES_PER_RUN, linger=horizon / EPOCHS_PER_RUN
        )
        if self.topology.checkpoint is not None:
            return paced
        return attrs.evolve(paced, checkpoint=CheckpointSpec(every=horizon / EPOCHS_PER_RUN))

    @property
    def nodes(self) -> tuple[str, ...]:
        """The processes a schedule runs: every node, or ``process`` for a whole topology."""
        return tuple(self.topology.nodes) or (WHOLE,)

    @property
    def slack(self) -> float:
        """Simulated seconds a schedule may take, beyond the fault-free run's length, after
        its last fault healed: :data:`LIVENESS_SLACK`, and for a topology with nodes the
        gateways' ``connect_timeout`` too (a node whose work is done waits that long for a
        peer that may not have had its last answer)."""
        slack = LIVENESS_SLACK + recovery_time(self.topology, self.sinks)
        if self.topology.nodes:
            return slack + self.topology.gateway.connect_timeout
        return slack

    @property
    def sinks(self) -> dict[str, str]:
        """By consumer whose processor is a sink, the sink's kind: under chaos, it writes to
        a simulated system (see :mod:`sim.chaos.sinks`)."""
        return sink_kinds(self.topology, self.registry)

    @property
    def running_topology(self) -> Topology:
        """The topology as schedules run it: the file's, with lingers capped, and sinks
        retrying until their system is back."""
        topology = retrying_for_ever(self.topology, self.sinks)
        if self.linger is None:
            return topology
        producers = {
            name: attrs.evolve(producer, linger=min(producer.linger, self.linger))
            for name, producer in topology.producers.items()
        }
        return attrs.evolve(topology, producers=producers)

    @property
    def fingerprint(self) -> str:
        """What identifies the run (the topology, its seed, the events)."""
        return Pipeline.build(self.topology, self.registry, events=self.events).fingerprint

    def run(
        self, seed: int, plan: tuple[Fault, ...], deadline: float = math.inf
    ) -> tuple[Outcome, dict[str, Report]]:
        """Run the schedule of ``seed`` with ``plan``, stopping it at simulated ``deadline``;
        return its outcome (unchecked: its violations are empty) and each node's report
        (``process`` when whole; a node that did not finish by the deadline has none)."""
        folder = Path(tempfile.mkdtemp(prefix="ringflow-chaos-"))
        box = FaultBox(list(plan))
        lives = {node: Life(node) for node in self.nodes}
        reports: dict[str, Report] = {}
        redis = SimRedis(box)
        system = SimSystem(rng=random.Random(f"sinks/{seed}"))
        try:
            clock = trio.testing.MockClock(autojump_threshold=0)
            with _deterministic_scheduling(seed):
                ended = trio.run(
                    self._schedule,
                    folder,
                    box,
                    redis,
                    system,
                    lives,
                    reports,
                    deadline,
                    clock=clock,
                )
        except BaseExceptionGroup as group:
            # Ctrl-C reaches one of the schedule's tasks, beside others: it leaves as itself.
            interrupts, _ = group.split(KeyboardInterrupt)
            if interrupts is None:
                raise
            raise KeyboardInterrupt from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        statuses = [
            f"{node}: {reports[node].status}" if node in reports else f"{node}: unfinished"
            for node in self.nodes
            if node not in reports or reports[node].status != "completed"
        ]
        outcome = Outcome(
            seed=seed,
            trace=tuple(box.trace),
            violations=(),
            sim_seconds=ended,
            digests={node: report.digest for node, report in reports.items()},
            status=statuses[0] if statuses else "completed",
            memory=tuple(Memory(life.node, life.peak, life.bound) for life in lives.values()),
            logs=tuple(_logged(redis, life) for life in lives.values()),
            errors={life.node: life.error for life in lives.values() if life.error is not None},
            delivered={sink: len(taken) for sink, taken in sorted(system.taken.items())},
        )
        return outcome, reports

    async def _schedule(
        self,
        folder: Path,
        box: FaultBox,
        redis: SimRedis,
        system: SimSystem,
        lives: dict[str, Life],
        reports: dict[str, Report],
        deadline: float,
    ) -> float:
        network = SimNetwork() if self.topology.nodes else None
        ended = 0.0
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as outside:
                outside.start_soon(_strike, box, network, lives)
                outside.start_soon(_sample, lives, self.sample_every)
                async with trio.open_nursery() as processes:
                    for life in lives.values():
                        processes.start_soon(
                            self._lives,
                            life,
                            folder / life.node,
                            box,
                            network,
                            redis,
                            system,
                            reports,
                        )
                ended = trio.current_time()
                outside.cancel_scope.cancel()
        return ended if len(reports) == len(lives) else trio.current_time()

    async def _lives(
        self,
        life: Life,
        folder: Path,
        box: FaultBox,
        network: SimNetwork | None,
        redis: SimRedis,
        system: SimSystem,
        reports: dict[str, Report],
    ) -> None:
        sinks = self.sinks.values()
        registry = with_chaos_sinks(faulty_registry(self.registry, box), sinks, box, system)
        logger: RedisLogger | None = None
        placement = None
        if network is not None:
            placement = Placement(life.node, network=network.view(life.node))

        def started(pipeline: Pipeline) -> None:
            box.attach(pipeline)
            life.pipeline = pipeline
            life.bound = memory_bound(pipeline)
            if logger is not None:
                attach_logger(pipeline, logger)

        while True:
            pipeline = Pipeline.build(
                self.running_topology, registry, events=self.events, placement=placement
            )
            store = FaultyStore.open(
                folder, pipeline.fingerprint, keep=self.checkpoint.keep, name=self.topology.name
            )
            assert isinstance(store, FaultyStore)
            store.box = box
            store.node = None if network is None else life.node

            def rebuild(loaded: Any, fresh: Pipeline = pipeline) -> Pipeline:
                return Pipeline.build(
                    fresh.topology,
                    fresh.registry,
                    events=self.events,
                    restore=loaded,
                    placement=fresh.placement,
                )

            try:
                pipeline = store.load_intact(rebuild) or pipeline
                settings = CheckpointSettings(
                    store,
                    every=self.checkpoint.every,
                    every_records=self.checkpoint.every_records,
                    in_thread=False,
                )
                run = Run(pipeline, checkpoints=settings, on_pipeline=started)
                try:
                    with trio.CancelScope() as life.scope:
                        logger = await _open_logger(redis, life.node, pipeline)
                        async with trio.open_nursery() as logging:
                            if logger is not None:
                                logging.start_soon(logger.run)
                            report = await run.main()
                            logging.cancel_scope.cancel()
                        if logger is not None:  # everything, once Redis is back
                            await logger.flush(status=report.status, digest=report.digest or "")
                            life.unlogged = logger.pending
                except Exception as exc:
                    # What the tasks of a process that crashed raised as they were cancelled
                    # (a connection the network failed under them) dies with the process.
                    # Otherwise the process stopped with an error of its own: it is not live.
                    if life.crashed is None:
                        life.error = _describe(exc)
                        return
            finally:
                life.scope = life.pipeline = None
                store.close()
            if life.crashed is None:
                reports[life.node] = report
                return
            downtime, life.crashed = life.crashed.lasts, None
            await trio.sleep(downtime)  # until it is started again: everything in memory is gone


WHOLE = "process"
"""The name of the one process of a topology run whole."""

OUTSIDE_KINDS = ("node_crash", "net_drop", "net_delay", "net_partition")
"""Faults struck from outside the actors, at their exact moment."""

SAMPLES_PER_RUN = 100
"""Samples of each process's memory over the fault-free run's length."""


def _describe(exc: BaseException) -> str:
    # The first error of a group, which says what happened.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:500]


LOG_MAXLEN = 10**9
"""Chaos keeps every log entry (no trimming): each one is checked."""


async def _open_logger(redis: SimRedis, node: str, pipeline: Pipeline) -> RedisLogger | None:
    # A process's logger, as ringflow's: one run id, continued by every restart; logging off
    # for a process that finds Redis unreachable as it starts.
    logger = RedisLogger(
        redis,
        f"chaos-{node}",
        maxlen=LOG_MAXLEN,
        execute=execute_simulated,
        sleep=trio.sleep,
    )
    try:
        await logger.describe_run(topology=pipeline.topology.name, seed=pipeline.seed)
    except redis_errors.RedisError:
        return None
    return logger


def _logged(redis: SimRedis, life: Life) -> Logged:
    run_id = f"chaos-{life.node}"
    counters = redis.hashes.get(counters_key(run_id), {})
    return Logged(
        life.node,
        stored={c: len(redis.streams.get(stream_key(run_id, c), {})) for c in CATEGORIES},
        counted={c: int(counters.get(f"{c}:entries", 0)) for c in CATEGORIES},
        unlogged=life.unlogged,
    )


async def _strike(box: FaultBox, network: SimNetwork | None, lives: dict[str, Life]) -> None:
    # Strike the faults from outside the actors, each at its moment.
    outside = sorted(
        (fault for fault in box.pending if fault.kind in OUTSIDE_KINDS),
        key=lambda fault: (fault.at, fault.kind, fault.target),
    )
    for fault in outside:
        await trio.sleep_until(fault.at)
        if fault.kind == "node_crash":
            life = lives[fault.target.removeprefix("node:")] if network else lives[WHOLE]
            if life.scope is None:
                continue  # down already, or finished: there is nothing to crash
            box.fire(fault)
            life.crashed = fault
            if network is not None:
                network.crash(life.node)  # its connections fail before its tasks hear of it
            life.scope.cancel()
            continue
        assert network is not None
        a, b = fault.target.removeprefix("nodes:").split("|")
        box.fire(fault)
        if fault.kind == "net_drop":
            network.drop(a, b)
        elif fault.kind == "net_delay":
            network.delay(a, b, fault.delay, fault.at + fault.lasts)
        else:
            network.partition(a, b, fault.at + fault.lasts)


async def _sample(lives: dict[str, Life], every: float) -> None:
    # What each process holds, now and then.
    while True:
        await trio.sleep(every)
        for life in lives.values():
            if life.pipeline is not None:
                life.peak = max(life.peak, held_records(life.pipeline))


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
