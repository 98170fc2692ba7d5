"""Property tests: every record reaches every group, whatever the sizes, layouts and crashes."""

from __future__ import annotations

import random
from collections import defaultdict

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import ConsumerGroup, Record, Topic, open_producer, open_supervisor


class InjectedCrash(Exception):
    pass


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    groups = draw(st.integers(1, 3))
    return {
        "partitions": draw(st.integers(1, 4)),
        "capacity": draw(st.one_of(st.none(), st.integers(1, 40))),
        "max_batch": draw(st.integers(1, 20)),
        "records": draw(st.integers(0, 250)),
        "keys": draw(st.one_of(st.none(), st.integers(1, 12))),
        "producers": draw(st.integers(1, 3)),
        "members": [draw(st.integers(1, 3)) for _ in range(groups)],
        "max_records": draw(st.one_of(st.none(), st.integers(1, 15))),
        # (group, member, batch after which it crashes once)
        "crashes": draw(
            st.lists(
                st.tuples(st.integers(0, groups - 1), st.integers(0, 2), st.integers(0, 8)),
                max_size=4,
            )
        ),
        "seed": draw(st.integers(0, 2**32)),
    }


def run_scenario(spec: dict[str, object]) -> tuple[dict[str, list[Record]], list[Record]]:
    rng = random.Random(spec["seed"])  # type: ignore[arg-type]
    topic = Topic("t", partitions=spec["partitions"], capacity=spec["capacity"])  # type: ignore[arg-type]
    members: list[int] = spec["members"]  # type: ignore[assignment]
    groups = [ConsumerGroup(f"g{i}", topic) for i in range(len(members))]
    crash_after = {(g, m): k for g, m, k in spec["crashes"]}  # type: ignore[attr-defined]
    delivered: dict[str, list[Record]] = defaultdict(list)
    keys = spec["keys"]
    total: int = spec["records"]  # type: ignore[assignment]
    producers: int = spec["producers"]  # type: ignore[assignment]
    sent = [
        Record(None if keys is None else i % keys, i)  # type: ignore[operator]
        for i in range(total)
    ]
    delays = {name: rng.random() * 0.01 for name in ("p", "c")}

    async def member(group_index: int, member_index: int, join_at: float) -> None:
        await trio.sleep(join_at)
        group = groups[group_index]
        batches = 0
        async with group.join(
            f"m{member_index}",
            max_records=spec["max_records"],  # type: ignore[arg-type]
        ) as consumer:
            async for batch in consumer.batches():
                delivered[group.name].extend(batch.stored_records())
                await trio.sleep(delays["c"])
                if crash_after.get((group_index, member_index)) == batches:
                    del crash_after[(group_index, member_index)]
                    raise InjectedCrash
                batches += 1

    async def producer(share: list[Record]) -> None:
        async with open_producer(topic, max_batch=spec["max_batch"]) as p:  # type: ignore[arg-type]
            for record in share:
                await p.send(record)
                if rng.random() < 0.1:
                    await trio.sleep(delays["p"])

    async def main() -> None:
        async with open_supervisor(max_restarts=100, within=1) as supervisor:
            for g, count in enumerate(members):
                for m in range(count):
                    supervisor.start_soon(f"g{g}m{m}", member, g, m, rng.random() * 0.05)
            async with trio.open_nursery() as nursery:
                for index in range(producers):
                    nursery.start_soon(producer, sent[index::producers])

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return delivered, sent


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_every_record_reaches_every_group(spec: dict[str, object]) -> None:
    delivered, sent = run_scenario(spec)
    crashed_groups = {g for g, _m, _k in spec["crashes"]}  # type: ignore[attr-defined]
    producers: int = spec["producers"]  # type: ignore[assignment]
    members: list[int] = spec["members"]  # type: ignore[assignment]
    for g in range(len(members)):
        got = delivered[f"g{g}"]
        positions = [(r.partition, r.offset) for r in got]
        assert sorted({r.value for r in got}) == [r.value for r in sent]  # at least once
        by_partition: dict[int, list[int]] = defaultdict(list)
        for record in got:
            by_partition[record.partition].append(record.offset)  # type: ignore[index, arg-type]
        if g not in crashed_groups:
            assert len(positions) == len(set(positions)) == len(sent)  # exactly once
            for offsets in by_partition.values():
                assert offsets == list(range(len(offsets)))  # in offset order
        else:
            for offsets in by_partition.values():
                # A redelivery rewinds to a committed offset and goes on from there.
                high = -1
                for offset in offsets:
                    assert offset <= high + 1
                    high = max(high, offset)
        # Per key and producer, first deliveries come in the order the records were sent.
        first_seen: dict[object, list[int]] = defaultdict(list)
        seen: set[tuple[int | None, int | None]] = set()
        for record in got:
            if (record.partition, record.offset) not in seen:
                seen.add((record.partition, record.offset))
                first_seen[record.key, record.value % producers].append(record.value)
        if spec["keys"] is not None:
            for values in first_seen.values():
                assert values == sorted(values)
