"""A simulated network for the nodes of a split topology, on the virtual clock.

Each node gets a view of one :class:`SimNetwork` (an :class:`actors.Network`): its gateway
listens on the address of the file, and its remote producers and members connect to the
others' addresses, over in-memory streams that carry the real websocket protocol, so
credits, sequence numbers, resends, session timeouts and rebalances run as over TCP. The
network can:

- drop every connection between two nodes at once (``net_drop``): both ends fail as on a
  reset, and whatever was in flight is lost;
- delay what two nodes send each other for a while (``net_delay``): each chunk arrives a
  fixed time after it was sent, in order;
- partition two nodes for a while (``net_partition``): new connections between them fail,
  and what they send each other is held until the partition heals (as TCP retransmits it
  then), long enough, maybe, for a session to time out;
- crash a node: its connections fail at once and its address stops answering, before its
  tasks are cancelled, so nothing it does while dying reaches a peer.
"""

from __future__ import annotations

import errno
import math

import attrs
import trio

CHUNKS_IN_FLIGHT = 16
"""Chunks one direction of a connection holds before a sender waits: a socket's buffer."""


def pair_of(a: str, b: str) -> tuple[str, str]:
    """Two nodes, in a fixed order (faults between them strike both directions)."""
    return (a, b) if a <= b else (b, a)


@attrs.define(eq=False)
class Link:
    """One connection: its two nodes, and whether it has been dropped."""

    client: str
    server: str
    broken: bool = False
    ends: list[SimStream] = attrs.field(factory=list)

    @property
    def over(self) -> bool:
        """Whether the connection is gone: dropped, or closed at both ends."""
        return self.broken or all(end.closed for end in self.ends)

    def drop(self) -> None:
        """Fail both ends now: tasks waiting on either wake up with an error."""
        self.broken = True
        for end in self.ends:
            end.fail()


@attrs.define(eq=False)
class SimNetwork:
    """In-memory connections between named nodes, with the faults a chaos plan strikes."""

    _listeners: dict[tuple[str, int], SimListener] = attrs.field(factory=dict)
    _links: list[Link] = attrs.field(factory=list)
    _partitioned: dict[tuple[str, str], float] = attrs.field(factory=dict)
    """Until when each pair of nodes cannot reach each other."""
    _delayed: dict[tuple[str, str], tuple[float, float]] = attrs.field(factory=dict)
    """Per pair of nodes, (until when, by how much) what they send is delayed."""
    connections: int = 0
    """Connections opened so far."""

    def view(self, node: str) -> NodeNetwork:
        """The network as ``node`` uses it."""
        return NodeNetwork(self, node)

    # -- faults ----------------------------------------------------------------------------

    def drop(self, a: str, b: str) -> int:
        """Drop every connection between ``a`` and ``b``; return how many there were."""
        dropped = [link for link in self._links if pair_of(link.client, link.server) == (a, b)]
        for link in dropped:
            link.drop()
        self._forget()
        return len(dropped)

    def delay(self, a: str, b: str, seconds: float, until: float) -> None:
        """Delay what ``a`` and ``b`` send each other by ``seconds`` until ``until``."""
        self._delayed[pair_of(a, b)] = (until, seconds)

    def partition(self, a: str, b: str, until: float) -> None:
        """Cut ``a`` off from ``b`` until ``until``."""
        self._partitioned[pair_of(a, b)] = until

    def crash(self, node: str) -> None:
        """``node`` is gone: its connections fail and its address stops answering."""
        for link in self._links:
            if node in (link.client, link.server):
                link.drop()
        self._forget()
        for address, listener in list(self._listeners.items()):
            if listener.node == node:
                # Its accept waits on until the node's tasks are cancelled, as a dead
                # process's would: only new connections find nobody there.
                del self._listeners[address]

    # -- what streams ask ------------------------------------------------------------------

    def cut_until(self, a: str, b: str) -> float:
        """Until when ``a`` and ``b`` cannot reach each other (in the past: they can)."""
        return self._partitioned.get(pair_of(a, b), -math.inf)

    def arrival(self, a: str, b: str) -> float:
        """When a chunk ``a`` sends ``b`` now arrives (before any partition holds it)."""
        now = trio.current_time()
        until, seconds = self._delayed.get(pair_of(a, b), (-math.inf, 0.0))
        return now + seconds if now < until else now

    async def wait_reachable(self, a: str, b: str) -> None:
        """Return once ``a`` and ``b`` are not partitioned."""
        # A partition struck again while one holds lasts longer: look again after each.
        while (until := self.cut_until(a, b)) > trio.current_time():  # noqa: ASYNC110
            await trio.sleep_until(until)

    async def connect(self, node: str, host: str, port: int) -> SimStream:
        await trio.lowlevel.checkpoint()
        listener = self._listeners.get((host, port))
        if listener is None:
            raise OSError(errno.ECONNREFUSED, f"nothing listens on {host}:{port}")
        if self.cut_until(node, listener.node) > trio.current_time():
            raise OSError(errno.EHOSTUNREACH, f"{host}:{port} cannot be reached")
        link = Link(node, listener.node)
        to_server: Pipe = Pipe.open()
        to_client: Pipe = Pipe.open()
        client = SimStream(self, link, node, listener.node, to_server, to_client)
        server = SimStream(self, link, listener.node, node, to_client, to_server)
        link.ends.extend([client, server])
        self._forget()
        self._links.append(link)
        self.connections += 1
        try:
            listener.incoming.send_nowait(server)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            link.drop()
            raise OSError(errno.ECONNREFUSED, f"{host}:{port} refused the connection") from None
        return client

    async def listen(self, node: str, host: str, port: int) -> SimListener:
        await trio.lowlevel.checkpoint()
        if (host, port) in self._listeners:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} is taken")
        listener = self._listeners[host, port] = SimListener(self, node, (host, port))
        return listener

    def _unlisten(self, listener: SimListener) -> None:
        if self._listeners.get(listener.address) is listener:
            del self._listeners[listener.address]

    def _forget(self) -> None:
        self._links = [link for link in self._links if not link.over]


