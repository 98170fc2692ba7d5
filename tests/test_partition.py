from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing

from actors import (
    BatchTooLargeError,
    Columns,
    CommitError,
    ConfigurationError,
    ConsumerGroup,
    Partition,
    Record,
    SequenceError,
    Topic,
    TopicClosedError,
    admit_all,
)

from .conftest import records


def test_send_nowait_fills_ring_exactly_to_capacity() -> None:
    async def main() -> None:
        partition = Partition("t", 0, capacity=10)
        partition.register_group("g", trio.lowlevel.ParkingLot())
        assert partition.send_nowait(records(4)) == 0
        assert partition.send_nowait(records(6)) == 4
        with pytest.raises(trio.WouldBlock):
            partition.send_nowait(records(1))
        stats = partition.statistics()
        assert (stats.depth, stats.end_offset, stats.peak_depth) == (10, 10, 10)

    trio.run(main)


async def test_send_blocks_at_capacity_and_resumes_when_room_is_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    partition = Partition("t", 0, capacity=5)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send(records(5))
    accepted: list[int] = []

    async def sender() -> None:
        accepted.append(await partition.send(records(2)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.sleep(1)
        assert accepted == []
        partition.commit("g", 1)  # one record of room: not enough for two
        await trio.sleep(1)
        assert accepted == []
        partition.commit("g", 2)  # now two
    assert accepted == [5]
    stats = partition.statistics()
    assert stats.depth == 5
    assert stats.blocked_seconds == pytest.approx(2.0)
    assert stats.senders_waiting == 0


async def test_blocked_senders_are_served_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    partition = Partition("t", 0, capacity=3)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send(records(3))
    order: list[str] = []

    async def sender(name: str, count: int, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await partition.send(records(count))
        order.append(name)

    async with trio.open_nursery() as nursery:
        await nursery.start(sender, "big", 3)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(sender, "small", 1)
        await trio.testing.wait_all_tasks_blocked()
        partition.commit("g", 1)  # room for the small one only, but the big one came first
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        partition.commit("g", 3)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["big"]
        partition.commit("g", 4)
    assert order == ["big", "small"]


async def test_cancelled_send_accepts_nothing(autojump_clock: trio.testing.MockClock) -> None:
    partition = Partition("t", 0, capacity=2)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send(records(2))
    with trio.move_on_after(5) as scope:
        await partition.send(records(1))
    assert scope.cancelled_caught
    partition.commit("g", 2)
    stats = partition.statistics()
    assert (stats.end_offset, stats.depth, stats.senders_waiting) == (2, 0, 0)
    assert stats.blocked_seconds == pytest.approx(5.0)


async def test_dynamic_mode_blocks_without_consumer_and_releases_when_one_attaches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=1, capacity=None)
    group = ConsumerGroup("g", topic)
    sent_at: list[float] = []

    async def sender() -> None:
        await topic.partitions[0].send(records(100_000))
        sent_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.sleep(3)
        assert sent_at == []
        assert topic.partitions[0].statistics().senders_waiting == 1
        async with group.join() as consumer:
            batch = await consumer.get_batch()
    assert sent_at == [3.0]
    assert len(batch) == 100_000
    # Once nobody is attached again, sends block again.
    with pytest.raises(trio.WouldBlock):
        topic.partitions[0].send_nowait(records(1))


async def test_records_are_kept_until_every_group_commits() -> None:
    partition = Partition("t", 0, capacity=4)
    partition.register_group("fast", trio.lowlevel.ParkingLot())
    partition.register_group("slow", trio.lowlevel.ParkingLot())
    await partition.send(records(4))
    partition.commit("fast", 4)
    assert partition.statistics().depth == 4
    with pytest.raises(trio.WouldBlock):
        partition.send_nowait(records(1))
    partition.commit("slow", 3)
    assert partition.statistics().depth == 1
    assert partition.statistics().lag == {"fast": 0, "slow": 1}
    assert partition.send_nowait(records(3)) == 4


async def test_a_batch_every_group_committed_is_let_go_at_once() -> None:
    class Payload:  # a value whose life can be watched
        pass

    partition = Partition("t", 0, capacity=4)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    payload = Payload()
    alive = weakref.ref(payload)
    await partition.send([Record(None, payload)])  # type: ignore[arg-type]
    del payload
    await partition.send(records(1))
    gc.collect()
    assert alive() is not None  # held until committed
    partition.commit("g", 1)
    gc.collect()
    assert alive() is None  # not kept until the ring's list is next cut
    assert partition.read(1, 10).values == [0]


async def test_read_returns_slices_from_any_offset() -> None:
    partition = Partition("t", 0)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    partition.attach()
    await partition.send(records(5))
    await partition.send(records(5, start=5))
    batch = partition.read(3, max_records=4)
    assert batch is not None
    assert (batch.base_offset, [r.value for r in batch.records]) == (3, [3, 4])
    batch = partition.read(5)
    assert batch is not None
    assert [r.value for r in batch.records] == [5, 6, 7, 8, 9]
    assert partition.read(10) is None


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_refused(capacity: int) -> None:
    with pytest.raises(ConfigurationError, match="capacity must be at least 1"):
        Partition("t", 0, capacity=capacity)


async def test_batch_larger_than_capacity_is_refused() -> None:
    partition = Partition("t", 0, capacity=3)
    with pytest.raises(BatchTooLargeError, match="batch of 4 records cannot fit"):
        await partition.send(records(4))
    assert partition.statistics().end_offset == 0


async def test_send_to_closed_partition_fails_and_keeps_accepted_records() -> None:
    partition = Partition("t", 0, capacity=10)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send(records(3))
    partition.close()
    with pytest.raises(TopicClosedError, match="closed"):
        await partition.send(records(1))
    batch = partition.read(0)
    assert batch is not None
    assert [r.value for r in batch.records] == [0, 1, 2]


async def test_close_fails_waiting_senders(autojump_clock: trio.testing.MockClock) -> None:
    partition = Partition("t", 0, capacity=1)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send(records(1))
    errors: list[BaseException] = []

    async def sender() -> None:
        try:
            await partition.send(records(1))
        except TopicClosedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        partition.close()
    assert len(errors) == 1
    assert partition.statistics().end_offset == 1


async def test_commit_beyond_end_or_backwards_is_refused() -> None:
    partition = Partition("t", 0, capacity=10)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send(records(3))
    with pytest.raises(CommitError, match="between its last commit 0 and the end 3"):
        partition.commit("g", 4)
    partition.commit("g", 2)
    with pytest.raises(CommitError):
        partition.commit("g", 1)
    assert partition.statistics().committed == {"g": 2}


async def test_retention_keeps_committed_records_readable() -> None:
    partition = Partition("t", 0, capacity=4, retention=3)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    for start in range(0, 8, 2):
        await partition.send(records(2, start=start))
        partition.commit("g", start + 2)
    stats = partition.statistics()
    assert (stats.depth, stats.start_offset) == (0, 8)
    assert partition.retained_offset == 4  # whole stored batches of 2: 4-5 and 6-7 are kept
    batch = partition.read(4)
    assert batch is not None
    assert [r.value for r in batch.records] == [4, 5]
    with pytest.raises(CommitError, match="no longer held"):
        partition.read(3)
    with pytest.raises(ConfigurationError, match="retention must be 0 or more"):
        Partition("t", 0, retention=-1)


async def test_snapshot_and_restore_carry_records_offsets_and_commits() -> None:
    partition = Partition("t", 0, capacity=10)
    partition.register_group("a", trio.lowlevel.ParkingLot())
    partition.register_group("b", trio.lowlevel.ParkingLot())
    await partition.send(records(3))
    await partition.send(records(3, start=3))
    partition.commit("a", 5)
    partition.commit("b", 4)
    state = partition.snapshot()
    assert (state.start_offset, state.end_offset, state.committed) == (4, 6, {"a": 5, "b": 4})
    restored = Partition("t", 0, capacity=10)
    restored.restore(state)
    lot = trio.lowlevel.ParkingLot()
    assert restored.register_group("b", lot) == 4
    batch = restored.read(4)
    assert batch is not None
    assert list(batch.values) == [4, 5]
    assert await restored.send(records(1, start=6)) == 6
    assert restored.statistics().depth == 3
    with pytest.raises(RuntimeError, match="fresh partition"):
        restored.restore(state)


def columns(count: int, start: int = 0) -> Columns:
    return Columns([None] * count, list(range(start, start + count)), [0.0] * count)


async def test_sequenced_sends_skip_what_was_already_accepted() -> None:
    partition = Partition("t", 0, capacity=100)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    assert await partition.send_sequenced(columns(5), "p", 0) == 5
    # A resend after a lost acknowledgement overlaps what was accepted: only the rest counts.
    assert await partition.send_sequenced(columns(8), "p", 0) == 3
    assert await partition.send_sequenced(columns(3, 5), "p", 5) == 0
    assert await partition.send_sequenced(columns(2), "other", 0) == 2
    batch = partition.read(0, 100)
    values: list[int] = []
    offset = 0
    while (batch := partition.read(offset)) is not None:
        values.extend(batch.values)
        offset = batch.next_offset
    assert values == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert (partition.next_sequence("p"), partition.next_sequence("other")) == (8, 2)
    with pytest.raises(SequenceError, match="records 8 to 9 are missing"):
        await partition.send_sequenced(columns(1), "p", 10)
    assert partition.end_offset == 10


async def test_a_blocked_sequenced_send_skips_duplicates_accepted_while_it_waited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    partition = Partition("t", 0, capacity=4)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send_sequenced(columns(4), "p", 0)
    results: dict[str, int] = {}

    async def send(name: str) -> None:
        results[name] = await partition.send_sequenced(columns(3, 4), "p", 4)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "first")
        await trio.sleep(1)
        nursery.start_soon(send, "again")  # the same records, from a reconnected producer
        await trio.sleep(1)
        assert results == {}
        partition.commit("g", 4)
    assert results == {"first": 3, "again": 0}
    assert partition.end_offset == 7
    assert partition.snapshot().sequences == {"p": 7}


async def test_held_back_records_are_read_only_once_exposed() -> None:
    partition = Partition("t", 0, capacity=100)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    partition.hold_back()
    await partition.send(records(5))
    assert partition.read(0) is None
    partition.expose(3)
    batch = partition.read(0)
    assert batch is not None
    assert list(batch.values) == [0, 1, 2]
    assert partition.read(3) is None
    partition.expose(99)  # never beyond the end
    assert partition.readable_offset == 5


async def test_room_changes_wake_waiters(autojump_clock: trio.testing.MockClock) -> None:
    partition = Partition("t", 0, capacity=10)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    await partition.send(records(10))
    assert partition.free_room == 0
    woke: list[int | None] = []

    async def wait() -> None:
        await partition.wait_room_changed()
        woke.append(partition.free_room)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(1)
        assert woke == []
        partition.commit("g", 4)
    assert woke == [4]
    dynamic = Partition("t", 1)
    assert dynamic.free_room == 0
    dynamic.attach()
    assert dynamic.free_room is None


# -- admitting a batch to a topic all at once ------------------------------------------------


def keyed(*keys: int) -> Columns:
    return Columns(list(keys), [f"v{k}" for k in keys], [0.0] * len(keys))


async def test_a_batch_is_admitted_to_every_partition_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=2, capacity=3)
    for partition in topic.partitions:
        partition.register_group("g", trio.lowlevel.ParkingLot())
    index = [topic.partitioner.partition_for(k) for k in range(20)]
    first, second = [k for k in range(20) if index[k] == 0], [k for k in range(20) if index[k] == 1]
    topic.partitions[0].send_nowait(keyed(*first[:3]))  # partition 0 full
    admitted: list[list[int]] = []

    async def admit() -> None:
        admitted.append(await topic.admit(keyed(second[0], first[3], second[1])))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(admit)
        await trio.sleep(1)
        # Partition 1 has room, but takes nothing while partition 0 cannot take its share.
        assert admitted == []
        assert topic.partitions[1].end_offset == 0
        topic.partitions[0].commit("g", 1)
    assert admitted == [[3, 0]]
    assert topic.partitions[1].read(0).keys == [second[0], second[1]]  # type: ignore[union-attr]
    assert topic.partitions[0].read(3).keys == [first[3]]  # type: ignore[union-attr]


