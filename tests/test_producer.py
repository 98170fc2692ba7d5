from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import (
    ConfigurationError,
    ConsumerGroup,
    Record,
    Topic,
    TopicClosedError,
    open_producer,
    stable_hash,
)


def test_stable_hash_is_fixed_across_runs() -> None:
    # Fixed values: a change here would move every key to another partition.
    assert stable_hash("video-42") == 4087966632
    assert stable_hash(7) == stable_hash("7")


async def test_a_trickle_is_sent_after_the_linger(autojump_clock: trio.testing.MockClock) -> None:
    topic = Topic("t", partitions=1, capacity=100)
    group = ConsumerGroup("g", topic)
    async with group.join() as consumer, open_producer(topic, max_batch=50, linger=0.25) as p:
        await trio.sleep(1)
        await p.send(Record(None, "a"))
        await p.send(Record(None, "b"))
        batch = await consumer.get_batch()
        assert trio.current_time() == pytest.approx(1.25)
        assert [r.value for r in batch.records] == ["a", "b"]
        assert p.statistics().linger_flushes == 1


async def test_full_batches_are_sent_at_once(autojump_clock: trio.testing.MockClock) -> None:
    topic = Topic("t", partitions=1, capacity=100)
    group = ConsumerGroup("g", topic)
    async with group.join() as consumer, open_producer(topic, max_batch=4, linger=10) as p:
        for i in range(9):
            await p.send(Record(None, i))
        sizes = [len(await consumer.get_batch()), len(await consumer.get_batch())]
        assert sizes == [4, 4]
        assert trio.current_time() == 0
        assert p.statistics().buffered == 1


async def test_keys_keep_their_order_across_partitions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=4, capacity=16)
    group = ConsumerGroup("g", topic)
    seen: dict[str, list[int]] = {}

    async def consume() -> None:
        async with group.join() as consumer:
            async for record in consumer:
                seen.setdefault(record.key, []).append(record.value)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        nursery.start_soon(consume)
        async with open_producer(topic, max_batch=8) as producer:
            await producer.send_many([Record(f"k{i % 13}", i) for i in range(500)])
    assert sum(len(v) for v in seen.values()) == 500
    for key, values in seen.items():
        assert values == sorted(values), key
        partitions = {topic.partitioner.partition_for(key)}
        assert len(partitions) == 1


async def test_closing_the_last_producer_ends_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=2, capacity=10)
    group = ConsumerGroup("g", topic)
    got: list[int] = []

    async def produce(start: int) -> None:
        async with open_producer(topic, max_batch=3) as producer:
            for i in range(start, start + 20):
                await producer.send(Record(None, i))
                await trio.sleep(0.01 * (start + 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce, 0)
        nursery.start_soon(produce, 100)
        async with group.join() as consumer:
            got.extend([record.value async for record in consumer])
    assert sorted(got) == list(range(20)) + list(range(100, 120))
    assert topic.closed


async def test_a_crashed_producer_does_not_close_the_topic() -> None:
    topic = Topic("t", partitions=1, capacity=10)
    with pytest.raises(ValueError, match="boom"):
        async with open_producer(topic):
            raise ValueError("boom")
    assert not topic.closed


async def test_sending_to_a_closed_topic_is_refused() -> None:
    topic = Topic("t", partitions=1, capacity=10)
    ConsumerGroup("g", topic)
    async with open_producer(topic) as producer:
        await producer.send(Record(None, 1))
    assert topic.closed
    with pytest.raises(TopicClosedError, match="topic 't' is closed"):
        async with open_producer(topic):
            pass  # pragma: no cover
    with pytest.raises(TopicClosedError):
        await topic.partitions[0].send([Record(None, 2)])
    assert topic.statistics()[0].end_offset == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_batch": 0}, "max_batch must be at least 1"), ({"linger": -1}, "linger must be")],
)
async def test_bad_producer_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    topic = Topic("t", partitions=1, capacity=10)
    with pytest.raises(ConfigurationError, match=message):
        async with open_producer(topic, **kwargs):  # type: ignore[arg-type]
            pass  # pragma: no cover


@pytest.mark.parametrize("partitions", [0, -3])
def test_partition_count_below_one_is_refused(partitions: int) -> None:
    with pytest.raises(ConfigurationError, match="at least 1 partition"):
        Topic("t", partitions=partitions)


async def test_leaving_waits_for_a_batch_the_linger_timer_has_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=1, capacity=2)
    group = ConsumerGroup("g", topic)
    got: list[int] = []

    async def consume() -> None:
        async with group.join() as consumer:
            got.extend([record.value async for record in consumer])

    async with (
        trio.open_nursery() as nursery,
        open_producer(topic, max_batch=2, linger=0.1) as producer,
    ):
        await producer.send_many([Record(None, 1), Record(None, 2)])  # fills the ring
        await producer.send(Record(None, 3))  # the linger timer takes it and blocks
        await trio.sleep(1)
        assert topic.partitions[0].statistics().senders_waiting == 1
        assert producer.statistics().buffered == 0
        nursery.start_soon(consume)
    assert got == [1, 2, 3]


async def test_an_interrupted_producer_keeps_what_no_partition_took_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A ring that makes room only once an epoch is written: a source pausing for that epoch
    # interrupts its producers, whose waiting sends (its own and the linger timer's) give
    # their batches back; the buffers then hold every record not accepted, in order.
    topic = Topic("t", partitions=2, capacity=2)
    group = ConsumerGroup("g", topic)
    got: list[int] = []

    async def consume() -> None:
        async with group.join() as consumer:
            got.extend([record.value async for record in consumer])

    partition_for = topic.partitioner.partition_for
    a = "a"
    b = next(k for k in "bcdefgh" if partition_for(k) != partition_for(a))
    first = topic.partitioner.partition_for(a)
    async with (
        trio.open_nursery() as outer,
        open_producer(topic, max_batch=2, linger=0.1) as producer,
    ):
        await producer.send_many([Record(a, 0), Record(a, 1)])  # fills a's partition's ring
        await producer.send(Record(a, 2))  # the linger timer takes it and waits for room
        await trio.sleep(1)
        assert topic.partitions[first].statistics().senders_waiting == 1
        async with trio.open_nursery() as nursery:
            # Buffers both shares, then sends the full ones in partition order: it waits at
            # a's (the timer has a batch in flight there).
            nursery.start_soon(
                producer.send_many, [Record(a, 3), Record(a, 4), Record(b, 10), Record(b, 11)]
            )
            await trio.testing.wait_all_tasks_blocked()
            producer.interrupt()
        await producer.wait_idle()
        assert topic.partitions[first].statistics().senders_waiting == 0
        buffered = [[v for chunk in part for v in chunk.values] for part in producer.buffered()]
        if first:
            buffered.reverse()
        # b's share went first if b's partition comes first, and found room.
        assert buffered == [[2, 3, 4], [] if first else [10, 11]]
        await producer.flush()  # interrupted: sends nothing
        assert producer.statistics().buffered == sum(map(len, buffered))
        producer.resume()
        outer.start_soon(consume)
    assert [v for v in got if v < 10] == [0, 1, 2, 3, 4]
    assert sorted(v for v in got if v >= 10) == [10, 11]
