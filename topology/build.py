"""The builder: turns a topology into topics, groups and actors, and runs them."""

from __future__ import annotations

import hashlib
import json
import math
import operator
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Union

import attrs
import msgspec
import trio

from actors import (
    Columns,
    Consumer,
    ConsumerGroup,
    Gateway,
    Key,
    PartitionState,
    Producer,
    RecordBatch,
    RemoteConsumer,
    RemoteGroup,
    Topic,
    open_nursery,
    open_producer,
    open_remote_topic,
    open_supervisor,
)

from .checkpoint import CheckpointStore, EpochInfo, Snapshot, restoring
from .convert import converter
from .errors import TopologyError
from .registry import Processor, Registry
from .schema import Topology
from .sections import RedisSpec, parse_address

LATENCY_SAMPLE_EVERY = 8
"""One record in this many has its latency measured."""
LATENCY_RESOLUTION = 10_000
"""Latency histogram buckets per second (0.1 ms)."""


@attrs.frozen
class ProducerPlan:
    """One producer instance: how many events it makes, how fast."""

    producer: str
    instance: int
    source: int
    """A number unique over all producer instances; events carry it."""
    events: int
    rate: float | None


@attrs.define(eq=False)
class TopicTally:
    """What producers got accepted into one topic."""

    records: int = 0
    seq_sums: dict[int, int] = attrs.field(factory=dict)
    kinds: Counter[str] = attrs.field(factory=Counter)

    def snapshot(self) -> Any:
        """The tally as plain data."""
        return [self.records, list(self.seq_sums.items()), dict(self.kinds)]

    def restore(self, state: Any) -> None:
        """Replace the tally with a snapshot."""
        self.records = state[0]
        self.seq_sums = dict(state[1])
        self.kinds = Counter(state[2])

    @classmethod
    def merged(cls, states: Any) -> TopicTally:
        """The sum of several snapshots (of the producers of one topic)."""
        tally = cls()
        for records, seq_sums, kinds in states:
            tally.records += records
            for source, total in seq_sums:
                tally.seq_sums[source] = tally.seq_sums.get(source, 0) + total
            tally.kinds.update(kinds)
        return tally


_SEQ = operator.attrgetter("seq")
_SOURCE = operator.attrgetter("source")
_TIMESTAMP = operator.attrgetter("timestamp")
_KIND = operator.attrgetter("kind")
_ENCODER = msgspec.msgpack.Encoder()
_SEQUENCES = msgspec.msgpack.Decoder(dict[str, int])


