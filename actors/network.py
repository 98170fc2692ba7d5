"""The network nodes talk over: TCP, or anything else that gives Trio streams.

A gateway listens, and remote producers and members connect, through a :class:`Network`.
ringflow's nodes use :data:`TCP`; a simulation may hand them a network of in-memory streams
instead (``ringflow chaos`` does, to drop, delay and partition connections on a virtual
clock), and the websocket protocol above it runs unchanged.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio


class Network(Protocol):
    """Where a gateway listens and where its peers connect from."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """Open a stream to ``host:port``.

        Raises:
            OSError: Nothing listens there, or it cannot be reached.
        """
        ...

    async def listen(self, host: str, port: int) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """Listen on ``host:port`` (port 0: any free port).

        Raises:
            OSError: The address is taken or cannot be listened on.
        """
        ...


@attrs.frozen
class TcpNetwork:
    """Plain TCP, as real nodes use."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """Open a TCP connection to ``host:port``."""
        return await trio.open_tcp_stream(host, port)

    async def listen(self, host: str, port: int) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """Listen for TCP connections on ``host:port``."""
        return list(await trio.open_tcp_listeners(port, host=host))


TCP: Network = TcpNetwork()
"""The network of real nodes."""
