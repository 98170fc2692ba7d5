"""Remote members of consumer groups on ``/node``: one batch per request, sessions that
outlive their connections for a while."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set
from typing import Any

import attrs
import trio
from trio_websocket import WebSocketConnection

from ..errors import CommitError
from ..group import Consumer, ConsumerGroup
from ..wire import (
    DONE,
    ENCODER,
    IDLE_MEMBER,
    MALFORMED,
    PROTOCOL,
    SOFTWARE,
    End,
    Hello,
    Idle,
    Leave,
    Next,
    Welcome,
    delivery_frame,
    offsets_problem,
)
from .endpoint import FrameReader, Owed, Refusal, Settings, Signal, close

FETCH_WAIT = 0.5
"""Seconds a remote member's request waits for records before the answer is 'idle': its
next request brings the commits it made meanwhile (which may be what frees the ring)."""


class _Expired(Exception):
    pass


@attrs.define(eq=False)
class _Session:
    """A remote member of a consumer group; outlives its connections for a while."""

    key: tuple[str, str, str]
    member: Consumer | None = None
    attached: bool = False
    left: bool = False
    scope: trio.CancelScope | None = None
    """The scope of the newest connection's handler (waiting for its turn, or serving)."""
    busy: bool = False
    """A connection's handler is using the member. Only one may: a handler that was woken
    with a batch must let go of it before a newer connection rewinds the member."""
    changed: Signal = attrs.field(factory=Signal)


@attrs.frozen
class MemberEndpointStatistics:
    """A snapshot of a gateway's remote members, as :meth:`MemberEndpoint.statistics`
    returns it."""

    sessions: int
    """Remote members with a session: connected, or away for less than the session timeout."""
    attached: int
    """Of those, the members connected now."""
    left: int
    """Remote members that have left after the end of their topic, in good order."""


