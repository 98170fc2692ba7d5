"""Sources: the producer instances of a pipeline, each making its workload's events on its
plan's schedule and sending them to its topics.

A source runs as one actor. Between chunks it is at a safe point: it checks the epoch
barrier, and pauses there when an epoch is being taken. A new kind of source (events read
from files, received over HTTP) is a class here with the same duties: count what it sends in
the run's topic tallies, keep the safe points, and capture and restore its position.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import attrs
import trio

from actors import Columns, Producer, RemoteTopic, Table, Topic, kept, open_producer

from .epochs import Barrier
from .plan import ProducerPlan
from .registry import Registry, State, Workload
from .schema import Topology
from .snapshot import ProducerPart, TopicSummary
from .tally import TopicTally

MIN_TABLE = 64
"""A workload's table of fewer events than this is sent as a list of events: for a few
events, numpy's cost per call is more than the Python steps it saves (the UGC example at
1,000 events a second makes chunks of about 12 events per partition)."""

_SEQ = operator.attrgetter("seq")
_TIMESTAMP = operator.attrgetter("timestamp")


@attrs.frozen
class SourceStatistics:
    """A snapshot of a :class:`WorkloadSource`."""

    events_planned: int
    """Events the source makes in the whole run."""
    events_made: int
    """Events made and handed to producers so far (across resumes)."""
    running: bool
    """Whether the source's actor has started and not finished."""


