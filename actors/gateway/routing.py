"""The gateway itself: one websocket server, its token, and the routing of each connection.

A connection to ``/node`` opens with a hello, checked here (version, names, agreement), and
goes to the producers' endpoint (:mod:`.producers`) or the members' (:mod:`.members`); one to
``/tap/TOPIC`` goes to the taps' (:mod:`.taps`). Every handler catches its own connection's
errors: an exception escaping a trio-websocket handler would take the whole server down.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Set
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)

from ..group import ConsumerGroup
from ..network import TCP, Network
from ..nursery import open_nursery
from ..topic import Topic
from ..wire import (
    CLOSE_CODES,
    DECODE_ERRORS,
    DISAGREEMENT,
    DONE,
    INCOMPATIBLE,
    MALFORMED,
    MAX_MESSAGE_SIZE,
    NOT_FOUND,
    PROTOCOL,
    SHUTTING_DOWN,
    UNAUTHORIZED,
    Hello,
    check_hello,
    describe_decode_error,
    disagreement,
    hello_problem,
    incompatible,
)
from .endpoint import FrameReader, Owed, Refusal, close, gone, peer
from .members import MemberEndpoint, MemberEndpointStatistics
from .producers import GatewayCheckpoint, ProducerEndpoint, ProducerEndpointStatistics
from .taps import TapEndpoint, TapEndpointStatistics


@attrs.frozen
class GatewayStatistics:
    """A snapshot of a gateway, as :meth:`Gateway.statistics` returns it."""

    connections: int
    """Connections accepted so far."""
    refused: int
    """Connections closed because of a bad token, version or frame."""
    producers: ProducerEndpointStatistics
    """Remote producers: connected, finished, awaited."""
    members: MemberEndpointStatistics
    """Remote members of consumer groups and their sessions."""
    taps: TapEndpointStatistics
    """Taps opened and streaming."""


def token_of(request: WebSocketRequest) -> str | None:
    """The token a connection presents: ``Authorization: Bearer TOKEN``, or ``?token=``."""
    for name, value in request.headers:
        if name.lower() == b"authorization" and value.lower().startswith(b"bearer "):
            return value[7:].decode(errors="replace").strip()
    query = parse_qs(urlsplit(request.path).query)
    return query.get("token", [None])[0]


@attrs.define(eq=False)
class Gateway:
    """Serves ``topics`` and their consumer ``groups`` over websockets.

    Two endpoints, on one websocket server (trio-websocket):

    - ``/node``: other ringflow nodes. A remote producer writes numbered batches to a
      partition; the gateway answers with :class:`~actors.wire.Window` frames whose
      ``limit`` is the free room in the ring, so a full ring stops a producer on another
      machine just as it stops a local one. A remote consumer is a member of a local
      consumer group that asks for one batch at a time, committing what it processed in the
      same frame.
    - ``/tap/TOPIC``: any websocket client. Records as JSON text messages (see ``docs/``); a
      tap never touches the commits of consumer groups.

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
        linger: Seconds the gateway waits, once its work is done, for a producer or member
            that may not have had its last answer (its connection broke as it was sent): as
            long as a peer keeps trying to reach it.
        summary_type: The type a producer's summary (sent with its finish) must convert to;
            a finish with another summary is refused, so consumers never get one they cannot
            read.
        network: Where it listens (TCP unless a simulation says).
    """

    topics: Mapping[str, Topic]
    groups: Mapping[tuple[str, str], ConsumerGroup] = attrs.field(factory=dict)
    value_types: Mapping[str, Any] = attrs.field(factory=dict)
    token: str | None = None
    session_timeout: float = 10.0
    linger: float = 30.0
    max_message_size: int = MAX_MESSAGE_SIZE
    on_event: Callable[[str, str], None] | None = None
    durable_only: bool = False
    """Producers may forget records, and members leave, only once :meth:`mark_durable`
    says an epoch holds them."""
    agreement: Mapping[str, str] = attrs.field(factory=dict)
    summary_type: Any = Any
    network: Network = TCP
    on_accepted: Callable[[], None] | None = None
    """Called when a remote producer's records are accepted into a ring (to ask for an
    epoch soon, so that its window says they are durable without waiting for the timer)."""
    kept_open: frozenset[str] = frozenset()
    """Topics that stay open to the end, written only by this node's own consumers as they
    go (dead-letter topics): its work does not wait for them to close."""
    _frames: FrameReader = attrs.field(init=False)
    _producers: ProducerEndpoint = attrs.field(init=False)
    _members: MemberEndpoint = attrs.field(init=False)
    _taps: TapEndpoint = attrs.field(init=False)
    _owed: Owed = attrs.field(init=False, factory=Owed)
    _connections: int = attrs.field(init=False, default=0)
    _refused: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._frames = FrameReader(self.value_types)
        self._producers = ProducerEndpoint(
            self.topics, self._frames, self._event, self, owed=self._owed
        )
        self._members = MemberEndpoint(
            self._frames, self._summaries_of, self._event, self, owed=self._owed
        )
        self._taps = TapEndpoint(self.topics)

    # -- producers that must finish ----------------------------------------------------------

    def expect_producers(self, topic: str, producers: set[str]) -> None:
        """Keep ``topic`` open until each of ``producers`` (remote ids) has sent its finish."""
        self._producers.expect(topic, producers)

    def add_summary(self, topic: str, producer: str, summary: Any) -> None:
        """Keep what ``producer`` says it sent to ``topic``; consumers get it at the end.

        Remote producers send theirs with their finish; add local producers' here.
        """
        self._producers.add_summary(topic, producer, summary)

    @property
    def summaries(self) -> dict[str, dict[str, Any]]:
        """Per topic, what each producer said it sent when it finished (see
        :meth:`add_summary`)."""
        return self._producers.summaries

    def _summaries_of(self, topic: str) -> dict[str, Any]:
        return self._producers.summaries.get(topic, {})

    @property
    def waiting_for(self) -> dict[str, set[str]]:
        """Per topic, the remote producers that have not finished yet."""
        return self._producers.waiting_for

    def drained(self, members: Set[tuple[str, str, str]] = frozenset()) -> bool:
        """Whether every topic is closed, every group has committed every record, and no
        remote producer, member or holding tap is still connected: nothing is left for this
        gateway to do.

        Args:
            members: Remote members, as (group, topic, member name), that must also have
                come and left after the end (so none is left waiting for this node).
        """
        if not self._members.have_left(members) or self._producers.busy or self._taps.holding:
            return False  # some member has not had the end, some producer not its answer
        for name, topic in self.topics.items():
            if not topic.closed and name not in self.kept_open:
                return False
        for group in self.groups.values():
            if any(group.statistics().lag):
                return False
        # A producer or member whose last answer may not have reached it may come back for
        # it, for a while: its node cannot finish until it has had it.
        return not self._members.active and not self._owed.owing

    async def wait_drained(
        self, members: Set[tuple[str, str, str]] = frozenset(), poll: float = 0.05
    ) -> None:
        """Return once :meth:`drained` (checked every ``poll`` seconds: it ends a node's run,
        where 50 ms do not matter, and its conditions change in many places); at once for
        a gateway that hosts no topic (nothing of its own to drain: its node's final epoch
        should not wait)."""
        if not self.topics and not members:
            return
        while not self.drained(members):  # noqa: ASYNC110
            await trio.sleep(poll)

    def mark_durable(
        self,
        sequences: Mapping[tuple[str, int], Mapping[str, int]],
        finished: Set[tuple[str, str]] = frozenset(),
        left: Set[tuple[str, str, str]] = frozenset(),
    ) -> None:
        """Note what a written epoch holds: per (topic, partition), the records of each
        producer it has (producers may now forget them), the (topic, producer) finishes it
        has (those producers are told their finish is recorded), and the (group, topic,
        member) leaves it has (those members are told they have left)."""
        self._producers.mark_durable(sequences, finished)
        self._members.mark_durable(left)

    def snapshot(self) -> GatewayCheckpoint:
        """What a checkpoint must keep of the gateway: the producers that have finished and
        their summaries, and the remote members that have left."""
        return attrs.evolve(self._producers.snapshot(), left=self._members.left)

    def restore(self, state: GatewayCheckpoint) -> None:
        """Take back :meth:`snapshot`; call before :meth:`expect_producers`.

        Whether the producers that finished, and the members that left, had their answers
        before this node stopped is not known: once it serves, it waits ``linger`` seconds
        for each to come back, unless it does sooner.
        """
        self._producers.restore(state)
        self._members.restore_left(set(state.left))
        self._owed.later({("produce", *key) for key in state.finished})
        self._owed.later({("consume", *key) for key in state.left})

    def statistics(self) -> GatewayStatistics:
        """Return a snapshot of the connections served and of each endpoint."""
        return GatewayStatistics(
            connections=self._connections,
            refused=self._refused,
            producers=self._producers.statistics(),
            members=self._members.statistics(),
            taps=self._taps.statistics(),
        )

    # -- serving ---------------------------------------------------------------------------

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``task_status`` gets the server (its port)."""
        listeners = await self.network.listen(host, port)
        self._owed.start(self.linger)
        async with open_nursery() as nursery:
            self._members.nursery = nursery
            server = WebSocketServer(
                self._handle,
                listeners,  # type: ignore[arg-type]  # any Trio listener serves
                handler_nursery=nursery,
                max_message_size=self.max_message_size,
            )
            await nursery.start(server.run)
            task_status.started(server)

    def _event(self, category: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(category, message)

    async def _handle(self, request: WebSocketRequest) -> None:
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        self._connections += 1
        who = peer(ws)
        try:
            await self._dispatch(request, ws)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):  # the node is stopping: say so, then go
                await close(ws, SHUTTING_DOWN, CLOSE_CODES[SHUTTING_DOWN], wait=0.05)
            raise
        except Refusal as refusal:
            self._refused += 1
            self._event("errors", f"closed a connection from {who}: {refusal.reason}")
            await close(ws, refusal.code, refusal.reason)
        except Exception as exc:  # one connection's failure must not stop the server
            if gone(exc):
                return  # the peer left or the connection dropped: it may come back
            self._event("errors", f"connection from {who} failed: {exc!r}")
            await close(ws, 1011, f"internal error: {exc}")
        else:
            await close(ws, DONE, "done")

    async def _dispatch(self, request: WebSocketRequest, ws: WebSocketConnection) -> None:
        if self.token is not None:
            given = token_of(request)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                reason = "missing token" if given is None else "wrong token"
                raise Refusal(UNAUTHORIZED, f"{reason}: this node requires its shared token")
        url = urlsplit(request.path)
        parts = [p for p in url.path.split("/") if p]
        if parts == ["node"]:
            await self._node(ws)
        elif len(parts) == 2 and parts[0] == "tap":
            await self._taps.serve(ws, parts[1], url.query)
        else:
            raise Refusal(NOT_FOUND, f"no endpoint {url.path!r}; use /node or /tap/TOPIC")

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
            raise Refusal(MALFORMED, f"the first frame must be a hello{why}")
        if version[0] != PROTOCOL:
            raise Refusal(INCOMPATIBLE, incompatible(version))
        assert isinstance(first, bytes)
        try:
            hello = msgspec.msgpack.decode(first, type=Hello)
        except DECODE_ERRORS as exc:
            raise Refusal(
                MALFORMED, f"malformed hello: {describe_decode_error(exc, first)}"
            ) from None
        problem = hello_problem(hello)
        if problem is not None:
            raise Refusal(MALFORMED, problem)
        differ = disagreement(self.agreement, hello.agreement)
        if differ is not None:
            raise Refusal(DISAGREEMENT, differ)
        topic = self.topics.get(hello.topic)
        if topic is None:
            raise Refusal(NOT_FOUND, f"this node hosts no topic {hello.topic!r}")
        if hello.role == "produce":
            await self._producers.serve(ws, hello, topic)
        elif hello.role == "consume":
            group = self.groups.get((hello.group, hello.topic))
            if group is None:
                raise Refusal(
                    NOT_FOUND, f"no consumer group {hello.group!r} on topic {hello.topic!r}"
                )
            await self._members.serve(ws, hello, group)
