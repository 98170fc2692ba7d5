"""Dead letters kept in a state folder: read from its newest epoch, sent back to the sink of
the consumer that gave up on them (``replay``), or removed (``purge``).

Dead letters live in the rings of dead-letter topics, so they are in every epoch. A replay
or a purge changes the newest epoch into a new one: the letters it handled leave their
ring, and a replay hands them first to the consumer's sink, with the consumer's retries and
breaker; those that fail again go back to the ring with their new error. Nothing else of the
epoch changes, so the run resumes from it as from the one before. It needs the state folder
to itself: a running pipeline holds it, and must be stopped first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import attrs
import msgspec

from actors import PartitionState, RecordBatch

from .checkpoint import CheckpointStore, EpochInfo, Snapshot
from .delivering import DeadLetter
from .pipeline import Pipeline
from .schema import Topology
from .serving import open_sink
from .snapshot import (
    PartitionContents,
    PartitionPart,
    ProcessorState,
    capture_parts,
    decode,
    encode,
)

Parts = dict[tuple[str, str], bytes]


@attrs.frozen
class Letter:
    """A dead letter where it is kept: its dead-letter topic, partition and offset."""

    topic: str
    partition: int
    offset: int
    letter: DeadLetter


def dead_letter_topics(topology: Topology) -> dict[str, list[str]]:
    """By dead-letter topic, the consumers that send to it."""
    topics: dict[str, list[str]] = {}
    for name, consumer in topology.consumers.items():
        if consumer.dead_letter is not None:
            topics.setdefault(consumer.dead_letter, []).append(name)
    return topics


def read_letters(topology: Topology, parts: Mapping[tuple[str, str], bytes]) -> list[Letter]:
    """Every dead letter of an epoch's ``parts``, by topic, partition and offset (a node's
    epoch holds those of the topics on that node)."""
    letters: list[Letter] = []
    for topic in sorted(dead_letter_topics(topology)):
        for index in range(topology.topics[topic].partitions):
            state = _partition(parts, topic, index)
            if state is None:
                continue
            for batch in state.batches:
                letters.extend(
                    Letter(topic, index, batch.base_offset + i, value)
                    for i, value in enumerate(batch.values)
                )
    return letters


def _partition(parts: Mapping[tuple[str, str], bytes], topic: str, index: int) -> Any:
    data = parts.get(("partition", f"{topic}/{index}"))
    if data is None:
        return None
    part = decode("partition", data, DeadLetter)
    assert isinstance(part, PartitionPart)
    return part.state(topic, index, DeadLetter)


def without(
    topology: Topology, parts: Mapping[tuple[str, str], bytes], taken: Iterable[Letter]
) -> Parts:
    """``parts`` with the letters ``taken`` out of their rings. The letters left keep their
    order and end where the ring ended, so new letters go on after them."""
    gone = {(t.topic, t.partition, t.offset) for t in taken}
    changed = dict(parts)
    for topic in dead_letter_topics(topology):
        for index in range(topology.topics[topic].partitions):
            state = _partition(parts, topic, index)
            if state is None:
                continue
            kept = [
                (key, value, stamp)
                for batch in state.batches
                for i, (key, value, stamp) in enumerate(
                    zip(batch.keys, batch.values, batch.timestamps, strict=True)
                )
                if (topic, index, batch.base_offset + i) not in gone
            ]
            start = state.end_offset - len(kept)
            batches = []
            if kept:
                keys, values, stamps = zip(*kept, strict=True)
                batches.append(RecordBatch(topic, index, start, list(keys), list(values), stamps))
            rewritten = PartitionState(
                start_offset=start,
                end_offset=state.end_offset,
                committed=dict(state.committed),
                batches=batches,
                peak_depth=state.peak_depth,
                sequences=dict(state.sequences),
            )
            changed["partition", f"{topic}/{index}"] = encode(PartitionPart.of(rewritten))
    return changed


def write_epoch(
    store: CheckpointStore, info: EpochInfo, parts: Parts, ring_records: int
) -> EpochInfo:
    """Write ``parts`` as the epoch after ``info``, with its figures and segments (and
    completed if it was).

    Raises:
        CheckpointError: It could not be written; the epochs before are intact.
    """
    snapshot = Snapshot(info.sim_time, info.events_produced, ring_records, parts, info.final)
    written = store.write(snapshot, segments=info.segments)
    if info.completed:
        store.mark_completed(written.epoch)
    return written


@attrs.define
class Replayed:
    """What a replay did, per consumer."""

    consumer: str
    letters: int
    """Dead letters handed back to the sink."""
    delivered: int = 0
    dead_lettered: int = 0
    """Those the sink refused again (or whose attempts ran out): back among the dead letters."""
    kept: int = 0
    """Those not tried: the sink stayed away (attempts ran out) before their turn."""


REPLAY_RECORDS = 10_000
"""The most records a replay hands its sink at once (unless the sink says fewer:
``max_records``)."""


def runs(
    letters: Sequence[Letter], value_type: Callable[[str], Any], limit: int = REPLAY_RECORDS
) -> list[tuple[RecordBatch, list[DeadLetter]]]:
    """``letters`` (of one consumer) as batches of their original topics: one per run of
    consecutive offsets of one partition, up to ``limit`` records, values decoded as their
    topic's events, in order; each with the letters it holds."""
    ordered = sorted(letters, key=lambda t: (t.letter.topic, t.letter.partition, t.letter.offset))
    batches: list[tuple[RecordBatch, list[DeadLetter]]] = []
    group: list[DeadLetter] = []

    def close() -> None:
        if group:
            first = group[0]
            decoder = msgspec.msgpack.Decoder(value_type(first.topic))
            batch = RecordBatch(
                first.topic,
                first.partition,
                first.offset,
                [d.key for d in group],
                [decoder.decode(d.value) for d in group],
                [d.first_failed for d in group],
            )
            batches.append((batch, list(group)))
            group.clear()

    for item in ordered:
        letter = item.letter
        if group and (
            letter.topic != group[-1].topic
            or letter.partition != group[-1].partition
            or letter.offset != group[-1].offset + 1
            or len(group) >= limit
        ):
            close()
        group.append(letter)
    close()
    return batches


