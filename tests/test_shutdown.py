"""A whole pipeline under one supervisor: clean shutdown, and what a cancelled run leaves."""

from __future__ import annotations

import trio
import trio.testing

from actors import ConsumerGroup, Record, Topic, open_producer, open_supervisor


def build() -> tuple[Topic, ConsumerGroup, dict[int, int]]:
    topic = Topic("views", partitions=3, capacity=64)
    return topic, ConsumerGroup("stats", topic), {}


async def produce(topic: Topic, count: int) -> None:
    async with open_producer(topic, max_batch=16, linger=0.01) as producer:
        for i in range(count):
            await producer.send(Record(i % 10, i, trio.current_time()))
            if i % 50 == 0:
                await trio.sleep(0.1)


async def consume(group: ConsumerGroup, counts: dict[int, int]) -> None:
    async with group.join() as consumer:
        async for record in consumer:
            counts[record.key] = counts.get(record.key, 0) + 1  # type: ignore[index]
            await trio.sleep(0.001)


async def test_pipeline_drains_and_exits_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    topic, group, counts = build()
    async with open_supervisor() as supervisor:
        supervisor.start_soon("consumer-1", consume, group, counts)
        supervisor.start_soon("consumer-2", consume, group, counts)
        supervisor.start_soon("producer", produce, topic, 1000)
    assert counts == {key: 100 for key in range(10)}
    assert supervisor.statistics().running == ()
    assert supervisor.crashes == ()
    for stats in topic.statistics():
        assert stats.closed
        assert stats.depth == 0
        assert stats.lag == {"stats": 0}
    assert group.statistics().assignment == {}


async def test_cancelled_run_commits_only_what_was_processed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic, group, counts = build()
    with trio.move_on_after(3):
        async with open_supervisor() as supervisor:
            supervisor.start_soon("consumer", consume, group, counts)
            supervisor.start_soon("producer", produce, topic, 100_000)
    processed = sum(counts.values())
    committed = sum(group.statistics().committed)
    assert 0 < committed <= processed
    # Whatever was processed but not committed is still held, to be delivered again.
    for stats in topic.statistics():
        assert stats.start_offset == stats.committed["stats"]
        assert stats.depth == stats.end_offset - stats.start_offset
    assert not topic.closed  # a cancelled producer does not end the stream
