"""Telling a run that can make no more progress from a slow one."""

from __future__ import annotations

from collections.abc import Callable

import trio

from actors import PartitionStatistics
from topology import Pipeline

STALL_SECONDS = 10.0
"""Seconds of the run's clock without any record accepted or committed, while producers wait
for room, after which a run is stopped as stalled."""


async def watch_progress(
    pipeline: Callable[[], Pipeline],
    on_stall: Callable[[str], None],
    *,
    after: float = STALL_SECONDS,
    every: float = 1.0,
) -> None:
    """Call ``on_stall`` with the reason once the pipeline has made no progress for ``after``
    seconds while some producer waits to send; return then.

    Progress is any record accepted or committed on any partition. A producer that waits for
    room while nothing moves waits for good: its records can only be freed by a commit, and
    nothing commits. Under a virtual clock such a run would otherwise never end (and, with
    nothing left to wait for, Trio's autojumping clock polls without pause); this task's own
    timer lets the clock move on, so the stall is noticed after ``after`` simulated seconds.

    Args:
        pipeline: Returns the pipeline running now (a rollback replaces it).
        on_stall: Called once with the reason, one line naming the partitions and why.
        after: Seconds of the run's clock without progress that make a stall.
        every: Seconds of the run's clock between looks.
    """
    last: object = None
    since = trio.current_time()
    while True:
        await trio.sleep(every)
        running = pipeline()
        stats = [s for topic in running.topics.values() for s in topic.statistics()]
        mark = [(s.end_offset, sorted(s.committed.items())) for s in stats]
        now = trio.current_time()
        # A consumer waiting for its sink (retrying, or its breaker open) is no stall: the
        # producers wait for the sink to come back, as they should.
        if mark != last or any(d.writing for d in running.deliveries.values()):
            last, since = mark, now
            continue
        # A consumer writing to a topic (a relay) that waits for room there is a sender too.
        full = {o.topic for o in running.outputs.values() if o.waiting}
        waiting = [
            s
            for s in stats
            if s.senders_waiting or (s.topic in full and (s.depth or s.capacity is None))
        ]
        if waiting and now - since >= after:
            on_stall(describe_stall(waiting, now - since))
            return


def describe_stall(waiting: list[PartitionStatistics], seconds: float) -> str:
    """Say which partitions hold producers up, and why nothing frees them."""
    topics: dict[str, list[PartitionStatistics]] = {}
    for s in waiting:
        topics.setdefault(s.topic, []).append(s)
    reasons = []
    for topic, parts in topics.items():
        where = ", ".join(f"{topic}[{s.partition}]" for s in parts)
        first = parts[0]
        if not first.committed:
            why = f"no consumer group reads topic {topic!r}"
        elif first.capacity is None and not any(s.consumers_attached for s in parts):
            why = f"no consumer is attached to dynamic topic {topic!r}"
        else:
            groups = ", ".join(repr(g) for g in sorted(first.committed))
            plural = "s" if len(first.committed) > 1 else ""
            why = f"consumer group{plural} {groups} committed nothing meanwhile"
        held = (
            "dynamic" if first.capacity is None else f"{first.depth:,} of {first.capacity:,} held"
        )
        reasons.append(f"producers wait to send to {where} ({held}) and {why}")
    return (
        f"stalled: no record accepted or committed for {seconds:,.0f} s of the run's clock; "
        + "; ".join(reasons)
        + ". Add a consumer of the topic, or give its rings room for every event"
    )
