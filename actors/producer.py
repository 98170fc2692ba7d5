"""Producers: adaptive batching of records into a topic's partitions."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from .errors import ConfigurationError
from .nursery import open_nursery
from .partitioner import Partitioner
from .record import Columns, Key, Record
from .table import concat


class Sink(Protocol):
    """Where a producer sends one partition's batches: a :class:`Partition` or a remote one."""

    async def send(self, records: Columns) -> int: ...


class Destination(Protocol):
    """What a producer writes to: a :class:`~actors.topic.Topic`, or a topic on another node
    (:class:`~actors.remote.RemoteTopic`)."""

    @property
    def name(self) -> str: ...
    @property
    def capacity(self) -> int | None: ...
    @property
    def partition_count(self) -> int: ...
    @property
    def partitioner(self) -> Partitioner: ...
    @property
    def partitions(self) -> Sequence[Sink]: ...
    def split(self, batch: Columns) -> list[Columns]: ...
    def add_producer(self) -> None: ...
    def remove_producer(self, *, graceful: bool = True) -> None: ...


@attrs.frozen
class ProducerStatistics:
    """A snapshot of one producer, as :meth:`Producer.statistics` returns it."""

    records_sent: int
    """Records accepted by partitions so far."""
    batches_sent: int
    """Batches accepted by partitions so far."""
    buffered: int
    """Records waiting in the producer's buffers for a batch to fill or the linger to pass."""
    linger_flushes: int
    """Batches sent because their linger ran out rather than because they were full."""


@attrs.define(eq=False)
class _Buffer:
    # Records waiting for one partition: whole columns as the chunks they came in (lists, or
    # arrays and tables, joined only when a batch is taken, in the form they share), then the
    # records added one by one, in three lists as before there were chunks.
    chunks: list[Columns] = attrs.field(factory=list)
    keys: list[Key] = attrs.field(factory=list)
    values: list[Any] = attrs.field(factory=list)
    timestamps: list[float] = attrs.field(factory=list)
    count: int = 0
    oldest: float = math.inf
    lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock)

    def append(self, key: Key, value: Any, timestamp: float) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.timestamps.append(timestamp)
        self.count += 1

    def extend(self, columns: Columns) -> None:
        if self.keys:
            self._close()
        self.chunks.append(columns)
        self.count += len(columns)

    def _close(self) -> None:
        # The records added one by one become a chunk, so what comes next goes after them.
        self.chunks.append(Columns(self.keys, self.values, self.timestamps))
        self.keys, self.values, self.timestamps = [], [], []

    def take(self, count: int) -> Columns:
        self.count -= count
        if not self.chunks:  # records added one by one only
            taken = Columns(self.keys[:count], self.values[:count], self.timestamps[:count])
            del self.keys[:count], self.values[:count], self.timestamps[:count]
            return taken
        if self.keys:
            self._close()
        parts: list[Columns] = []
        wanted = count
        while wanted:
            chunk = self.chunks[0]
            size = len(chunk)
            if size <= wanted:
                parts.append(self.chunks.pop(0))
                wanted -= size
            else:
                parts.append(_slice(chunk, 0, wanted))
                self.chunks[0] = _slice(chunk, wanted, size)
                wanted = 0
        if len(parts) == 1:
            return parts[0]
        return Columns(
            concat([c.keys for c in parts]),
            concat([c.values for c in parts]),
            concat([c.timestamps for c in parts]),
        )

    def chunks_now(self) -> list[Columns]:
        if self.keys:
            self._close()
        return list(self.chunks)

    def put_back(self, batch: Columns) -> None:
        self.chunks.insert(0, batch)
        self.count += len(batch)


def _slice(columns: Columns, start: int, stop: int) -> Columns:
    return Columns(
        columns.keys[start:stop], columns.values[start:stop], columns.timestamps[start:stop]
    )


