"""Members of consumer groups hosted by another node's gateway.

:class:`RemoteGroup` joins a consumer group on another node; its members deliver batches like
local members, commit with their next request, and skip records they have already processed
when a batch comes again (after a rebalance, a reconnect or a restart of that node).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from . import testing
from .connection import Connection, binary, greet, keep_trying, refusal
from .errors import GatewayError
from .group import BatchIterator
from .network import TCP, Network
from .nursery import open_nursery
from .record import RecordBatch
from .retry import Backoff
from .wire import (
    DONE,
    ENCODER,
    PROTOCOL,
    SOFTWARE,
    Delivery,
    End,
    Hello,
    Idle,
    Leave,
    Next,
    decoder,
    frame_columns,
)


@attrs.frozen
class RemoteGroupStatistics:
    """A snapshot of a remote group, as :meth:`RemoteGroup.statistics` returns it."""

    url: str
    """The gateway's address."""
    topic: str
    """The topic the group reads."""
    name: str
    """The group's name."""
    members: int
    """Members joined here now."""
    processed: dict[int, int]
    """Per partition, the offset processed up to by the members joined here."""
    durable: dict[int, int]
    """Per partition, the offset a checkpoint of this side holds."""
    reconnects: int
    """Connections the members joined here opened again after losing one."""
    skipped: int
    """Records delivered again that the members skipped, having processed them before."""


