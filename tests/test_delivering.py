"""A sink's consumer hands it records: retried while the sink is away, poison records
isolated and dead-lettered with why, the rest delivered in order (virtual time)."""

from __future__ import annotations

import random
import types
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import pytest
import trio
import trio.testing

from actors import (
    CircuitBreaker,
    Columns,
    ConsumerGroup,
    PermanentError,
    RecordBatch,
    RetryPolicy,
    Topic,
    TransientError,
)
from sim.run import REGISTRY
from sim.stall import watch_progress
from topology import (
    DeadLetter,
    SinkContext,
    SinkDelivery,
    State,
    Topology,
    TopologyError,
    UndeliveredError,
)
from topology.delivering import coalesced
from topology.snapshot import PartitionContents, PartitionPart, decode, encode


class FlakySink:
    """A sink that refuses records whose value is "poison" (permanently) and fails the first
    ``outage`` attempts (transiently); it keeps what it took."""

    def __init__(self, outage: int = 0) -> None:
        self.outage = outage
        self.attempts = 0
        self.taken: list[Any] = []

    @property
    def linger(self) -> float:
        return 0.0

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        yield

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        self.attempts += 1
        await trio.sleep(0.01)
        if self.attempts <= self.outage:
            raise TransientError("503 Service Unavailable")
        values = [v for b in batches for v in b.values]
        if "poison" in values:
            raise PermanentError("422: cannot take 'poison'")
        self.taken.extend(values)

    def process(self, events: Sequence[Any]) -> None:
        raise AssertionError("a sink is written, not folded")

    def result(self) -> dict[str, Any]:
        return {}

    def totals(self) -> dict[str, int]:
        return {}

    def snapshot(self) -> State:
        raise NotImplementedError

    def restore(self, state: Any) -> None:
        raise NotImplementedError


def batch(partition: int, first: int, values: list[str]) -> RecordBatch:
    keys = [f"k{i % 3}" for i in range(first, first + len(values))]
    return RecordBatch("events", partition, first, keys, values, [0.0] * len(values))


def delivery(sink: FlakySink, dead: Topic | None, attempts: int = 5) -> SinkDelivery:
    policy = RetryPolicy(initial=1.0, maximum=10.0, max_attempts=attempts)
    return SinkDelivery(
        "relay", sink, policy, CircuitBreaker(threshold=1000), random.Random(0), dead
    )


def letters_in(topic: Topic) -> list[DeadLetter]:
    return [v for p in topic.partitions for b in p.snapshot().batches for v in b.values]


async def test_a_sink_away_for_a_while_gets_every_record_once_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = FlakySink(outage=3)
    committed: list[tuple[int, int]] = []
    batches = [batch(0, 0, ["a", "b"]), batch(1, 0, ["c"])]
    await delivery(sink, None).write(
        batches, lambda b: committed.append((b.partition, b.next_offset))
    )
    assert sink.taken == ["a", "b", "c"]
    assert committed == [(0, 2), (1, 1)]
    assert sink.attempts == 4


async def test_a_poison_record_is_dead_lettered_with_why_and_the_others_delivered_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = FlakySink()
    dead = Topic("events-dlq", partitions=2, capacity=100)
    committed: list[int] = []
    values = ["a", "b", "c", "poison", "d", "e", "f"]
    sending = delivery(sink, dead)
    await sending.write([batch(0, 10, values)], lambda b: committed.append(b.next_offset))
    assert sink.taken == ["a", "b", "c", "d", "e", "f"]  # in order: none before an earlier one
    assert committed == sorted(committed)
    assert committed[-1] == 17
    [letter] = letters_in(dead)
    assert (letter.consumer, letter.topic, letter.partition, letter.offset) == (
        "relay",
        "events",
        0,
        13,
    )
    assert letter.key == "k1"
    assert msgspec.msgpack.decode(letter.value) == "poison"
    assert "422: cannot take 'poison'" in letter.error
    assert (letter.attempts, letter.retryable) == (1, False)
    assert sending.dead_lettered == 1