@attrs.define(eq=False)
class Producer:
    """Sends records to a topic in batches.

    Records are buffered per partition. A buffer is sent as one batch when it holds
    ``max_batch`` records, or when its oldest record has waited ``linger`` seconds: under load
    batches are full, and a trickle of events is held back no longer than ``linger``.

    Make one with :func:`open_producer`, which also runs the linger timer.

    Args:
        topic: Where records go.
        max_batch: The most records in one batch (at least 1; clamped to the partitions'
            capacity so a batch always fits).
        linger: Seconds a partly filled batch may wait before it is sent anyway (>= 0).

    Raises:
        ConfigurationError: ``max_batch`` < 1 or ``linger`` < 0.
    """

    topic: Destination
    max_batch: int = 1000
    linger: float = 0.005
    _buffers: list[_Buffer] = attrs.field(init=False)
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)
    _records_sent: int = attrs.field(init=False, default=0)
    _batches_sent: int = attrs.field(init=False, default=0)
    _linger_flushes: int = attrs.field(init=False, default=0)
    _interrupted: bool = attrs.field(init=False, default=False)
    _resumed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _sending: set[trio.CancelScope] = attrs.field(init=False, factory=set)
    _idle: trio.Event = attrs.field(init=False, factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigurationError(f"max_batch must be at least 1, got {self.max_batch}")
        if not self.linger >= 0:
            raise ConfigurationError(f"linger must be zero or more seconds, got {self.linger}")
        if self.topic.capacity is not None:
            self.max_batch = min(self.max_batch, self.topic.capacity)
        self._buffers = [_Buffer() for _ in range(self.topic.partition_count)]

    async def send(self, record: Record) -> None:
        """Add one record to its partition's batch; send the batch if it is now full.

        Only a full batch waits (for room in the ring); otherwise this returns at once, so
        sending a record costs little more than appending it to a list.

        Raises:
            TopicClosedError: The topic was closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        index = self.topic.partitioner.partition_for(record.key)
        buffer = self._buffers[index]
        buffer.append(record.key, record.value, record.timestamp)
        if buffer.count >= self.max_batch:
            await self._flush_partition(index)
        elif buffer.count == 1:
            buffer.oldest = trio.current_time()
            self._wake.set()

    async def send_many(self, records: Columns | Sequence[Record]) -> None:
        """Send many records at once: the fast path when a workload makes whole batches.

        Records are split by partition and every share is buffered before anything waits;
        then full batches are sent, and the rest waits in the buffers like records given to
        :meth:`send`. :class:`Columns` are the fastest form: a whole batch for a
        one-partition topic is sent without being copied. After :meth:`interrupt`, this
        returns with the records buffered, sending nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        batch = records if isinstance(records, Columns) else Columns.from_records(records)
        max_batch = self.max_batch
        full = []
        now = trio.current_time()
        for index, part in enumerate(self.topic.split(batch)):
            if not len(part.values):
                continue
            buffer = self._buffers[index]
            if not buffer.count:
                buffer.oldest = now
                self._wake.set()
            buffer.extend(part)
            if buffer.count >= max_batch:
                full.append(index)
        for index in full:
            while self._buffers[index].count >= max_batch and not self._interrupted:
                await self._flush_partition(index)

    async def flush(self) -> None:
        """Send every buffered record now, waiting for room as needed."""
        for index in range(len(self._buffers)):
            await self._flush_partition(index, everything=True)

    async def _flush_partition(self, index: int, *, everything: bool = False) -> None:
        # One flush at a time per partition, so batches reach the ring in buffer order even
        # when the linger timer and a full buffer flush at once. Looking at the buffer only
        # once the lock is held matters: a batch the timer has in flight is not in the buffer.
        buffer = self._buffers[index]
        await self._acquire(buffer)
        try:
            while buffer.count and not self._interrupted:
                batch = buffer.take(min(self.max_batch, buffer.count))
                buffer.oldest = trio.current_time() if buffer.count else math.inf
                scope = trio.CancelScope()
                self._sending.add(scope)
                try:
                    with scope:
                        await self._send_batch(index, batch)
                except BaseException:
                    # Not accepted: put the batch back in front so a retry keeps the order.
                    buffer.put_back(batch)
                    buffer.oldest = trio.current_time()
                    raise
                finally:
                    self._sending.discard(scope)
                    if not self._sending:
                        self._idle.set()
                if scope.cancelled_caught:  # interrupted: not accepted, and kept in order
                    buffer.put_back(batch)
                    buffer.oldest = trio.current_time()
                    return
                if not everything:
                    return
        finally:
            buffer.lock.release()

    def interrupt(self) -> None:
        """Stop sending until :meth:`resume`: a send waiting for room gives its batch back to
        the front of its buffer, and every record not yet accepted stays buffered, in order.

        A source pausing for an epoch interrupts its producers rather than waiting for them
        to flush: a ring may only make room once that epoch is written.
        """
        if not self._interrupted:
            self._interrupted = True
            self._resumed = trio.Event()
        for scope in self._sending:
            scope.cancel()

    async def wait_idle(self) -> None:
        """Once :meth:`interrupt` is called: wait until no batch is in flight, so that
        :meth:`buffered` holds every record not accepted."""
        while self._sending:
            self._idle = trio.Event()
            await self._idle.wait()

    def resume(self) -> None:
        """Send again after :meth:`interrupt`."""
        if self._interrupted:
            self._interrupted = False
            self._resumed.set()
            self._wake.set()

    def buffered(self) -> list[list[Columns]]:
        """The records buffered for each partition, in order, as chunks of columns."""
        return [buffer.chunks_now() for buffer in self._buffers]

    def restore_buffered(self, buffered: Sequence[Sequence[Columns]]) -> None:
        """Put records back in the buffers (from :meth:`buffered`), before any is sent.

        Raises:
            ValueError: ``buffered`` is not one list per partition.
        """
        if len(buffered) != len(self._buffers):
            raise ValueError(
                f"records buffered for {len(buffered)} partitions; the topic has "
                f"{len(self._buffers)}"
            )
        now = trio.current_time()
        for buffer, chunks in zip(self._buffers, buffered, strict=True):
            for chunk in chunks:
                if len(chunk):
                    buffer.extend(chunk)
            if buffer.count:
                buffer.oldest = now
                self._wake.set()

    @staticmethod
    async def _acquire(buffer: _Buffer) -> None:
        # A free lock is taken without a checkpoint: ``async with lock`` would cost a trip
        # through the scheduler for every batch, a third of the pipeline's time.
        try:
            buffer.lock.acquire_nowait()
        except trio.WouldBlock:
            await buffer.lock.acquire()

    async def _send_batch(self, index: int, batch: Columns) -> None:
        await self.topic.partitions[index].send(batch)
        self._records_sent += len(batch.values)
        self._batches_sent += 1

    async def run_linger_timer(self) -> None:
        """Send partly filled batches whose linger has run out; runs until cancelled."""
        while True:
            if self._interrupted:
                await self._resumed.wait()
                continue
            deadline = min(buffer.oldest for buffer in self._buffers) + self.linger
            if deadline == math.inf:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            if trio.current_time() < deadline:
                with trio.move_on_at(deadline):
                    self._wake = trio.Event()
                    await self._wake.wait()
                continue
            now = trio.current_time()
            for index, buffer in enumerate(self._buffers):
                if buffer.oldest + self.linger <= now and buffer.count:
                    self._linger_flushes += 1
                    await self._flush_partition(index)

    def statistics(self) -> ProducerStatistics:
        """Return a snapshot of the producer's counters."""
        return ProducerStatistics(
            records_sent=self._records_sent,
            batches_sent=self._batches_sent,
            buffered=sum(buffer.count for buffer in self._buffers),
            linger_flushes=self._linger_flushes,
        )


@asynccontextmanager
async def open_producer(
    topic: Destination, *, max_batch: int = 1000, linger: float = 0.005
) -> AsyncIterator[Producer]:
    """Open a producer on ``topic`` and run its linger timer until the block ends.

    Leaving the block normally flushes what is buffered and unregisters the producer; when
    it was the topic's last producer, the topic closes and consumers see the end of the
    stream once they have drained it. Leaving with an exception unregisters it without
    closing the topic (a supervisor may restart it) and drops what was never accepted.

    Example::

        async with open_producer(topic, max_batch=500) as producer:
            for event in events:
                await producer.send(Record(event.video_id, event, trio.current_time()))

    Raises:
        TopicClosedError: The topic is already closed.
        ConfigurationError: ``max_batch`` < 1 or ``linger`` < 0.
    """
    producer = Producer(topic, max_batch, linger)
    topic.add_producer()
    graceful = False
    try:
        async with open_nursery() as nursery:
            nursery.start_soon(producer.run_linger_timer)
            yield producer
            await producer.flush()
            nursery.cancel_scope.cancel()
        graceful = True
    finally:
        topic.remove_producer(graceful=graceful)
