"""Frozen statistics snapshots: each follows the behaviour that changes its fields."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import attrs
import trio

from actors import Columns, ConsumerGroup, ConsumerStatistics, RecordBatch, Topic
from sim.run import REGISTRY, load_topology
from topology import (
    CheckpointStore,
    CheckpointStoreStatistics,
    ConsumerTally,
    ConsumerTallyStatistics,
    EpochInfo,
    Pipeline,
    Snapshot,
    TopicTally,
    TopicTallyStatistics,
)
from topology.checkpoint import FILE_NAME
from topology.epochs import Barrier, Checkpointer

EXAMPLES = Path(__file__).parent.parent / "topology" / "examples"


@attrs.frozen
class Event:
    """The fields of an event that tallies read."""

    seq: int
    source: int
    kind: str = "view"


def events(source: int, *seqs: int, kind: str = "view") -> list[Event]:
    return [Event(seq, source, kind) for seq in seqs]


async def test_a_member_s_statistics_follow_what_it_is_handed_commits_and_gets_again() -> None:
    topic = Topic("t", partitions=2, capacity=100)
    group = ConsumerGroup("g", topic)
    topic.partitions[0].send_nowait(Columns(["a"] * 3, [1, 2, 3], [0.0] * 3))
    topic.partitions[1].send_nowait(Columns(["b"] * 2, [4, 5], [0.0] * 2))
    async with group.join("m", auto_commit=False) as member:
        assert member.statistics() == ConsumerStatistics(
            group="g",
            name="m",
            active=True,
            assignment=(0, 1),
            holding=(),
            delivered={0: 0, 1: 0},
            committed={0: 0, 1: 0},
            batches=0,
            records=0,
        )
        await member.get_batch()
        await member.get_batch()
        handed = member.statistics()
        assert (handed.holding, handed.delivered, handed.committed) == (
            (0, 1),
            {0: 3, 1: 2},
            {0: 0, 1: 0},
        )
        assert (handed.batches, handed.records) == (2, 5)
        await member.commit({0: 3})
        committed = member.statistics()
        assert (committed.holding, committed.committed) == ((1,), {0: 3, 1: 0})
        member.rewind()  # partition 1 was not committed: its records come again
        again = await member.get_batch()
        assert list(again.values) == [4, 5]
        assert (member.statistics().batches, member.statistics().records) == (3, 7)
    left = member.statistics()
    assert (left.active, left.assignment, left.holding, left.delivered) == (False, (), (), {})


def test_a_store_s_statistics_count_what_this_object_wrote_and_passed_over(
    tmp_path: Path,
) -> None:
    store = CheckpointStore.open(tmp_path, "f" * 64, keep=2)
    assert store.statistics() == CheckpointStoreStatistics(
        path=tmp_path / FILE_NAME,
        schema_version=4,
        keep=2,
        epochs_written=0,
        last_epoch=None,
        damaged=0,
    )
    for n in (1, 2, 3):
        store.write(Snapshot(float(n), n, 0, {("part", "x"): bytes([n])}))
    assert (store.statistics().epochs_written, store.statistics().last_epoch) == (3, 3)
    store.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as db:  # the newest epoch's part rots
        db.execute("UPDATE parts SET data = X'00' WHERE epoch = 3")
    db.close()
    again = CheckpointStore.open(tmp_path, "f" * 64, keep=2)
    assert again.load_intact(lambda loaded: loaded[0].epoch) == 2
    assert (again.statistics().epochs_written, again.statistics().damaged) == (0, 1)
    again.write(Snapshot(4.0, 4, 0, {}))
    assert (again.statistics().epochs_written, again.statistics().last_epoch) == (1, 4)
    again.close()


def test_a_consumer_tally_s_statistics_count_records_violations_and_strangers() -> None:
    tally = ConsumerTally("c", ("events", "clicks"), sources=2, check_order=True)
    assert tally.statistics() == ConsumerTallyStatistics(
        name="c",
        records=0,
        per_topic={"events": 0, "clicks": 0},
        order_violations=0,
        first_violation=None,
        strangers={},
        latency_samples=0,
    )
    in_order = events(0, 1, 2, 3)
    tally.observe("events", RecordBatch("events", 0, 0, ["k"] * 3, in_order, [1.0] * 3), 1.5)
    again = events(0, 3)
    tally.observe("events", RecordBatch("events", 0, 3, ["k"], again, [1.0]), 1.5)
    stranger = events(7, 1, 2)
    tally.observe("clicks", RecordBatch("clicks", 0, 0, ["s"] * 2, stranger, [1.0] * 2), 1.5)
    statistics = tally.statistics()
    assert (statistics.records, statistics.per_topic) == (6, {"events": 4, "clicks": 2})
    assert statistics.order_violations == 1
    assert statistics.first_violation == (
        "topic 'events', key 'k': event 3 of source 0 came after event 3"
    )
    assert statistics.strangers == {"clicks": 2}
    assert statistics.latency_samples == 2  # the first of each batch of known sources


def test_a_topic_tally_s_statistics_count_records_sources_and_kinds() -> None:
    tally = TopicTally()
    assert tally.statistics() == TopicTallyStatistics(records=0, sources=0, kinds={})
    tally.count(0, events(0, 1, 2), 3)
    tally.count(1, events(1, 1, kind="like"), 1)
    assert tally.statistics() == TopicTallyStatistics(
        records=3, sources=2, kinds={"view": 2, "like": 1}
    )


async def test_the_checkpoint_actor_says_when_it_serves(tmp_path: Path) -> None:
    store = CheckpointStore.open(tmp_path, "f" * 64)
    written: list[EpochInfo] = []
    actor = Checkpointer(
        Barrier(),
        lambda final: (Snapshot(0.0, 0, 0, {}, final), None),
        written.append,
        lambda: 0,
    )
    assert not actor.statistics().serving
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.serve, store)
        assert actor.statistics().serving
        await actor.epoch()
        assert actor.statistics().serving
        nursery.cancel_scope.cancel()
    assert not actor.statistics().serving
    assert (actor.statistics().epochs_written, len(written)) == (1, 1)
    store.close()


async def test_a_pipeline_s_statistics_sum_the_epochs_it_wrote(tmp_path: Path) -> None:
    topology = load_topology(EXAMPLES / "video-site.yaml")
    pipeline = Pipeline.build(topology, REGISTRY, events=1_000)
    store = CheckpointStore.open(tmp_path, pipeline.fingerprint)
    before = pipeline.statistics()
    assert (before.epochs_written, before.last_epoch, before.write_seconds) == (0, None, 0)
    await pipeline.checkpoint(store, in_thread=False)
    await pipeline.checkpoint(store, in_thread=False)
    statistics = pipeline.statistics()
    assert (statistics.epochs_written, statistics.last_epoch) == (2, 2)
    assert statistics.write_seconds == sum(e.write_seconds for e in pipeline.epochs)
    assert statistics.write_seconds > 0
    store.close()
