"""Client connections to another node's gateway: connect, say hello, and try again.

Remote producers (:mod:`~actors.remote_topic`) and remote members (:mod:`~actors.remote_group`)
open their connections here, exchange the hello and the welcome here, and follow one retry
policy (:class:`~actors.retry.Backoff`) when a node cannot be reached or a connection drops.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .errors import GatewayError
from .network import TCP, Network
from .retry import Backoff
from .wire import CLOSE_CODES, ENCODER, IDLE_MEMBER, MAX_MESSAGE_SIZE, SHUTTING_DOWN, Hello, Welcome

T = TypeVar("T")

FATAL_CLOSE_CODES = frozenset(CLOSE_CODES) - {SHUTTING_DOWN, IDLE_MEMBER}
"""Close codes that retrying cannot fix (a bad token, another version, a bad frame). A node
that stops, or that dropped an idle member, may be reconnected to (the member joins again)."""

RETRYABLE: tuple[type[Exception], ...] = (
    OSError,
    HandshakeError,
    ConnectionClosed,
    trio.BrokenResourceError,
    trio.TooSlowError,
)
"""What a failed attempt to reach a node, or a dropped connection, raises: worth another try
(unless a close code in :data:`FATAL_CLOSE_CODES` says otherwise)."""


@attrs.define(eq=False)
class Connection:
    """A client websocket and the TCP stream under it; :meth:`close` releases both."""

    ws: WebSocketConnection
    stream: trio.abc.Stream

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
    network: Network = TCP,
) -> Connection:
    """Open a websocket to ``url`` (``ws://host:port/path``) whose reader runs in ``nursery``.

    The token, if any, goes in an ``Authorization: Bearer`` header. Unlike trio-websocket's
    own helpers, the stream is closed by :meth:`Connection.close` whoever closed the
    websocket first. The stream comes from ``network`` (TCP unless a simulation says).

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
    stream = await network.connect(parts.hostname, parts.port or 80)
    try:
        with trio.fail_after(10):
            ws = await wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]  # any Trio stream carries a websocket
                parts.hostname,
                resource,
                extra_headers=headers,
                max_message_size=max_message_size,
            )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return Connection(ws, stream)


def binary(message: bytes | str) -> bytes:
    """Return a frame from a node, which is binary MessagePack.

    Raises:
        GatewayError: The frame is text.
    """
    if isinstance(message, str):
        raise GatewayError("a ringflow gateway sent a text frame; node frames are binary")
    return message


async def greet(
    nursery: trio.Nursery,
    url: str,
    hello: Hello,
    decode: msgspec.msgpack.Decoder[Any],
    *,
    token: str | None = None,
    network: Network = TCP,
) -> tuple[Connection, Welcome]:
    """Connect to the gateway at ``url``, send ``hello`` and read the welcome.

    The connection's reader runs in ``nursery``. If anything fails, the connection is closed
    before the error comes out.

    Raises:
        GatewayError: The gateway answered with something other than a welcome.
        OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed: As
            :func:`connect`, or the connection dropped (see :data:`RETRYABLE`).
    """
    connection = await connect(nursery, url, token=token, network=network)
    try:
        await connection.ws.send_message(ENCODER.encode(hello))
        welcome = decode.decode(binary(await connection.ws.get_message()))
        if not isinstance(welcome, Welcome):
            raise GatewayError(f"{url} answered hello with {welcome!r}")
    except BaseException:
        await connection.close()
        raise
    return connection, welcome


def refusal(url: str, exc: ConnectionClosed) -> GatewayError | None:
    """The error to raise when ``url`` closed a connection for good, or None to retry."""
    reason = exc.reason
    if reason is not None and reason.code in FATAL_CLOSE_CODES:
        return GatewayError(
            f"{url} refused the connection ({reason.code}): {reason.reason}", reason.code
        )
    return None


async def keep_trying(url: str, backoff: Backoff, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it returns, trying again after each :data:`RETRYABLE` failure.

    An attempt that runs tasks of its own (a connection's reader beside its writer) may fail
    in several of them at once: the failures come as one exception group, and count as one
    failed attempt. The pause between attempts follows ``backoff``; a success inside an
    attempt should :meth:`~actors.retry.Backoff.reset` it.

    Raises:
        GatewayError: ``url`` refused the connection with a close code in
            :data:`FATAL_CLOSE_CODES`, or could not be reached within ``backoff.give_up``
            seconds.
    """
    while True:
        failures: list[Exception] = []
        try:
            try:
                return await attempt()
            except* RETRYABLE as group:
                failures = _leaves(group)
        except BaseExceptionGroup as rest:
            # What is not worth retrying left over beside failures that are: one such error
            # goes on as itself (a refusal, a bug), as a nursery would have let it through.
            errors = [e for e in rest.exceptions if not isinstance(e, BaseExceptionGroup)]
            if len(rest.exceptions) == 1 and errors:
                raise errors[0] from errors[0].__cause__
            raise
        for failure in failures:
            if isinstance(failure, ConnectionClosed):
                refused = refusal(url, failure)
                if refused is not None:
                    raise refused from None
        if not await backoff.failed():
            error = failures[0]
            raise GatewayError(
                f"cannot reach {url} (tried for {backoff.give_up:g} s): {error!r}"
            ) from error


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