@attrs.frozen
class NodeNetwork:
    """One node's view of a :class:`SimNetwork` (an :class:`actors.Network`)."""

    network: SimNetwork
    node: str

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """Open a connection from this node to whoever listens on ``host:port``."""
        return await self.network.connect(self.node, host, port)

    async def listen(self, host: str, port: int) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """Listen on ``host:port`` as this node."""
        return [await self.network.listen(self.node, host, port)]


@attrs.frozen
class Pipe:
    """One direction of a connection: chunks with the time each arrives."""

    send: trio.MemorySendChannel[tuple[float, bytes]]
    receive: trio.MemoryReceiveChannel[tuple[float, bytes]]

    @classmethod
    def open(cls) -> Pipe:
        """A pipe that holds :data:`CHUNKS_IN_FLIGHT` chunks."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](CHUNKS_IN_FLIGHT)
        return cls(send, receive)


class SimStream(trio.abc.Stream):
    """One end of a simulated connection."""

    def __init__(
        self, network: SimNetwork, link: Link, here: str, there: str, out: Pipe, into: Pipe
    ) -> None:
        self._network = network
        self._link = link
        self._here = here
        self._there = there
        self._out = out
        self._in = into
        self._last_arrival = -math.inf
        self._buffer = b""
        self.closed = False
        """Whether this end was closed."""

    def __repr__(self) -> str:
        return f"sim://{self._here}->{self._there}"

    def fail(self) -> None:
        """Wake whatever waits on this end, to find the connection broken."""
        for end in (self._out.send, self._out.receive, self._in.send, self._in.receive):
            end.close()

    def _check(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("this end of the connection is closed")
        if self._link.broken:
            raise trio.BrokenResourceError("connection reset by peer")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; it arrives after any delay, and not while a partition holds."""
        self._check()
        arrival = max(self._network.arrival(self._here, self._there), self._last_arrival)
        self._last_arrival = arrival
        try:
            await self._out.send.send((arrival, bytes(data)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._check()
            raise trio.BrokenResourceError("the peer closed the connection") from None

    async def wait_send_all_might_not_block(self) -> None:
        """Return at once (the pipe's room is checked as data is sent)."""
        self._check()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return the next bytes the peer sent, or ``b""`` once it closed its end."""
        self._check()
        if not self._buffer:
            try:
                arrival, chunk = await self._in.receive.receive()
            except trio.EndOfChannel:
                self._check()
                return b""
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._check()
                raise
            await trio.sleep_until(arrival)
            await self._network.wait_reachable(self._here, self._there)
            self._check()
            self._buffer = chunk
        size = len(self._buffer) if max_bytes is None else max_bytes
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    async def aclose(self) -> None:
        """Close this end: the peer reads what was sent, then the end."""
        if not self.closed:
            self.closed = True
            self._out.send.close()
            self._in.receive.close()
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class SimListener(trio.abc.Listener[trio.abc.Stream]):
    """Where a node's gateway accepts connections."""

    network: SimNetwork
    node: str
    address: tuple[str, int]
    incoming: trio.MemorySendChannel[SimStream] = attrs.field(init=False)
    _accept: trio.MemoryReceiveChannel[SimStream] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.incoming, self._accept = trio.open_memory_channel[SimStream](math.inf)

    def __repr__(self) -> str:
        return f"sim://{self.node}@{self.address[0]}:{self.address[1]}"

    async def accept(self) -> trio.abc.Stream:
        """Wait for the next connection."""
        try:
            return await self._accept.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError):
            raise trio.ClosedResourceError("the listener is closed") from None

    async def aclose(self) -> None:
        """Close the listener: its address is free again."""
        self.network._unlisten(self)
        self.incoming.close()
        self._accept.close()
        await trio.lowlevel.checkpoint()
