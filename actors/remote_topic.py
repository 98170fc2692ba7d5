"""Producers of partitions hosted by another node's gateway.

:func:`open_remote_topic` gives a topic that :func:`~actors.producer.open_producer` writes to
exactly as to a local one: records are numbered per partition, sent in batches as the
gateway's window (the free room in the remote ring) allows, and kept until the gateway says
they are durable, so a dropped connection or a restarted node is resumed, after a backoff,
from what the gateway has, with nothing lost and nothing twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from . import testing
from .connection import binary, greet, keep_trying
from .errors import GatewayError, TopicClosedError
from .network import TCP, Network
from .nursery import open_nursery
from .partition import as_columns
from .partitioner import Partitioner
from .record import Columns, Record
from .retry import Backoff
from .topic import Topic, refuse_if_never
from .wire import (
    ENCODER,
    MAX_MESSAGE_SIZE,
    PROTOCOL,
    SOFTWARE,
    Finish,
    Finished,
    Hello,
    Welcome,
    Window,
    batch_frame,
    decoder,
)

FRAMING = 1024
"""Bytes a message's frame may add to the batch in it, at most."""


@attrs.frozen
class RemoteTopicStatistics:
    """A snapshot of a remote topic, as :meth:`RemoteTopic.statistics` returns it."""

    url: str
    """The gateway's address."""
    topic: str
    """The topic's name on the remote node."""
    producer: str
    """The id the gateway counts this producer's records by."""
    connected: bool
    """Whether a connection is open and welcomed now."""
    reconnects: int
    """Connections opened after the first."""
    failures: int
    """Attempts to reach the node that failed in a row (0 while connected)."""
    numbered: tuple[int, ...]
    """Per partition, the records numbered so far (sent, or waiting for the window)."""
    acked: tuple[int, ...]
    """Per partition, the records the remote node has accepted."""
    durable: tuple[int, ...]
    """Per partition, the records the remote node holds durably (may be forgotten here)."""
    retained: tuple[int, ...]
    """Per partition, the records kept here for resending: sent but not yet durable."""
    finished: bool
    """Whether the remote node has recorded this producer's finish."""


@attrs.frozen
class RemotePartitionState:
    """A remote partition's numbering and the records kept to resend, as
    :meth:`RemotePartition.snapshot` gives it and :meth:`RemotePartition.restore` takes it."""

    next_sequence: int
    """The sequence number the next record sent will get."""
    retained: tuple[tuple[int, Columns], ...] = ()
    """(first sequence number, records) of the batches sent but not yet durable on the
    remote node, oldest first: what a reconnection resends."""


@attrs.frozen
class RemoteTopicState:
    """A remote topic's state for a checkpoint, as :meth:`RemoteTopic.snapshot` gives it
    and :meth:`RemoteTopic.restore` takes it."""

    partitions: tuple[RemotePartitionState, ...]
    """Per partition, in partition order."""
    finished: bool = False
    """Whether the remote node had recorded this producer's finish: restored, the topic
    needs no connection (the node may be gone, its work done)."""