async def test_an_admission_given_up_accepts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("t", partitions=2, capacity=1)
    for partition in topic.partitions:
        partition.register_group("g", trio.lowlevel.ParkingLot())
    index = [topic.partitioner.partition_for(k) for k in range(20)]
    zero, one = index.index(0), index.index(1)
    topic.partitions[0].send_nowait(keyed(zero))
    with trio.move_on_after(5) as scope:
        await topic.admit(keyed(one, zero))
    assert scope.cancelled_caught
    assert [p.end_offset for p in topic.partitions] == [1, 0]


async def test_an_admission_fails_as_the_partition_would() -> None:
    topic = Topic("t", partitions=1, capacity=2)
    with pytest.raises(BatchTooLargeError):
        await topic.admit(keyed(1, 2, 3))
    topic.close()
    with pytest.raises(TopicClosedError):
        await topic.admit(keyed(1))


async def test_shares_for_one_partition_are_admitted_together_or_not_at_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    partition = Partition("t", 0, capacity=2)
    partition.register_group("g", trio.lowlevel.ParkingLot())
    partition.send_nowait(keyed(0))  # room for one more: not for both shares
    with trio.move_on_after(1):
        await admit_all([(partition, keyed(1)), (partition, keyed(2))])
    assert partition.end_offset == 1
    with pytest.raises(BatchTooLargeError):  # never, together
        await admit_all([(partition, keyed(1, 2)), (partition, keyed(3))])
