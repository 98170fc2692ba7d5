"""Consumer groups: members share a topic's partitions, commit offsets and rebalance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from .errors import CommitError, ConfigurationError
from .record import RecordBatch, StoredRecord
from .topic import Topic

Assignment = dict[str, list[int]]
"""Which partitions each member (by name) owns."""


def assign_range(partitions: int, members: list[str]) -> Assignment:
    """Give each member one contiguous range of partitions; the first members get one more.

    With 5 partitions and members a, b: a gets 0-2, b gets 3-4. Members are taken in name
    order, so the result does not depend on who joined first.
    """
    ordered = sorted(members)
    result: Assignment = {name: [] for name in ordered}
    if not ordered:
        return result
    share, extra = divmod(partitions, len(ordered))
    start = 0
    for rank, name in enumerate(ordered):
        count = share + (1 if rank < extra else 0)
        result[name] = list(range(start, start + count))
        start += count
    return result


def assign_round_robin(partitions: int, members: list[str]) -> Assignment:
    """Deal partitions to members in name order like cards: partition i goes to member i mod n."""
    ordered = sorted(members)
    result: Assignment = {name: [] for name in ordered}
    for partition in range(partitions if ordered else 0):
        result[ordered[partition % len(ordered)]].append(partition)
    return result


ASSIGNMENT_STRATEGIES: Mapping[str, Callable[[int, list[str]], Assignment]] = {
    "range": assign_range,
    "round_robin": assign_round_robin,
}
"""The assignment strategies a consumer group accepts, by name."""


@attrs.frozen
class GroupStatistics:
    """A snapshot of a consumer group, as :meth:`ConsumerGroup.statistics` returns it."""

    name: str
    """The group's name."""
    topic: str
    """The topic the group reads."""
    strategy: str
    """The assignment strategy's name."""
    generation: int
    """How many times partitions have been assigned (one per rebalance)."""
    assignment: dict[str, tuple[int, ...]]
    """The partitions each member owns now."""
    joins: int
    """Members that have joined."""
    leaves: int
    """Members that left in good order."""
    crashes: int
    """Members that left because their code raised (cancellation included)."""
    committed: tuple[int, ...]
    """The committed offset of each partition."""
    delivered: tuple[int, ...]
    """The offset just past the last record delivered, per partition."""
    lag: tuple[int, ...]
    """Records accepted but not committed, per partition."""


