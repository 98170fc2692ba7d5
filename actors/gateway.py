"""A node's gateway: serves its partitions and consumer groups to other nodes, and taps.

Two endpoints, on one websocket server (trio-websocket):

- ``/node``: other ringflow nodes. A remote producer writes numbered batches to a partition;
  the gateway answers with :class:`~actors.wire.Window` frames whose ``limit`` is the free
  room in the ring, so a full ring stops a producer on another machine just as it stops a
  local one. A remote consumer is a member of a local consumer group that asks for one batch
  at a time, committing what it processed in the same frame.
- ``/tap/TOPIC``: any websocket client. Records as JSON text messages (see ``docs/``); a tap
  never touches the commits of consumer groups.

Every handler catches its own connection's errors: an exception escaping a trio-websocket
handler would take the whole server down.
"""

from __future__ import annotations

import hmac
import itertools
import math
from collections.abc import Callable, Mapping, Set
from functools import partial
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import attrs
import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

from .errors import CommitError, RingflowError
from .group import Consumer, ConsumerGroup
from .nursery import open_nursery
from .partition import Partition
from .record import Columns
from .topic import Topic
from .wire import (
    CLOSE_CODES,
    DECODE_ERRORS,
    DISAGREEMENT,
    ENCODER,
    IDLE_MEMBER,
    INCOMPATIBLE,
    MALFORMED,
    MAX_MESSAGE_SIZE,
    NOT_FOUND,
    PROTOCOL,
    SHUTTING_DOWN,
    SOFTWARE,
    UNAUTHORIZED,
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
    batch_problem,
    check_hello,
    decoder,
    describe_decode_error,
    disagreement,
    hello_problem,
    incompatible,
    offsets_problem,
)

FETCH_WAIT = 0.5
"""Seconds a remote member's request waits for records before the answer is 'idle': its
next request brings the commits it made meanwhile (which may be what frees the ring)."""
WINDOW_LINGER = 0.002
"""Seconds between windows to one producer: one window for many batches under load."""
TAP_BATCH = 500
"""The most records in one tap message."""
TAP_PARAMETERS = ("partition", "from", "hold", "token")
"""The query parameters a tap understands."""

_JSON = msgspec.json.Encoder()


class _Refuse(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]  # a close reason must fit in 123 bytes


class _Expired(Exception):
    pass


@attrs.define(eq=False)
class _Signal:
    """Wakes one waiter whenever something it watches may have changed."""

    _event: trio.Event = attrs.field(factory=trio.Event)

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


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
    changed: _Signal = attrs.field(factory=_Signal)


def _token_of(request: WebSocketRequest) -> str | None:
    for name, value in request.headers:
        if name.lower() == b"authorization" and value.lower().startswith(b"bearer "):
            return value[7:].decode(errors="replace").strip()
    query = parse_qs(urlsplit(request.path).query)
    return query.get("token", [None])[0]