async def test_records_a_sink_never_takes_back_are_dead_lettered_once_the_attempts_run_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = FlakySink(outage=10**6)
    dead = Topic("events-dlq", partitions=1, capacity=100)
    start = trio.current_time()
    await delivery(sink, dead, attempts=4).write([batch(0, 0, ["a", "b"])], lambda b: None)
    letters = letters_in(dead)
    assert [letter.offset for letter in letters] == [0, 1]
    assert all(letter.retryable and letter.attempts == 4 for letter in letters)
    assert letters[0].last_failed - letters[0].first_failed <= trio.current_time() - start
    assert sink.attempts == 4, "a sink that stayed away is not tried record by record"


async def test_without_a_dead_letter_topic_a_poison_record_stops_the_consumer_saying_where(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = FlakySink()
    committed: list[int] = []
    with pytest.raises(UndeliveredError, match=r"events\[0\] offsets 5 to 5: 422.*dead_letter"):
        await delivery(sink, None).write(
            [batch(0, 3, ["a", "b", "poison", "c"])], lambda b: committed.append(b.next_offset)
        )
    assert sink.taken == ["a", "b"]
    assert committed == [5], "what went before it is committed, nothing after"


def stats_with_dead_letters() -> dict[str, Any]:
    """A video site whose consumer ``stats`` names the dead-letter topic ``dlq``."""
    return {
        "name": "t",
        "topics": {
            "events": {"partitions": 1, "capacity": 100, "key": "video_id"},
            "dlq": {"partitions": 1, "capacity": 100},
        },
        "producers": {"site": {"workload": "video_site", "topic": "events", "events": 10}},
        "consumers": {
            "stats": {"processor": "video_stats", "topic": "events", "dead_letter": "dlq"}
        },
    }


def test_a_dead_letter_topic_must_exist_hold_records_and_be_read_by_no_consumer() -> None:
    def problems(**changes: Any) -> list[str]:
        data = stats_with_dead_letters()
        for path, value in changes.items():
            where = data
            *parents, last = path.split("__")
            for part in parents:
                where = where[part]
            where[last] = value
        try:
            Topology.from_dict(data)
        except TopologyError as error:
            return error.problems
        return []

    assert problems() == []
    assert "no topic named 'nope'" in problems(consumers__stats__dead_letter="nope")[0]
    assert "a topic this consumer reads" in problems(consumers__stats__dead_letter="events")[0]
    assert "is dynamic" in problems(topics__dlq={"partitions": 1, "capacity": "dynamic"})[0]
    read = problems(consumers__reader={"processor": "video_stats", "topic": "dlq"})
    assert any("is a dead-letter topic" in p for p in read)
    assert "retry.initial" in problems(consumers__stats__retry={"initial": -1})[0]


async def test_dead_letters_with_numeric_keys_go_into_an_epoch_and_come_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dead = Topic("events-dlq", partitions=2, capacity=100)
    poisoned = RecordBatch(
        "events", 3, 40, np.array([7, 8], dtype=np.int64), ["poison", "poison"], [0.0, 0.0]
    )
    await delivery(FlakySink(), dead).write([poisoned], lambda b: None)
    for partition in dead.partitions:
        data = encode(PartitionContents(partition, "events-dlq", DeadLetter).capture())
        part = decode("partition", data)
        assert isinstance(part, PartitionPart)
        restored = Topic("events-dlq", partitions=2, capacity=100).partitions[partition.index]
        PartitionContents(restored, "events-dlq", DeadLetter).restore(part)
    letters = sorted(letters_in(dead), key=lambda d: d.offset)
    assert [(d.key, d.offset) for d in letters] == [(7, 40), (8, 41)]
    assert all(type(d.key) is int for d in letters)


async def test_a_consumer_waiting_for_its_sink_is_not_a_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("events", partitions=1, capacity=1)
    group = ConsumerGroup("relay", topic)
    stalls: list[str] = []
    sending = delivery(FlakySink(), None)

    running = types.SimpleNamespace(
        topics={"events": topic}, deliveries={"relay": sending}, outputs={}
    )

    async with trio.open_nursery() as nursery, group.join("relay-0"):
        await topic.partitions[0].send(Columns([1], ["a"], [0.0]))
        nursery.start_soon(topic.partitions[0].send, Columns([2], ["b"], [0.0]))  # waits
        sending.writing = 1  # the consumer waits for its sink (retrying)
        nursery.start_soon(watch_progress, lambda: running, stalls.append)
        await trio.sleep(60)
        assert stalls == []
        sending.writing = 0  # nothing waits for the sink, and nothing moves
        await trio.sleep(15)
        assert len(stalls) == 1
        assert stalls[0].startswith("stalled: no record accepted or committed")
        nursery.cancel_scope.cancel()


def test_a_dead_letter_topic_must_be_on_its_consumers_node() -> None:
    data = {
        **stats_with_dead_letters(),
        "nodes": {
            "broker": {"listen": "127.0.0.1:7501", "topics": ["events", "dlq"]},
            "work": {"listen": "127.0.0.1:7502", "producers": ["site"], "consumers": ["stats"]},
        },
    }
    with pytest.raises(TopologyError) as refused:
        Topology.from_dict(data)
    assert refused.value.problems == [
        "$.consumers.stats.dead_letter: topic 'dlq' is on node 'broker', the consumer on node "
        "'work'; a dead-letter topic lives on its consumer's node (its letters are committed "
        "in the same step as the consumer's offsets)"
    ]
    data["nodes"]["broker"]["topics"] = ["events"]
    data["nodes"]["work"]["topics"] = ["dlq"]
    Topology.from_dict(data)


def test_consecutive_batches_of_a_partition_go_as_one_up_to_the_limit() -> None:
    joined = coalesced(
        [batch(0, 0, ["a", "b"]), batch(0, 2, ["c"]), batch(1, 0, ["d"]), batch(0, 3, ["e"])],
        limit=3,
    )
    assert [(b.partition, b.base_offset, list(b.values)) for b in joined] == [
        (0, 0, ["a", "b", "c"]),
        (1, 0, ["d"]),
        (0, 3, ["e"]),  # after another partition's: order of the list is kept
    ]
    assert list(joined[0].keys) == ["k0", "k1", "k2"]
    gap = coalesced([batch(0, 0, ["a"]), batch(0, 5, ["b"])], limit=10)
    assert len(gap) == 2, "records between them are not there: not joined"
    full = coalesced([batch(0, 0, ["a", "b"]), batch(0, 2, ["c", "d"])], limit=3)
    assert [len(b.values) for b in full] == [2, 2]


def test_dead_letters_belong_to_sinks_not_to_folding_processors() -> None:
    [problem] = REGISTRY.check(Topology.from_dict(stats_with_dead_letters()))
    assert problem.startswith(
        "$.consumers.stats.dead_letter: processor 'video_stats' folds the events into aggregates"
    )


def test_a_sink_needs_the_real_clock() -> None:
    data: dict[str, Any] = {
        "name": "t",
        "topics": {"events": {"partitions": 1, "capacity": 100, "key": "video_id"}},
        "producers": {"site": {"workload": "video_site", "topic": "events", "events": 10}},
        "consumers": {
            "relay": {
                "processor": "webhook",
                "topic": "events",
                "params": {"url": "http://127.0.0.1:9/x"},
            }
        },
    }
    [problem] = REGISTRY.check(Topology.from_dict(data))
    assert problem.startswith("$.consumers.relay.processor: processor 'webhook' writes to")
    assert problem.endswith("set clock: real")
    assert REGISTRY.check(Topology.from_dict({**data, "clock": "real"})) == []


async def test_a_full_dead_letter_topic_stops_the_consumer_saying_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dead = Topic("events-dlq", partitions=1, capacity=2)
    committed: list[int] = []
    with pytest.raises(
        UndeliveredError,
        match=r"dead-letter topic 'events-dlq' is full \(partition 0 holds 2 letters of the 2 "
        r"it may hold, and 1 more came for it\)",
    ):
        await delivery(FlakySink(), dead).write(
            [batch(0, 0, ["poison", "poison", "poison"])], lambda b: committed.append(b.next_offset)
        )
    assert len(letters_in(dead)) == 2
    assert committed == [1, 2], "what went into the dead-letter topic is committed"