@attrs.define(eq=False)
class MemberEndpoint:
    """Serves remote members of a gateway's consumer groups.

    Args:
        frames: Reads the frames members send.
        summaries: Per topic, what its producers said they sent (members get it at the end).
        event: Called with (category, message) for members that joined, came back or expired.
        settings: The gateway's ``session_timeout``: seconds a remote member's partitions
            wait for it to reconnect, or for its next request, before the group rebalances
            without it.
    """

    frames: FrameReader
    summaries: Callable[[str], Mapping[str, Any]]
    event: Callable[[str, str], None]
    settings: Settings
    nursery: trio.Nursery | None = None
    """Where sessions run: the gateway's own nursery, set while it serves."""
    owed: Owed = attrs.field(factory=Owed)
    """Members told their leave is recorded that may not have heard it."""
    _sessions: dict[tuple[str, str, str], _Session] = attrs.field(init=False, factory=dict)
    _left: set[tuple[str, str, str]] = attrs.field(init=False, factory=set)
    _connected: int = attrs.field(init=False, default=0)
    """Connections of members being served."""
    _durable_left: set[tuple[str, str, str]] = attrs.field(init=False, factory=set)
    """Members whose leave an epoch holds (with the gateway's ``durable_only``)."""
    _leave_waiters: dict[tuple[str, str, str], trio.Event] = attrs.field(init=False, factory=dict)

    @property
    def active(self) -> bool:
        """Whether any remote member still has a session, or a connection (one that left
        waits on it for the answer to its leave)."""
        return bool(self._sessions or self._connected)

    def have_left(self, members: Set[tuple[str, str, str]]) -> bool:
        """Whether each of ``members`` (group, topic, member name) has come and left."""
        return members <= self._left

    @property
    def left(self) -> tuple[tuple[str, str, str], ...]:
        """(group, topic, member) of each member that has left in good order, sorted."""
        return tuple(sorted(self._left))

    def restore_left(self, left: Set[tuple[str, str, str]]) -> None:
        """Take back :attr:`left` from a checkpoint: those members are not waited for."""
        self._left = set(left)
        self._durable_left = set(left)

    def mark_durable(self, left: Set[tuple[str, str, str]]) -> None:
        """Note that a written epoch holds the leaves of ``left``: they are answered."""
        self._durable_left |= left
        for key in left:
            waiter = self._leave_waiters.pop(key, None)
            if waiter is not None:
                waiter.set()

    async def _leave_recorded(self, key: tuple[str, str, str]) -> None:
        # With durable_only, a leave is answered once an epoch holds it (and the commits
        # that came with it): a node restored from an older epoch would otherwise wait for
        # a member that has gone, or deliver again what it processed.
        if not self.settings.durable_only or key in self._durable_left:
            return
        waiter = self._leave_waiters.setdefault(key, trio.Event())
        await waiter.wait()

    def statistics(self) -> MemberEndpointStatistics:
        """Return a snapshot of the members' sessions."""
        return MemberEndpointStatistics(
            sessions=len(self._sessions),
            attached=sum(session.attached for session in self._sessions.values()),
            left=len(self._left),
        )

    async def serve(self, ws: WebSocketConnection, hello: Hello, group: ConsumerGroup) -> None:
        """Serve the member that sent ``hello`` on this connection until it leaves.

        A member that reconnects takes over its session: the older connection's handler is
        cancelled, and the member is rewound only once that handler has let go of it.

        Raises:
            Refusal: The member broke the protocol, or asked for nothing for too long.
        """
        count = group.topic.partition_count
        problem = offsets_problem(hello.positions, count, "hello: positions")
        if problem is not None:
            raise Refusal(MALFORMED, problem)
        self._connected += 1
        try:
            await self._serve(ws, hello, group)
        finally:
            self._connected -= 1

    async def _serve(self, ws: WebSocketConnection, hello: Hello, group: ConsumerGroup) -> None:
        key = (hello.group, hello.topic, hello.name)
        owed = ("consume", *key)
        owed_before, settled = self.owed.owes(owed), False
        session = self._sessions.get(key)
        if session is None:
            session = _Session(key)
            assert self.nursery is not None
            await self.nursery.start(self._run_session, session, group, hello)
            self.event("meta", f"{hello.name} joined group {hello.group} on {hello.topic}")
        else:
            self.event("meta", f"{hello.name} reconnected to group {hello.group}")
        serving = False
        try:
            with trio.CancelScope() as scope:
                previous, session.scope = session.scope, scope
                if previous is not None:  # the old connection may still be waiting
                    previous.cancel()
                # The old connection's handler may have been woken with a batch it has not
                # sent yet: wait until it has let go, so that the rewind below covers that
                # batch too. Rewinding first would let it move the member past records that
                # no connection delivers.
                while session.busy:
                    await session.changed.wait()
                session.busy = serving = True
                await self._serve_member(ws, hello, group, session)
                # Its leave is recorded: the close says so. A member that did not answer
                # the close may not have had it, and may come back to leave again.
                settled = True
                if await close(ws, DONE, "done"):
                    self.owed.back(owed)
                else:
                    self.owed.owe(owed, self.settings.linger)
        except Refusal:
            session.left = settled = True  # a member that broke the protocol is not waited for
            raise
        finally:
            if not settled and owed_before:  # it broke off again: it may come back again
                self.owed.owe(owed, self.settings.linger)
            if serving:
                session.busy = False
            if session.scope is scope:
                session.attached = False
                session.scope = None
            session.changed.set()

    async def _serve_member(
        self, ws: WebSocketConnection, hello: Hello, group: ConsumerGroup, session: _Session
    ) -> None:
        key = session.key
        member = session.member
        assert member is not None
        _commit(member, hello.positions)
        member.rewind()
        session.attached = True
        session.changed.set()
        topic = group.topic
        await ws.send_message(
            ENCODER.encode(Welcome(PROTOCOL, SOFTWARE, topic.partition_count, None))
        )
        count = topic.partition_count
        ended = False  # once told the end, a member holds nothing up while it finishes
        while True:
            # A member that holds partitions and never asks would hold up its group, and so
            # the producers, for ever: as with Kafka's max.poll.interval, it has a session
            # timeout to ask, or loses its partitions (it may join again).
            frame = None
            with trio.move_on_after(math.inf if ended else self.settings.session_timeout):
                frame = await self.frames.receive(ws, topic.name)
            if frame is None:
                raise Refusal(
                    IDLE_MEMBER,
                    f"{hello.name} asked for nothing for {self.settings.session_timeout:g} s; its "
                    "partitions went to the other members",
                )
            if isinstance(frame, (Next, Leave)):
                where = type(frame).__name__.lower()
                problem = offsets_problem(frame.offsets, count, f"{where}: offsets")
                if problem is not None:
                    raise Refusal(MALFORMED, problem)
            if isinstance(frame, Next):
                _commit(member, frame.offsets)
                batch = None
                try:
                    with trio.move_on_after(FETCH_WAIT):
                        batch = await member.get_batch()
                    if batch is None:  # let the member send fresher commits
                        await ws.send_message(ENCODER.encode(Idle()))
                        continue
                except trio.EndOfChannel:
                    summaries = dict(self.summaries(topic.name))
                    await ws.send_message(ENCODER.encode(End(summaries)))
                    ended = True
                    continue
                await ws.send_message(delivery_frame(batch))
            elif isinstance(frame, Leave):
                _commit(member, frame.offsets)
                session.left = True
                self._left.add(key)
                await self._leave_recorded(key)
                return  # the gateway closes with 1000: the member knows it has left
            else:
                raise Refusal(MALFORMED, f"unexpected {type(frame).__name__} frame")

    async def _run_session(
        self,
        session: _Session,
        group: ConsumerGroup,
        hello: Hello,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._sessions[session.key] = session
        try:
            async with group.join(
                hello.name, auto_commit=False, max_records=hello.max_records or None
            ) as member:
                session.member = member
                task_status.started()
                while not session.left:
                    if session.attached:
                        await session.changed.wait()
                        continue
                    with trio.move_on_after(self.settings.session_timeout):
                        await session.changed.wait()
                        continue
                    raise _Expired
        except _Expired:
            self.event(
                "meta",
                f"{hello.name} of group {hello.group} did not come back within "
                f"{self.settings.session_timeout:g} s; its partitions were reassigned",
            )
        finally:
            del self._sessions[session.key]


def _commit(member: Consumer, offsets: list[tuple[int, int]]) -> None:
    # What a remote member processed, partition by partition. Its side's epochs hold what it
    # says, so a group behind it (this node restarted from an older epoch) catches up rather
    # than deliver again what the member would only skip: a member that already had the end
    # would never read them. An offset it may not commit (the partition is another member's
    # now) is left to the partition's owner, which says the same.
    for partition, offset in offsets:
        try:
            member.catch_up({partition: offset})
        except CommitError:
            continue
