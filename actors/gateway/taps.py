"""Taps on ``/tap/TOPIC``: a topic's records as JSON text for any websocket client.

A tap reads partitions without touching the commits of consumer groups; one opened with
``hold=true`` registers a group of its own, so records wait for it as for a real group.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import attrs
import msgspec
import trio
from trio_websocket import WebSocketConnection

from ..partition import Partition
from ..table import as_list
from ..topic import Topic
from ..wire import MALFORMED, NOT_FOUND
from .endpoint import Refusal

TAP_BATCH = 500
"""The most records in one tap message."""
TAP_PARAMETERS = ("partition", "from", "hold", "token")
"""The query parameters a tap understands."""

_JSON = msgspec.json.Encoder()

WHOLE_SEND_SECONDS = 5.0
"""How long a tap message may take to send once begun, even while the node stops."""


async def _send_whole(ws: WebSocketConnection, text: str) -> None:
    # A send cut by a cancel (the node stopping) would leave part of the message on the wire,
    # and the tap would read the close frame that follows as the rest of it (invalid UTF-8):
    # a message once begun is finished, for a few seconds at most.
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + WHOLE_SEND_SECONDS
        await ws.send_message(text)
    await trio.lowlevel.checkpoint_if_cancelled()


@attrs.frozen
class TapEndpointStatistics:
    """A snapshot of a gateway's taps, as :meth:`TapEndpoint.statistics` returns it."""

    opened: int
    """Taps opened so far."""
    streaming: int
    """Taps streaming now."""
    holding: int
    """Of those, the taps opened with ``hold=true``: the node waits for them."""


@attrs.define(eq=False)
class TapEndpoint:
    """Serves taps on the topics a gateway hosts."""

    topics: Mapping[str, Topic]
    _taps: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    _opened: int = attrs.field(init=False, default=0)
    _streaming: int = attrs.field(init=False, default=0)
    _holding: int = attrs.field(init=False, default=0)
    """Taps with ``hold=true`` still streaming: like consumer groups, the node waits for them."""

    @property
    def holding(self) -> bool:
        """Whether a tap opened with ``hold=true`` is still streaming."""
        return bool(self._holding)

    def statistics(self) -> TapEndpointStatistics:
        """Return a snapshot of the taps opened and streaming."""
        return TapEndpointStatistics(
            opened=self._opened, streaming=self._streaming, holding=self._holding
        )

    async def serve(self, ws: WebSocketConnection, topic_name: str, query: str) -> None:
        """Stream ``topic_name`` to ``ws`` as the tap's ``query`` asks, until its end.

        Raises:
            Refusal: No such topic here, or the query is wrong.
        """
        topic = self.topics.get(topic_name)
        if topic is None:
            raise Refusal(NOT_FOUND, f"this node hosts no topic {topic_name!r}")
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
        self._opened += 1
        self._streaming += 1
        self._holding += hold
        try:
            await self._stream(ws, topic.name, partitions, offsets, lot, tap_group, hold)
        finally:
            self._streaming -= 1
            self._holding -= hold
            for partition in partitions:
                partition.remove_listener(lot)
                if hold:
                    partition.unregister_group(tap_group)

    async def _stream(
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
                    await _send_whole(ws, _JSON.encode(message).decode())
                    progressed = True
                    continue  # the ring may have moved on again while that was sent
                batch = partition.read(offset, TAP_BATCH)
                if batch is None:
                    continue
                progressed = True
                records = [
                    {"offset": batch.base_offset + i, "key": k, "timestamp": t, "value": _plain(v)}
                    for i, (k, v, t) in enumerate(
                        zip(
                            as_list(batch.keys),
                            as_list(batch.values),
                            as_list(batch.timestamps),
                            strict=True,
                        )
                    )
                ]
                message = {"type": "records", "topic": topic, "partition": index}
                await _send_whole(ws, _JSON.encode({**message, "records": records}).decode())
                offsets[index] = batch.next_offset
                if hold and batch.next_offset > partition.start_offset:
                    partition.commit(tap_group, batch.next_offset)
            if progressed:
                continue
            if all(p.closed and offsets[p.index] >= p.end_offset for p in partitions):
                await _send_whole(ws, _JSON.encode({"type": "end", "topic": topic}).decode())
                return
            await lot.park()


def _tap_options(query: str, topic: Topic) -> tuple[list[int] | None, str, bool]:
    # A tap's query parameters: (partitions or None for all, from, hold). Each mistake is
    # refused with what was wrong and what is expected.
    given: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in TAP_PARAMETERS:
            raise Refusal(
                MALFORMED, f"unknown parameter {name!r}; a tap takes {', '.join(TAP_PARAMETERS)}"
            )
        if name in given:
            raise Refusal(MALFORMED, f"parameter {name!r} given twice")
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
            raise Refusal(
                MALFORMED,
                f"partition={text}: topic {topic.name!r} has partitions 0 to {last}",
            )
        indexes = [number]
    start = given.get("from", "latest")
    if start not in ("earliest", "latest") and _whole(start) is None:
        raise Refusal(
            MALFORMED, f"from={start}: expected earliest, latest or an offset (0 or more)"
        )
    hold = given.get("hold", "false")
    if hold not in ("true", "false"):
        raise Refusal(MALFORMED, f"hold={hold}: expected true or false")
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
