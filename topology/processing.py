"""Processing: the consumers of a topology, whose instances read their group's batches and
fold them into their processor.

Each consumer instance is one actor. It commits a batch in the same step as it processes it,
with no checkpoint between: then at every moment the processor's state matches the committed
offsets, which is what makes a snapshot consistent without stopping consumers. A new kind of
consumer (a sink that writes to another system) is a function here with the same duties.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from actors import (
    Consumer,
    ConsumerGroup,
    RecordBatch,
    RemoteConsumer,
    RemoteGroup,
    Table,
    Topic,
)

from .delivering import SinkDelivery
from .forwarding import Output
from .node import Node
from .registry import Processor, Registry, Sink, Worker
from .schema import Topology
from .tally import ConsumerTally, TopicTally

SINK_RECORDS = 20_000
"""The most records a sink is handed at once (the batches ready when it asks)."""


@attrs.frozen
class Consumers:
    """The consumers of a topology, as built for one process."""

    groups: dict[tuple[str, str], ConsumerGroup | RemoteGroup]
    """By (consumer, topic), the group each consumer running here joins."""
    hosted: dict[tuple[str, str], ConsumerGroup]
    """By (group, topic), the groups whose offsets live here, wherever their members run."""
    processors: dict[str, Processor]
    """By consumer running here, its processor (shared by its instances)."""
    tallies: dict[str, ConsumerTally]
    """By consumer running here, what it processed."""
    deliveries: dict[str, SinkDelivery] = attrs.field(factory=dict)
    """By consumer running here whose processor is a sink, how records are handed to it."""
    sinks: set[str] = attrs.field(factory=set)
    """Every consumer of the topology whose processor is a sink, wherever it runs."""
    resumable: dict[str, frozenset[str]] = attrs.field(factory=dict)
    """By consumer of the topology (wherever it runs), the params of its processor that a
    resumed run may change (see :attr:`~topology.registry.ProcessorType.resumable`)."""
    outputs: dict[str, Output] = attrs.field(factory=dict)
    """By consumer running here whose processor writes records, where it writes them."""

    @property
    def settable(self) -> tuple[set[str], dict[str, frozenset[str]]]:
        """What a resumed run may change of the consumers' params (see
        :func:`~topology.plan.fingerprint`): a sink's, and the resumable ones."""
        return self.sinks, self.resumable


def make_consumers(
    topology: Topology,
    registry: Registry,
    topics: Mapping[str, Topic],
    sources: int,
    value_type: Callable[[str], Any],
    node: Node | None = None,
    seed: int = 0,
    produced: Mapping[str, TopicTally] | None = None,
) -> Consumers:
    """One group per (consumer, topic), hosted where the topic's ring is (``topics``: the
    rings here); one processor and one tally per consumer running here.

    Args:
        topology: A validated topology.
        registry: The processors it may name.
        topics: The topics whose rings live here.
        sources: How many producer instances the topology has.
        value_type: The type record values of a topic decode to.
        node: The node of a split topology this process runs as; None when whole.
        seed: The run's seed (sinks' retries draw their jitter from it).
        produced: The run's tallies of what entered each topic (consumers that write to a
            topic count what they wrote in its tally).
    """
    here = None if node is None else node.spec
    consumers = Consumers(
        {},
        {},
        {},
        {},
        sinks=registry.sink_consumers(topology),
        resumable={
            name: kind.resumable
            for name, consumer in topology.consumers.items()
            if (kind := registry.processors.get(consumer.processor)) is not None
        },
    )
    for name, consumer in topology.consumers.items():
        local = here is None or name in here.consumers
        for topic in consumer.topic_names:
            group_name = consumer.group or name
            if topic in topics:
                group = consumers.hosted[group_name, topic] = ConsumerGroup(
                    group_name, topics[topic], strategy=consumer.strategy
                )
                if local:
                    consumers.groups[name, topic] = group
                elif node is not None:
                    node.remote_members.update(
                        (group_name, topic, f"{name}-{i}") for i in range(consumer.instances)
                    )
            elif local and node is not None:
                consumers.groups[name, topic] = node.remote_group(
                    name, topic, group_name, value_type(topic)
                )
        if not local:
            continue
        processor_type = registry.processors[consumer.processor]
        processor = processor_type.make(registry.processor_params(topology, name))
        consumers.processors[name] = processor
        if isinstance(processor, Sink):
            consumers.deliveries[name] = SinkDelivery.make(
                name, consumer, processor, dict(topics), seed
            )
        consumers.tallies[name] = ConsumerTally(
            name,
            tuple(consumer.topic_names),
            sources,
            topology.expect.per_key_order,
            partitions={t: topology.topics[t].partitions for t in consumer.topic_names},
        )
        if consumer.output is not None:
            consumers.outputs[name] = _output(
                topology, name, processor, topics, produced or {}, value_type, node
            )
    return consumers