@attrs.define(eq=False)
class RemotePartition:
    """One partition of a :class:`RemoteTopic`: numbers records and respects the window.

    Producers send to it with :meth:`send`, one batch after another. It also takes records
    as a local :class:`~actors.partition.Partition` does for :func:`~actors.topic.admit_sized`
    (:meth:`can_take`, :meth:`wait_room_changed`, :meth:`send_nowait`), so that a request's
    records enter several partitions, here or on other nodes, all at once or not at all.
    """

    remote: RemoteTopic
    index: int
    _next: int = 0
    _acked: int = 0
    _durable: int = 0
    _limit: int | None = 0
    _retained: deque[tuple[int, Columns]] = attrs.field(factory=deque)
    _changed: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    async def send(self, records: Columns | Sequence[Record]) -> int:
        """Number the records and send them when the window allows; return the first number.

        Waits while the remote ring has no room for them (the window is closed).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        columns = as_columns(records)
        count = len(columns)
        while self._limit is not None and self._next + count > self._limit:
            await self._changed.park()
        sequence = self._next
        self._next += count
        self._retained.append((sequence, columns))
        # Numbered and kept: from here the records are the link's to deliver, so a cancel
        # (a producer interrupted for an epoch) must not take them back half sent.
        with trio.CancelScope(shield=True):
            await self.remote._send(self.index, sequence, columns)
        return sequence

    @property
    def topic(self) -> str:
        """The topic's name."""
        return self.remote.name

    @property
    def capacity(self) -> int | None:
        """The remote ring's capacity, in records (None: a dynamic ring)."""
        return self.remote.capacity

    @property
    def closed(self) -> bool:
        """Whether the remote topic takes no more records from here."""
        return self.remote.closed

    def can_take(self, count: int) -> bool:
        """Whether :meth:`send_nowait` would take ``count`` records now: the window (the
        free room in the remote ring) has room for them."""
        if self.closed or (self.capacity is not None and count > self.capacity):
            return False
        return self._limit is None or self._next + count <= self._limit

    async def wait_room_changed(self) -> None:
        """Wait until the window changes (or the remote topic closes)."""
        await self._changed.park()

    def send_nowait(self, records: Columns | Sequence[Record]) -> int:
        """Number records the window has room for now, and keep them until the remote node
        holds them durably; they are sent in order, in the background. Return the first
        number.

        Raises:
            trio.WouldBlock: The window lacks room; nothing was taken.
            TopicClosedError: The remote topic takes no more records.
            BatchTooLargeError: The records could never fit in the remote ring.
        """
        columns = as_columns(records)
        count = len(columns)
        refuse_if_never(self, count)
        if not self.can_take(count):
            raise trio.WouldBlock
        sequence = self._next
        self._next += count
        self._retained.append((sequence, columns))
        self.remote._pending.set()
        return sequence

    async def wait_for(self, end: int, *, durable: bool) -> None:
        """Return once the remote node has the records numbered below ``end`` in its ring
        (or, with ``durable``, in a written epoch)."""
        while (self._durable if durable else self._acked) < end:
            if self.closed:
                raise TopicClosedError(
                    f"the connection to {self.remote.url} for {self.topic}[{self.index}] "
                    "ended before the node had every record"
                )
            await self._changed.park()

    def _adopt(self, have: int) -> None:
        # The node has more of this producer's records than it numbered: a producer that
        # numbers new records (rather than making the same ones again) carries on after them.
        if have > self._next:
            self._next = have
            self._retained.clear()

    def _window(self, window: Window) -> None:
        self._acked, self._durable, self._limit = window.acked, window.durable, window.limit
        retained = self._retained
        while retained and retained[0][0] + len(retained[0][1]) <= self._durable:
            retained.popleft()
        self._changed.unpark_all()

    @property
    def settled(self) -> bool:
        """Whether every record sent is durable on the remote node."""
        return self._durable >= self._next

    @property
    def retained(self) -> int:
        """Records kept for resending: sent but not yet durable remotely."""
        return sum(len(columns) for _, columns in self._retained)

    def snapshot(self) -> RemotePartitionState:
        """The numbering and the records not yet durable, for a checkpoint."""
        return RemotePartitionState(self._next, tuple(self._retained))

    def restore(self, state: RemotePartitionState) -> None:
        """Take back :meth:`snapshot`, before the connection is opened."""
        self._next = state.next_sequence
        self._retained = deque(state.retained)


