"""The builder: turns a topology into topics, groups and actors, and runs them."""

from __future__ import annotations

import math
import operator
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import attrs
import trio

from actors import (
    Columns,
    ConsumerGroup,
    Producer,
    RecordBatch,
    Topic,
    open_producer,
    open_supervisor,
)

from .errors import TopologyError
from .registry import Processor, Registry
from .schema import Topology

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


_SEQ = operator.attrgetter("seq")
_SOURCE = operator.attrgetter("source")
_TIMESTAMP = operator.attrgetter("timestamp")


@attrs.define(eq=False)
class ConsumerTally:
    """What one consumer has processed: counts, checks, and a latency sample.

    The order check is per key and producer instance: events of one key from one instance
    must arrive in the order they were made, each once. It is done a batch at a time: within
    a partition, each instance's sequence numbers must rise strictly, and each key must only
    ever be seen in one partition; together these imply per-key order.
    """

    name: str
    topics: tuple[str, ...]
    sources: int
    check_order: bool
    records: int = 0
    per_topic: dict[str, int] = attrs.field(factory=dict)
    seq_sums: dict[str, list[int]] = attrs.field(factory=dict)
    order_violations: int = 0
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


@attrs.define(eq=False)
class Pipeline:
    """A topology built into topics, consumer groups and processors, ready to run.

    Make one with :meth:`build`, run it with :meth:`run`; read what happened from the topics'
    statistics, :attr:`tallies`, :attr:`produced` and :meth:`expectations`.
    """

    topology: Topology
    registry: Registry
    seed: int
    plans: list[ProducerPlan]
    topics: dict[str, Topic]
    groups: dict[tuple[str, str], ConsumerGroup]
    processors: dict[str, Processor]
    tallies: dict[str, ConsumerTally]
    produced: dict[str, TopicTally]
    producers: dict[tuple[str, int], list[Producer]] = attrs.field(factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    wall_started: float | None = None
    wall_finished: float | None = None

    @classmethod
    def build(
        cls,
        topology: Topology,
        registry: Registry,
        *,
        seed: int | None = None,
        events: int | None = None,
    ) -> Pipeline:
        """Build the pipeline of ``topology``.

        Args:
            topology: A validated topology.
            registry: The workloads and processors it may name.
            seed: Replaces the topology's seed.
            events: Replaces the total number of events, split over producers in proportion
                to what the file gives them.

        Raises:
            TopologyError: The topology names unknown workloads or processors, or their
                params are wrong.
        """
        problems = registry.check(topology)
        if problems:
            raise TopologyError(problems, topology.name)
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
        topics = {
            name: Topic(
                name,
                partitions=spec.partitions,
                capacity=spec.ring_capacity,
                retention=spec.retention,
            )
            for name, spec in topology.topics.items()
        }
        groups = {}
        processors = {}
        tallies = {}
        for name, consumer in topology.consumers.items():
            for topic in consumer.topic_names:
                groups[name, topic] = ConsumerGroup(
                    consumer.group or name, topics[topic], strategy=consumer.strategy
                )
            kind = registry.processors[consumer.processor]
            processors[name] = kind.make(registry.processor_params(topology, name))
            tallies[name] = ConsumerTally(
                name, tuple(consumer.topic_names), len(plans), topology.expect.per_key_order
            )
        return cls(
            topology=topology,
            registry=registry,
            seed=topology.seed if seed is None else seed,
            plans=plans,
            topics=topics,
            groups=groups,
            processors=processors,
            tallies=tallies,
            produced={name: TopicTally() for name in topics},
        )

    @property
    def events_planned(self) -> int:
        """Events all producers will make."""
        return sum(plan.events for plan in self.plans)

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
        return sum(sum(group.statistics().lag) for group in self.groups.values())

    async def run(self, monitor: Callable[[], None] | None = None) -> None:
        """Run every producer and consumer until the producers are done and all is consumed.

        Args:
            monitor: Called after every batch a consumer processes (keep it cheap).

        Raises:
            SupervisionError: An actor crashed; the message names it and the error.
        """
        self.started_at = trio.current_time()
        self.wall_started = time.perf_counter()
        try:
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
                for plan in self.plans:
                    supervisor.start_soon(f"{plan.producer}-{plan.instance}", self._produce, plan)
        finally:
            self.finished_at = trio.current_time()
            self.wall_finished = time.perf_counter()

    async def _produce(self, plan: ProducerPlan) -> None:
        spec = self.topology.producers[plan.producer]
        kind = self.registry.workloads[spec.workload]
        params = self.registry.workload_params(self.topology, plan.producer)
        workload = kind.make(params, self.seed, plan.producer, plan.instance)
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
        async with AsyncExitStack() as stack:
            producers = {}
            for stream, topic in topic_of.items():
                producers[stream] = await stack.enter_async_context(
                    open_producer(self.topics[topic], max_batch=spec.max_batch, linger=spec.linger)
                )
            self.producers[plan.producer, plan.instance] = list(producers.values())
            start = trio.current_time()
            done = 0
            while done < plan.events:
                left = plan.events - done
                if rate is None:
                    count = min(chunk, left)
                else:
                    due = math.floor((trio.current_time() - start) * rate + 1e-9) + 1 - done
                    if due < min(chunk, left):
                        await trio.sleep_until(start + (done + min(chunk, left) - 1) * interval)
                        continue
                    count = min(due, spec.max_batch, left)
                streams = workload.generate(count, start + done * interval, interval)
                for stream, events in streams.items():
                    if events:
                        await self._send(
                            producers[stream], topic_of[stream], key_of[stream], plan.source, events
                        )
                done += count

    async def _send(
        self,
        producer: Producer,
        topic: str,
        key: Callable[[Any], Any] | None,
        source: int,
        events: list[Any],
    ) -> None:
        keys = list(map(key, events)) if key is not None else [None] * len(events)
        await producer.send_many(Columns(keys, events, list(map(_TIMESTAMP, events))))
        tally = self.produced[topic]
        tally.records += len(events)
        tally.seq_sums[source] = tally.seq_sums.get(source, 0) + sum(
            map(operator.attrgetter("seq"), events)
        )
        tally.kinds.update(map(operator.attrgetter("kind"), events))

    async def _consume(
        self,
        consumer: str,
        instance: int,
        topic: str,
        group: ConsumerGroup,
        monitor: Callable[[], None] | None,
    ) -> None:
        spec = self.topology.consumers[consumer]
        processor = self.processors[consumer]
        tally = self.tallies[consumer]
        async with group.join(f"{consumer}-{instance}", max_records=spec.max_records) as member:
            async for batch in member.batches():
                tally.observe(topic, batch, trio.current_time())
                processor.process(batch.values)
                if monitor is not None:
                    monitor()

    def expectations(self) -> list[Expectation]:
        """Check the topology's ``expect`` invariants against what happened."""
        expect = self.topology.expect
        results = []
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