def _output(
    topology: Topology,
    name: str,
    processor: Processor,
    topics: Mapping[str, Topic],
    produced: Mapping[str, TopicTally],
    value_type: Callable[[str], Any],
    node: Node | None,
) -> Output:
    consumer = topology.consumers[name]
    target = consumer.output
    assert target is not None
    partitions = topology.topics[target].partitions
    output = Output(
        name,
        target,
        consumer.instances * len(consumer.topic_names),
        produced.get(target) or TopicTally(),
        processor.summary,  # type: ignore[attr-defined]
        frozenset(t for t in consumer.topic_names if topology.topics[t].partitions == partitions),
    )
    if consumer.dead_letter is not None:  # on this node (checked with the file)
        output.dead_letters = topics.get(consumer.dead_letter)
    if target in topics:
        output.target = topics[target]
        if node is not None:
            output.add_summary = functools.partial(node.add_output_summary, name)
        output.register()
    else:
        assert node is not None, f"topic {target!r} is nowhere"
        output.link = node.output_link(name, target, value_type(target))
    return output


def folder(processor: Processor) -> Callable[[Sequence[Any]], None]:
    """How ``processor`` folds a batch's values: a table goes to ``process_columns`` when it
    has one, a list to ``process``; a processor with only one of them gets the other form
    converted (a table iterates as events; a list becomes tables, one per event type)."""
    columns = getattr(processor, "process_columns", None)
    events = getattr(processor, "process", None)

    def fold(values: Sequence[Any]) -> None:
        if isinstance(values, Table):
            if columns is not None:
                columns(values)
            else:
                processor.process(values)
        elif events is not None or columns is None:
            processor.process(values)
        else:
            for table in tables_of(values):
                columns(table)

    return fold


def tables_of(events: Sequence[Any]) -> list[Table]:
    """``events`` as tables, one per event type, each in the events' order."""
    by_type: dict[type, list[Any]] = {}
    for event in events:
        by_type.setdefault(type(event), []).append(event)
    return [Table.from_events(kind, same) for kind, same in by_type.items()]


async def consume(
    group: ConsumerGroup | RemoteGroup,
    member: str,
    topic: str,
    processor: Processor,
    tally: ConsumerTally,
    *,
    max_records: int | None,
    origin: float,
    monitor: Callable[[], None] | None = None,
    epoch: Callable[[], Awaitable[Any]] | None = None,
    pace: Callable[[int], Awaitable[None]] | None = None,
    delivery: SinkDelivery | None = None,
    output: Output | None = None,
) -> None:
    """Join ``group`` of ``topic`` as ``member`` and process every batch until the end.

    Args:
        group: The group, here or on another node.
        member: The member's name in the group.
        topic: The topic the group reads.
        processor: Folds the batches (shared by the consumer's instances).
        tally: Counts and checks what the consumer processed.
        max_records: The most records handed over at once.
        origin: The run's clock at event time 0 (for latency).
        monitor: Called after every batch (keep it cheap).
        epoch: Asks for an epoch and waits until it is written, when the run writes epochs:
            a member of a group on another node commits only what an epoch holds, and leaves
            once one holds everything it processed.
        pace: Awaited after every batch with its number of records (a test's way to slow
            the member down).
        delivery: How records are handed to the processor when it is a sink (retried,
            dead-lettered); None hands them once.
        output: Where the processor writes records, when it writes any (the ``topic``
            relay): each batch enters it in the same step as it is committed.
    """
    read = functools.partial(_read, topic=topic, processor=processor, tally=tally)
    steps = _Steps(origin, monitor, pace, delivery, output)
    try:
        if isinstance(group, RemoteGroup):
            async with group.join(
                member,
                auto_commit=False,
                max_records=max_records,
                durable_commits=epoch is not None,
            ) as remote:
                await read(remote, steps=steps)
                if epoch is not None:
                    await epoch()
        else:
            async with group.join(member, auto_commit=False, max_records=max_records) as local:
                await read(local, steps=steps)
    except BaseException:
        if output is not None:
            output.left(graceful=False)
        raise
    if output is not None:
        output.left(graceful=True)