@attrs.define(eq=False)
class RemoteTopic:
    """A topic on another node, as a producer sees it; open with :func:`open_remote_topic`."""

    url: str
    name: str
    producer: str
    """The id the gateway counts this producer's numbered records by."""
    token: str | None = None
    value_type: Any = Any
    give_up: float = 30.0
    agreement: dict[str, str] = attrs.field(factory=dict)
    """What the nodes of one topology must agree on, sent with the hello."""
    network: Network = TCP
    """What connections to the node go over."""
    max_message_size: int = MAX_MESSAGE_SIZE
    """The largest message the node takes (its ``gateway.max_message_size``): batches that
    would encode larger go as several messages."""
    adopt: bool = False
    """Whether a producer makes new records, never the same ones again: then, when the node
    has more of its records than it has numbered (it was restarted without its state, or
    from an older epoch than the node's), it carries on numbering after them instead of
    having its next records taken for those."""
    capacity: int | None = attrs.field(init=False, default=None)
    partitions: tuple[RemotePartition, ...] = attrs.field(init=False, default=())
    _layout: Topic | None = attrs.field(init=False, default=None)
    _ws: WebSocketConnection | None = attrs.field(init=False, default=None)
    _finished: trio.Event = attrs.field(init=False, factory=trio.Event)
    _kept: trio.Event = attrs.field(init=False, factory=trio.Event)
    """Set once the connection may close after the finish (see ``keep_finish``)."""
    _closed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _connected: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _restored: dict[int, RemotePartitionState] = attrs.field(init=False, factory=dict)
    _pending: trio.Event = attrs.field(init=False, factory=trio.Event)
    """Set when :meth:`RemotePartition.send_nowait` has records for the sender to send."""
    _sent: list[int] = attrs.field(init=False, factory=list)
    """Per partition, the number up to which records went out on the current connection."""
    _reconnects: int = attrs.field(init=False, default=0)
    _backoff: Backoff = attrs.field(init=False)
    summary: Any = attrs.field(init=False, default=None)
    """What this producer sent, as plain data, for the remote node to pass on to consumers
    when it finishes; set it before leaving :func:`open_remote_topic`."""

    @_backoff.default
    def _default_backoff(self) -> Backoff:
        return Backoff(give_up=self.give_up)

    @property
    def partition_count(self) -> int:
        """How many partitions the remote topic has."""
        return len(self.partitions)

    @property
    def partitioner(self) -> Partitioner:
        """The same partitioner the remote topic uses: keys land where they would locally."""
        assert self._layout is not None
        return self._layout.partitioner

    def split(self, batch: Columns) -> list[Columns]:
        """Split columns by partition, as :meth:`Topic.split`."""
        assert self._layout is not None
        return self._layout.split(batch)

    @property
    def closed(self) -> bool:
        """Whether its connection has ended for good: nothing more is sent."""
        return self._closed.is_set()

    def add_producer(self) -> None:
        """Nothing to do: the remote node counts producers by their finish."""

    def remove_producer(self, *, graceful: bool = True) -> None:
        """Nothing to do: leaving :func:`open_remote_topic` sends the finish."""

    def snapshot(self) -> RemoteTopicState:
        """Each partition's numbering and unsettled records, for a checkpoint."""
        return RemoteTopicState(
            tuple(partition.snapshot() for partition in self.partitions),
            finished=self._finished.is_set(),
        )

    def restore(self, state: RemoteTopicState) -> None:
        """Resume from :meth:`snapshot`; call before :func:`open_remote_topic` connects."""
        self._restored = dict(enumerate(state.partitions))

    def statistics(self) -> RemoteTopicStatistics:
        """Return a snapshot of the connection and of each partition's numbering."""
        partitions = self.partitions
        return RemoteTopicStatistics(
            url=self.url,
            topic=self.name,
            producer=self.producer,
            connected=self._ws is not None,
            reconnects=self._reconnects,
            failures=self._backoff.statistics().failures,
            numbered=tuple(p._next for p in partitions),
            acked=tuple(p._acked for p in partitions),
            durable=tuple(p._durable for p in partitions),
            retained=tuple(p.retained for p in partitions),
            finished=self._finished.is_set(),
        )

    async def _send(self, index: int, sequence: int, columns: Columns) -> None:
        ws = self._ws
        if ws is None:
            return  # kept; sent when the connection is back
        try:
            for frame in self._frames(index, sequence, columns):
                await ws.send_message(frame)
        except ConnectionClosed:
            if self._ws is ws:
                self._ws = None

    def _frames(self, index: int, sequence: int, columns: Columns) -> list[bytes]:
        # The batch as one message, or halves of it (and so on) where one would be too
        # large for the node: a message over its limit would close the connection each
        # time it is sent again.
        frame = batch_frame(index, sequence, columns)
        if len(frame) <= self.max_message_size - FRAMING or len(columns) < 2:
            return [frame]
        half = len(columns) // 2
        first = Columns(columns.keys[:half], columns.values[:half], columns.timestamps[:half])
        rest = Columns(columns.keys[half:], columns.values[half:], columns.timestamps[half:])
        return [*self._frames(index, sequence, first), *self._frames(index, sequence + half, rest)]

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        decode = decoder(self.value_type)
        status: trio.TaskStatus[None] | None = task_status

        async def attempt() -> None:
            nonlocal status
            hello = Hello(
                PROTOCOL, SOFTWARE, "produce", self.name, self.producer, agreement=self.agreement
            )
            async with open_nursery() as nursery:
                connection, welcome = await greet(
                    nursery, self.url, hello, decode, token=self.token, network=self.network
                )
                try:
                    if status is not None:
                        self._setup(welcome)
                        status.started()
                        status = None
                    else:
                        self._reconnects += 1
                    self._backoff.reset()
                    await self._resend(connection.ws, welcome.sequences)
                    self._ws = connection.ws
                    self._connected.unpark_all()
                    async with open_nursery() as sending:
                        sending.start_soon(self._send_pending, connection.ws)
                        await self._receive(connection.ws, decode)
                        sending.cancel_scope.cancel()
                finally:
                    self._ws = None
                    await connection.close()

        try:
            await keep_trying(self.url, self._backoff, attempt)
        finally:
            self._closed.set()
            for partition in self.partitions:
                partition._changed.unpark_all()

    async def _send_pending(self, ws: WebSocketConnection) -> None:
        # Send, in order, what send_nowait numbered: each partition from where the
        # connection's last frame ended.
        try:
            while True:
                await self._pending.wait()
                self._pending = trio.Event()
                for partition in self.partitions:
                    index = partition.index
                    for sequence, columns in list(partition._retained):
                        if sequence + len(columns) > self._sent[index]:
                            for frame in self._frames(index, sequence, columns):
                                await ws.send_message(frame)
                            self._sent[index] = sequence + len(columns)
        except ConnectionClosed:
            return  # the receiving side sees it too, and connects again

    async def _receive(self, ws: WebSocketConnection, decode: msgspec.msgpack.Decoder[Any]) -> None:
        while True:
            frame = decode.decode(binary(await ws.get_message()))
            if isinstance(frame, Window):
                self.partitions[frame.partition]._window(frame)
            elif isinstance(frame, Finished):
                self._finished.set()
                self._connected.unpark_all()  # wakes the finish waiting for its answer
                # Nothing more comes. The connection closes, in good order, once it may: a
                # connection that breaks before tells the node this producer may come back.
                await self._kept.wait()
                return

    def _setup(self, welcome: Welcome) -> None:
        self.capacity = welcome.capacity
        self._lay_out(welcome.partitions)

    def _lay_out(self, partitions: int) -> None:
        self._layout = Topic(self.name, partitions=partitions)
        self.partitions = tuple(RemotePartition(self, i) for i in range(partitions))
        for index, state in self._restored.items():
            self.partitions[index].restore(state)

    async def _resend(self, ws: WebSocketConnection, expected: list[int]) -> None:
        # Resend, in order, what the remote node does not have; new sends wait until done
        # (they see no connection and keep their records), so numbers never arrive out of
        # order. Records the node already has are skipped there. Records kept meanwhile, in
        # any partition, are sent by the next pass: done when a pass finds nothing to send.
        sent = self._sent = list(expected)
        for partition in self.partitions:
            if self.adopt:
                partition._adopt(expected[partition.index])
            first = partition._retained[0][0] if partition._retained else partition._next
            if first > sent[partition.index]:
                raise GatewayError(
                    f"{self.url} lost records {sent[partition.index]} to {first - 1} of "
                    f"producer {self.producer!r} on {self.name}[{partition.index}], and they "
                    "are no longer kept here: was it restored from an older checkpoint than "
                    "this producer?"
                )
        progressed = "resend_after_reconnect" not in testing.broken
        while progressed:
            progressed = False
            for partition in self.partitions:
                index = partition.index
                pending = [(s, c) for s, c in partition._retained if s + len(c) > sent[index]]
                for sequence, columns in pending:
                    for frame in self._frames(index, sequence, columns):
                        await ws.send_message(frame)
                    sent[index] = sequence + len(columns)
                    progressed = True

    async def _settle(self) -> None:
        # Until everything sent is durable remotely.
        while not all(partition.settled for partition in self.partitions):
            with trio.move_on_after(0.5):
                await self.partitions[0]._changed.park()

    async def _finish(self) -> None:
        # Wait until everything is durable remotely, then say so (again after a reconnect).
        await self._settle()
        while not self._finished.is_set():
            ws = self._ws
            if ws is None:
                await self._connected.park()
                continue
            try:
                await ws.send_message(ENCODER.encode(Finish(self.summary)))
            except ConnectionClosed:
                # Wait for the connection to be opened again: this one is gone, though the
                # task that reconnects may not have noticed yet (it needs its turn).
                if self._ws is ws:
                    self._ws = None
                continue
            # The answer, or a new connection (the finish is sent again on it at once);
            # else the finish is sent again after a while.
            with trio.move_on_after(1):
                await self._connected.park()


