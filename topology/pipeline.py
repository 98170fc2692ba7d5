"""The pipeline: a topology built into topics, groups, sources and processors, and run."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import ConsumerGroup, Gateway, RemoteGroup, Topic, open_nursery, open_supervisor

from .checkpoint import CheckpointStore, EpochInfo, Snapshot
from .delivering import SinkDelivery
from .epochs import Barrier, Checkpointer, CheckpointSettings, RunClock, all_of
from .errors import CheckpointError, TopologyError
from .figures import PipelineStatistics
from .files import FileSource
from .forwarding import Output
from .node import Node
from .plan import (
    Placement,
    ProducerPlan,
    agreement,
    api_nodes,
    check_placement,
    event_types,
    fingerprint,
    make_plans,
    producer_id,
    value_type,
)
from .processing import consume, make_consumers
from .registry import Processor, Registry
from .schema import Topology
from .serving import INTAKE, HttpIntake, IntakeSettings, intake_settings, make_intake, open_sinks
from .snapshot import (
    PartitionContents,
    ProcessorState,
    Stateful,
    TopicSummary,
    capture_parts,
    restore_parts,
)
from .source import WorkloadSource
from .tally import ConsumerTally, Expectation, TopicTally, check_expectations
from .topics import durable_reads, exposing, hold_back, make_topics


@attrs.define(eq=False)
class Pipeline:
    """A topology built into topics, consumer groups and processors, ready to run.

    Make one with :meth:`build` (optionally from a checkpoint), run it with :meth:`run`; read
    what happened from :meth:`statistics`, the topics' statistics, :attr:`tallies`,
    :attr:`produced` and :meth:`expectations`. :meth:`checkpoint` asks for an epoch.
    """

    topology: Topology
    registry: Registry
    seed: int
    plans: list[ProducerPlan]
    topics: dict[str, Topic]
    """The topics whose rings live in this process (all of them unless split into nodes)."""
    groups: dict[tuple[str, str], ConsumerGroup | RemoteGroup]
    """By (consumer, topic), the group each consumer running here joins."""
    processors: dict[str, Processor]
    tallies: dict[str, ConsumerTally]
    deliveries: dict[str, SinkDelivery]  # by consumer, how its sink is handed records
    produced: dict[str, TopicTally]
    outputs: dict[str, Output]  # by consumer, the topic its processor writes to
    fingerprint: str
    value_types: dict[str, tuple[type, ...]]
    events_override: int | None = None
    restored_from: EpochInfo | None = None
    finished_at: float | None = None
    wall_started: float | None = None
    wall_finished: float | None = None
    epochs: list[EpochInfo] = attrs.field(factory=list)
    on_epoch: Callable[[EpochInfo], None] | None = None
    """Called after every epoch is written (for logging)."""
    pace: Callable[[str, int], Awaitable[None]] | None = None
    """Awaited after every batch a consumer member processes, with the member's name
    (``CONSUMER-INSTANCE``) and the batch's number of records: a test's way to slow a member
    down."""
    on_epoch_skipped: Callable[[CheckpointError], None] | None = None
    """Called when a periodic epoch could not be written and was skipped (for logging)."""
    before_epoch_write: Callable[[], Callable[[], Awaitable[None]] | None] | None = None
    """Called as an epoch is captured; what it returns is awaited before it is written."""
    placement: Placement | None = None
    """The node of a split topology this pipeline runs as; None runs the whole topology."""
    node: Node | None = None
    """The wiring of that node; None when whole."""
    sources: dict[tuple[str, int], WorkloadSource] = attrs.field(factory=dict)
    """By (producer, instance), the producer instances that run here."""
    intake: HttpIntake | None = None
    """The HTTP API taking clients' events, when the topology has an ``http`` section: the
    pipeline then runs until :meth:`stop`, on a clock that reads Unix time."""
    serving: IntakeSettings | None = None
    """Where the HTTP API listens (by default, where the file says)."""
    state_folder: Path | None = None
    """The run's state folder, where sinks keep embedded stores."""
    _clock: RunClock = attrs.field(factory=RunClock)
    _barrier: Barrier = attrs.field(factory=Barrier)
    _checkpointer: Checkpointer = attrs.field(init=False)
    _checkpointing: bool = False
    _writing_one: bool = False
    _durable: list[Topic] = attrs.field(factory=list)
    """Topics read only once an epoch holds their records (see ``reads_durable``)."""
    _torn: bool = False
    """An actor crashed: its state may be half changed, and no epoch may capture it."""

    def __attrs_post_init__(self) -> None:
        self._checkpointer = Checkpointer(
            self._barrier,
            self._capture,
            self._record,
            lambda: self.events_produced,
            on_skipped=self._skipped,
            before_write=self._before_write,
        )

    @classmethod
    def build(
        cls,
        topology: Topology,
        registry: Registry,
        *,
        seed: int | None = None,
        events: int | None = None,
        restore: tuple[EpochInfo, dict[tuple[str, str], bytes]] | None = None,
        placement: Placement | None = None,
    ) -> Pipeline:
        """Build the pipeline of ``topology``, fresh or from a checkpoint.

        Args:
            topology: A validated topology.
            registry: The workloads and processors it may name.
            seed: Replaces the topology's seed.
            events: Replaces the total number of events, split over producers in proportion
                to what the file gives them.
            restore: An epoch and its parts (from :meth:`CheckpointStore.load`) to resume.
            placement: Build only the part of the topology that runs on this node.

        Raises:
            TopologyError: The topology names unknown workloads or processors, or their
                params are wrong, or the placement names an unknown node.
            DamagedEpoch: A part of the epoch cannot be restored.
        """
        problems = registry.check(topology)
        if placement is not None:
            problems.extend(check_placement(topology, placement))
        if problems:
            raise TopologyError(problems, topology.name)
        run_seed = topology.seed if seed is None else seed
        plans = make_plans(topology, events)
        types = event_types(topology, registry)
        node = None
        if placement is not None:
            node = Node(topology, placement, agreement(topology, run_seed, plans, placement.node))
        parts = {} if restore is None else restore[1]
        topics = make_topics(topology, types, None if node is None else node.spec, parts)
        sources = len(plans) + len(api_nodes(topology))  # and the HTTP intakes
        produced = {name: TopicTally() for name in topology.topics}
        consumers = make_consumers(
            topology,
            registry,
            topics,
            sources,
            lambda t: value_type(types[t]),
            node,
            run_seed,
            produced,
        )
        pipeline = cls(
            topology=topology,
            registry=registry,
            seed=run_seed,
            plans=plans,
            topics=topics,
            groups=consumers.groups,
            processors=consumers.processors,
            tallies=consumers.tallies,
            deliveries=consumers.deliveries,
            produced=produced,
            outputs=consumers.outputs,
            fingerprint=fingerprint(
                topology, run_seed, plans, getattr(placement, "node", None), *consumers.settable
            ),
            value_types=types,
            events_override=events,
            placement=placement,
            node=node,
            clock=RunClock(wall=topology.http is not None),
        )
        pipeline.intake = make_intake(topology, registry, topics, pipeline, node)
        if node is not None:
            node.open_gateway(
                topics, consumers.hosted, {n: pipeline.value_type(n) for n in topics}, TopicSummary
            )
            # Finished producers first: the gateway then expects only the others.
            gateway = {key: data for key, data in parts.items() if key[0] == "gateway"}
            restore_parts(node.states(), gateway)
            node.expect_producers(plans, topics)
        pipeline._make_sources()
        if restore is not None:
            pipeline.restored_from = restore[0]
            states = pipeline._states()
            remote = {
                key: pipeline.value_type(key[1].rsplit("/", 1)[1])
                for key in states
                if key[0] == "remote"
            }
            restore_parts(
                {k: s for k, s in states.items() if k[0] not in ("partition", "gateway")},
                parts,
                remote,
            )
        return pipeline

    def _make_sources(self) -> None:
        node = self.node
        for plan in self.local_plans:
            wiring = {} if node is None else node.source_wiring(plan, self.topics, self.value_type)
            wiring.update(
                barrier=self._barrier,
                produced=self.produced,
                local_topics=self.topics,
                after_chunk=self._checkpointer.produced,
                value_type=self.value_type,
            )
            spec = self.topology.producers[plan.producer]
            source: WorkloadSource
            if spec.files is not None:
                assert spec.topic is not None
                source = FileSource.of(
                    plan, spec.files, spec.topic, spec.max_batch, spec.linger, **wiring
                )
            else:
                source = WorkloadSource.make(
                    plan, self.topology, self.registry, self.seed, **wiring
                )
            self.sources[plan.producer, plan.instance] = source

    # -- what runs here --------------------------------------------------------------------

    @property
    def local_plans(self) -> list[ProducerPlan]:
        """The producer instances that run in this process."""
        if self.node is None:
            return self.plans
        here = self.node.spec
        return [plan for plan in self.plans if plan.producer in here.producers]

    @property
    def gateway(self) -> Gateway | None:
        """The node's gateway: serves its topics to other nodes and taps; None when whole."""
        return None if self.node is None else self.node.gateway

    @property
    def remote_members(self) -> set[tuple[str, str, str]]:
        """(group, topic, member) of consumers on other nodes reading this node's topics."""
        return set() if self.node is None else self.node.remote_members

    @property
    def origin(self) -> float:
        """The run's clock at event time 0: events are stamped with seconds since then."""
        return self._clock.origin

    def address_of(self, node: str) -> str:
        """``HOST:PORT`` where ``node``'s gateway is reached (or listens, for this node)."""
        assert self.node is not None
        return self.node.address_of(node)

    def event_time(self) -> float:
        """Seconds of the run's clock since its origin: what events are stamped with."""
        return trio.current_time() - self._clock.origin

    def stop(self) -> None:
        """Stop a served pipeline gracefully: its HTTP API and files producers stop taking
        in, its topics close, consumers drain them, the run ends with a final epoch."""
        if self.intake is not None:
            self.intake.stop()
        for source in self.sources.values():
            getattr(source, "stop", lambda: None)()

    def value_type(self, topic: str) -> Any:
        """The type record values of ``topic`` decode to (a union of the workloads' events)."""
        return value_type(self.value_types[topic])

    # -- figures ---------------------------------------------------------------------------

    @property
    def events_planned(self) -> int:
        """Events all producers running here will make."""
        return sum(plan.events for plan in self.local_plans)

    @property
    def events_produced(self) -> int:
        """Events accepted so far, over all producers and topics (not counting what
        consumers here wrote to topics: the same events again)."""
        written = sum(output.summary().records for output in self.outputs.values())
        return sum(tally.records for tally in self.produced.values()) - written

    @property
    def events_consumed(self) -> int:
        """Records every consumer has processed: the smallest count over consumers."""
        if not self.tallies:
            return 0
        return min(tally.records for tally in self.tallies.values())

    def total_lag(self) -> int:
        """Records accepted but not yet committed, summed over groups and partitions."""
        return sum(sum(group.statistics().lag) for _, group in self.local_groups())

    def local_groups(self) -> list[tuple[str, ConsumerGroup]]:
        """(topic, group) of the consumer groups whose offsets live here, wherever their
        members run."""
        if self.gateway is not None:
            return [(topic, group) for (_, topic), group in self.gateway.groups.items()]
        return [(t, g) for (_, t), g in self.groups.items() if isinstance(g, ConsumerGroup)]

    def statistics(self) -> PipelineStatistics:
        """Return a snapshot of the pipeline's progress."""
        return PipelineStatistics(
            events_planned=self.events_planned,
            events_produced=self.events_produced,
            events_consumed=self.events_consumed,
            lag=self.total_lag(),
            epochs_written=len(self.epochs),
            last_epoch=self.epochs[-1].epoch if self.epochs else None,
            write_seconds=sum(e.write_seconds for e in self.epochs),
            restored_from=None if self.restored_from is None else self.restored_from.epoch,
            final_epoch=self._checkpointer.statistics().final_epoch,
        )

    def expectations(self) -> list[Expectation]:
        """Check the topology's ``expect`` invariants against what happened."""
        return check_expectations(
            self.topology.expect, self.tallies, self.produced, self.processors
        )

    # -- checkpoints -----------------------------------------------------------------------

    def _states(self) -> dict[tuple[str, str], Stateful[Any]]:
        # Everything an epoch keeps, by the (kind, name) of its part.
        states: dict[tuple[str, str], Stateful[Any]] = {
            ("partition", f"{name}/{p.index}"): PartitionContents(p, name, self.value_type(name))
            for name, topic in self.topics.items()
            for p in topic.partitions
        }
        kinds = self.registry.processors
        states.update(
            {
                ("processor", n): ProcessorState(
                    p, kinds[self.topology.consumers[n].processor].state_type
                )
                for n, p in self.processors.items()
            }
        )
        states.update({("consumer", n): tally for n, tally in self.tallies.items()})
        states.update({("topic", n): tally for n, tally in self.produced.items()})
        states.update({("producer", f"{p}/{i}"): s for (p, i), s in self.sources.items()})
        if self.node is not None:
            states.update(self.node.states())
        if self.intake is not None:
            states["intake", "http"] = self.intake
        states["run", "clock"] = self._clock
        return states

    def capture(self, *, final: bool = False) -> Snapshot:
        """Take a consistent snapshot of the whole pipeline, synchronously.

        Consistent means: call it only when every producer is at a safe point (paused by a
        checkpoint request, or finished). Consumers are consistent at any moment, because each
        commits a batch in the same step as it processes it.
        """
        parts = capture_parts(self._states())
        held = sum(
            p.end_offset - p.start_offset for t in self.topics.values() for p in t.partitions
        )
        # The run's simulated time counts from its origin, so it goes on across resumes
        # whatever the clock read when a resumed run started.
        now = self.event_time()
        return Snapshot(now, self.events_produced, held, parts, final)

    def _capture(self, final: bool) -> tuple[Snapshot, Callable[[], None] | None]:
        if self._torn:
            raise CheckpointError("an actor crashed: the run goes back to its newest epoch")
        snapshot = self.capture(final=final)
        node = None if self.node is None else self.node.durable_hook(self.topics)
        intake = None if self.intake is None else self.intake.durable_hook()
        done = [p.captured() for p in self.processors.values() if hasattr(p, "captured")]
        return snapshot, all_of(node, intake, exposing(self._durable), *done)

    def _record(self, info: EpochInfo) -> None:
        self.epochs.append(info)
        if self.on_epoch is not None:
            self.on_epoch(info)

    def _before_write(self) -> Callable[[], Awaitable[None]] | None:
        return None if self.before_epoch_write is None else self.before_epoch_write()

    def _skipped(self, error: CheckpointError) -> None:
        if self.on_epoch_skipped is not None:
            self.on_epoch_skipped(error)

    async def checkpoint(
        self,
        store: CheckpointStore,
        *,
        final: bool = False,
        in_thread: bool = True,
        last: bool = False,
    ) -> EpochInfo:
        """Ask for an epoch and wait until it is written (``last``: the run is stopped
        after it, and its producers make nothing more).

        While the pipeline runs with checkpoints, its checkpoint actor takes it (``store``
        must be the one it writes to); requests made while an epoch is being taken are served
        together by the next one. Otherwise an actor writes this one epoch to ``store``.

        Raises:
            CheckpointError: The epoch could not be written, or the run stopped first.
            ValueError: The running actor writes to another store.
        """
        writing = self._checkpointer.store
        if writing is not None and writing is not store:
            raise ValueError(f"this pipeline writes its epochs to {writing.path}")
        if writing is not None or self._writing_one:  # an actor serves, or is starting to
            return await self._checkpointer.epoch(final=final, last=last)
        self._writing_one = True
        try:
            async with open_nursery() as nursery:
                await nursery.start(self._serve_epochs, store, in_thread)
                info = await self._checkpointer.epoch(final=final, last=last)
                await self._checkpointer.settled()  # requests that came meanwhile too
                nursery.cancel_scope.cancel()
        finally:
            self._writing_one = False
        return info

    async def _serve_epochs(
        self,
        store: CheckpointStore,
        in_thread: bool,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self._checkpointer.serve(store, in_thread=in_thread, task_status=task_status)

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        monitor: Callable[[], None] | None = None,
        checkpoints: CheckpointSettings | None = None,
    ) -> None:
        """Run every producer and consumer until the producers are done and all is consumed.

        Args:
            monitor: Called after every batch a consumer processes (keep it cheap).
            checkpoints: Write epochs while running, and a final one at the end.

        Raises:
            SupervisionError: An actor crashed; the message names it and the error.
            CheckpointError: An epoch could not be written.
        """
        self._clock.start()
        self.wall_started = time.perf_counter()
        self._barrier.start([*self.sources, *([INTAKE] if self.intake is not None else [])])
        if checkpoints is not None and self.node is not None:
            epochs = self._checkpointer
            self.node.hold_back(self.topics.values(), epochs.epoch, epochs.soon)
        elif checkpoints is not None:  # (a node holds back every topic)
            self._durable = durable_reads(self.topology, self.registry, self.topics)
            hold_back(self._durable, self._checkpointer.soon)
        self._checkpointing = checkpoints is not None
        try:
            async with AsyncExitStack() as stack:
                await open_sinks(stack, self)  # and the API's links to other nodes
                async with open_nursery() as serving:
                    if self.intake is not None:
                        durable = self.intake.spec.durable(checkpoints is not None)
                        settings = self.serving or intake_settings(self.topology)
                        ask = self._checkpointer.epoch if durable else None
                        await serving.start(self.intake.serve, settings, ask)
                    await self._run_with_epochs(monitor, checkpoints)
                    serving.cancel_scope.cancel()
        finally:
            self.finished_at = trio.current_time()
            self.wall_finished = time.perf_counter()

    async def _run_with_epochs(
        self, monitor: Callable[[], None] | None, checkpoints: CheckpointSettings | None
    ) -> None:
        async with open_nursery() as epochs:
            if checkpoints is not None:  # the only writer of epochs, until the final one
                await epochs.start(self._serve_epochs, checkpoints.store, checkpoints.in_thread)
            await self._run_actors(monitor, checkpoints)
            if checkpoints is not None:
                # The writer must finish the final epoch even if the run is cancelled
                # meanwhile, but no longer than the final timeout: then it is abandoned.
                epochs.cancel_scope.shield = True
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(checkpoints.final_timeout),
                ):
                    await self._checkpointer.until_written(final=True)
            epochs.cancel_scope.cancel()

    async def _run_actors(
        self, monitor: Callable[[], None] | None, checkpoints: CheckpointSettings | None
    ) -> None:
        async with open_nursery() as network:
            if self.node is not None:
                await network.start(self.node.serve)
            if checkpoints is not None and checkpoints.periodic:
                # The timer runs beside the actors until they are all done: consumers that
                # drain a backlog after the producers finished are held by epochs too.
                network.start_soon(self._supervise_timer, checkpoints)
            await self._supervise(monitor)
            network.cancel_scope.cancel()
        if self.node is not None:
            self.node.gather_summaries((t for _, t in self.groups), self.topics, self.produced)

    async def _supervise_timer(self, checkpoints: CheckpointSettings) -> None:
        # A node's checkpoint actor skips an epoch it crashed in, as one the store refused:
        # rolling the node back would undo what it told other nodes since (a member's
        # leave, a producer's finish), and they may have finished meanwhile. Anything else
        # it raises is an actor's crash, and a whole pipeline's crash is one too.
        skip = self.node is not None
        async with open_supervisor("one_for_one", max_restarts=0) as supervisor:
            supervisor.start_soon(
                "checkpointer",
                functools.partial(self._checkpointer.periodic, checkpoints, skip_crashes=skip),
            )

    def _guarded(self, actor: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        # Until the supervisor has stopped everything, an epoch could capture the state of
        # an actor that crashed half way through a batch (a node's timer runs beside the
        # supervisor): a crash marks the pipeline torn at once.
        async def run() -> None:
            try:
                await actor()
            except Exception:
                self._torn = True
                raise

        return run

    async def _supervise(self, monitor: Callable[[], None] | None) -> None:
        async with open_supervisor("one_for_one", max_restarts=0) as supervisor:
            for (consumer, topic), group in self.groups.items():
                spec = self.topology.consumers[consumer]
                for instance in range(spec.instances):
                    supervisor.start_soon(
                        f"{consumer}-{instance}/{topic}",
                        self._guarded(
                            functools.partial(
                                consume,
                                group,
                                f"{consumer}-{instance}",
                                topic,
                                self.processors[consumer],
                                self.tallies[consumer],
                                max_records=spec.max_records,
                                origin=self.origin,
                                monitor=monitor,
                                epoch=self._checkpointer.until_written
                                if self._checkpointing
                                else None,
                                pace=None
                                if self.pace is None
                                else functools.partial(self.pace, f"{consumer}-{instance}"),
                                delivery=self.deliveries.get(consumer),
                                output=self.outputs.get(consumer),
                            )
                        ),
                    )
            for source in self.sources.values():
                supervisor.start_soon(
                    producer_id(source.plan),
                    self._guarded(functools.partial(source.run, self.origin)),
                )
            for name, output in self.outputs.items():
                if output.link is not None:  # the output's node closes it once all is written
                    supervisor.start_soon(f"{name}/output", output.run)
            if self.intake is not None:
                supervisor.start_soon("http", self.intake.run, self._barrier)
            if self.gateway is not None:
                # The node's work is done when its topics are closed and every group,
                # wherever its members run, has read them to the end.
                supervisor.start_soon(
                    "gateway", self.gateway.wait_drained, frozenset(self.remote_members)
                )
