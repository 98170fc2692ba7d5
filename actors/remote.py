"""Producers and consumers of partitions hosted by another node's gateway.

:func:`open_remote_topic` gives a topic that :func:`~actors.producer.open_producer` writes to
exactly as to a local one: records are numbered per partition, sent in batches as the
gateway's window (the free room in the remote ring) allows, and kept until the gateway says
they are durable, so a dropped connection or a restarted node is resumed, after a backoff,
from what the gateway has, with nothing lost and nothing twice. :class:`RemoteGroup` joins a
consumer group on another node; its members deliver batches like local members and skip
records they have already processed when a batch comes again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .errors import GatewayError
from .group import _Batches
from .nursery import open_nursery
from .partition import as_columns
from .partitioner import Partitioner
from .record import Columns, Record, RecordBatch
from .topic import Topic
from .wire import (
    CLOSE_CODES,
    ENCODER,
    IDLE_MEMBER,
    MAX_MESSAGE_SIZE,
    PROTOCOL,
    SHUTTING_DOWN,
    SOFTWARE,
    Batch,
    Delivery,
    End,
    Finish,
    Finished,
    Hello,
    Idle,
    Leave,
    Next,
    Welcome,
    Window,
    decoder,
)

FATAL_CLOSE_CODES = frozenset(CLOSE_CODES) - {SHUTTING_DOWN, IDLE_MEMBER}
"""Close codes that retrying cannot fix (a bad token, another version, a bad frame). A node
that stops, or that dropped an idle member, may be reconnected to (the member joins again)."""


@attrs.define(eq=False)
class Connection:
    """A client websocket and the TCP stream under it; :meth:`close` releases both."""

    ws: WebSocketConnection
    stream: trio.SocketStream

    async def close(self) -> None:
        """Close the websocket (waiting a moment for the peer), then the TCP stream."""
        # When the caller is being cancelled, so is the connection's reader (in the same
        # nursery, usually), and the peer's answer would never be read: do not wait for it.
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.CancelScope(shield=True):
            with trio.move_on_after(0.05 if cancelled else 2):
                await self.ws.aclose()
            await trio.aclose_forcefully(self.stream)


async def connect(
    nursery: trio.Nursery,
    url: str,
    *,
    token: str | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> Connection:
    """Open a websocket to ``url`` (``ws://host:port/path``) whose reader runs in ``nursery``.

    The token, if any, goes in an ``Authorization: Bearer`` header. Unlike trio-websocket's
    own helpers, the TCP stream is closed by :meth:`Connection.close` whoever closed the
    websocket first.

    Raises:
        OSError: Nothing listens there.
        trio_websocket.HandshakeError: The server refused the websocket handshake.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise GatewayError(f"{url!r} is not a ws://HOST:PORT/... address")
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
    try:
        with trio.fail_after(10):
            ws = await wrap_client_stream(
                nursery,
                stream,
                parts.hostname,
                resource,
                extra_headers=headers,
                max_message_size=max_message_size,
            )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return Connection(ws, stream)


def _fatal(url: str, exc: ConnectionClosed) -> GatewayError | None:
    reason = exc.reason
    if reason is not None and reason.code in FATAL_CLOSE_CODES:
        return GatewayError(
            f"{url} refused the connection ({reason.code}): {reason.reason}", reason.code
        )
    return None


def _binary(message: bytes | str) -> bytes:
    if isinstance(message, str):
        raise GatewayError("a ringflow gateway sent a text frame; node frames are binary")
    return message


def batch_frame(partition: int, sequence: int, columns: Columns) -> bytes:
    """Encode records ``sequence``, ``sequence + 1``, ... of one partition as a batch frame."""
    frame = Batch(
        partition, sequence, list(columns.keys), list(columns.values), list(columns.timestamps)
    )
    return ENCODER.encode(frame)


@attrs.define(eq=False)
class _Backoff:
    """Retry delays from ``first`` doubling to ``most``; gives up after ``give_up`` seconds."""

    url: str
    give_up: float
    first: float = 0.05
    most: float = 2.0
    _delay: float = attrs.field(init=False, default=0.0)
    _since: float | None = attrs.field(init=False, default=None)

    def ok(self) -> None:
        self._delay = 0.0
        self._since = None

    async def wait(self, error: BaseException) -> None:
        now = trio.current_time()
        if self._since is None:
            self._since = now
        if now - self._since >= self.give_up:
            raise GatewayError(
                f"cannot reach {self.url} (tried for {self.give_up:g} s): {error!r}"
            ) from error
        self._delay = min(self.most, max(self.first, self._delay * 2))
        await trio.sleep(self._delay)


_RETRYABLE = (
    OSError,
    HandshakeError,
    ConnectionClosed,
    trio.BrokenResourceError,
    trio.TooSlowError,
)


@attrs.define(eq=False)
class RemotePartition:
    """One partition of a :class:`RemoteTopic`: numbers records and respects the window."""

    topic: RemoteTopic
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
        await self.topic._send(self.index, sequence, columns)
        return sequence

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

    def snapshot(self) -> list[Any]:
        """The numbering and the records not yet durable, for a checkpoint."""
        return [
            self._next,
            [[s, list(c.keys), list(c.values), list(c.timestamps)] for s, c in self._retained],
        ]

    def restore(self, state: list[Any]) -> None:
        """Take back :meth:`snapshot`, before the connection is opened."""
        self._next = state[0]
        self._retained = deque((s, Columns(k, v, t)) for s, k, v, t in state[1])


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
    capacity: int | None = attrs.field(init=False, default=None)
    partitions: tuple[RemotePartition, ...] = attrs.field(init=False, default=())
    _layout: Topic | None = attrs.field(init=False, default=None)
    _ws: WebSocketConnection | None = attrs.field(init=False, default=None)
    _finished: trio.Event = attrs.field(init=False, factory=trio.Event)
    _connected: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _restored: dict[int, list[Any]] = attrs.field(init=False, factory=dict)
    reconnects: int = attrs.field(init=False, default=0)
    """Connections opened after the first."""
    summary: Any = attrs.field(init=False, default=None)
    """What this producer sent, as plain data, for the remote node to pass on to consumers
    when it finishes; set it before leaving :func:`open_remote_topic`."""

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

    def add_producer(self) -> None:
        """Nothing to do: the remote node counts producers by their finish."""

    def remove_producer(self, *, graceful: bool = True) -> None:
        """Nothing to do: leaving :func:`open_remote_topic` sends the finish."""

    def snapshot(self) -> list[list[Any]]:
        """Each partition's numbering and unsettled records, for a checkpoint."""
        return [partition.snapshot() for partition in self.partitions]

    def restore(self, state: list[list[Any]]) -> None:
        """Resume from :meth:`snapshot`; call before :func:`open_remote_topic` connects."""
        self._restored = dict(enumerate(state))

    async def _send(self, index: int, sequence: int, columns: Columns) -> None:
        ws = self._ws
        if ws is None:
            return  # kept; sent when the connection is back
        try:
            await ws.send_message(batch_frame(index, sequence, columns))
        except ConnectionClosed:
            if self._ws is ws:
                self._ws = None

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        backoff = _Backoff(self.url, self.give_up)
        decode = decoder(self.value_type)
        status: trio.TaskStatus[None] | None = task_status
        while True:
            try:
                async with open_nursery() as nursery:
                    connection = await connect(nursery, self.url, token=self.token)
                    try:
                        welcome = await self._hello(connection.ws, decode)
                        if status is not None:
                            self._setup(welcome)
                            status.started()
                            status = None
                        else:
                            self.reconnects += 1
                        backoff.ok()
                        await self._resend(connection.ws, welcome.sequences)
                        self._ws = connection.ws
                        self._connected.unpark_all()
                        await self._receive(connection.ws, decode)
                    finally:
                        self._ws = None
                        await connection.close()
            except ConnectionClosed as exc:
                fatal = _fatal(self.url, exc)
                if fatal is not None:
                    raise fatal from None
                await backoff.wait(exc)
            except _RETRYABLE as exc:
                await backoff.wait(exc)

    async def _hello(self, ws: WebSocketConnection, decode: Any) -> Welcome:
        hello = Hello(
            PROTOCOL, SOFTWARE, "produce", self.name, self.producer, agreement=self.agreement
        )
        await ws.send_message(ENCODER.encode(hello))
        welcome = decode.decode(_binary(await ws.get_message()))
        if not isinstance(welcome, Welcome):
            raise GatewayError(f"{self.url} answered hello with {welcome!r}")
        return welcome

    async def _receive(self, ws: WebSocketConnection, decode: Any) -> None:
        while True:
            frame = decode.decode(_binary(await ws.get_message()))
            if isinstance(frame, Window):
                self.partitions[frame.partition]._window(frame)
            elif isinstance(frame, Finished):
                self._finished.set()

    def _setup(self, welcome: Welcome) -> None:
        self.capacity = welcome.capacity
        self._layout = Topic(self.name, partitions=welcome.partitions)
        self.partitions = tuple(RemotePartition(self, i) for i in range(welcome.partitions))
        for index, state in self._restored.items():
            self.partitions[index].restore(state)

    async def _resend(self, ws: WebSocketConnection, expected: list[int]) -> None:
        # Resend, in order, what the remote node does not have; new sends wait until done
        # (they see no connection and keep their records), so numbers never arrive out of
        # order. Records the node already has are skipped there. Records kept meanwhile, in
        # any partition, are sent by the next pass: done when a pass finds nothing to send.
        sent = list(expected)
        for partition in self.partitions:
            first = partition._retained[0][0] if partition._retained else partition._next
            if first > sent[partition.index]:
                raise GatewayError(
                    f"{self.url} lost records {sent[partition.index]} to {first - 1} of "
                    f"producer {self.producer!r} on {self.name}[{partition.index}], and they "
                    "are no longer kept here: was it restored from an older checkpoint than "
                    "this producer?"
                )
        progressed = True
        while progressed:
            progressed = False
            for partition in self.partitions:
                index = partition.index
                pending = [(s, c) for s, c in partition._retained if s + len(c) > sent[index]]
                for sequence, columns in pending:
                    await ws.send_message(batch_frame(index, sequence, columns))
                    sent[index] = sequence + len(columns)
                    progressed = True

    async def _finish(self) -> None:
        # Wait until everything is durable remotely, then say so (again after a reconnect).
        while not all(partition.settled for partition in self.partitions):
            with trio.move_on_after(0.5):
                await self.partitions[0]._changed.park()
        while not self._finished.is_set():
            ws = self._ws
            if ws is None:
                await self._connected.park()
                continue
            try:
                await ws.send_message(ENCODER.encode(Finish(self.summary)))
            except ConnectionClosed:
                continue
            with trio.move_on_after(1):
                await self._finished.wait()


@asynccontextmanager
async def open_remote_topic(
    url: str,
    topic: str,
    producer: str,
    *,
    token: str | None = None,
    value_type: Any = Any,
    give_up: float = 30.0,
    restore: list[list[Any]] | None = None,
    agreement: dict[str, str] | None = None,
) -> AsyncIterator[RemoteTopic]:
    """Connect to ``topic`` on the gateway at ``url`` (``ws://host:port/node``) as ``producer``.

    Leaving the block normally waits until every record is durable on the remote node and
    tells it this producer has finished (the topic closes when all its producers have).

    Args:
        agreement: What the nodes of one topology must agree on (see
            :func:`~actors.wire.disagreement`), sent with the hello.

    Raises:
        GatewayError: The node could not be reached within ``give_up`` seconds, or refused
            the connection (wrong token, another protocol version, a disagreement).
    """
    remote = RemoteTopic(url, topic, producer, token, value_type, give_up, dict(agreement or {}))
    if restore is not None:
        remote.restore(restore)
    async with open_nursery() as nursery:
        await nursery.start(remote._run)
        yield remote
        await remote._finish()
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class RemoteGroup:
    """A consumer group hosted by another node; :meth:`join` it like a local group."""

    url: str
    topic: str
    name: str
    token: str | None = None
    value_type: Any = Any
    give_up: float = 30.0
    summaries: dict[str, Any] = attrs.field(factory=dict)
    """What each producer of the topic said it sent, by producer id; known at the end."""
    processed: dict[int, int] = attrs.field(factory=dict)
    """Per partition, the offset processed up to by the members joined here. Shared: after a
    rebalance or a reconnect, a member skips what another member here already processed."""
    durable: dict[int, int] = attrs.field(factory=dict)
    """Per partition, the offset a checkpoint of this side holds (with ``durable_commits``)."""
    agreement: dict[str, str] = attrs.field(factory=dict)
    """What the nodes of one topology must agree on, sent with every hello."""

    def resume_from(self, positions: Mapping[int, int]) -> None:
        """Note offsets per partition processed before (restored from a checkpoint of this
        side): records below them are skipped if they come again, and they are committed."""
        _advance(self.processed, positions)
        _advance(self.durable, positions)

    def mark_durable(self, positions: Mapping[int, int]) -> None:
        """Note that a checkpoint of this side holds everything processed up to
        ``positions``; with ``durable_commits``, the group learns them with the next request."""
        _advance(self.durable, positions)

    @asynccontextmanager
    async def join(
        self,
        name: str,
        *,
        auto_commit: bool = True,
        max_records: int | None = None,
        positions: Mapping[int, int] | None = None,
        durable_commits: bool = False,
    ) -> AsyncIterator[RemoteConsumer]:
        """Join as member ``name`` for the duration of the block.

        Args:
            positions: Offsets per partition processed before (from a checkpoint): records
                below them are skipped if they come again.
            durable_commits: Commit to the group only what :meth:`RemoteConsumer.mark_durable`
                says a checkpoint of this side holds, so a restore of this side never finds
                its records freed on the other.
        """
        async with open_nursery() as nursery:
            consumer = RemoteConsumer(
                self, name, nursery, auto_commit, max_records, durable_commits=durable_commits
            )
            if positions:
                self.resume_from(positions)
            try:
                await consumer._connect()
                yield consumer
                await consumer._leave()
            finally:
                await consumer._disconnect()


@attrs.define(eq=False)
class RemoteConsumer:
    """A member of a :class:`RemoteGroup`; iterate :meth:`batches` and commit as locally."""

    group: RemoteGroup
    name: str
    _nursery: trio.Nursery
    auto_commit: bool = True
    max_records: int | None = None
    durable_commits: bool = False
    _last: RecordBatch | None = None
    _ws: WebSocketConnection | None = None
    _connection: Connection | None = None
    _decode: Any = None
    skipped: int = 0
    """Records delivered again that were skipped because they had been processed."""
    reconnects: int = 0

    @property
    def positions(self) -> dict[int, int]:
        """The offset processed up to, per partition (what a checkpoint keeps)."""
        return dict(self.group.processed)

    def mark_durable(self, positions: Mapping[int, int]) -> None:
        """Note that a checkpoint holds everything processed up to ``positions``; with
        ``durable_commits``, the group learns these offsets with the next request."""
        self.group.mark_durable(positions)

    def _commits(self) -> list[tuple[int, int]]:
        group = self.group
        return sorted((group.durable if self.durable_commits else group.processed).items())

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self._ws = None
        if connection is not None:
            await connection.close()

    async def _connect(self) -> WebSocketConnection:
        group = self.group
        if self._decode is None:
            self._decode = decoder(group.value_type)
        backoff = _Backoff(group.url, group.give_up)
        while True:
            await self._disconnect()
            try:
                self._connection = await connect(self._nursery, group.url, token=group.token)
                ws = self._ws = self._connection.ws
                hello = Hello(
                    PROTOCOL,
                    SOFTWARE,
                    "consume",
                    group.topic,
                    self.name,
                    group.name,
                    self.max_records or 0,
                    self._commits(),
                    group.agreement,
                )
                await ws.send_message(ENCODER.encode(hello))
                welcome = self._decode.decode(_binary(await ws.get_message()))
                if not isinstance(welcome, Welcome):
                    raise GatewayError(f"{group.url} answered hello with {welcome!r}")
            except ConnectionClosed as exc:
                fatal = _fatal(group.url, exc)
                if fatal is not None:
                    await self._disconnect()
                    raise fatal from None
                await backoff.wait(exc)
                continue
            except _RETRYABLE as exc:
                await backoff.wait(exc)
                continue
            return ws

    def commit_nowait(self, offsets: Mapping[int, int] | None = None) -> None:
        """Mark records processed (the last batch when ``offsets`` is None).

        The remote group learns it with the next request, in the same frame.
        """
        if offsets is None:
            if self._last is not None:
                _advance(self.group.processed, {self._last.partition: self._last.next_offset})
            return
        _advance(self.group.processed, offsets)

    async def commit(self, offsets: Mapping[int, int] | None = None) -> None:
        """As :meth:`commit_nowait` (the commit travels with the next request)."""
        await trio.lowlevel.checkpoint()
        self.commit_nowait(offsets)

    async def get_batch(self) -> RecordBatch:
        """Return the next batch; skip records already processed when they come again.

        Raises:
            trio.EndOfChannel: The topic is closed and the group has had every record.
            GatewayError: The node could not be reached again in time.
        """
        if self.auto_commit:
            self.commit_nowait()
        while True:
            ws = self._ws
            if ws is None:
                ws = await self._connect()
                self.reconnects += 1
            try:
                await ws.send_message(ENCODER.encode(Next(self._commits())))
                frame = self._decode.decode(_binary(await ws.get_message()))
            except ConnectionClosed as exc:
                fatal = _fatal(self.group.url, exc)
                if fatal is not None:
                    raise fatal from None
                await self._disconnect()
                continue
            if isinstance(frame, End):
                self.group.summaries = dict(frame.summaries)
                raise trio.EndOfChannel
            if isinstance(frame, Idle):
                continue  # nothing yet: ask again, with the commits made meanwhile
            if not isinstance(frame, Delivery):
                raise GatewayError(
                    f"{self.group.url} sent {type(frame).__name__} instead of records"
                )
            batch = RecordBatch(
                self.group.topic,
                frame.partition,
                frame.base_offset,
                frame.keys,
                frame.values,
                frame.timestamps,
            )
            done = self.group.processed.get(batch.partition, 0)
            if batch.next_offset <= done:
                self.skipped += len(batch)
                continue
            if batch.base_offset < done:
                self.skipped += done - batch.base_offset
                batch = batch.slice(done - batch.base_offset, len(batch))
            self._last = batch
            return batch

    def batches(self) -> AsyncIterator[RecordBatch]:
        """Iterate over batches: ``async for batch in consumer.batches()``."""
        return _Batches(self)

    async def _leave(self) -> None:
        if self.auto_commit:
            self.commit_nowait()
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send_message(ENCODER.encode(Leave(self._commits())))
        except ConnectionClosed:
            return


def _advance(positions: dict[int, int], offsets: Mapping[int, int]) -> None:
    # Positions only move forward.
    for partition, offset in offsets.items():
        if offset > positions.get(partition, -1):
            positions[partition] = offset