@attrs.define(eq=False)
class Gateway:
    """Serves ``topics`` and their consumer ``groups`` over websockets.

    Args:
        topics: The topics whose partitions this node hosts.
        groups: Consumer groups on those topics, by (group name, topic name); remote members
            join them.
        value_types: Per topic, the type record values decode to (default: plain data).
        token: When set, every connection must present it, as ``Authorization: Bearer
            TOKEN`` or a ``token`` query parameter.
        session_timeout: Seconds a remote member's partitions wait for it to reconnect
            before the group rebalances without it.
        on_event: Called with (category, message) for connections refused, closed by error,
            and members that joined, came back or expired (for logging).
        agreement: What every node of the topology must agree on (topology, seed, events),
            with this node's name under ``node``: a hello that carries other values is
            refused with close code 4006 naming the settings that differ.
        summary_type: The type a producer's summary (sent with its finish) must convert to;
            a finish with another summary is refused, so consumers never get one they cannot
            read.
    """

    topics: Mapping[str, Topic]
    groups: Mapping[tuple[str, str], ConsumerGroup] = attrs.field(factory=dict)
    value_types: Mapping[str, Any] = attrs.field(factory=dict)
    token: str | None = None
    session_timeout: float = 10.0
    max_message_size: int = MAX_MESSAGE_SIZE
    on_event: Callable[[str, str], None] | None = None
    durable_only: bool = False
    """Producers may forget records only once :meth:`mark_durable` says an epoch holds them."""
    agreement: Mapping[str, str] = attrs.field(factory=dict)
    summary_type: Any = Any
    _decoders: dict[str, msgspec.msgpack.Decoder[Any]] = attrs.field(init=False, factory=dict)
    _expected: dict[str, set[str]] = attrs.field(init=False, factory=dict)
    _finished: set[tuple[str, str]] = attrs.field(init=False, factory=set)
    summaries: dict[str, dict[str, Any]] = attrs.field(init=False, factory=dict)
    """Per topic, what each producer said it sent when it finished (see :meth:`add_summary`)."""
    _durable: dict[tuple[str, int], dict[str, int]] = attrs.field(init=False, factory=dict)
    _watchers: set[_Signal] = attrs.field(init=False, factory=set)
    _sessions: dict[tuple[str, str, str], _Session] = attrs.field(init=False, factory=dict)
    _left: set[tuple[str, str, str]] = attrs.field(init=False, factory=set)
    _finish_waiters: dict[tuple[str, str], trio.Event] = attrs.field(init=False, factory=dict)
    _producing: int = attrs.field(init=False, default=0)
    _holding_taps: int = attrs.field(init=False, default=0)
    """Taps with ``hold=true`` still streaming: like consumer groups, the node waits for them."""
    _durable_finishes: set[tuple[str, str]] = attrs.field(init=False, factory=set)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _taps: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    connections: int = attrs.field(init=False, default=0)
    """Connections accepted so far."""
    refused: int = attrs.field(init=False, default=0)
    """Connections closed because of a bad token, version or frame."""

    # -- producers that must finish ----------------------------------------------------------

    def expect_producers(self, topic: str, producers: set[str]) -> None:
        """Keep ``topic`` open until each of ``producers`` (remote ids) has sent its finish."""
        waiting = producers - {p for t, p in self._finished if t == topic}
        self._expected.setdefault(topic, set()).update(waiting)
        for _ in waiting:
            self.topics[topic].add_producer()

    def _finish(self, topic: str, producer: str) -> None:
        if (topic, producer) in self._finished:
            return
        self._finished.add((topic, producer))
        if producer in self._expected.get(topic, ()):
            self._expected[topic].discard(producer)
            self.topics[topic].remove_producer(graceful=True)
        self._event("meta", f"producer {producer} finished topic {topic}")

    def add_summary(self, topic: str, producer: str, summary: Any) -> None:
        """Keep what ``producer`` says it sent to ``topic``; consumers get it at the end.

        Remote producers send theirs with their finish; add local producers' here.
        """
        if summary is not None:
            self.summaries.setdefault(topic, {})[producer] = summary

    def drained(self, members: Set[tuple[str, str, str]] = frozenset()) -> bool:
        """Whether every topic is closed, every group has committed every record, and no
        remote producer, member or holding tap is still connected: nothing is left for this
        gateway to do.

        Args:
            members: Remote members, as (group, topic, member name), that must also have
                come and left after the end (so none is left waiting for this node).
        """
        if (
            not members <= self._left
            or self._producing
            or self._finish_waiters
            or self._holding_taps
        ):
            return False  # some member has not had the end, some producer not its answer
        for topic in self.topics.values():
            if not topic.closed:
                return False
        for group in self.groups.values():
            if any(group.statistics().lag):
                return False
        return not self._sessions

    async def wait_drained(
        self, members: Set[tuple[str, str, str]] = frozenset(), poll: float = 0.05
    ) -> None:
        """Return once :meth:`drained` (checked every ``poll`` seconds: it ends a node's run,
        where 50 ms do not matter, and its conditions change in many places)."""
        while not self.drained(members):  # noqa: ASYNC110
            await trio.sleep(poll)

    def mark_durable(
        self,
        sequences: Mapping[tuple[str, int], Mapping[str, int]],
        finished: Set[tuple[str, str]] = frozenset(),
    ) -> None:
        """Note what a written epoch holds: per (topic, partition), the records of each
        producer it has (producers may now forget them), and the (topic, producer) finishes
        it has (those producers are told their finish is recorded)."""
        for where, numbers in sequences.items():
            self._durable[where] = dict(numbers)
        for key in finished:
            waiter = self._finish_waiters.pop(key, None)
            self._durable_finishes.add(key)
            if waiter is not None:
                waiter.set()
        for watcher in self._watchers:
            watcher.set()

    async def _finish_recorded(self, topic: str, producer: str) -> None:
        # With durable_only, a finish counts for the producer once an epoch holds it: a node
        # restored from an older epoch would otherwise wait for a producer that has gone.
        key = (topic, producer)
        if not self.durable_only or key in self._durable_finishes:
            return
        waiter = self._finish_waiters.setdefault(key, trio.Event())
        await waiter.wait()

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint must keep of the gateway: the producers that have finished and
        their summaries."""
        return {
            "finished": [[topic, producer] for topic, producer in sorted(self._finished)],
            "summaries": self.summaries,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back :meth:`snapshot`; call before :meth:`expect_producers`."""
        self._finished = {(topic, producer) for topic, producer in state["finished"]}
        self._durable_finishes = set(self._finished)
        self.summaries = {t: dict(s) for t, s in state["summaries"].items()}

    @property
    def waiting_for(self) -> dict[str, set[str]]:
        """Per topic, the remote producers that have not finished yet."""
        return {topic: set(ids) for topic, ids in self._expected.items() if ids}

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``task_status`` gets the server (its port)."""
        async with open_nursery() as nursery:
            self._nursery = nursery
            server = await nursery.start(
                partial(
                    serve_websocket,
                    self._handle,
                    host,
                    port,
                    None,
                    handler_nursery=nursery,
                    max_message_size=self.max_message_size,
                )
            )
            task_status.started(server)

    def _event(self, category: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(category, message)

    async def _handle(self, request: WebSocketRequest) -> None:
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        self.connections += 1
        peer = _peer(ws)
        try:
            await self._dispatch(request, ws)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):  # the node is stopping: say so, then go
                await _close(ws, SHUTTING_DOWN, CLOSE_CODES[SHUTTING_DOWN], wait=0.05)
            raise
        except _Refuse as refuse:
            self.refused += 1
            self._event("errors", f"closed a connection from {peer}: {refuse.reason}")
            await _close(ws, refuse.code, refuse.reason)
        except Exception as exc:  # one connection's failure must not stop the server
            if _gone(exc):
                return  # the peer left or the connection dropped: it may come back
            self._event("errors", f"connection from {peer} failed: {exc!r}")
            await _close(ws, 1011, f"internal error: {exc}")
        else:
            await _close(ws, 1000, "done")

    async def _dispatch(self, request: WebSocketRequest, ws: WebSocketConnection) -> None:
        if self.token is not None:
            given = _token_of(request)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                reason = "missing token" if given is None else "wrong token"
                raise _Refuse(UNAUTHORIZED, f"{reason}: this node requires its shared token")
        url = urlsplit(request.path)
        parts = [p for p in url.path.split("/") if p]
        if parts == ["node"]:
            await self._node(ws)
        elif len(parts) == 2 and parts[0] == "tap":
            await self._tap(ws, parts[1], url.query)
        else:
            raise _Refuse(NOT_FOUND, f"no endpoint {url.path!r}; use /node or /tap/TOPIC")

    def _decoder(self, topic: str) -> msgspec.msgpack.Decoder[Any]:
        found = self._decoders.get(topic)
        if found is None:
            found = self._decoders[topic] = decoder(self.value_types.get(topic, Any))
        return found

    async def _node(self, ws: WebSocketConnection) -> None:
        first = await ws.get_message()
        version = check_hello(first)
        if version is None:
            why = ""
            if isinstance(first, bytes):
                try:
                    msgspec.msgpack.decode(first)
                except DECODE_ERRORS as exc:
                    why = f": {describe_decode_error(exc, first)}"
            raise _Refuse(MALFORMED, f"the first frame must be a hello{why}")
        if version[0] != PROTOCOL:
            raise _Refuse(INCOMPATIBLE, incompatible(version))
        assert isinstance(first, bytes)
        try:
            hello = msgspec.msgpack.decode(first, type=Hello)
        except DECODE_ERRORS as exc:
            raise _Refuse(
                MALFORMED, f"malformed hello: {describe_decode_error(exc, first)}"
            ) from None
        problem = hello_problem(hello)
        if problem is not None:
            raise _Refuse(MALFORMED, problem)
        differ = disagreement(self.agreement, hello.agreement)
        if differ is not None:
            raise _Refuse(DISAGREEMENT, differ)
        topic = self.topics.get(hello.topic)
        if topic is None:
            raise _Refuse(NOT_FOUND, f"this node hosts no topic {hello.topic!r}")
        if hello.role == "produce":
            await self._produce(ws, hello, topic)
        elif hello.role == "consume":
            group = self.groups.get((hello.group, hello.topic))
            if group is None:
                raise _Refuse(
                    NOT_FOUND, f"no consumer group {hello.group!r} on topic {hello.topic!r}"
                )
            await self._consume(ws, hello, group)

    async def _receive(self, ws: WebSocketConnection, topic: str) -> Any:
        data = await ws.get_message()
        if isinstance(data, str):
            raise _Refuse(MALFORMED, "text frame on /node; frames are binary MessagePack")
        try:
            return self._decoder(topic).decode(data)
        except DECODE_ERRORS as exc:
            raise _Refuse(
                MALFORMED, f"malformed frame: {describe_decode_error(exc, data)}"
            ) from None

    # -- remote producers --------------------------------------------------------------------

    def _window(self, topic: Topic, partition: Partition, producer: str) -> Window:
        acked = partition.next_sequence(producer)
        if self.durable_only:
            durable = self._durable.get((topic.name, partition.index), {}).get(producer, 0)
        else:
            durable = acked
        room = partition.free_room
        return Window(partition.index, acked, durable, None if room is None else acked + room)

    async def _produce(self, ws: WebSocketConnection, hello: Hello, topic: Topic) -> None:
        name = hello.name
        partitions = topic.partitions
        welcome = Welcome(
            PROTOCOL,
            SOFTWARE,
            len(partitions),
            topic.capacity,
            [p.next_sequence(name) for p in partitions],
        )
        await ws.send_message(ENCODER.encode(welcome))
        signal = _Signal()
        self._watchers.add(signal)
        self._producing += 1

        async def watch(partition: Partition) -> None:
            while True:
                await partition.wait_room_changed()
                signal.set()

        async def send_windows() -> None:
            sent: list[Window | None] = [None] * len(partitions)
            while True:
                wrote = False
                for index, partition in enumerate(partitions):
                    window = self._window(topic, partition, name)
                    if window != sent[index]:
                        await ws.send_message(ENCODER.encode(window))
                        sent[index] = window
                        wrote = True
                if wrote:  # gather what changes meanwhile into the next windows
                    await trio.sleep(WINDOW_LINGER)
                await signal.wait()

        try:
            async with open_nursery() as nursery:
                for partition in partitions:
                    nursery.start_soon(watch, partition)
                nursery.start_soon(send_windows)
                while True:
                    frame = await self._receive(ws, topic.name)
                    if isinstance(frame, Batch):
                        problem = batch_problem(frame, len(partitions))
                        if problem is not None:
                            raise _Refuse(MALFORMED, problem)
                        columns = Columns(frame.keys, frame.values, frame.timestamps)
                        try:
                            await partitions[frame.partition].send_sequenced(
                                columns, name, frame.sequence
                            )
                        except RingflowError as exc:
                            raise _Refuse(MALFORMED, str(exc)) from None
                        signal.set()
                    elif isinstance(frame, Finish):
                        try:
                            msgspec.convert(frame.summary, self.summary_type)
                        except msgspec.ValidationError as exc:
                            raise _Refuse(MALFORMED, f"finish: summary: {exc}") from None
                        self.add_summary(topic.name, name, frame.summary)
                        self._finish(topic.name, name)
                        await self._finish_recorded(topic.name, name)
                        await ws.send_message(ENCODER.encode(Finished()))
                    else:
                        raise _Refuse(MALFORMED, f"unexpected {type(frame).__name__} frame")
        finally:
            self._watchers.discard(signal)
            self._producing -= 1

    # -- remote consumers --------------------------------------------------------------------

    async def _consume(self, ws: WebSocketConnection, hello: Hello, group: ConsumerGroup) -> None:
        count = group.topic.partition_count
        problem = offsets_problem(hello.positions, count, "hello: positions")
        if problem is not None:
            raise _Refuse(MALFORMED, problem)
        key = (hello.group, hello.topic, hello.name)
        session = self._sessions.get(key)
        if session is None:
            session = _Session(key)
            assert self._nursery is not None
            await self._nursery.start(self._run_session, session, group, hello)
            self._event("meta", f"{hello.name} joined group {hello.group} on {hello.topic}")
        else:
            self._event("meta", f"{hello.name} reconnected to group {hello.group}")
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
        except _Refuse:
            session.left = True  # a member that broke the protocol is not waited for
            raise
        finally:
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
            with trio.move_on_after(math.inf if ended else self.session_timeout):
                frame = await self._receive(ws, topic.name)
            if frame is None:
                raise _Refuse(
                    IDLE_MEMBER,
                    f"{hello.name} asked for nothing for {self.session_timeout:g} s; its "
                    "partitions went to the other members",
                )
            if isinstance(frame, (Next, Leave)):
                where = type(frame).__name__.lower()
                problem = offsets_problem(frame.offsets, count, f"{where}: offsets")
                if problem is not None:
                    raise _Refuse(MALFORMED, problem)
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
                    summaries = self.summaries.get(topic.name, {})
                    await ws.send_message(ENCODER.encode(End(summaries)))
                    ended = True
                    continue
                delivery = Delivery(
                    batch.partition,
                    batch.base_offset,
                    list(batch.keys),
                    list(batch.values),
                    list(batch.timestamps),
                )
                await ws.send_message(ENCODER.encode(delivery))
            elif isinstance(frame, Leave):
                _commit(member, frame.offsets)
                session.left = True
                self._left.add(key)
                return
            else:
                raise _Refuse(MALFORMED, f"unexpected {type(frame).__name__} frame")

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
                    with trio.move_on_after(self.session_timeout):
                        await session.changed.wait()
                        continue
                    raise _Expired
        except _Expired:
            self._event(
                "meta",
                f"{hello.name} of group {hello.group} did not come back within "
                f"{self.session_timeout:g} s; its partitions were reassigned",
            )
        finally:
            del self._sessions[session.key]

    # -- taps --------------------------------------------------------------------------------

    async def _tap(self, ws: WebSocketConnection, topic_name: str, query: str) -> None:
        topic = self.topics.get(topic_name)
        if topic is None:
            raise _Refuse(NOT_FOUND, f"this node hosts no topic {topic_name!r}")
        indexes, start, hold = _tap_options(query, topic)
        partitions = [topic.partitions[i] for i in indexes or range(topic.partition_count)]
        lot = trio.lowlevel.ParkingLot()
        tap_group = f"tap:{next(self._taps)}"
        offsets: dict[int, int] = {}
        for partition in partitions:
            partition.add_listener(lot)
            if start == "earliest":
                offsets[partition.index] = partition.retained_offset
            elif start == "latest":
                offsets[partition.index] = partition.readable_offset
            else:
                offsets[partition.index] = int(start)
            if hold:
                partition.register_group(tap_group, lot)
        self._holding_taps += hold
        try:
            await self._stream_tap(ws, topic.name, partitions, offsets, lot, tap_group, hold)
        finally:
            self._holding_taps -= hold
            for partition in partitions:
                partition.remove_listener(lot)
                if hold:
                    partition.unregister_group(tap_group)

    async def _stream_tap(
        self,
        ws: WebSocketConnection,
        topic: str,
        partitions: list[Partition],
        offsets: dict[int, int],
        lot: trio.lowlevel.ParkingLot,
        tap_group: str,
        hold: bool,
    ) -> None:
        while True:
            progressed = False
            for partition in partitions:
                index = partition.index
                offset = offsets[index]
                retained = partition.retained_offset
                if offset < retained:  # too slow: those records are gone
                    message = {
                        "type": "skipped",
                        "topic": topic,
                        "partition": index,
                        "from": offset,
                        "to": retained,
                        "missed": retained - offset,
                    }
                    offsets[index] = retained
                    await ws.send_message(_JSON.encode(message).decode())
                    progressed = True
                    continue  # the ring may have moved on again while that was sent
                batch = partition.read(offset, TAP_BATCH)
                if batch is None:
                    continue
                progressed = True
                records = [
                    {"offset": batch.base_offset + i, "key": k, "timestamp": t, "value": _plain(v)}
                    for i, (k, v, t) in enumerate(
                        zip(batch.keys, batch.values, batch.timestamps, strict=True)
                    )
                ]
                message = {"type": "records", "topic": topic, "partition": index}
                await ws.send_message(_JSON.encode({**message, "records": records}).decode())
                offsets[index] = batch.next_offset
                if hold and batch.next_offset > partition.start_offset:
                    partition.commit(tap_group, batch.next_offset)
            if progressed:
                continue
            if all(p.closed and offsets[p.index] >= p.end_offset for p in partitions):
                await ws.send_message(_JSON.encode({"type": "end", "topic": topic}).decode())
                return
            await lot.park()


def _tap_options(query: str, topic: Topic) -> tuple[list[int] | None, str, bool]:
    # A tap's query parameters: (partitions or None for all, from, hold). Each mistake is
    # refused with what was wrong and what is expected.
    given: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in TAP_PARAMETERS:
            raise _Refuse(
                MALFORMED, f"unknown parameter {name!r}; a tap takes {', '.join(TAP_PARAMETERS)}"
            )
        if name in given:
            raise _Refuse(MALFORMED, f"parameter {name!r} given twice")
        given[name] = value
    for name, value in given.items():
        if len(value) > 20:
            given[name] = value[:20] + "..."  # echoed in the reason, which must stay short
    indexes = None
    last = topic.partition_count - 1
    if "partition" in given:
        text = given["partition"]
        number = _whole(text)
        if number is None or number > last:
            raise _Refuse(
                MALFORMED,
                f"partition={text}: topic {topic.name!r} has partitions 0 to {last}",
            )
        indexes = [number]
    start = given.get("from", "latest")
    if start not in ("earliest", "latest") and _whole(start) is None:
        raise _Refuse(
            MALFORMED, f"from={start}: expected earliest, latest or an offset (0 or more)"
        )
    hold = given.get("hold", "false")
    if hold not in ("true", "false"):
        raise _Refuse(MALFORMED, f"hold={hold}: expected true or false")
    return indexes, start, hold == "true"


def _whole(text: str) -> int | None:
    # A whole number of at most 18 digits (an offset fits), or None.
    if 0 < len(text) <= 18 and text.isascii() and text.isdigit():
        return int(text)
    return None


def _plain(value: Any) -> Any:
    # Structs encoded as arrays on the wire are objects with named fields for taps.
    if isinstance(value, msgspec.Struct) and value.__struct_config__.array_like:
        fields = {name: getattr(value, name) for name in value.__struct_fields__}
        tag = value.__struct_config__.tag
        return {"type": tag, **fields} if isinstance(tag, str) and "type" not in fields else fields
    return value


def _commit(member: Consumer, offsets: list[tuple[int, int]]) -> None:
    # What a remote member processed, partition by partition. An offset it may no longer
    # commit (the partition moved on, or a restarted node restored older commits) is left:
    # those records are delivered again, and the member skips what it has already seen.
    for partition, offset in offsets:
        try:
            member.commit_nowait({partition: offset})
        except CommitError:
            continue


def _peer(ws: WebSocketConnection) -> str:
    try:
        return str(ws.remote)
    except OSError:  # the socket is closed already
        return "a peer that left"


def _gone(exc: BaseException) -> bool:
    # The connection closed, in one task or in several at once (an exception group).
    if isinstance(exc, BaseExceptionGroup):
        return all(_gone(e) for e in exc.exceptions)
    return isinstance(exc, (ConnectionClosed, trio.BrokenResourceError))


async def _close(ws: WebSocketConnection, code: int, reason: str, wait: float = 2) -> None:
    # Sends the close frame at once, then waits up to ``wait`` seconds for the peer's answer
    # (which needs this connection's reader: a node that is stopping does not wait).
    try:
        with trio.move_on_after(wait):
            await ws.aclose(code, reason)
    except Exception:  # the peer may be gone already
        return