async def replay(
    pipeline: Pipeline,
    letters: Sequence[Letter],
    on_retry: Callable[[str], None] | None = None,
) -> tuple[list[Replayed], Parts]:
    """Hand ``letters`` to the sinks of their consumers in ``pipeline`` (built from an epoch
    without them), each with its consumer's retries; those refused again become dead letters
    again. Return what happened per consumer, and the parts that changed (the dead-letter
    rings and the sinks' states).

    Raises:
        RingflowError: A sink cannot connect.
    """
    by_consumer: dict[str, list[Letter]] = {}
    for item in letters:
        by_consumer.setdefault(item.letter.consumer, []).append(item)
    wall = pipeline.topology.http is not None
    info = pipeline.restored_from
    results = []
    async with AsyncExitStack() as stack:
        for consumer in sorted(by_consumer):
            await open_sink(stack, pipeline, consumer)
        for consumer, taken in sorted(by_consumer.items()):
            delivery = pipeline.deliveries[consumer]
            delivery.now = time.time if wall or info is None else (lambda: info.sim_time)
            delivery.on_retry = on_retry
            result = Replayed(consumer, len(taken))
            before = delivery.dead_lettered

            def done(batch: RecordBatch, result: Replayed = result) -> None:
                result.delivered += len(batch.values)

            limit = getattr(pipeline.processors[consumer], "max_records", REPLAY_RECORDS)
            pairs = runs(taken, pipeline.value_type, limit)
            delivery.earlier = {(d.topic, d.partition, d.offset): d for _, g in pairs for d in g}
            for index, (batch, _) in enumerate(pairs):
                given_up = delivery.dead_lettered
                await delivery.write([batch], done, replaying=True)
                failure = delivery.last_given_up
                if delivery.dead_lettered > given_up and failure is not None and failure.retryable:
                    # The sink stayed away: the others are not tried, and kept as they were.
                    rest = [d for _, g in pairs[index + 1 :] for d in g]
                    if rest:
                        await delivery.keep(rest)
                    result.kept = len(rest)
                    break
            result.dead_lettered = delivery.dead_lettered - before
            result.delivered -= result.dead_lettered
            results.append(result)
    states: dict[tuple[str, str], Any] = {
        ("partition", f"{name}/{p.index}"): PartitionContents(p, name, DeadLetter)
        for name in dead_letter_topics(pipeline.topology)
        if name in pipeline.topics
        for p in pipeline.topics[name].partitions
    }
    kinds = pipeline.registry.processors
    for consumer in by_consumer:
        kind = kinds[pipeline.topology.consumers[consumer].processor]
        states["processor", consumer] = ProcessorState(
            pipeline.processors[consumer], kind.state_type
        )
    return results, capture_parts(states)
