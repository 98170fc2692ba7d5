"""The messages waiting for one connected client: bounded, never slowing whoever puts them.

A slow client must not delay delivery to the others (seed 003). Its outbox holds at most
``capacity`` messages; when another comes to a full one, the oldest waiting is dropped and
counted, and the client is told how many it missed, in one message in their place, before
the messages that followed them. With ``on_full="close"`` a full outbox instead refuses
the message (:exc:`OutboxFull`): its owner closes the connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import attrs
import trio

from .errors import ConfigurationError, RingflowError


class OutboxFull(RingflowError):
    """A message came to a full outbox whose setting is to close the connection."""


@attrs.define(eq=False)
class Outbox:
    """Messages for one client, taken in order by :meth:`get` (see the module).

    Raises:
        ConfigurationError: ``capacity`` is below 1, or ``on_full`` is neither setting.
    """

    capacity: int
    on_full: Literal["skip", "close"] = "skip"
    skipped: int = 0
    """Messages dropped since the client was last told (the notice it gets next)."""
    skipped_total: int = 0
    """Messages dropped in all."""
    peak: int = 0
    """The most messages that waited at once."""
    _waiting: deque[Any] = attrs.field(factory=deque)
    _ready: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        if self.capacity < 1:
            raise ConfigurationError(f"an outbox holds at least 1 message, got {self.capacity}")
        if self.on_full not in ("skip", "close"):
            raise ConfigurationError(f"on_full {self.on_full!r}: expected 'skip' or 'close'")

    def __len__(self) -> int:
        return len(self._waiting) + (1 if self.skipped else 0)

    def put(self, message: Any) -> None:
        """Add ``message`` without waiting, dropping the oldest waiting if it is full.

        Raises:
            OutboxFull: It is full and set to close (nothing was dropped).
        """
        if len(self._waiting) >= self.capacity:
            if self.on_full == "close":
                raise OutboxFull(f"the client's outbox is full ({self.capacity:,} messages)")
            self._waiting.popleft()
            self.skipped += 1
            self.skipped_total += 1
        self._waiting.append(message)
        self.peak = max(self.peak, len(self._waiting))
        self._ready.set()

    async def get(self) -> Any:
        """The next message, waiting for one: ``{"type": "skipped", "count": n}`` first when
        messages were dropped since the last."""
        while not self._waiting and not self.skipped:
            self._ready = trio.Event()
            await self._ready.wait()
        if self.skipped:
            count, self.skipped = self.skipped, 0
            return {"type": "skipped", "count": count}
        return self._waiting.popleft()