@asynccontextmanager
async def open_remote_topic(
    url: str,
    topic: str,
    producer: str,
    *,
    token: str | None = None,
    value_type: Any = Any,
    give_up: float = 30.0,
    restore: RemoteTopicState | None = None,
    agreement: dict[str, str] | None = None,
    network: Network = TCP,
    keep_finish: Callable[[], Awaitable[object]] | None = None,
    finish: bool = True,
    adopt: bool = False,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> AsyncIterator[RemoteTopic]:
    """Connect to ``topic`` on the gateway at ``url`` (``ws://host:port/node``) as ``producer``.

    Leaving the block normally waits until every record is durable on the remote node and
    tells it this producer has finished (the topic closes when all its producers have).

    Args:
        restore: A :meth:`RemoteTopic.snapshot` to resume from: its numbering, and the
            records it kept, resent to the node unless the node has them already.
        agreement: What the nodes of one topology must agree on (see
            :func:`~actors.wire.disagreement`), sent with the hello.
        network: What connections go over (TCP unless a simulation says).
        keep_finish: Awaited once the node has recorded this producer's finish, before the
            connection is closed: it returns once this side keeps the finish too (an epoch
            of its own holds the topic's :meth:`~RemoteTopic.snapshot` taken from then on).
            Until then the connection stays open, so that if this side fails first, the
            node sees the connection break and waits for the producer to come back, resumed
            from before its finish, rather than ending its run without it.
        finish: Whether leaving the block finishes this producer. Without, leaving waits
            until every record is durable on the remote node and closes the connection: the
            producer may come back (an HTTP API stopped for a while), and the topic stays
            open for it.
        adopt: See :attr:`RemoteTopic.adopt`.
        max_message_size: See :attr:`RemoteTopic.max_message_size`.

    Raises:
        GatewayError: The node could not be reached within ``give_up`` seconds, or refused
            the connection (wrong token, another protocol version, a disagreement).
    """
    remote = RemoteTopic(
        url,
        topic,
        producer,
        token,
        value_type,
        give_up,
        dict(agreement or {}),
        network,
        max_message_size,
        adopt,
    )
    if restore is not None:
        remote.restore(restore)
        if restore.finished:  # nothing to send: the node may have ended its run since
            remote._lay_out(len(restore.partitions))
            remote._finished.set()
            yield remote
            return
    async with open_nursery() as nursery:
        await nursery.start(remote._run)
        yield remote
        if not finish:
            await remote._settle()
            nursery.cancel_scope.cancel()
            return
        await remote._finish()
        if keep_finish is not None:
            await keep_finish()
        remote._kept.set()
        # Told it has finished, the connection closes by itself, in good order; a peer that
        # does not answer the close is not waited for long.
        with trio.move_on_after(2):
            await remote._closed.wait()
        nursery.cancel_scope.cancel()
