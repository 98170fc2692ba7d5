from __future__ import annotations

from collections import defaultdict

import pytest
import trio
import trio.testing

from actors import (
    CommitError,
    ConfigurationError,
    ConsumerGroup,
    Record,
    RecordBatch,
    Topic,
    assign_range,
    assign_round_robin,
    open_producer,
)


def test_range_assignment_gives_contiguous_ranges_in_name_order() -> None:
    assert assign_range(5, ["b", "a"]) == {"a": [0, 1, 2], "b": [3, 4]}
    assert assign_range(2, ["a", "b", "c"]) == {"a": [0], "b": [1], "c": []}
    assert assign_range(3, []) == {}


def test_round_robin_assignment_deals_partitions() -> None:
    assert assign_round_robin(5, ["b", "a"]) == {"a": [0, 2, 4], "b": [1, 3]}


def test_unknown_strategy_is_refused() -> None:
    topic = Topic("t", partitions=2, capacity=10)
    with pytest.raises(ConfigurationError, match="unknown assignment strategy 'sticky'"):
        ConsumerGroup("g", topic, strategy="sticky")


async def fill(topic: Topic, count: int, keys: int = 7) -> None:
    async with open_producer(topic, max_batch=5) as producer:
        for i in range(count):
            await producer.send(Record(f"k{i % keys}", i))


async def test_two_groups_read_the_same_records_independently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=3, capacity=20)
    groups = [ConsumerGroup("a", topic), ConsumerGroup("b", topic)]
    seen: dict[str, list[int]] = {"a": [], "b": []}

    async def consume(group: ConsumerGroup, delay: float) -> None:
        async with group.join() as consumer:
            async for record in consumer:
                seen[group.name].append(record.value)
                await trio.sleep(delay)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, groups[0], 0.001)
        nursery.start_soon(consume, groups[1], 0.01)
        nursery.start_soon(fill, topic, 300)
    assert sorted(seen["a"]) == list(range(300))
    assert sorted(seen["b"]) == list(range(300))
    for stats in topic.statistics():
        assert stats.lag == {"a": 0, "b": 0}
        assert stats.depth == 0


async def test_record_iterator_carries_positions_and_ends_when_drained() -> None:
    topic = Topic("t", partitions=1, capacity=10)
    group = ConsumerGroup("g", topic)
    async with group.join() as consumer:
        async with open_producer(topic) as producer:
            await producer.send_many([Record("k", i, float(i)) for i in range(3)])
        got = [record async for record in consumer]
    assert [(r.topic, r.partition, r.offset, r.value, r.timestamp) for r in got] == [
        ("t", 0, 0, 0, 0.0),
        ("t", 0, 1, 1, 1.0),
        ("t", 0, 2, 2, 2.0),
    ]
    assert group.statistics().committed == (3,)


async def test_join_rebalances_and_nothing_is_delivered_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=4, capacity=8)
    group = ConsumerGroup("g", topic)
    delivered: dict[str, list[tuple[int, int]]] = defaultdict(list)
    assignments: dict[str, list[tuple[int, ...]]] = defaultdict(list)

    async def member(name: str) -> None:
        async with group.join(name) as consumer:
            async for record in consumer:
                assert record.partition is not None
                assert record.offset is not None
                delivered[name].append((record.partition, record.offset))
                if consumer.assignment not in assignments[name][-1:]:
                    assignments[name].append(consumer.assignment)
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(member, "m1")
        nursery.start_soon(fill, topic, 400)
        await trio.sleep(0.5)
        nursery.start_soon(member, "m2")
    everything = delivered["m1"] + delivered["m2"]
    assert len(everything) == len(set(everything)) == 400
    assert assignments["m1"][0] == (0, 1, 2, 3)
    assert (0, 1) in assignments["m1"]
    assert assignments["m2"] == [(2, 3)]
    stats = group.statistics()
    assert (stats.joins, stats.leaves, stats.crashes) == (2, 2, 0)


async def test_leave_hands_partitions_over_without_loss(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=2, capacity=10)
    group = ConsumerGroup("g", topic)
    delivered: list[tuple[int, int]] = []

    async def quitter() -> None:
        async with group.join("a") as consumer:
            count = 0
            async for record in consumer:
                delivered.append((record.partition or 0, record.offset or 0))
                count += 1
                if count == 7:
                    break  # leaves mid-batch: processed records are committed, others go on

    async def stayer() -> None:
        async with group.join("b") as consumer:
            async for record in consumer:
                delivered.append((record.partition or 0, record.offset or 0))
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stayer)
        nursery.start_soon(quitter)
        nursery.start_soon(fill, topic, 200)
    assert len(delivered) == len(set(delivered)) == 200


async def test_crashed_member_records_are_redelivered_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=2, capacity=100)
    group = ConsumerGroup("g", topic)
    per_key: dict[str, list[int]] = defaultdict(list)
    crashed_batch: list[int] = []

    class Boom(Exception):
        pass

    async def crasher() -> None:
        async with group.join("a") as consumer:
            batch = await consumer.get_batch()
            crashed_batch.extend(r.value for r in batch.records)
            raise Boom

    async def survivor(task_status: trio.TaskStatus[None]) -> None:
        async with group.join("b") as consumer:
            task_status.started()
            async for batch in consumer.batches():
                for record in batch.records:
                    per_key[record.key].append(record.value)  # type: ignore[index]

    await fill(topic, 100)
    async with trio.open_nursery() as nursery:
        await nursery.start(survivor)
        with pytest.raises(Boom):
            await crasher()
    assert crashed_batch  # the crasher really had records it never committed
    values = sorted(v for vs in per_key.values() for v in vs)
    assert values == list(range(100))  # nothing lost, each exactly once to the survivor
    for key, vs in per_key.items():
        assert vs == sorted(vs), key
    assert group.statistics().crashes == 1


async def test_manual_commit_and_its_errors() -> None:
    topic = Topic("t", partitions=2, capacity=10)
    group = ConsumerGroup("g", topic)
    await fill(topic, 8, keys=1)  # one key: every record in one partition
    partition = topic.partitioner.partition_for("k0")
    async with group.join(auto_commit=False, max_records=3) as consumer:
        batch = await consumer.get_batch()
        assert batch.next_offset == 3
        with pytest.raises(CommitError, match="only offsets up to 3 were delivered"):
            await consumer.commit({partition: 4})
        with pytest.raises(CommitError, match="has no partition 9"):
            await consumer.commit({9: 1})
        await consumer.commit({partition: 2})
        batch = await consumer.get_batch()
        assert (batch.base_offset, batch.next_offset) == (3, 5)  # the stored batch ends at 5
        await consumer.commit()
        assert group.statistics().committed[partition] == 5
        with pytest.raises(CommitError):
            await consumer.commit({partition: 1})


async def test_uncommitted_records_go_to_next_member_after_manual_leave() -> None:
    topic = Topic("t", partitions=1, capacity=10)
    group = ConsumerGroup("g", topic)
    await fill(topic, 6, keys=1)
    async with group.join(auto_commit=False) as consumer:
        first = await consumer.get_batch()
    async with group.join() as consumer:
        again: RecordBatch = await consumer.get_batch()
    assert again.base_offset == first.base_offset == 0


async def test_member_name_must_be_unique() -> None:
    topic = Topic("t", partitions=1, capacity=10)
    group = ConsumerGroup("g", topic)
    async with group.join("x"):
        with pytest.raises(ConfigurationError, match="already has a member named 'x'"):
            async with group.join("x"):
                pass  # pragma: no cover