@attrs.frozen
class _Steps:
    # What a member does besides folding batches (see ``consume``).
    origin: float
    monitor: Callable[[], None] | None
    pace: Callable[[int], Awaitable[None]] | None
    delivery: SinkDelivery | None
    output: Output | None


async def _read(
    member: Consumer | RemoteConsumer,
    *,
    topic: str,
    processor: Processor,
    tally: ConsumerTally,
    steps: _Steps,
) -> None:
    origin, monitor, pace, delivery = steps.origin, steps.monitor, steps.pace, steps.delivery
    output = steps.output
    fold = folder(processor)
    sink = processor if isinstance(processor, Sink) else None
    worker = processor if isinstance(processor, Worker) else None
    last_write = -math.inf

    def done(written: RecordBatch) -> None:  # delivered, or dead-lettered: committed
        tally.observe(topic, written, trio.current_time() - origin)
        member.commit_nowait({written.partition: written.next_offset})

    def passed_on(part: RecordBatch) -> None:  # in the output's ring: counted, committed
        fold(part.values)
        done(part)

    def done_up_to(partition: int) -> int:  # what the members here processed
        if isinstance(member, RemoteConsumer):
            return member.group.processed.get(partition, 0)
        return 0

    async for batch in member.batches():
        # Counted once processed: a processor that crashes on a batch leaves it uncounted,
        # as the positions leave it unprocessed.
        if sink is not None:
            await trio.sleep_until(last_write + sink.linger)  # records gather meanwhile
            last_write = trio.current_time()
            batches = _ready_too(member, batch)
            if delivery is None:
                await sink.write(batches)
                for written in batches:
                    done(written)
            else:
                await delivery.write(batches, done)
        elif worker is not None:
            assert output is not None, f"consumer of {topic!r}: a worker writes to its output"
            await worker.work(batch, output.write, _committer(member, topic, tally, batch, origin))
        elif output is not None:
            await output.put(batch, passed_on, done_up_to)
        else:
            fold(batch.values)
            tally.observe(topic, batch, trio.current_time() - origin)
            member.commit_nowait()
        if monitor is not None:
            monitor()
        if pace is not None:
            await pace(len(batch.values))


def _committer(
    member: Consumer | RemoteConsumer,
    topic: str,
    tally: ConsumerTally,
    batch: RecordBatch,
    origin: float,
) -> Callable[[int], None]:
    # A worker's commit of the records of ``batch`` up to an offset: counted as processed
    # and committed together.
    counted = batch.base_offset

    def commit(offset: int) -> None:
        nonlocal counted
        if offset <= counted:
            return
        part = batch.slice(counted - batch.base_offset, offset - batch.base_offset)
        counted = offset
        tally.observe(topic, part, trio.current_time() - origin)
        member.commit_nowait({batch.partition: offset})

    return commit


def _ready_too(member: Consumer | RemoteConsumer, first: RecordBatch) -> list[RecordBatch]:
    # ``first`` and the batches ready for the member now, up to SINK_RECORDS records: a sink
    # writes them at once (one insert for a thousand one-event requests, not a thousand).
    batches, records = [first], len(first.values)
    if not isinstance(member, Consumer):
        return batches
    # A fetch after a rebalance lets go of the partitions taken away, ``first``'s among
    # them perhaps: its records would go to their new owner as well as to the sink.
    while records < SINK_RECORDS and not member.revoking:
        try:
            batch = member.get_batch_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        batches.append(batch)
        records += len(batch.values)
    return batches