@attrs.define(eq=False)
class WorkloadSource:
    """One producer instance: its workload's events, made on its plan's schedule.

    A plan with a ``rate`` follows a fixed schedule: event i has event time ``i / rate``, and
    the source makes its events ``rate x linger`` at a time, sleeping until the last of them
    is due, so event times never depend on backpressure or scheduling. The workload is made
    when the source starts.

    Args:
        make_workload: Makes the workload (called once, when the source starts).
        state_type: What the workload's position is (its type's ``state_type``).
        topic_of: The topic of each of the workload's streams.
        key_of: How to read the key of an event of each stream (None: no key).
        produced: The run's tallies, by topic, that every source counts what it sends in.
        local_topics: Topics whose rings live in this process.
        open_remote: Opens a topic on another node (a node of a split topology).
        sent: On a node, a tally per topic of what this source alone sent.
        add_summary: Hands over the summary of what it sent to a topic whose ring is here.
        after_chunk: Called after every chunk made.
    """

    plan: ProducerPlan
    make_workload: Callable[[], Workload]
    state_type: type[State]
    topic_of: Mapping[str, str]
    key_of: Mapping[str, Callable[[Any], Any] | None]
    max_batch: int
    linger: float
    barrier: Barrier
    produced: Mapping[str, TopicTally]
    local_topics: Mapping[str, Topic]
    open_remote: Callable[[str], AbstractAsyncContextManager[RemoteTopic]] | None = None
    sent: dict[str, TopicTally] | None = None
    add_summary: Callable[[str, TopicSummary], None] | None = None
    after_chunk: Callable[[], None] = lambda: None
    value_type: Callable[[str], Any] = lambda topic: Any
    """The type of the values of a topic (what records buffered in an epoch decode to)."""
    key_field: Mapping[str, str] = attrs.field(factory=dict)
    """The key field of each stream's topic (a stream whose topic has no key is not here)."""
    producers: list[Producer] = attrs.field(factory=list)
    """The producers it sends through, one per stream, once started."""
    done: int = 0
    """Events made so far."""
    _workload: Workload | None = None
    _restored: ProducerPart | None = None
    _buffered: dict[str, list[list[Columns]]] = attrs.field(factory=dict)
    _by_stream: dict[str, Producer] = attrs.field(factory=dict)
    _remotes: dict[str, RemoteTopic] = attrs.field(factory=dict)
    _position: State | None = None
    _running: bool = False

    @classmethod
    def make(
        cls, plan: ProducerPlan, topology: Topology, registry: Registry, seed: int, **wiring: Any
    ) -> WorkloadSource:
        """The source of ``plan``'s producer instance, as the topology describes it;
        ``wiring`` gives the other fields."""
        spec = topology.producers[plan.producer]
        assert spec.workload is not None, f"producer {plan.producer!r} has no workload"
        kind = registry.workloads[spec.workload]
        params = registry.workload_params(topology, plan.producer)
        topic_of = {s: spec.topic if spec.topic else spec.topics[s] for s in kind.streams}
        key_of: dict[str, Callable[[Any], Any] | None] = {}
        key_field: dict[str, str] = {}
        for stream, topic in topic_of.items():
            field = topology.topics[topic].key
            key_of[stream] = operator.attrgetter(field) if field else None
            if field:
                key_field[stream] = field
        return cls(
            plan,
            lambda: kind.make(params, seed, plan.producer, plan.instance, plan.source),
            kind.state_type,
            topic_of,
            key_of,
            spec.max_batch,
            spec.linger,
            key_field=key_field,
            **wiring,
        )

    @property
    def key(self) -> tuple[str, int]:
        """(producer, instance)."""
        return self.plan.producer, self.plan.instance

    def capture(self) -> ProducerPart | None:
        """Where the source is; call only at a safe point. Before it starts, the position it
        was restored to (None for a fresh one)."""
        if self._workload is None:
            return self._restored
        buffered = (
            {stream: producer.buffered() for stream, producer in self._by_stream.items()}
            if kept("capture_buffered")
            else {}
        )
        return ProducerPart.of(
            self.done,
            self._workload.position(),
            {} if self.sent is None else {t: s.capture() for t, s in self.sent.items()},
            buffered,
        )

    def restore(self, state: ProducerPart) -> None:
        """Start, when run, from a captured position.

        Raises:
            msgspec.ValidationError: The workload's position is not a :attr:`state_type`.
            ValueError: Records it had buffered are not what they should be.
        """
        self._position = state.position_as(self.state_type)
        self._buffered = {
            stream: state.buffered_as(stream, self.value_type(topic))
            for stream, topic in self.topic_of.items()
            if stream in state.buffered
        }
        self._restored = state
        self.done = state.done

    async def run(self, origin: float) -> None:
        """Make and send every event of the plan, pausing at the barrier when asked.

        Args:
            origin: The run's clock at event time 0.
        """
        self._running = True
        workload = self._workload = self.make_workload()
        saved = self._restored
        if saved is not None:
            workload.restore(self._position)
            for topic, state in saved.sent.items():
                if self.sent is not None:
                    self.sent[topic].restore(state)
        try:
            await self._make_all(workload, origin)
        finally:
            self._running = False
        self.barrier.finished(self.key)

    async def _make_all(self, workload: Workload, origin: float) -> None:
        plan, key = self.plan, self.key
        rate = plan.rate
        interval = 1 / rate if rate else 0.0
        chunk = (
            self.max_batch
            if rate is None
            else max(1, min(self.max_batch, math.ceil(rate * self.linger)))
        )
        async with AsyncExitStack() as stack:
            producers = await self._open_producers(stack)
            while self.done < plan.events:
                done = self.done
                if self.barrier.pending(key):
                    await self._pause()
                    continue
                left = plan.events - done
                if rate is None:
                    count = min(chunk, left)
                else:
                    due = math.floor((trio.current_time() - origin) * rate + 1e-9) + 1 - done
                    if due < min(chunk, left):
                        # Sleep until the chunk is due, unless a checkpoint asks first.
                        with trio.move_on_at(origin + (done + min(chunk, left) - 1) * interval):
                            await self.barrier.asked()
                        continue
                    count = min(due, self.max_batch, left)
                # Event time counts from the run's origin, never from whatever the clock read
                # when this task happened to start, so it is the same in every run.
                streams = workload.generate(count, done * interval, interval)
                for stream, events in streams.items():
                    if events:
                        await self._send(producers[stream], self.topic_of[stream], stream, events)
                self.done = done + count
                self.after_chunk()
            await self._hand_over()

    async def _open_producers(self, stack: AsyncExitStack) -> dict[str, Producer]:
        # A producer per stream, into the topic here or through a link to its node; what
        # the epoch it was restored from held buffered goes first.
        producers: dict[str, Producer] = {}
        self._remotes = {}  # links of an earlier run of this source are closed
        for stream, topic in self.topic_of.items():
            target: Topic | RemoteTopic | None = self.local_topics.get(topic)
            if target is None:
                target = self._remotes.get(topic)
            if target is None:
                assert self.open_remote is not None, f"topic {topic!r} is nowhere"
                target = self._remotes[topic] = await stack.enter_async_context(
                    self.open_remote(topic)
                )
            producers[stream] = await stack.enter_async_context(
                open_producer(target, max_batch=self.max_batch, linger=self.linger)
            )
        self.producers = list(producers.values())
        self._by_stream = producers
        for stream, parts in self._buffered.items():
            producers[stream].restore_buffered(parts)
        self._buffered = {}
        self.barrier.on_ask(self.key, self._interrupt)
        return producers

    async def _hand_over(self) -> None:
        # The source is done: its summaries go with its finish, and what it buffers goes to
        # the partitions (pausing for any epoch asked meanwhile).
        for topic, tally in (self.sent or {}).items():
            if topic in self._remotes:  # sent with the finish when the block is left
                self._remotes[topic].summary = tally.summary()
            elif self.add_summary is not None:
                self.add_summary(topic, tally.summary())
        # Everything made is handed over (to partitions here, or numbered and kept for
        # the nodes there): an epoch may hold this source as done from now on. Leaving
        # the block then waits for the other nodes to record the finish, and for an
        # epoch here to hold that (which needs this source to be done or paused).
        while any(producer.statistics().buffered for producer in self.producers):
            if self.barrier.pending(self.key):
                await self._pause()
                continue
            for producer in self.producers:
                await producer.flush()
        self.barrier.finished(self.key)

    def _interrupt(self) -> None:
        for producer in self.producers:
            producer.interrupt()

    async def _pause(self) -> None:
        # What the producers buffer goes into the epoch with the source's position: a ring
        # whose readers see only what an epoch holds makes room only once one is written,
        # so waiting for the buffers to drain first could wait for ever.
        self._interrupt()
        for producer in self.producers:
            await producer.wait_idle()
        await self.barrier.pause(self.key)
        for producer in self.producers:
            producer.resume()

    async def _send(self, producer: Producer, topic: str, stream: str, events: Any) -> None:
        if isinstance(events, Table) and len(events) < MIN_TABLE:
            events = events.rows()
        if isinstance(events, Table):
            columns = self._table_columns(stream, events)
            seq_sum = int(events.columns["seq"].sum())
        else:
            key = self.key_of[stream]
            keys = list(map(key, events)) if key is not None else [None] * len(events)
            columns = Columns(keys, events, list(map(_TIMESTAMP, events)))
            seq_sum = sum(map(_SEQ, events))
        await producer.send_many(columns)
        self.produced[topic].count(self.plan.source, events, seq_sum)
        if self.sent is not None:
            self.sent[topic].count(self.plan.source, events, seq_sum)

    def _table_columns(self, stream: str, events: Table) -> Columns:
        # Keys straight from the key field's column: an int64 array, or strings as a list.
        field = self.key_field.get(stream)
        keys: Any
        if field is None:
            keys = [None] * len(events)
        elif events.columns[field].dtype.kind == "i":
            keys = events.columns[field]
        else:
            keys = events.decoded(field)
        stamps: Any = events.columns["timestamp"]
        return Columns(keys, events, stamps)

    def statistics(self) -> SourceStatistics:
        """Return a snapshot of the source's progress."""
        return SourceStatistics(
            events_planned=self.plan.events, events_made=self.done, running=self._running
        )