@attrs.define(eq=False)
class ConsumerTally:
    """What one consumer has processed: counts, checks, and a latency sample.

    The order check is per key and producer instance: events of one key from one instance
    must arrive in the order they were made, each once. It is done a batch at a time: within
    a partition, each instance's sequence numbers must rise strictly, and each key must only
    ever be seen in one partition; together these imply per-key order. Records without a key
    are spread round robin, so only the first part applies to them: within each partition,
    each instance's records arrive in the order made, each once.
    """

    name: str
    topics: tuple[str, ...]
    sources: int
    check_order: bool
    records: int = 0
    per_topic: dict[str, int] = attrs.field(factory=dict)
    seq_sums: dict[str, list[int]] = attrs.field(factory=dict)
    order_violations: int = 0
    strangers: dict[str, int] = attrs.field(factory=dict)
    """Per topic, records whose source is no producer instance of this topology."""
    first_violation: str | None = None
    latency: Counter[int] = attrs.field(factory=Counter)
    _last_seq: dict[tuple[str, int], list[int]] = attrs.field(factory=dict)
    _key_partition: dict[str, dict[Any, int]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for topic in self.topics:
            self.per_topic[topic] = 0
            self.seq_sums[topic] = [0] * self.sources
            self._key_partition[topic] = {}

    def observe(self, topic: str, batch: RecordBatch, now: float) -> None:
        """Account for a batch about to be processed."""
        partition, events = batch.partition, batch.values
        count = len(events)
        self.records += count
        self.per_topic[topic] += count
        seqs = list(map(_SEQ, events))
        sources = set(map(_SOURCE, events))
        if max(sources) >= self.sources:  # sent through a gateway by no producer of ours
            self.strangers[topic] = self.strangers.get(topic, 0) + count
            return
        if len(sources) == 1:
            (source,) = sources
            self.seq_sums[topic][source] += sum(seqs)
            if self.check_order:
                last = self._last_seq.get((topic, partition))
                if last is None:
                    last = self._last_seq[topic, partition] = [-1] * self.sources
                if seqs[0] <= last[source] or not all(map(operator.lt, seqs, seqs[1:])):
                    self._out_of_order(topic, batch)
                else:
                    last[source] = seqs[-1]
                self._check_keys(topic, batch)
        else:
            for event in events:
                self.seq_sums[topic][event.source] += event.seq
            if self.check_order:
                self._out_of_order(topic, batch)
                self._check_keys(topic, batch)
        latency = self.latency
        for timestamp in batch.timestamps[::LATENCY_SAMPLE_EVERY]:
            latency[int((now - timestamp) * LATENCY_RESOLUTION)] += 1

    def _out_of_order(self, topic: str, batch: RecordBatch) -> None:
        # The slow path: find exactly which events broke the order.
        last = self._last_seq.setdefault((topic, batch.partition), [-1] * self.sources)
        for key, event in zip(batch.keys, batch.values, strict=True):
            if event.seq <= last[event.source]:
                self._violation(
                    f"topic {topic!r}, key {key!r}: event {event.seq} of source "
                    f"{event.source} came after event {last[event.source]}"
                )
            else:
                last[event.source] = event.seq

    def _check_keys(self, topic: str, batch: RecordBatch) -> None:
        seen = self._key_partition[topic]
        partition = batch.partition
        for key in set(batch.keys):
            if key is None:  # spread round robin: no key, so no per-key order to keep
                continue
            where = seen.setdefault(key, partition)
            if where != partition:
                self._violation(
                    f"topic {topic!r}, key {key!r}: seen in partitions {where} and {partition}, "
                    "so its events lost their order"
                )

    def _violation(self, message: str) -> None:
        self.order_violations += 1
        if self.first_violation is None:
            self.first_violation = message

    def snapshot(self) -> Any:
        """The tally as plain data."""
        return {
            "records": self.records,
            "per_topic": self.per_topic,
            "seq_sums": self.seq_sums,
            "violations": [self.order_violations, self.first_violation],
            "strangers": self.strangers,
            "latency": list(self.latency.items()),
            "last_seq": [[t, p, last] for (t, p), last in self._last_seq.items()],
            "key_partition": {t: list(keys.items()) for t, keys in self._key_partition.items()},
        }

    def restore(self, state: Any) -> None:
        """Replace the tally with a snapshot."""
        self.records = state["records"]
        self.per_topic = dict(state["per_topic"])
        self.seq_sums = {t: list(sums) for t, sums in state["seq_sums"].items()}
        self.order_violations, self.first_violation = state["violations"]
        self.strangers = dict(state.get("strangers", {}))
        self.latency = Counter(dict(state["latency"]))
        self._last_seq = {(t, p): list(last) for t, p, last in state["last_seq"]}
        self._key_partition = {t: dict(pairs) for t, pairs in state["key_partition"].items()}


@attrs.frozen
class Expectation:
    """The result of one ``expect`` invariant."""

    name: str
    ok: bool
    detail: str


def split_evenly(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` whole shares, the first ones one larger."""
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def split_proportionally(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders get the rest)."""
    whole = sum(weights)
    if whole == 0:
        return split_evenly(total, len(weights))
    exact = [total * w / whole for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _described(topology: Topology) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    # The topology as plain data without what does not change what a run computes (how often
    # epochs are written, Redis, gateway settings), and apart from it what runs on each node
    # (not where the nodes listen).
    described = converter.unstructure(attrs.evolve(topology, checkpoint=None, redis=RedisSpec()))
    described.pop("gateway")
    nodes = described.pop("nodes")
    layout = {name: [n["topics"], n["producers"], n["consumers"]] for name, n in nodes.items()}
    return described, layout


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(
    topology: Topology, seed: int, plans: list[ProducerPlan], node: str | None = None
) -> str:
    """Return what identifies a run's state: the topology, the seed and the producers' plans,
    and for a node of a split topology, the nodes and which one it is.

    Checkpoints of one run may only be resumed by a run with the same fingerprint: a run may
    be resumed with other checkpoint, Redis or gateway settings, which do not change what the
    state means.
    """
    described, layout = _described(topology)
    data: dict[str, Any] = {
        "topology": described,
        "seed": seed,
        "plans": [attrs.astuple(plan) for plan in plans],
    }
    if node is not None:
        data["node"] = [node, layout]
    return _sha256(data)


def agreement(
    topology: Topology, seed: int, plans: list[ProducerPlan], node: str
) -> dict[str, str]:
    """Return what every node of a split topology must agree on, as the gateways compare it.

    ``seed`` and ``events`` (the total) as they are, so that a difference is named with both
    values; ``plans`` (the events of every producer instance) and ``topology`` (the file
    without the settings that may differ per node: listen addresses, gateway, checkpoints,
    Redis, clock, expectations) as short hashes; ``node`` names the side and is not compared.
    """
    described, layout = _described(topology)
    for setting in ("seed", "clock", "expect"):
        described.pop(setting)
    for producer in described["producers"].values():
        producer.pop("events")
        producer.pop("duration")
    described["nodes"] = layout
    return {
        "node": node,
        "seed": str(seed),
        "events": str(sum(plan.events for plan in plans)),
        "plans": _sha256([[plan.producer, plan.instance, plan.events] for plan in plans])[:12],
        "topology": _sha256(described)[:12],
    }


SUMMARY = tuple[int, list[tuple[int, int]], dict[str, int]]
"""What a producer says it sent (:meth:`TopicTally.snapshot`), as gateways check it."""


@attrs.frozen
class Placement:
    """Which node of a split topology a pipeline runs as, and how it reaches the others."""

    node: str
    listen: str | None = None
    """``HOST:PORT`` to listen on instead of the node's ``listen`` in the file."""
    peers: dict[str, str] = attrs.field(factory=dict)
    """``HOST:PORT`` to reach other nodes at, by node name, instead of their ``listen``."""
    token: str | None = None
    """The shared token (read from ``gateway.token_env`` by the caller)."""


def producer_id(plan: ProducerPlan) -> str:
    """How a producer instance is known to the gateways of a split topology."""
    return f"{plan.producer}-{plan.instance}"


@attrs.define(eq=False)
class CheckpointSettings:
    """When a running pipeline writes epochs, and where."""

    store: CheckpointStore
    every: float | None = 1.0
    """Seconds of the run's clock between epochs, or None."""
    every_records: int | None = None
    """Events produced between epochs, or None."""
    final_timeout: float = 10.0
    """Real seconds the final epoch may take on a graceful stop."""
    in_thread: bool = True
    """Write epochs in a worker thread. With a virtual clock they are written in the Trio
    thread instead: while a thread works, autojump would move simulated time on, so the epoch
    schedule would depend on the machine's speed."""


@attrs.define(eq=False)
class Pipeline:
    """A topology built into topics, consumer groups and processors, ready to run.

    Make one with :meth:`build` (optionally from a checkpoint), run it with :meth:`run`; read
    what happened from the topics' statistics, :attr:`tallies`, :attr:`produced` and
    :meth:`expectations`. :meth:`capture` takes a consistent snapshot for a checkpoint.
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
    produced: dict[str, TopicTally]
    fingerprint: str
    value_types: dict[str, tuple[type, ...]]
    events_override: int | None = None
    producers: dict[tuple[str, int], list[Producer]] = attrs.field(factory=dict)
    restored_from: EpochInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None
    wall_started: float | None = None
    wall_finished: float | None = None
    epochs: list[EpochInfo] = attrs.field(factory=list)
    origin: float = 0.0
    """The run's clock at event time 0: events are stamped with seconds since then."""
    _event_time_at_restore: float | None = None
    on_epoch: Callable[[EpochInfo], None] | None = None
    """Called after every epoch is written (for logging)."""
    _positions: dict[tuple[str, int], dict[str, Any]] = attrs.field(factory=dict)
    _active: set[tuple[str, int]] = attrs.field(factory=set)
    _arrived: set[tuple[str, int]] = attrs.field(factory=set)
    _requested: bool = False
    _all_arrived: trio.Event = attrs.field(factory=trio.Event)
    _resume: trio.Event = attrs.field(factory=trio.Event)
    _records_due: trio.Event = attrs.field(factory=trio.Event)
    _request_event: trio.Event = attrs.field(factory=trio.Event)
    _next_records: int | None = None
    placement: Placement | None = None
    """The node of a split topology this pipeline runs as; None runs the whole topology."""
    gateway: Gateway | None = None
    """The node's gateway: serves its topics to other nodes and taps."""
    remote_members: set[tuple[str, str, str]] = attrs.field(factory=set)
    """(group, topic, member) of consumers on other nodes reading this node's topics."""
    remote_urls: dict[str, str] = attrs.field(factory=dict)
    """For topics on other nodes that this node uses: the ``ws://`` address of their node."""
    agreement: dict[str, str] = attrs.field(factory=dict)
    """What this node's peers must agree with (see :func:`agreement`); empty when whole."""
    _remote_topics: dict[str, Any] = attrs.field(factory=dict)
    """By ``producer/instance/topic``, the remote topics local producers write to."""
    _restored_remote: dict[str, Any] = attrs.field(factory=dict)
    _captures: int = 0
    _written: int = 0
    _durable_after: dict[int, Callable[[], None]] = attrs.field(factory=dict)
    _epoch_written: trio.Event = attrs.field(factory=trio.Event)
    _checkpointing: bool = False

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
        """
        problems = registry.check(topology)
        if placement is not None:
            problems.extend(_check_placement(topology, placement))
        if problems:
            raise TopologyError(problems, topology.name)
        run_seed = topology.seed if seed is None else seed
        names = list(topology.producers)
        totals = [topology.producers[n].total_events for n in names]
        if events is not None:
            totals = split_proportionally(events, totals)
        plans = []
        source = 0
        for name, total in zip(names, totals, strict=True):
            spec = topology.producers[name]
            rate = None if spec.rate is None else spec.rate / spec.instances
            for instance, count in enumerate(split_evenly(total, spec.instances)):
                plans.append(ProducerPlan(name, instance, source, count, rate))
                source += 1
        value_types: dict[str, tuple[type, ...]] = {name: () for name in topology.topics}
        for spec in topology.producers.values():
            kind = registry.workloads[spec.workload]
            for stream in kind.streams:
                topic = spec.topic if spec.topic else spec.topics[stream]
                value_types[topic] += tuple(
                    t for t in kind.event_types.get(stream, ()) if t not in value_types[topic]
                )
        here = None if placement is None else topology.nodes[placement.node]
        topics = {
            name: Topic(
                name,
                partitions=spec.partitions,
                capacity=spec.ring_capacity,
                retention=spec.retention,
            )
            for name, spec in topology.topics.items()
            if here is None or name in here.topics
        }
        pipeline = cls(
            topology=topology,
            registry=registry,
            seed=run_seed,
            plans=plans,
            topics=topics,
            groups={},
            processors={},
            tallies={},
            produced={name: TopicTally() for name in topology.topics},
            fingerprint=fingerprint(
                topology, run_seed, plans, None if placement is None else placement.node
            ),
            value_types=value_types,
            events_override=events,
            placement=placement,
            agreement={}
            if placement is None
            else agreement(topology, run_seed, plans, placement.node),
        )
        if restore is not None:
            pipeline._restore_topics(restore[1])
        hosted: dict[tuple[str, str], ConsumerGroup] = {}
        for name, consumer in topology.consumers.items():
            local = here is None or name in here.consumers
            for topic in consumer.topic_names:
                group_name = consumer.group or name
                if topic in topics:
                    group = hosted[group_name, topic] = ConsumerGroup(
                        group_name, topics[topic], strategy=consumer.strategy
                    )
                    if local:
                        pipeline.groups[name, topic] = group
                    else:
                        pipeline.remote_members.update(
                            (group_name, topic, f"{name}-{i}") for i in range(consumer.instances)
                        )
                elif local:
                    pipeline.groups[name, topic] = RemoteGroup(
                        pipeline._url_of(topic),
                        topic,
                        group_name,
                        None if placement is None else placement.token,
                        pipeline.value_type(topic),
                        topology.gateway.connect_timeout,
                        agreement=pipeline.agreement,
                    )
            if not local:
                continue
            processor_type = registry.processors[consumer.processor]
            pipeline.processors[name] = processor_type.make(
                registry.processor_params(topology, name)
            )
            pipeline.tallies[name] = ConsumerTally(
                name, tuple(consumer.topic_names), len(plans), topology.expect.per_key_order
            )
        if placement is not None:
            pipeline.gateway = Gateway(
                topics,
                hosted,
                {name: pipeline.value_type(name) for name in topics},
                token=placement.token,
                session_timeout=topology.gateway.session_timeout,
                max_message_size=topology.gateway.max_message_size,
                agreement=pipeline.agreement,
                summary_type=SUMMARY,
            )
            saved = None if restore is None else restore[1].get(("gateway", "state"))
            if saved is not None:
                with restoring("gateway", "state"):
                    pipeline.gateway.restore(msgspec.msgpack.decode(saved))
            for topic in topics:
                remote = {
                    producer_id(plan)
                    for plan in plans
                    if plan.producer not in here.producers  # type: ignore[union-attr]
                    and topic in _topics_of(topology, plan.producer)
                }
                pipeline.gateway.expect_producers(topic, remote)
        if restore is not None:
            pipeline._restore_state(*restore)
        return pipeline

    # -- split topologies ------------------------------------------------------------------

    @property
    def local_plans(self) -> list[ProducerPlan]:
        """The producer instances that run in this process."""
        if self.placement is None:
            return self.plans
        here = self.topology.nodes[self.placement.node]
        return [plan for plan in self.plans if plan.producer in here.producers]

    def address_of(self, node: str) -> str:
        """``HOST:PORT`` where ``node``'s gateway is reached (or listens, for this node)."""
        assert self.placement is not None
        if node == self.placement.node and self.placement.listen is not None:
            return self.placement.listen
        return self.placement.peers.get(node) or self.topology.nodes[node].listen

    def _url_of(self, topic: str) -> str:
        url = self.remote_urls.get(topic)
        if url is None:
            node = self.topology.node_of("topics", topic)
            url = self.remote_urls[topic] = f"ws://{self.address_of(node)}/node"
        return url

    def value_type(self, topic: str) -> Any:
        """The type record values of ``topic`` decode to (a union of the workloads' events)."""
        types = self.value_types[topic]
        return Any if not types else (types[0] if len(types) == 1 else Union[types])  # noqa: UP007

    def _gather_summaries(self) -> None:
        # What every producer of a topic sent, as its node told the topic's node: a consumer
        # here checks what it processed against that.
        consumed = {topic for _, topic in self.groups}
        for topic in consumed:
            if topic in self.topics:
                assert self.gateway is not None
                summaries = self.gateway.summaries.get(topic, {})
            else:
                summaries = {}
                for (_, name), group in self.groups.items():
                    if name == topic and isinstance(group, RemoteGroup):
                        summaries.update(group.summaries)
            if summaries:
                self.produced[topic] = TopicTally.merged(summaries.values())

    # -- checkpoints -----------------------------------------------------------------------

    def _partition_decoder(self, topic: str) -> msgspec.msgpack.Decoder[Any]:
        value: Any = self.value_type(topic)
        batch = tuple[int, list[Key], list[value], list[float]]
        return msgspec.msgpack.Decoder(tuple[int, int, dict[str, int], int, list[batch]])

    def capture(self, *, final: bool = False) -> Snapshot:
        """Take a consistent snapshot of the whole pipeline, synchronously.

        Consistent means: call it only when every producer is at a safe point (paused by a
        checkpoint request, or finished). Consumers are consistent at any moment, because each
        commits a batch in the same step as it processes it.
        """
        parts: dict[tuple[str, str], bytes] = {}
        held = 0
        for name, topic in self.topics.items():
            for partition in topic.partitions:
                state = partition.snapshot()
                held += state.end_offset - state.start_offset
                parts["partition", f"{name}/{partition.index}"] = _ENCODER.encode(
                    [
                        state.start_offset,
                        state.end_offset,
                        state.committed,
                        state.peak_depth,
                        [[b.base_offset, b.keys, b.values, b.timestamps] for b in state.batches],
                    ]
                )
                if state.sequences:  # records numbered by producers on other nodes
                    parts["sequences", f"{name}/{partition.index}"] = _ENCODER.encode(
                        state.sequences
                    )
        for name, processor in self.processors.items():
            parts["processor", name] = _ENCODER.encode(processor.snapshot())
        for name, tally in self.tallies.items():
            parts["consumer", name] = _ENCODER.encode(tally.snapshot())
        for name, topic_tally in self.produced.items():
            parts["topic", name] = _ENCODER.encode(topic_tally.snapshot())
        for (producer, instance), position in self._positions.items():
            parts["producer", f"{producer}/{instance}"] = _ENCODER.encode(position)
        self._capture_split(parts)
        now = trio.current_time()
        parts["run", "clock"] = _ENCODER.encode({"sim_time": now, "event_time": now - self.origin})
        # The run's simulated time counts from its origin, so it goes on across resumes
        # whatever the clock read when a resumed run started.
        return Snapshot(now - self.origin, self.events_produced, held, parts, final)

    def _capture_split(self, parts: dict[tuple[str, str], bytes]) -> None:
        # A node's own part of a split topology, and what becomes durable, for the other
        # nodes, once this epoch is written.
        self._captures += 1
        if self.placement is None:
            return
        for key, remote in self._remote_topics.items():
            parts["remote", key] = _ENCODER.encode(remote.snapshot())
        # What the members here processed, per group: saved whether or not they have joined
        # yet (after a restore, positions restored but not yet joined must not be forgotten).
        remote_groups = self._remote_groups()
        processed = {key: dict(group.processed) for key, group in remote_groups.items()}
        for (consumer, read), where in processed.items():
            encoded = _ENCODER.encode(list(where.items()))
            for instance in range(self.topology.consumers[consumer].instances):
                parts["member", f"{consumer}/{instance}/{read}"] = encoded
        ends: dict[Any, int] = {}
        sequences: dict[tuple[str, int], dict[str, int]] = {}
        finished: set[tuple[str, str]] = set()
        if self.gateway is not None:
            state = self.gateway.snapshot()
            parts["gateway", "state"] = _ENCODER.encode(state)
            finished = {(topic, producer) for topic, producer in state["finished"]}
            for name, topic in self.topics.items():
                for partition in topic.partitions:
                    ends[partition] = partition.end_offset
                    sequences[name, partition.index] = dict(partition.snapshot().sequences)
        gateway = self.gateway

        def durable() -> None:
            for partition, end in ends.items():
                partition.expose(end)
            if gateway is not None:
                gateway.mark_durable(sequences, finished)
            for key, group in remote_groups.items():
                group.mark_durable(processed[key])

        self._durable_after[self._captures] = durable

    def _restore_topics(self, parts: dict[tuple[str, str], bytes]) -> None:
        for name, topic in self.topics.items():
            decoder = self._partition_decoder(name)
            for partition in topic.partitions:
                data = parts.get(("partition", f"{name}/{partition.index}"))
                if data is None:
                    continue
                sequences = parts.get(("sequences", f"{name}/{partition.index}"))
                with restoring("sequences", f"{name}/{partition.index}"):
                    restored_sequences = {} if sequences is None else _SEQUENCES.decode(sequences)
                with restoring("partition", f"{name}/{partition.index}"):
                    start, end, committed, peak, batches = decoder.decode(data)
                    partition.restore(
                        PartitionState(
                            start,
                            end,
                            committed,
                            [
                                RecordBatch(name, partition.index, base, keys, values, stamps)
                                for base, keys, values, stamps in batches
                            ],
                            peak,
                            restored_sequences,
                        )
                    )

    def _restore_state(self, info: EpochInfo, parts: dict[tuple[str, str], bytes]) -> None:
        self.restored_from = info
        members: dict[str, dict[int, int]] = {}
        for (kind, name), data in parts.items():
            with restoring(kind, name):
                state = (
                    msgspec.msgpack.decode(data) if kind not in ("partition", "sequences") else None
                )
                if kind == "processor" and name in self.processors:
                    self.processors[name].restore(state)
                elif kind == "consumer" and name in self.tallies:
                    self.tallies[name].restore(state)
                elif kind == "topic" and name in self.produced:
                    self.produced[name].restore(state)
                elif kind == "run" and name == "clock":
                    self._event_time_at_restore = float((state or {})["event_time"])
                elif kind == "remote":
                    self._restored_remote[name] = state
                elif kind == "member":
                    members[name] = dict(state or [])
                elif kind == "producer":
                    producer, instance = name.rsplit("/", 1)
                    self._positions[producer, int(instance)] = dict(state or {})
        for (consumer, read), group in self._remote_groups().items():
            for number in range(self.topology.consumers[consumer].instances):
                where = members.get(f"{consumer}/{number}/{read}")
                if where:
                    group.resume_from(where)

    def _remote_groups(self) -> dict[tuple[str, str], RemoteGroup]:
        """By (consumer, topic), the groups on other nodes that consumers here read."""
        return {key: g for key, g in self.groups.items() if isinstance(g, RemoteGroup)}

    async def _safe_point(
        self, key: tuple[str, int], producers: list[Producer], position: dict[str, Any]
    ) -> None:
        # Called by a producer between chunks when a checkpoint is requested: hand everything
        # over to the partitions, say where the workload is, and wait until the snapshot is
        # taken. Consumers keep running meanwhile, so the flush always finds room.
        for producer in producers:
            await producer.flush()
        self._positions[key] = position
        self._arrived.add(key)
        if self._active <= self._arrived:
            self._all_arrived.set()
        await self._resume.wait()

    def _finished(self, key: tuple[str, int], position: dict[str, Any]) -> None:
        self._positions[key] = position
        self._active.discard(key)
        if self._requested and self._active <= self._arrived:
            self._all_arrived.set()
        if not self._active:
            self._records_due.set()  # let the checkpoint actor see that it is done

    async def checkpoint(
        self, store: CheckpointStore, *, final: bool = False, in_thread: bool = True
    ) -> EpochInfo:
        """Pause producers at their next safe point, snapshot, resume, and write the epoch."""
        self._all_arrived = trio.Event()
        self._resume = trio.Event()
        self._arrived = set()
        self._requested = True
        self._request_event.set()
        try:
            if not self._active <= self._arrived:
                await self._all_arrived.wait()
            snapshot = self.capture(final=final)
        finally:
            self._requested = False
            self._request_event = trio.Event()
            self._resume.set()
        if in_thread:
            info = await trio.to_thread.run_sync(store.write, snapshot)
        else:
            info = store.write(snapshot)
            await trio.lowlevel.checkpoint()
        self.epochs.append(info)
        self._made_durable()
        if self.on_epoch is not None:
            self.on_epoch(info)
        return info

    def _made_durable(self) -> None:
        # Every capture up to the last one is now in the database.
        for number in sorted(self._durable_after):
            self._durable_after.pop(number)()
            self._written = number
        self._epoch_written.set()
        self._epoch_written = trio.Event()

    async def _wait_for_epoch(self) -> None:
        # Ask for an epoch now and wait until one captured after this moment is written.
        target = self._captures + 1
        while self._written < target:
            self._records_due.set()
            await self._epoch_written.wait()

    async def _checkpointer(self, settings: CheckpointSettings) -> None:
        if settings.every_records:
            self._next_records = self.events_produced + settings.every_records
        split = self.placement is not None  # a node's checkpointer runs until its work is done
        while self._active or split:
            self._records_due = trio.Event()
            with trio.move_on_after(settings.every if settings.every else math.inf):
                await self._records_due.wait()
            if not (self._active or split):
                return
            await self.checkpoint(settings.store, in_thread=settings.in_thread)
            if settings.every_records:
                self._next_records = self.events_produced + settings.every_records

    # -- running ---------------------------------------------------------------------------

    @property
    def events_planned(self) -> int:
        """Events all producers running here will make."""
        return sum(plan.events for plan in self.local_plans)

    @property
    def events_produced(self) -> int:
        """Events accepted so far, over all producers and topics."""
        return sum(tally.records for tally in self.produced.values())

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
        self.started_at = trio.current_time()
        self.wall_started = time.perf_counter()
        if self._event_time_at_restore is None:
            self.origin = self.started_at
        else:  # carry event time on from the epoch, whatever this clock reads
            self.origin = self.started_at - self._event_time_at_restore
        self._active = {(plan.producer, plan.instance) for plan in self.local_plans}
        if checkpoints is not None and self.gateway is not None:
            # Other nodes only see what an epoch holds: a restart from it never rewrites an
            # offset they saw, and producers keep their records until it holds them.
            self.gateway.durable_only = True
            for topic in self.topics.values():
                for partition in topic.partitions:
                    partition.hold_back()
                    partition.expose(partition.end_offset)
        self._checkpointing = checkpoints is not None
        try:
            async with open_nursery() as network:
                if self.gateway is not None:
                    host, port = parse_address(self.address_of(self.placement.node))  # type: ignore[union-attr]
                    await network.start(self.gateway.serve, host, port)
                await self._supervise(monitor, checkpoints)
                network.cancel_scope.cancel()
            if self.placement is not None:
                self._gather_summaries()
            if checkpoints is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(checkpoints.final_timeout):
                    await self.checkpoint(
                        checkpoints.store, final=True, in_thread=checkpoints.in_thread
                    )
        finally:
            self.finished_at = trio.current_time()
            self.wall_finished = time.perf_counter()

    async def _supervise(
        self, monitor: Callable[[], None] | None, checkpoints: CheckpointSettings | None
    ) -> None:
        periodic = checkpoints is not None and bool(checkpoints.every or checkpoints.every_records)
        if self.placement is None or not periodic:
            await self._supervise_actors(monitor, checkpoints if periodic else None)
            return
        # A node's checkpointer runs beside its actors until they are done.
        assert checkpoints is not None
        async with open_nursery() as background:
            background.start_soon(self._checkpointer, checkpoints)
            await self._supervise_actors(monitor, None)
            background.cancel_scope.cancel()

    async def _supervise_actors(
        self, monitor: Callable[[], None] | None, checkpoints: CheckpointSettings | None
    ) -> None:
        async with open_supervisor("one_for_one", max_restarts=0) as supervisor:
            for (consumer, topic), group in self.groups.items():
                for instance in range(self.topology.consumers[consumer].instances):
                    supervisor.start_soon(
                        f"{consumer}-{instance}/{topic}",
                        self._consume,
                        consumer,
                        instance,
                        topic,
                        group,
                        monitor,
                    )
            for plan in self.local_plans:
                supervisor.start_soon(producer_id(plan), self._produce, plan)
            if checkpoints is not None:
                supervisor.start_soon("checkpointer", self._checkpointer, checkpoints)
            if self.gateway is not None:
                # The node's work is done when its topics are closed and every group,
                # wherever its members run, has read them to the end.
                supervisor.start_soon(
                    "gateway", self.gateway.wait_drained, frozenset(self.remote_members)
                )

    async def _produce(self, plan: ProducerPlan) -> None:
        key = (plan.producer, plan.instance)
        spec = self.topology.producers[plan.producer]
        kind = self.registry.workloads[spec.workload]
        params = self.registry.workload_params(self.topology, plan.producer)
        workload = kind.make(params, self.seed, plan.producer, plan.instance, plan.source)
        topic_of = {s: spec.topic if spec.topic else spec.topics[s] for s in kind.streams}
        key_of: dict[str, Callable[[Any], Any] | None] = {}
        for stream, topic in topic_of.items():
            field = self.topology.topics[topic].key
            key_of[stream] = operator.attrgetter(field) if field else None
        rate = plan.rate
        interval = 1 / rate if rate else 0.0
        chunk = (
            spec.max_batch
            if rate is None
            else max(1, min(spec.max_batch, math.ceil(rate * spec.linger)))
        )
        saved = self._positions.get(key)
        if saved is not None:
            workload.restore(saved["workload"])
            done = saved["done"]
        else:
            done = 0
        origin = self.origin

        def position() -> dict[str, Any]:
            where = {"done": done, "workload": workload.position()}
            if mine:
                where["sent"] = {topic: tally.snapshot() for topic, tally in mine.items()}
            return where

        # On a node of a split topology, each instance also counts what it sends to each
        # topic, for the topic's node to pass on to consumers at the end.
        mine = {} if self.placement is None else {t: TopicTally() for t in topic_of.values()}
        for topic, state in (saved or {}).get("sent", {}).items():
            mine[topic].restore(state)
        async with AsyncExitStack() as stack:
            producers = {}
            remotes: dict[str, Any] = {}
            for stream, topic in topic_of.items():
                target: Any = self.topics.get(topic)
                if target is None:
                    target = remotes.get(topic)
                if target is None:
                    name = f"{plan.producer}/{plan.instance}/{topic}"
                    target = remotes[topic] = await stack.enter_async_context(
                        open_remote_topic(
                            self._url_of(topic),
                            topic,
                            producer_id(plan),
                            token=self.placement.token if self.placement else None,
                            value_type=self.value_type(topic),
                            give_up=self.topology.gateway.connect_timeout,
                            restore=self._restored_remote.get(name),
                            agreement=self.agreement,
                        )
                    )
                    self._remote_topics[name] = target
                producers[stream] = await stack.enter_async_context(
                    open_producer(target, max_batch=spec.max_batch, linger=spec.linger)
                )
            self.producers[key] = list(producers.values())
            while done < plan.events:
                if self._requested and key not in self._arrived:
                    await self._safe_point(key, self.producers[key], position())
                    continue
                left = plan.events - done
                if rate is None:
                    count = min(chunk, left)
                else:
                    due = math.floor((trio.current_time() - origin) * rate + 1e-9) + 1 - done
                    if due < min(chunk, left):
                        # Sleep until the chunk is due, unless a checkpoint asks first.
                        with trio.move_on_at(origin + (done + min(chunk, left) - 1) * interval):
                            await self._request_event.wait()
                        continue
                    count = min(due, spec.max_batch, left)
                # Event time counts from the run's origin, never from whatever the clock read
                # when this task happened to start, so it is the same in every run.
                streams = workload.generate(count, done * interval, interval)
                for stream, events in streams.items():
                    if events:
                        topic = topic_of[stream]
                        await self._send(
                            producers[stream],
                            topic,
                            key_of[stream],
                            plan.source,
                            events,
                            mine.get(topic),
                        )
                done += count
                if self._next_records is not None and self.events_produced >= self._next_records:
                    self._records_due.set()
            for topic, tally in mine.items():
                if topic in remotes:  # sent with the finish when the block is left
                    remotes[topic].summary = tally.snapshot()
                elif self.gateway is not None:
                    self.gateway.add_summary(topic, producer_id(plan), tally.snapshot())
        self._finished(key, position())

    async def _send(
        self,
        producer: Producer,
        topic: str,
        key: Callable[[Any], Any] | None,
        source: int,
        events: list[Any],
        also: TopicTally | None = None,
    ) -> None:
        keys = list(map(key, events)) if key is not None else [None] * len(events)
        await producer.send_many(Columns(keys, events, list(map(_TIMESTAMP, events))))
        seq_sum = sum(map(_SEQ, events))
        for tally in (self.produced[topic], also):
            if tally is not None:
                tally.records += len(events)
                tally.seq_sums[source] = tally.seq_sums.get(source, 0) + seq_sum
                tally.kinds.update(map(_KIND, events))

    async def _consume(
        self,
        consumer: str,
        instance: int,
        topic: str,
        group: ConsumerGroup | RemoteGroup,
        monitor: Callable[[], None] | None,
    ) -> None:
        spec = self.topology.consumers[consumer]
        processor = self.processors[consumer]
        tally = self.tallies[consumer]
        # Commit in the same step as processing, with no checkpoint between: then at every
        # moment the processor's state matches the committed offsets, which is what makes a
        # snapshot consistent without stopping consumers.
        member_name = f"{consumer}-{instance}"
        if isinstance(group, RemoteGroup):
            async with group.join(
                member_name,
                auto_commit=False,
                max_records=spec.max_records,
                durable_commits=self._checkpointing,
            ) as remote:
                await self._read(remote, topic, processor, tally, monitor)
                if self._checkpointing:  # leave once an epoch holds everything processed
                    await self._wait_for_epoch()
            return
        async with group.join(
            member_name, auto_commit=False, max_records=spec.max_records
        ) as local:
            await self._read(local, topic, processor, tally, monitor)

    async def _read(
        self,
        member: Consumer | RemoteConsumer,
        topic: str,
        processor: Processor,
        tally: ConsumerTally,
        monitor: Callable[[], None] | None,
    ) -> None:
        async for batch in member.batches():
            tally.observe(topic, batch, trio.current_time() - self.origin)
            processor.process(batch.values)
            member.commit_nowait()
            if monitor is not None:
                monitor()

    def expectations(self) -> list[Expectation]:
        """Check the topology's ``expect`` invariants against what happened."""
        expect = self.topology.expect
        results: list[Expectation] = []
        if not self.tallies:  # a node with no consumers: checked where they run
            return results
        if expect.no_loss:
            results.append(self._check_no_loss())
        if expect.per_key_order:
            bad = [t for t in self.tallies.values() if t.order_violations]
            detail = "; ".join(
                f"{t.name}: {t.order_violations} out of order, first: {t.first_violation}"
                for t in bad
            )
            results.append(
                Expectation(
                    "per_key_order",
                    not bad,
                    detail or "every key's events arrived in the order sent",
                )
            )
        if expect.totals_match:
            results.append(self._check_totals())
        return results

    def _check_no_loss(self) -> Expectation:
        problems = []
        for name, tally in self.tallies.items():
            for topic in tally.topics:
                produced = self.produced[topic]
                got = tally.per_topic[topic]
                strangers = tally.strangers.get(topic, 0)
                if strangers:
                    problems.append(
                        f"{name} processed {strangers:,} records of topic {topic!r} whose "
                        "source is no producer of this topology"
                    )
                    continue
                sums = {s: v for s, v in enumerate(tally.seq_sums[topic]) if v}
                expected = {s: v for s, v in produced.seq_sums.items() if v}
                if got != produced.records:
                    problems.append(
                        f"{name} processed {got:,} records of topic {topic!r}, "
                        f"producers sent {produced.records:,}"
                    )
                elif sums != expected:
                    problems.append(
                        f"{name} processed as many records of topic {topic!r} as "
                        "were sent, but not the same ones (some lost, some twice)"
                    )
        return Expectation(
            "no_loss",
            not problems,
            "; ".join(problems) or "every consumer processed every record once",
        )

    def _check_totals(self) -> Expectation:
        problems = []
        for name, processor in self.processors.items():
            expected: Counter[str] = Counter()
            for topic in self.tallies[name].topics:
                expected.update(self.produced[topic].kinds)
            totals = processor.totals()
            for kind, count in sorted(totals.items()):
                if count != expected.get(kind, 0):
                    problems.append(
                        f"{name}: {kind} totals {count:,}, producers reported "
                        f"{expected.get(kind, 0):,}"
                    )
        return Expectation(
            "totals_match",
            not problems,
            "; ".join(problems) or "every processor's totals equal the producers' counts",
        )


def _topics_of(topology: Topology, producer: str) -> set[str]:
    spec = topology.producers[producer]
    return {spec.topic} if spec.topic else set(spec.topics.values())


def _check_placement(topology: Topology, placement: Placement) -> list[str]:
    if not topology.nodes:
        return ["$.nodes: the topology has no nodes, so no part of it runs as a node; run it whole"]
    problems = []
    if placement.node not in topology.nodes:
        problems.append(
            f"no node named {placement.node!r}; nodes are: {', '.join(sorted(topology.nodes))}"
        )
    for node in placement.peers:
        if node not in topology.nodes:
            problems.append(
                f"peers.{node}: no node named {node!r}; nodes are: "
                f"{', '.join(sorted(topology.nodes))}"
            )
    for where in [placement.listen, *placement.peers.values()]:
        if where is not None:
            try:
                parse_address(where)
            except ValueError as exc:
                problems.append(str(exc))
    return problems
