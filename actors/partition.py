"""A partition: an actor that owns a ring of records with monotonically increasing offsets."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence

import attrs
import outcome
import trio

from . import testing
from .errors import (
    BatchTooLargeError,
    CommitError,
    ConfigurationError,
    SequenceError,
    TopicClosedError,
)
from .record import Columns, Record, RecordBatch

_FREED = RecordBatch("", 0, 0, [], [], [])
"""What stands in the ring's list for a batch freed (every group past it): the list is cut
only now and then, and the batch's records must not wait for that."""


@attrs.frozen
class PartitionStatistics:
    """A snapshot of one partition, as :meth:`Partition.statistics` returns it."""

    topic: str
    """The topic the partition belongs to."""
    partition: int
    """The partition's index in its topic."""
    capacity: int | None
    """Most records the ring holds at once, or None in dynamic mode."""
    depth: int
    """Records held now: accepted but not yet committed by every consumer group."""
    peak_depth: int
    """The largest depth seen since the partition was opened."""
    start_offset: int
    """The lowest offset still held (the low watermark)."""
    end_offset: int
    """The offset the next accepted record will get; also the number of records accepted."""
    senders_waiting: int
    """Senders blocked right now, waiting for room or (dynamic mode) for a consumer."""
    blocked_seconds: float
    """Total time senders have spent blocked, summed over senders, in seconds of the run's clock."""
    consumers_attached: int
    """Consumers that currently own this partition, over all groups."""
    committed: dict[str, int]
    """Each consumer group's committed offset: every record below it is processed."""
    lag: dict[str, int]
    """Each consumer group's lag: records accepted but not yet committed by that group."""
    closed: bool
    """Whether the partition accepts no more records."""


@attrs.frozen
class PartitionState:
    """What a partition holds, for a checkpoint: see :meth:`Partition.snapshot`."""

    start_offset: int
    """The low watermark: every group has committed up to here."""
    end_offset: int
    """The offset the next record will get."""
    committed: dict[str, int]
    """Each group's committed offset."""
    batches: list[RecordBatch]
    """The stored batches from the lowest retained offset up to the end."""
    peak_depth: int = 0
    """The peak depth so far, so statistics carry on across a restore."""
    sequences: dict[str, int] = attrs.field(factory=dict)
    """Per producer id, the sequence number the next record of :meth:`Partition.send_sequenced`
    must have: what makes resending after a lost connection or a restart idempotent."""


@attrs.define(eq=False)
class _Sender:
    task: trio.lowlevel.Task
    records: Columns
    since: float
    producer: str | None = None
    sequence: int = 0


def as_columns(records: Columns | Sequence[Record]) -> Columns:
    """Return ``records`` as :class:`Columns` (unchanged if they already are)."""
    if isinstance(records, Columns):
        return records
    return Columns.from_records(records)