@attrs.frozen
class RemoteConsumerStatistics:
    """A snapshot of a remote member, as :meth:`RemoteConsumer.statistics` returns it."""

    name: str
    """The member's name."""
    connected: bool
    """Whether a connection is open now."""
    reconnects: int
    """Connections this member opened again after losing one."""
    failures: int
    """Attempts to reach the node that failed in a row (0 once connected)."""
    skipped: int
    """Records delivered again that were skipped because they had been processed."""


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
    network: Network = TCP
    """What connections to the node go over."""
    ended: bool = False
    """Whether every member here was told the group had every record (the node holding
    it may have finished since: restored from an epoch that says so, members do not join
    again)."""
    _members: int = attrs.field(init=False, default=0)
    _ended_members: int = attrs.field(init=False, default=0)
    _reconnects: int = attrs.field(init=False, default=0)
    _skipped: int = attrs.field(init=False, default=0)

    def resume_from(self, positions: Mapping[int, int]) -> None:
        """Note offsets per partition processed before (restored from a checkpoint of this
        side): records below them are skipped if they come again, and they are committed."""
        _advance(self.processed, positions)
        _advance(self.durable, positions)

    def mark_durable(self, positions: Mapping[int, int]) -> None:
        """Note that a checkpoint of this side holds everything processed up to
        ``positions``; with ``durable_commits``, the group learns them with the next request."""
        _advance(self.durable, positions)

    def statistics(self) -> RemoteGroupStatistics:
        """Return a snapshot of the positions and of what the members here have counted."""
        return RemoteGroupStatistics(
            url=self.url,
            topic=self.topic,
            name=self.name,
            members=self._members,
            processed=dict(self.processed),
            durable=dict(self.durable),
            reconnects=self._reconnects,
            skipped=self._skipped,
        )

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
            if self.ended:  # done before a restart: the node may be gone, and owes nothing
                yield consumer
                return
            self._members += 1
            try:
                await consumer._connect()
                yield consumer
                await consumer._leave()
            finally:
                self._members -= 1
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
    _decode: msgspec.msgpack.Decoder[Any] | None = None
    _skipped: int = 0
    _reconnects: int = 0
    _backoff: Backoff = attrs.field(init=False)

    @_backoff.default
    def _default_backoff(self) -> Backoff:
        return Backoff(give_up=self.group.give_up)

    @property
    def positions(self) -> dict[int, int]:
        """The offset processed up to, per partition (what a checkpoint keeps)."""
        return dict(self.group.processed)

    def mark_durable(self, positions: Mapping[int, int]) -> None:
        """Note that a checkpoint holds everything processed up to ``positions``; with
        ``durable_commits``, the group learns these offsets with the next request."""
        self.group.mark_durable(positions)

    def statistics(self) -> RemoteConsumerStatistics:
        """Return a snapshot of this member's connection and of what it skipped."""
        return RemoteConsumerStatistics(
            name=self.name,
            connected=self._ws is not None,
            reconnects=self._reconnects,
            failures=self._backoff.statistics().failures,
            skipped=self._skipped,
        )

    def _commits(self) -> list[tuple[int, int]]:
        group = self.group
        durable = self.durable_commits and "durable_commits" not in testing.broken
        return sorted((group.durable if durable else group.processed).items())

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self._ws = None
        if connection is not None:
            await connection.close()

    async def _connect(self) -> WebSocketConnection:
        group = self.group
        if self._decode is None:
            self._decode = decoder(group.value_type)
        decode = self._decode

        async def attempt() -> WebSocketConnection:
            await self._disconnect()
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
            self._connection, _ = await greet(
                self._nursery, group.url, hello, decode, token=group.token, network=group.network
            )
            self._ws = self._connection.ws
            self._backoff.reset()
            return self._ws

        self._backoff.reset()
        return await keep_trying(group.url, self._backoff, attempt)

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
        if self.group.ended:
            await trio.lowlevel.checkpoint()
            raise trio.EndOfChannel
        while True:
            ws = self._ws
            if ws is None:
                ws = await self._connect()
                self._reconnects += 1
                self.group._reconnects += 1
            assert self._decode is not None
            try:
                await ws.send_message(ENCODER.encode(Next(self._commits())))
                frame = self._decode.decode(binary(await ws.get_message()))
            except ConnectionClosed as exc:
                refused = refusal(self.group.url, exc)
                if refused is not None:
                    raise refused from None
                await self._disconnect()
                continue
            if isinstance(frame, End):
                group = self.group
                group.summaries = dict(frame.summaries)
                group._ended_members += 1
                if group._ended_members >= group._members:
                    group.ended = True
                raise trio.EndOfChannel
            if isinstance(frame, Idle):
                continue  # nothing yet: ask again, with the commits made meanwhile
            if not isinstance(frame, Delivery):
                raise GatewayError(
                    f"{self.group.url} sent {type(frame).__name__} instead of records"
                )
            try:
                columns = frame_columns(frame, self.group.value_type)
            except ValueError as exc:
                raise GatewayError(f"{self.group.url} sent a malformed delivery: {exc}") from None
            batch = RecordBatch(
                self.group.topic,
                frame.partition,
                frame.base_offset,
                columns.keys,
                columns.values,
                columns.timestamps,
            )
            done = self.group.processed.get(batch.partition, 0)
            if batch.next_offset <= done:
                self._count_skipped(len(batch))
                continue
            if batch.base_offset < done:
                self._count_skipped(done - batch.base_offset)
                batch = batch.slice(done - batch.base_offset, len(batch))
            self._last = batch
            return batch

    def _count_skipped(self, count: int) -> None:
        self._skipped += count
        self.group._skipped += count

    def batches(self) -> AsyncIterator[RecordBatch]:
        """Iterate over batches: ``async for batch in consumer.batches()``."""
        return BatchIterator(self)

    async def _leave(self) -> None:
        if self.auto_commit:
            self.commit_nowait()

        # The gateway closes the connection with 1000 once it has recorded the leave, and
        # the commits that come with it (durably, when its node writes epochs: restarted
        # from an older epoch, it would wait for this member for ever). Until then the
        # member has not left: a connection that drops is opened again, and the leave sent
        # again.
        async def attempt() -> None:
            ws = self._ws
            if ws is None:
                ws = await self._connect()
            try:
                await ws.send_message(ENCODER.encode(Leave(self._commits())))
                while True:
                    await ws.get_message()  # nothing comes but the close
            except ConnectionClosed as exc:
                if exc.reason is not None and exc.reason.code == DONE:
                    return
                await self._disconnect()
                raise

        self._backoff.reset()
        await keep_trying(self.group.url, self._backoff, attempt)


def _advance(positions: dict[int, int], offsets: Mapping[int, int]) -> None:
    # Positions only move forward.
    for partition, offset in offsets.items():
        if offset > positions.get(partition, -1):
            positions[partition] = offset
