"""Processing: consumer instances that read their group's batches and fold them into their
processor.

Each consumer instance is one actor. It commits a batch in the same step as it processes it,
with no checkpoint between: then at every moment the processor's state matches the committed
offsets, which is what makes a snapshot consistent without stopping consumers. A new kind of
consumer (a sink that writes to another system) is a function here with the same duties.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors import Consumer, ConsumerGroup, RemoteConsumer, RemoteGroup

from .registry import Processor
from .tally import ConsumerTally


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
    """
    if isinstance(group, RemoteGroup):
        async with group.join(
            member, auto_commit=False, max_records=max_records, durable_commits=epoch is not None
        ) as remote:
            await _read(remote, topic, processor, tally, origin, monitor)
            if epoch is not None:
                await epoch()
        return
    async with group.join(member, auto_commit=False, max_records=max_records) as local:
        await _read(local, topic, processor, tally, origin, monitor)


async def _read(
    member: Consumer | RemoteConsumer,
    topic: str,
    processor: Processor,
    tally: ConsumerTally,
    origin: float,
    monitor: Callable[[], None] | None,
) -> None:
    async for batch in member.batches():
        tally.observe(topic, batch, trio.current_time() - origin)
        processor.process(batch.values)
        member.commit_nowait()
        if monitor is not None:
            monitor()
