"""What the gateway's endpoints share: refusals with a close code, frames, closing."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set
from typing import Any, Protocol

import attrs
import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..wire import DECODE_ERRORS, MALFORMED, decoder, describe_decode_error


class Settings(Protocol):
    """The settings of a gateway its endpoints read each time they use one (a gateway's
    settings may change after it is made, before it serves)."""

    @property
    def durable_only(self) -> bool:
        """Producers may forget records, and members leave, only once an epoch holds
        them."""
        ...

    @property
    def summary_type(self) -> Any:
        """The type a producer's summary must convert to."""
        ...

    @property
    def linger(self) -> float:
        """Seconds a node whose work is done waits for a peer that may not have had its last
        answer."""
        ...

    @property
    def on_accepted(self) -> Callable[[], None] | None:
        """Called when a remote producer's records are accepted into a ring."""
        ...

    @property
    def session_timeout(self) -> float:
        """Seconds a remote member may be away, or silent, before it loses its partitions."""
        ...


class Refusal(Exception):
    """A connection the gateway closes with one of ringflow's close codes and a reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]  # a close reason must fit in 123 bytes


@attrs.define(eq=False)
class Signal:
    """Wakes its waiters whenever something they watch may have changed."""

    _event: trio.Event = attrs.field(factory=trio.Event)

    def set(self) -> None:
        """Wake every waiter now, or the next one to wait if none waits."""
        self._event.set()

    async def wait(self) -> None:
        """Wait until :meth:`set` has been called since the last wait returned."""
        event = self._event
        await event.wait()
        # Only the first waiter to wake starts a new round: one that wakes later must not
        # replace the event that a faster one waits on again, or a set meant for it is lost.
        if self._event is event:
            self._event = trio.Event()


@attrs.define(eq=False)
class FrameReader:
    """Reads ``/node`` frames, decoding each topic's record values to its type."""

    value_types: Mapping[str, Any]
    """Per topic, the type record values decode to (default: plain data)."""
    _decoders: dict[str, msgspec.msgpack.Decoder[Any]] = attrs.field(factory=dict)

    def decoder(self, topic: str) -> msgspec.msgpack.Decoder[Any]:
        """The decoder of frames about ``topic``."""
        found = self._decoders.get(topic)
        if found is None:
            found = self._decoders[topic] = decoder(self.value_types.get(topic, Any))
        return found

    async def receive(self, ws: WebSocketConnection, topic: str) -> Any:
        """Return the next frame about ``topic``.

        Raises:
            Refusal: The frame is text, or does not decode (close code 4003).
        """
        data = await ws.get_message()
        if isinstance(data, str):
            raise Refusal(MALFORMED, "text frame on /node; frames are binary MessagePack")
        try:
            return self.decoder(topic).decode(data)
        except DECODE_ERRORS as exc:
            raise Refusal(
                MALFORMED, f"malformed frame: {describe_decode_error(exc, data)}"
            ) from None


def peer(ws: WebSocketConnection) -> str:
    """Who is at the other end of ``ws``, for messages."""
    try:
        return str(ws.remote)
    except OSError:  # the socket is closed already
        return "a peer that left"


def gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection closed, in one task or in several at once."""
    if isinstance(exc, BaseExceptionGroup):
        return all(gone(e) for e in exc.exceptions)
    return isinstance(exc, (ConnectionClosed, trio.BrokenResourceError))


async def close(ws: WebSocketConnection, code: int, reason: str, wait: float = 2) -> bool:
    """Send the close frame at once, then wait up to ``wait`` seconds for the peer's answer
    (which needs this connection's reader: a node that is stopping does not wait); return
    whether the peer answered, so surely had every frame before the close."""
    try:
        with trio.move_on_after(wait) as waited:
            await ws.aclose(code, reason)
    except Exception:  # the peer may be gone already
        return False
    # The peer's answer echoes the code and the reason; a connection that broke after the
    # close was sent keeps the code alone (trio-websocket notes the close as it sends it).
    closed = ws.closed
    return (
        not waited.cancelled_caught
        and closed is not None
        and (closed.code, closed.reason) == (code, reason)
    )


ABNORMAL = 1006
"""The close code of a connection that broke without a closing handshake."""


@attrs.define(eq=False)
class Owed:
    """Peers that may not have had their last answer: a producer told its finish is
    recorded, a member told its leave is, when the connection then broke. A node whose work
    is done waits for them to come back and ask again, for a while (it cannot know whether
    the answer reached them)."""

    _until: dict[tuple[str, ...], float] = attrs.field(factory=dict)
    _later: set[tuple[str, ...]] = attrs.field(factory=set)

    def owe(self, key: tuple[str, ...], grace: float) -> None:
        """``key`` may come back within ``grace`` seconds."""
        self._until[key] = trio.current_time() + grace

    def later(self, keys: Set[tuple[str, ...]]) -> None:
        """Each of ``keys`` may come back within the grace :meth:`start` gives."""
        self._later |= keys

    def start(self, grace: float) -> None:
        """Owe what :meth:`later` noted, from now on for ``grace`` seconds."""
        for key in self._later:
            if key not in self._until:
                self.owe(key, grace)
        self._later.clear()

    def back(self, key: tuple[str, ...]) -> None:
        """``key`` had its answer: it is not waited for any more."""
        self._until.pop(key, None)
        self._later.discard(key)

    def owes(self, key: tuple[str, ...]) -> bool:
        """Whether ``key`` may still come back for its answer."""
        return key in self._later or self._until.get(key, -math.inf) > trio.current_time()

    @property
    def owing(self) -> bool:
        """Whether some peer may still come back for its answer."""
        now = trio.current_time()
        return any(until > now for until in self._until.values())