@attrs.define(eq=False)
class Partition:
    """An actor that owns a ring of records.

    Records get consecutive offsets as they are accepted. The ring's capacity is counted in
    records, and a record stays in the ring until every consumer group registered on the
    partition has committed past it. :meth:`send` blocks while the ring lacks room for the
    whole batch; :meth:`send_nowait` raises :exc:`trio.WouldBlock` instead. Blocked senders are
    served first come, first served, and a batch is accepted whole or not at all.

    With ``capacity=None`` the partition is in dynamic mode: the ring grows without bound, but
    sends block while no consumer is attached, and resume as soon as one is.

    A partition runs no task of its own. Trio switches tasks only at checkpoints, so each
    method below changes the ring atomically; producers and consumers call into it directly,
    which saves one task switch per batch compared with a partition behind a channel.

    Args:
        topic: The name of the topic the partition belongs to.
        index: The partition's index in that topic.
        capacity: Most records held at once (at least 1), or None for dynamic mode.
        retention: Records kept readable after every group has committed them, for readers
            that start late; they do not count against the capacity.

    Raises:
        ConfigurationError: ``capacity`` is zero or negative, or ``retention`` negative.
    """

    topic: str
    index: int
    capacity: int | None = None
    retention: int = 0
    _batches: list[RecordBatch] = attrs.field(init=False, factory=list)
    _bases: list[int] = attrs.field(init=False, factory=list)
    _head: int = attrs.field(init=False, default=0)
    _start: int = attrs.field(init=False, default=0)
    _end: int = attrs.field(init=False, default=0)
    _committed: dict[str, int] = attrs.field(init=False, factory=dict)
    _senders: deque[_Sender] = attrs.field(init=False, factory=deque)
    _listeners: list[trio.lowlevel.ParkingLot] = attrs.field(init=False, factory=list)
    _attached: int = attrs.field(init=False, default=0)
    _closed: bool = attrs.field(init=False, default=False)
    _peak: int = attrs.field(init=False, default=0)
    _blocked: float = attrs.field(init=False, default=0.0)
    _sequences: dict[str, int] = attrs.field(init=False, factory=dict)
    _visible: int = attrs.field(init=False, default=0)
    _hold_back: bool = attrs.field(init=False, default=False)
    _on_full: Callable[[], None] | None = attrs.field(init=False, default=None)
    _room: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    on_append: Callable[[RecordBatch], None] | None = attrs.field(init=False, default=None)
    """Called with every batch as it is accepted (for logging); must not block or raise."""

    def __attrs_post_init__(self) -> None:
        # Checked here rather than with an attrs validator: a validator makes attrs run a
        # hook on every attribute assignment, and the ring assigns several per batch.
        if self.capacity is not None and self.capacity < 1:
            raise ConfigurationError(
                f"partition {self.topic}[{self.index}]: capacity must be at least 1 record, "
                f"got {self.capacity}; leave it unset for a dynamic (growing) ring"
            )
        if self.retention < 0:
            raise ConfigurationError(
                f"partition {self.topic}[{self.index}]: retention must be 0 or more records, "
                f"got {self.retention}"
            )

    # -- producing -------------------------------------------------------------------------

    async def send(self, records: Columns | Sequence[Record]) -> int:
        """Append a batch of records, waiting for room if the ring is full.

        Args:
            records: The records, in order, as :class:`Columns` (the fast form) or a sequence
                of :class:`Record`. Columns are stored as given, not copied: do not change the
                lists afterwards.

        Returns:
            The offset given to the first record.

        Raises:
            TopicClosedError: The partition was closed before the batch was accepted.
            BatchTooLargeError: The batch could never fit in the ring.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        records = as_columns(records)
        try:
            base = self.send_nowait(records)
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return base
        return await self._wait_as_sender(records)

    async def _wait_as_sender(
        self, records: Columns, producer: str | None = None, sequence: int = 0
    ) -> int:
        # Queue behind the senders already waiting; _admit_senders hands over the result (the
        # first offset, or for numbered records how many were new) when there is room.
        sender = _Sender(
            trio.lowlevel.current_task(), records, trio.current_time(), producer, sequence
        )
        self._senders.append(sender)
        if self._on_full is not None and self._visible < self._end:
            self._on_full()

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            self._senders.remove(sender)
            self._blocked += trio.current_time() - sender.since
            return trio.lowlevel.Abort.SUCCEEDED

        result: int = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    async def send_sequenced(self, records: Columns, producer: str, sequence: int) -> int:
        """Append records numbered by their producer, skipping any already accepted.

        The records are numbers ``sequence``, ``sequence + 1``, ... of ``producer``'s records
        for this partition. The partition remembers the number it expects next from each
        producer (in its snapshots too), so a producer that resends after a lost connection
        or a restart, from any number at or below the expected one, gets nothing twice. This
        is how records crossing a gateway are accepted exactly once.

        Returns:
            How many records were newly accepted (0 when all of them were duplicates).

        Raises:
            SequenceError: ``sequence`` lies beyond the expected number: records are missing.
            TopicClosedError, BatchTooLargeError: As for :meth:`send`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        fresh = self._fresh(records, producer, sequence)
        if not fresh:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return 0
        count = len(fresh)
        try:
            self.send_nowait(fresh)
        except trio.WouldBlock:
            pass
        else:
            self._sequences[producer] = sequence + len(records)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return count
        return await self._wait_as_sender(records, producer, sequence)

    def _fresh(self, records: Columns, producer: str, sequence: int) -> Columns:
        expected = self._sequences.get(producer, 0)
        if sequence > expected:
            raise SequenceError(
                f"partition {self.topic}[{self.index}] expected record {expected} of producer "
                f"{producer!r} next, got {sequence}: records {expected} to {sequence - 1} are "
                "missing"
            )
        skip = expected - sequence
        if not skip or "sequence_check" in testing.broken:
            return records
        return Columns(records.keys[skip:], records.values[skip:], records.timestamps[skip:])

    def next_sequence(self, producer: str) -> int:
        """The sequence number :meth:`send_sequenced` expects next from ``producer``."""
        return self._sequences.get(producer, 0)

    def send_nowait(self, records: Columns | Sequence[Record]) -> int:
        """Append a batch of records if the ring has room for all of them now.

        Returns:
            The offset given to the first record.

        Raises:
            trio.WouldBlock: The ring lacks room, no consumer is attached (dynamic mode), or
                other senders are already waiting; nothing was accepted.
            TopicClosedError: The partition is closed.
            BatchTooLargeError: The batch could never fit in the ring.
        """
        records = as_columns(records)
        if self._closed:
            raise TopicClosedError(
                f"partition {self.topic}[{self.index}] is closed; "
                f"{len(records)} records were not accepted"
            )
        if self.capacity is not None and len(records) > self.capacity:
            raise BatchTooLargeError(
                f"a batch of {len(records)} records cannot fit in partition "
                f"{self.topic}[{self.index}] of capacity {self.capacity}; "
                "send smaller batches or raise the capacity"
            )
        if self._senders or not self._has_room(len(records)):
            raise trio.WouldBlock
        return self._append(records)

    def can_take(self, count: int) -> bool:
        """Whether :meth:`send_nowait` would accept ``count`` records now: the partition is
        open, no sender is waiting before them, and the ring has room."""
        if self._closed or (self.capacity is not None and count > self.capacity):
            return False
        return not self._senders and self._has_room(count)

    def _has_room(self, count: int) -> bool:
        if self.capacity is None:
            return self._attached > 0
        return self._end - self._start + count <= self.capacity

    def _append(self, records: Columns) -> int:
        base = self._end
        count = len(records.values)
        if count:
            self._batches.append(
                RecordBatch(
                    self.topic, self.index, base, records.keys, records.values, records.timestamps
                )
            )
            self._bases.append(base)
            self._end = base + count
            if not self._hold_back:
                self._visible = self._end
            depth = self._end - self._start
            if depth > self._peak:
                self._peak = depth
            for lot in self._listeners:
                lot.unpark_all()
            if self.on_append is not None:
                self.on_append(self._batches[-1])
        return base

    def _admit_senders(self) -> None:
        senders = self._senders
        while senders:
            sender = senders[0]
            records = sender.records
            if sender.producer is not None:
                # Numbered records: what to skip is decided now, when they would be accepted.
                try:
                    records = self._fresh(records, sender.producer, sender.sequence)
                except SequenceError as error:
                    self._dequeue()
                    trio.lowlevel.reschedule(sender.task, outcome.Error(error))
                    continue
            if records and not self._has_room(len(records)):
                return
            self._dequeue()
            if sender.producer is None:
                trio.lowlevel.reschedule(sender.task, outcome.Value(self._append(records)))
                continue
            if records:
                self._append(records)
            end = sender.sequence + len(sender.records)
            if end > self._sequences.get(sender.producer, 0):
                self._sequences[sender.producer] = end
            trio.lowlevel.reschedule(sender.task, outcome.Value(len(records)))

    def _dequeue(self) -> None:
        sender = self._senders.popleft()
        self._blocked += trio.current_time() - sender.since

    def close(self) -> None:
        """Accept no more records.

        Records already accepted stay readable until consumed; consumers see the end of the
        stream once they have read past the last one. Senders still waiting get
        :exc:`TopicClosedError`. Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        while self._senders:
            sender = self._senders.popleft()
            self._blocked += trio.current_time() - sender.since
            error = TopicClosedError(
                f"partition {self.topic}[{self.index}] was closed while a send of "
                f"{len(sender.records)} records waited; they were not accepted"
            )
            trio.lowlevel.reschedule(sender.task, outcome.Error(error))
        for lot in self._listeners:
            lot.unpark_all()
        self._room.unpark_all()

    @property
    def closed(self) -> bool:
        """Whether the partition accepts no more records."""
        return self._closed

    @property
    def free_room(self) -> int | None:
        """Records the ring can take now; None when unbounded (dynamic mode with a consumer)."""
        if self.capacity is None:
            return None if self._attached else 0
        return self.capacity - (self._end - self._start)

    async def wait_room_changed(self) -> None:
        """Wait until records are freed, a consumer attaches, or the partition closes."""
        await self._room.park()

    def hold_back(self, on_full: Callable[[], None] | None = None) -> None:
        """Hand records to readers only once :meth:`expose` says they are durable.

        A partition whose contents are checkpointed, and whose readers are on other nodes,
        holds records back until an epoch holding them is written: then a reader never sees a
        record that a restart from the newest epoch would give another offset. ``on_full``
        is called when a sender waits for room while records are held back (an epoch would
        let readers free some); it must not block or raise.
        """
        self._hold_back = True
        self._on_full = on_full
        self._visible = min(self._visible, self._end)

    def expose(self, offset: int) -> None:
        """Let readers have every record below ``offset`` (see :meth:`hold_back`)."""
        offset = min(offset, self._end)
        if offset > self._visible:
            self._visible = offset
            for lot in self._listeners:
                lot.unpark_all()

    @property
    def readable_offset(self) -> int:
        """The offset just past the last record readers may have (the end, unless held back)."""
        return self._visible

    @property
    def end_offset(self) -> int:
        """The offset the next accepted record will get."""
        return self._end

    @property
    def start_offset(self) -> int:
        """The lowest offset still held."""
        return self._start

    # -- consuming -------------------------------------------------------------------------

    def register_group(self, group: str, listener: trio.lowlevel.ParkingLot) -> int:
        """Start keeping records for consumer group ``group``; return its committed offset.

        A new group starts from the lowest offset still held. ``listener`` is unparked whenever
        records arrive or the partition closes.
        """
        if group not in self._committed:
            self._committed[group] = self._start
        if listener not in self._listeners:
            self._listeners.append(listener)
        return self._committed[group]

    def unregister_group(self, group: str) -> None:
        """Stop keeping records for ``group`` (a reader that leaves for good)."""
        if self._committed.pop(group, None) is not None:
            self._release_committed()

    def add_listener(self, listener: trio.lowlevel.ParkingLot) -> None:
        """Unpark ``listener`` whenever records arrive or the partition closes."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: trio.lowlevel.ParkingLot) -> None:
        """Undo :meth:`add_listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def attach(self) -> None:
        """Note that one more consumer owns this partition (dynamic mode lets sends through)."""
        self._attached += 1
        self._admit_senders()
        self._room.unpark_all()

    def detach(self) -> None:
        """Note that a consumer gave this partition up."""
        self._attached -= 1

    def read(self, offset: int, max_records: int | None = None) -> RecordBatch | None:
        """Return held records from ``offset`` on, at most one stored batch of them.

        Args:
            offset: The first offset wanted; at least the start offset.
            max_records: Cut the batch to at most this many records.

        Returns:
            A batch starting exactly at ``offset``, or None when nothing is there yet.
        """
        if offset >= self._visible:
            return None
        if offset < self.retained_offset:
            raise CommitError(
                f"offset {offset} of {self.topic}[{self.index}] is no longer held "
                f"(held from {self.retained_offset})"
            )
        where = bisect.bisect_right(self._bases, offset, lo=self._head) - 1
        batch = self._batches[where]
        skip = offset - batch.base_offset
        size = len(batch.values)
        count = size - skip
        if max_records is not None and count > max_records:
            count = max_records
        if count > self._visible - offset:
            count = self._visible - offset
        if skip == 0 and count == size:
            return batch
        return batch.slice(skip, skip + count)

    def commit(self, group: str, offset: int) -> None:
        """Record that ``group`` has processed every record below ``offset``.

        Frees the records that every group has now committed past and admits waiting senders.

        Raises:
            CommitError: ``offset`` is beyond the records accepted, or below the group's
                previous commit.
        """
        previous = self._committed[group]
        if offset > self._end or offset < previous:
            raise CommitError(
                f"group {group!r} cannot commit offset {offset} on {self.topic}[{self.index}]: "
                f"it must lie between its last commit {previous} and the end {self._end}"
            )
        self._committed[group] = offset
        self._release_committed()

    def _release_committed(self) -> None:
        # Free what every group has committed past, then let waiting senders in.
        low = min(self._committed.values(), default=self._start)
        if low > self._start:
            self._start = low
            self._free()
            self._admit_senders()
            self._room.unpark_all()

    @property
    def retained_offset(self) -> int:
        """The lowest offset still readable (below the start offset when retention is set)."""
        if self._head < len(self._batches):
            return min(self._batches[self._head].base_offset, self._start)
        return self._start

    def _free(self) -> None:
        batches, head = self._batches, self._head
        keep_from = self._start - self.retention
        while head < len(batches) and batches[head].next_offset <= keep_from:
            batches[head] = _FREED  # its records go now, not when the list is cut
            head += 1
        if head > 64 and head * 2 > len(batches):
            del batches[:head]
            del self._bases[:head]
            head = 0
        self._head = head

    def snapshot(self) -> PartitionState:
        """Return what the partition holds: offsets, commits and the retained batches.

        Batches are shared, not copied (they are never changed once stored). Records a sender
        is still waiting to hand over are not included: they were not accepted.
        """
        return PartitionState(
            start_offset=self._start,
            end_offset=self._end,
            committed=dict(self._committed),
            batches=self._batches[self._head :],
            peak_depth=self._peak,
            sequences=dict(self._sequences),
        )

    def restore(self, state: PartitionState) -> None:
        """Take over a snapshot's contents; only on a new partition nothing was sent to.

        Raises:
            RuntimeError: The partition already holds records or has senders.
        """
        if self._end or self._senders or self._batches:
            raise RuntimeError("restore() needs a fresh partition")
        self._start, self._end, self._peak = state.start_offset, state.end_offset, state.peak_depth
        self._visible = self._end
        self._committed = dict(state.committed)
        self._sequences = dict(state.sequences)
        self._batches = list(state.batches)
        self._bases = [batch.base_offset for batch in self._batches]
        self._head = 0

    def statistics(self) -> PartitionStatistics:
        """Return a snapshot of the partition's counters."""
        blocked = self._blocked
        if self._senders:
            now = trio.current_time()
            blocked += sum(now - s.since for s in self._senders)
        return PartitionStatistics(
            topic=self.topic,
            partition=self.index,
            capacity=self.capacity,
            depth=self._end - self._start,
            peak_depth=self._peak,
            start_offset=self._start,
            end_offset=self._end,
            senders_waiting=len(self._senders),
            blocked_seconds=blocked,
            consumers_attached=self._attached,
            committed=dict(self._committed),
            lag={group: self._end - offset for group, offset in self._committed.items()},
            closed=self._closed,
        )