@attrs.define(eq=False)
class ConsumerGroup:
    """Consumers that share the partitions of one topic, each partition owned by one member.

    Every group keeps its own committed offset per partition, so several groups read the same
    records independently. Members join with :meth:`join`. A member that joins, leaves or
    crashes triggers a rebalance: partitions are reassigned by ``strategy`` (``"range"`` or
    ``"round_robin"``, see :data:`ASSIGNMENT_STRATEGIES`).

    A partition changes hands cooperatively: its new owner starts reading once the previous
    one has let go, which it does at its next fetch or when it leaves. At that point what the
    previous owner committed stays committed and anything it was handed but had not committed
    is delivered again to the new owner, in offset order. A member that crashes lets go at
    once, so records it had not committed are redelivered (at-least-once), and per-key order
    holds because a key lives in one partition and a partition always resumes from its
    committed offset.

    Args:
        name: The group's name, unique per topic.
        topic: The topic to read.
        strategy: The assignment strategy's name.

    Raises:
        ConfigurationError: ``strategy`` is not a known strategy.
    """

    name: str
    topic: Topic
    strategy: str = "range"
    _assign: Callable[[int, list[str]], Assignment] = attrs.field(init=False)
    _members: dict[str, Consumer] = attrs.field(init=False, factory=dict)
    _owner: list[Consumer | None] = attrs.field(init=False)
    _holder: list[Consumer | None] = attrs.field(init=False)
    _position: list[int] = attrs.field(init=False)
    _committed: list[int] = attrs.field(init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _generation: int = attrs.field(init=False, default=0)
    _joins: int = attrs.field(init=False, default=0)
    _leaves: int = attrs.field(init=False, default=0)
    _crashes: int = attrs.field(init=False, default=0)
    _next_member: int = attrs.field(init=False, default=0)
    on_deliver: Callable[[str, RecordBatch], None] | None = attrs.field(init=False, default=None)
    """Called with (member name, batch) for every batch handed out (for logging)."""
    on_rebalance: Callable[[str, GroupStatistics], None] | None = attrs.field(
        init=False, default=None
    )
    """Called with (reason, statistics) after every rebalance (for logging)."""

    def __attrs_post_init__(self) -> None:
        try:
            self._assign = ASSIGNMENT_STRATEGIES[self.strategy]
        except KeyError:
            known = ", ".join(sorted(ASSIGNMENT_STRATEGIES))
            raise ConfigurationError(
                f"consumer group {self.name!r}: unknown assignment strategy "
                f"{self.strategy!r}; use one of: {known}"
            ) from None
        count = self.topic.partition_count
        self._owner = [None] * count
        self._holder = [None] * count
        self._committed = [
            partition.register_group(self.name, self._lot) for partition in self.topic.partitions
        ]
        self._position = list(self._committed)

    # -- membership ------------------------------------------------------------------------

    @asynccontextmanager
    async def join(
        self,
        name: str | None = None,
        *,
        auto_commit: bool = True,
        max_records: int | None = None,
    ) -> AsyncIterator[Consumer]:
        """Join the group as a new member for the duration of the block.

        Leaving the block normally commits what was processed (with ``auto_commit``) and
        leaves. Leaving with an exception, cancellation included, counts as a crash: nothing
        more is committed, and uncommitted records go to whoever takes the partitions over.

        Args:
            name: The member's name, unique in the group; a name is made up when None.
            auto_commit: Commit each batch once the next one is asked for, and on leaving.
            max_records: Deliver at most this many records at once.

        Raises:
            ConfigurationError: ``name`` is taken or ``max_records`` < 1.
        """
        if name is None:
            self._next_member += 1
            name = f"{self.name}-{self._next_member}"
        if name in self._members:
            raise ConfigurationError(
                f"consumer group {self.name!r} already has a member named {name!r}"
            )
        if max_records is not None and max_records < 1:
            raise ConfigurationError(f"max_records must be at least 1, got {max_records}")
        consumer = Consumer(self, name, auto_commit, max_records)
        self._members[name] = consumer
        self._joins += 1
        self._rebalance(f"{name} joined")
        graceful = False
        try:
            yield consumer
            graceful = True
        finally:
            self._leave(consumer, graceful=graceful)

    def _leave(self, consumer: Consumer, *, graceful: bool) -> None:
        if graceful:
            self._leaves += 1
            if consumer.auto_commit:
                self._commit_processed(consumer)
        else:
            self._crashes += 1
        for partition in consumer._held:
            self._position[partition] = self._committed[partition]
            self._holder[partition] = None
        consumer._held.clear()
        consumer._active = False
        del self._members[consumer.name]
        self._rebalance(f"{consumer.name} {'left' if graceful else 'crashed'}")

    def _rebalance(self, reason: str) -> None:
        assignment = self._assign(self.topic.partition_count, list(self._members))
        owner: list[Consumer | None] = [None] * self.topic.partition_count
        for name, partitions in assignment.items():
            member = self._members[name]
            member._assigned = partitions
            member._next = 0
            for partition in partitions:
                owner[partition] = member
        for index, (old, new) in enumerate(zip(self._owner, owner, strict=True)):
            if old is not new:
                if old is not None:
                    self.topic.partitions[index].detach()
                if new is not None:
                    self.topic.partitions[index].attach()
        self._owner = owner
        self._generation += 1
        self._lot.unpark_all()
        if self.on_rebalance is not None:
            self.on_rebalance(reason, self.statistics())

    # -- fetching and committing -----------------------------------------------------------

    def _release_revoked(self, consumer: Consumer) -> None:
        consumer._generation = self._generation
        for partition in list(consumer._held):
            if self._owner[partition] is not consumer:
                self._position[partition] = self._committed[partition]
                self._holder[partition] = None
                consumer._held.discard(partition)
                self._lot.unpark_all()

    def _fetch(self, consumer: Consumer, partition: int) -> RecordBatch | None:
        holder = self._holder[partition]
        if holder is not None and holder is not consumer:
            return None  # the previous owner has not let go yet
        batch = self.topic.partitions[partition].read(
            self._position[partition], consumer.max_records
        )
        if batch is None:
            return None
        self._position[partition] = batch.next_offset
        if holder is None:
            self._holder[partition] = consumer
            consumer._held.add(partition)
        if self.on_deliver is not None:
            self.on_deliver(consumer.name, batch)
        return batch

    def _commit(self, consumer: Consumer, partition: int, offset: int) -> None:
        if self._holder[partition] is not consumer and self._owner[partition] is not consumer:
            raise CommitError(
                f"member {consumer.name!r} of group {self.name!r} cannot commit partition "
                f"{partition}: it does not own it (owned by "
                f"{getattr(self._owner[partition], 'name', None)!r}); "
                "its records go to the new owner"
            )
        delivered = self._position[partition]
        if offset > delivered:
            raise CommitError(
                f"member {consumer.name!r} of group {self.name!r} cannot commit offset {offset} "
                f"on partition {partition}: only offsets up to {delivered} were delivered"
            )
        if offset == self._committed[partition]:
            return
        self.topic.partitions[partition].commit(self.name, offset)
        self._committed[partition] = offset
        if offset == delivered and self._holder[partition] is consumer:
            self._holder[partition] = None
            consumer._held.discard(partition)
            if self._owner[partition] is not consumer:
                self._lot.unpark_all()

    def _commit_processed(self, consumer: Consumer) -> None:
        current = consumer._batch
        for partition in list(consumer._held):
            offset = self._position[partition]
            if current is not None and current.partition == partition:
                offset = min(offset, current.base_offset + consumer._index)
            self._commit(consumer, partition, offset)

    def _done(self) -> bool:
        for index, partition in enumerate(self.topic.partitions):
            if not partition.closed or self._position[index] < partition.end_offset:
                return False
        return True

    def statistics(self) -> GroupStatistics:
        """Return a snapshot of the group's membership and offsets."""
        ends = [partition.end_offset for partition in self.topic.partitions]
        return GroupStatistics(
            name=self.name,
            topic=self.topic.name,
            strategy=self.strategy,
            generation=self._generation,
            assignment={name: tuple(m._assigned) for name, m in self._members.items()},
            joins=self._joins,
            leaves=self._leaves,
            crashes=self._crashes,
            committed=tuple(self._committed),
            delivered=tuple(self._position),
            lag=tuple(end - c for end, c in zip(ends, self._committed, strict=True)),
        )


@attrs.frozen
class ConsumerStatistics:
    """A snapshot of a group member, as :meth:`Consumer.statistics` returns it."""

    group: str
    """The group's name."""
    name: str
    """The member's name, unique in its group."""
    active: bool
    """Whether it is still a member (False once it has left the group)."""
    assignment: tuple[int, ...]
    """The partitions it owns now."""
    holding: tuple[int, ...]
    """Partitions it was handed records of and has not committed up to what it was handed:
    no other member reads them until it lets go."""
    delivered: dict[int, int]
    """Per partition it owns, the group's offset just past the last record handed out."""
    committed: dict[int, int]
    """Per partition it owns, the group's committed offset."""
    batches: int
    """Batches handed to it."""
    records: int
    """Records handed to it (those delivered again after a rewind or a rebalance included)."""


@attrs.define(eq=False)
class Consumer:
    """A member of a :class:`ConsumerGroup`; made by :meth:`ConsumerGroup.join`.

    Read record by record with ``async for record in consumer`` (each record carries its
    topic, partition and offset), or a batch at a time with :meth:`get_batch` or
    ``async for batch in consumer.batches()``, which is much faster. Both end when the topic
    is closed and the group has been handed every record.

    With ``auto_commit`` a batch is committed when the next one is asked for, so a batch is
    committed only after it has been processed. Otherwise call :meth:`commit`.
    """

    group: ConsumerGroup
    name: str
    auto_commit: bool = True
    max_records: int | None = None
    _assigned: list[int] = attrs.field(init=False, factory=list)
    _next: int = attrs.field(init=False, default=0)
    _held: set[int] = attrs.field(init=False, factory=set)
    _generation: int = attrs.field(init=False, default=-1)
    _batch: RecordBatch | None = attrs.field(init=False, default=None)
    _index: int = attrs.field(init=False, default=0)
    _active: bool = attrs.field(init=False, default=True)
    _batches: int = attrs.field(init=False, default=0)
    _records: int = attrs.field(init=False, default=0)

    @property
    def assignment(self) -> tuple[int, ...]:
        """The partitions this member owns now."""
        return tuple(self._assigned)

    async def get_batch(self) -> RecordBatch:
        """Return the next batch from one of this member's partitions, waiting for one.

        Partitions are served in turn so none starves.

        Raises:
            trio.EndOfChannel: The topic is closed and the group has had every record.
            trio.ClosedResourceError: This member has left the group.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                batch = self.get_batch_nowait()
            except trio.WouldBlock:
                await self.group._lot.park()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return batch

    @property
    def revoking(self) -> bool:
        """Whether a rebalance took partitions that this member still holds: its next fetch
        lets them go, with whatever it was handed from them and has not committed (their new
        owner is handed those records again). Commit what was processed before fetching."""
        group = self.group
        return self._generation != group._generation and any(
            group._owner[partition] is not self for partition in self._held
        )

    def get_batch_nowait(self) -> RecordBatch:
        """Return the next batch if one is ready now.

        Raises:
            trio.WouldBlock: Nothing is ready for this member yet.
            trio.EndOfChannel: The topic is closed and the group has had every record.
            trio.ClosedResourceError: This member has left the group.
        """
        if not self._active:
            raise trio.ClosedResourceError(
                f"member {self.name!r} has left group {self.group.name!r}"
            )
        group = self.group
        if self.auto_commit and self._held:
            group._commit_processed(self)
        self._batch = None
        if self._generation != group._generation:
            group._release_revoked(self)
        assigned = self._assigned
        count = len(assigned)
        for step in range(count):
            slot = (self._next + step) % count
            batch = group._fetch(self, assigned[slot])
            if batch is not None:
                self._next = (slot + 1) % count
                self._batches += 1
                self._records += len(batch.values)
                return batch
        if group._done():
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def rewind(self) -> None:
        """Deliver again everything handed to this member but not committed.

        A gateway calls this when a remote member reconnects: batches that were on the wire
        when the connection dropped are delivered again, from the committed offsets.
        """
        group = self.group
        for partition in self._held:
            group._position[partition] = group._committed[partition]
            group._holder[partition] = None
        self._held.clear()
        self._batch = None
        group._lot.unpark_all()

    async def commit(self, offsets: Mapping[int, int] | None = None) -> None:
        """Commit offsets: every record below an offset counts as processed by the group.

        Args:
            offsets: Offset per partition index. When None, everything delivered to this
                member so far is committed.

        Raises:
            CommitError: An offset was never delivered, goes backwards, or the partition
                belongs to another member now.
        """
        await trio.lowlevel.checkpoint()
        self.commit_nowait(offsets)

    def commit_nowait(self, offsets: Mapping[int, int] | None = None) -> None:
        """Commit like :meth:`commit`, without a checkpoint."""
        group = self.group
        if offsets is None:
            offsets = {partition: group._position[partition] for partition in self._held}
        for partition, offset in offsets.items():
            if not 0 <= partition < group.topic.partition_count:
                raise CommitError(f"topic {group.topic.name!r} has no partition {partition}")
            group._commit(self, partition, offset)

    def catch_up(self, offsets: Mapping[int, int]) -> None:
        """Commit ``offsets`` even past what the group has delivered, moving its position up.

        A member on another node says what it processed; after this node restarted from an
        older epoch, the group may be behind that (its records are in the ring again, and
        the member would only skip them). Records up to the offsets count as delivered and
        processed.

        Raises:
            CommitError: As :meth:`commit_nowait`: the partition belongs to another member,
                or the offset goes past what readers may have or backwards.
        """
        group = self.group
        for partition, offset in offsets.items():
            if not 0 <= partition < group.topic.partition_count:
                raise CommitError(f"topic {group.topic.name!r} has no partition {partition}")
            readable = group.topic.partitions[partition].readable_offset
            if offset > readable:
                raise CommitError(
                    f"member {self.name!r} of group {group.name!r} cannot commit offset "
                    f"{offset} on partition {partition}: the partition has records only up "
                    f"to {readable}"
                )
            owns = group._holder[partition] is self or group._owner[partition] is self
            if owns and offset > group._position[partition]:
                group._position[partition] = offset
            group._commit(self, partition, offset)

    def statistics(self) -> ConsumerStatistics:
        """Return a snapshot of this member's partitions, offsets and deliveries."""
        group = self.group
        owned = self._assigned if self._active else []  # a member that left owns nothing
        return ConsumerStatistics(
            group=group.name,
            name=self.name,
            active=self._active,
            assignment=tuple(owned),
            holding=tuple(sorted(self._held)),
            delivered={p: group._position[p] for p in owned},
            committed={p: group._committed[p] for p in owned},
            batches=self._batches,
            records=self._records,
        )

    def batches(self) -> AsyncIterator[RecordBatch]:
        """Iterate over batches: ``async for batch in consumer.batches()``."""
        return BatchIterator(self)

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> StoredRecord:
        batch = self._batch
        if batch is None or self._index >= len(batch.values):
            try:
                batch = await self.get_batch()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            self._batch = batch
            self._index = 0
        index = self._index
        self._index = index + 1
        return batch.record(index)


class BatchSource(Protocol):
    """Anything that hands out batches one at a time: a local or a remote group member."""

    async def get_batch(self) -> RecordBatch:
        """Return the next batch; raise ``trio.EndOfChannel`` after the last one."""
        ...


@attrs.define(eq=False)
class BatchIterator:
    """``async for batch in BatchIterator(consumer)``: the batches of a :class:`BatchSource`
    until it ends, as :meth:`Consumer.batches` and ``RemoteConsumer.batches`` return them."""

    consumer: BatchSource

    def __aiter__(self) -> BatchIterator:
        return self

    async def __anext__(self) -> RecordBatch:
        try:
            return await self.consumer.get_batch()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
