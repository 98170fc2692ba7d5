"""A topic: named partitions, a partitioner, and the producers writing to it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, Protocol

import attrs
import numpy as np
import trio

from .errors import BatchTooLargeError, ConfigurationError, TopicClosedError
from .partition import Partition, PartitionStatistics
from .partitioner import Partitioner
from .record import Columns, Key
from .table import take


class Admitting(Protocol):
    """What :func:`admit_sized` appends to: a :class:`~actors.partition.Partition` here, or
    a :class:`~actors.remote_topic.RemotePartition` on another node."""

    @property
    def topic(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def capacity(self) -> int | None: ...
    @property
    def closed(self) -> bool: ...
    def can_take(self, count: int) -> bool: ...
    async def wait_room_changed(self) -> None: ...
    def send_nowait(self, records: Columns) -> int: ...


def _gather(batch: Columns, positions: list[int]) -> Columns:
    if not positions:
        return Columns([], [], [])
    if not isinstance(batch.values, list) or not isinstance(batch.timestamps, list):
        where = np.array(positions, dtype=np.intp)
        return Columns(
            take(batch.keys, where), take(batch.values, where), take(batch.timestamps, where)
        )
    if len(positions) == 1:
        at = positions[0]
        return Columns([batch.keys[at]], [batch.values[at]], [batch.timestamps[at]])
    pick = itemgetter(*positions)
    return Columns(list(pick(batch.keys)), list(pick(batch.values)), list(pick(batch.timestamps)))


def _split_arrays(batch: Columns, indexes: Any, partitions: int) -> list[Columns]:
    # A stable sort by partition keeps each partition's records in their order.
    order = np.argsort(indexes, kind="stable")
    bounds = np.searchsorted(indexes[order], np.arange(partitions + 1)).tolist()
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        at = order[lo:hi]
        parts.append(
            Columns(take(batch.keys, at), take(batch.values, at), take(batch.timestamps, at))
        )
    return parts


@attrs.define(eq=False)
class Topic:
    """A stream of records split over ``partitions`` rings.

    Records with a key always land in the partition :class:`Partitioner` picks for that key, so
    each key keeps its order; records without a key are spread round robin.

    Producers register with :meth:`add_producer` (``open_producer`` does it for you). When the
    last registered producer leaves gracefully the topic closes: consumers read what is left
    and then see the end of the stream.

    Args:
        name: The topic's name.
        partitions: How many partitions (at least 1).
        capacity: Each partition's capacity in records, or None for dynamic mode.
        retention: Records each partition keeps readable after every group committed them.

    Raises:
        ConfigurationError: ``partitions`` or ``capacity`` is less than 1, or ``name`` is empty.
    """

    name: str
    partition_count: int = attrs.field(default=1, alias="partitions")
    capacity: int | None = None
    retention: int = 0
    partitions: tuple[Partition, ...] = attrs.field(init=False)
    partitioner: Partitioner = attrs.field(init=False)
    _producers: int = attrs.field(init=False, default=0)
    _ever_produced: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a topic needs a non-empty name")
        self.partitioner = Partitioner(self.partition_count)
        self.partitions = tuple(
            Partition(self.name, index, self.capacity, self.retention)
            for index in range(self.partition_count)
        )

    @property
    def closed(self) -> bool:
        """Whether the topic accepts no more records."""
        return self.partitions[0].closed

    def close(self) -> None:
        """Close every partition: accept nothing more, let consumers drain what is held."""
        for partition in self.partitions:
            partition.close()

    def add_producer(self) -> None:
        """Register one more producer.

        Raises:
            TopicClosedError: The topic is already closed.
        """
        if self.closed:
            raise TopicClosedError(f"topic {self.name!r} is closed; no producer can join it")
        self._producers += 1
        self._ever_produced = True

    def remove_producer(self, *, graceful: bool = True) -> None:
        """Unregister a producer; the topic closes when the last one leaves gracefully.

        A producer that crashed leaves with ``graceful=False``: the topic stays open, because a
        supervisor will usually restart it.
        """
        self._producers -= 1
        if graceful and self._producers == 0:
            self.close()

    def split(self, batch: Columns) -> list[Columns]:
        """Split columns by destination partition, keeping the order within each.

        With one partition the columns themselves are returned, not a copy.
        """
        if self.partition_count == 1:
            return [batch]
        if isinstance(batch.keys, np.ndarray) and batch.keys.dtype.kind == "i":
            indexes = self.partitioner.partition_array(batch.keys)
            return _split_arrays(batch, indexes, self.partition_count)
        indexes = self.partition_indexes(batch.keys)
        positions: list[list[int]] = [[] for _ in range(self.partition_count)]
        appends = [where.append for where in positions]
        for position, index in enumerate(indexes):
            appends[index](position)
        return [_gather(batch, where) for where in positions]

    async def admit(self, batch: Columns) -> list[int]:
        """Append every record of ``batch`` to its partition, all of them at once or none
        (see :func:`admit_all`).

        Returns:
            The offset of the first record of each share, by partition index (-1 where the
            batch has no records).
        """
        firsts = [-1] * self.partition_count
        shares = [
            (partition, share)
            for partition, share in zip(self.partitions, self.split(batch), strict=True)
            if len(share)
        ]
        for (partition, _), first in zip(shares, await admit_all(shares), strict=True):
            firsts[partition.index] = first
        return firsts

    def partition_indexes(self, keys: Sequence[Key] | Any) -> list[int]:
        """Return the partition of each key (round robin for None keys)."""
        partitioner = self.partitioner
        try:
            # Every key seen before: one pass in C. Otherwise, key by key.
            return list(map(partitioner.cache.__getitem__, keys))
        except KeyError:
            return [partitioner.partition_for(key) for key in keys]

    def statistics(self) -> list[PartitionStatistics]:
        """Return a snapshot of every partition, in index order."""
        return [partition.statistics() for partition in self.partitions]


async def admit_all(shares: Sequence[tuple[Partition, Columns]]) -> list[int]:
    """Append each share to its partition, all at once or none (see :func:`admit_sized`).

    Returns:
        The offset given to the first record of each share, in order.
    """
    return await admit_sized(
        [(partition, len(share)) for partition, share in shares], lambda: [s for _, s in shares]
    )


async def admit_sized(
    sizes: Sequence[tuple[Admitting, int]], build: Callable[[], Sequence[Columns]]
) -> list[int]:
    """Append records to several partitions, all at once or none.

    Waits until every partition has room for its records (a partition named more than once
    for all of them together) and no sender is queued before them; then calls ``build``,
    which makes the records (as many, in the order of ``sizes``) without waiting, and appends
    them, all in one step with no checkpoint between. So what ``build`` stamps (sequence
    numbers, the time) follows the order of admission, and cancelled while waiting (a
    deadline), nothing was made or accepted: a client told to retry sends no duplicates.
    This is how a request's events enter topics (they may go to several); producers, which
    send a batch's shares one after another, use :meth:`Partition.send`. Partitions on other
    nodes (:class:`~actors.remote_topic.RemotePartition`) take part as local ones do: their
    room is the window their node gave, and what they take is numbered and kept at once.

    Returns:
        The offset given to the first record of each share, in order.

    Raises:
        TopicClosedError: A partition is closed (or closed while waiting).
        BatchTooLargeError: A partition's records could never fit in its ring.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    totals: dict[Admitting, int] = {}
    for partition, count in sizes:
        totals[partition] = totals.get(partition, 0) + count
    while True:
        for partition, count in totals.items():
            refuse_if_never(partition, count)
        blocked = next((p for p, count in totals.items() if not p.can_take(count)), None)
        if blocked is None:
            break
        await blocked.wait_room_changed()
    built = build()
    firsts = [
        partition.send_nowait(records) for (partition, _), records in zip(sizes, built, strict=True)
    ]
    await trio.lowlevel.cancel_shielded_checkpoint()
    return firsts


def refuse_if_never(partition: Admitting, count: int) -> None:
    """Raise what no wait can cure: a closed partition, more records than its ring holds.

    Raises:
        TopicClosedError: The partition is closed.
        BatchTooLargeError: ``count`` records could never fit in its ring.
    """
    where = f"partition {partition.topic}[{partition.index}]"
    if partition.closed:
        raise TopicClosedError(f"{where} is closed; {count} records were not accepted")
    if partition.capacity is not None and count > partition.capacity:
        raise BatchTooLargeError(
            f"{count} records cannot fit in {where} of capacity {partition.capacity}; "
            "send fewer at once or raise the capacity"
        )
