"""Events sent by clients (over HTTP): decoded, checked against their types, stamped, and
admitted into their topics all at once or not at all.

A client sends an event as a JSON object naming its kind in ``type`` and giving the fields
of the kind's event type, except the three ringflow stamps itself: ``timestamp`` (when the
event was received, on the run's clock), and ``source`` and ``seq`` (the intake's number and
the event's place in its sequence), which the ``expect`` invariants check as they check a
workload's events. A request's events are accepted together or refused together: one event
that fails its checks refuses the request (``422``, with the field's path), and a request
whose events cannot all enter their rings within ``max_wait`` is refused whole (``503``), so
a client that retries never sends an event twice.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import msgspec
import trio
from msgspec.structs import asdict, astuple

from actors import (
    Admitting,
    BatchTooLargeError,
    Columns,
    RemotePartition,
    RemoteTopic,
    RingflowError,
    Topic,
    TopicClosedError,
    admit_sized,
)

from .tally import TopicTally

_AT = re.compile(r" - at `(\$[^`]*)`$")
"""Where msgspec says a value failed its checks: only at the end of its message."""

MAX_MESSAGE = 400
"""The longest message of a refusal that quotes what the client sent."""

STAMPED = ("timestamp", "source", "seq")
"""Fields of an event type that ringflow fills in, never the client."""


class IntakeError(RingflowError):
    """A request refused: its HTTP status, a message, and what else the answer says."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def kind_of(event_type: type) -> str:
    """The kind an event type is sent as: its msgspec tag (``click``, ``video``...)."""
    tag = event_type.__struct_config__.tag  # type: ignore[attr-defined]
    assert isinstance(tag, str), f"{event_type.__name__} has no string tag"
    return tag


def input_type(event_type: type) -> type[msgspec.Struct]:
    """The JSON object a client sends for ``event_type``: its fields by name but the
    :data:`STAMPED` ones, with the same constraints, and ``type`` naming its kind; unknown
    fields are refused."""
    hints = typing.get_type_hints(event_type, include_extras=True)
    fields = [
        (name, hints[name])
        for name in event_type.__struct_fields__  # type: ignore[attr-defined]
        if name not in STAMPED
    ]
    return msgspec.defstruct(
        f"{event_type.__name__}Input",
        fields,
        tag=kind_of(event_type),
        tag_field="type",
        forbid_unknown_fields=True,
        frozen=True,
    )


@attrs.frozen
class Route:
    """Where events of one kind go."""

    event_type: type
    topic: Topic | RemoteTopic
    """The topic here, or on another node."""
    key_field: str | None
    """The field whose value is the record's key (the topic's ``key``)."""
    input: type[msgspec.Struct] = attrs.field(init=False)
    stamped_last: bool = attrs.field(init=False)
    """Whether the event type's fields are the input's then the :data:`STAMPED` ones, in
    that order: an event is then made from its input's values and the stamps in one call."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "input", input_type(self.event_type))
        fields = self.event_type.__struct_fields__  # type: ignore[attr-defined]
        object.__setattr__(
            self,
            "stamped_last",
            fields == (*self.input.__struct_fields__, *STAMPED),
        )


@attrs.frozen
class IntakeStatistics:
    """A snapshot of an :class:`Intake`."""

    accepted: int
    """Events accepted into their rings so far."""
    requests_accepted: int
    """Requests whose events were accepted."""
    refused: dict[int, int]
    """Requests refused so far, by the status they were answered with."""
    waiting: int
    """Requests waiting for room in a ring now."""


@attrs.define(eq=False)
class Intake:
    """Takes clients' events into topics.

    Args:
        routes: By kind, where its events go.
        source: The number its events carry in ``source`` (unique among the run's sources).
        now: The run's clock, in seconds of event time.
        produced: The run's tallies by topic, in which accepted events are counted.
        max_wait: Seconds a request may wait for room in a full ring before it is refused.
    """

    routes: Mapping[str, Route]
    source: int
    now: Callable[[], float]
    produced: Mapping[str, TopicTally]
    max_wait: float = 5.0
    admitted: Callable[[int], Awaitable[None]] | None = None
    """Awaited once a request's events are admitted into rings here, with the sequence
    number just past them, before the request is answered (to wait until an epoch holds
    them)."""
    durable: bool = False
    """Whether a request whose events go to topics on other nodes is answered once those
    nodes' epochs hold them, rather than once their rings do."""
    seq: int = 0
    """The sequence number the next accepted event gets."""
    _decoders: dict[str | None, msgspec.json.Decoder[Any]] = attrs.field(factory=dict)
    _accepted: int = 0
    _requests_accepted: int = 0
    _refused: dict[int, int] = attrs.field(factory=dict)
    _waiting: int = 0
    _busy: int = 0
    """Requests being taken: admitting their events, or waiting until they are held."""
    _settled: trio.Event = attrs.field(factory=trio.Event)

    def decoder(self, kind: str | None) -> msgspec.json.Decoder[Any]:
        """The decoder of a request's body: one event or a list of them, of ``kind`` or (for
        None) of any kind routed here.

        Raises:
            IntakeError: ``kind`` is not routed here (404).
        """
        decoder = self._decoders.get(kind)
        if decoder is None:
            if kind is None:
                inputs: Any = typing.Union[tuple(r.input for r in self.routes.values())]  # noqa: UP007
            elif kind in self.routes:
                inputs = self.routes[kind].input
            else:
                raise IntakeError(
                    404, f"no events of type {kind!r} are taken here", kinds=self.kinds
                )
            decoder = self._decoders[kind] = msgspec.json.Decoder(inputs | list[inputs])
        return decoder

    @property
    def kinds(self) -> list[str]:
        """The kinds taken here, sorted."""
        return sorted(self.routes)

    async def accept(self, body: bytes, kind: str | None = None) -> int:
        """Decode, check, stamp and admit the events of one request; return how many.

        Events are stamped as they are admitted, so sequence numbers follow the order in
        which requests enter the rings, and the timestamp is the moment they did.

        Args:
            body: The request's JSON: one event object or a list of them.
            kind: The kind every event must be (a typed route), or None for any kind routed
                here, named by each event's ``type``.

        Raises:
            IntakeError: The request was refused (400 malformed JSON, 404 unknown kind, 413
                more events than a ring holds, 422 an event failed its checks, 503 no room
                within ``max_wait`` or a topic closed); nothing of it was accepted.
        """
        self._busy += 1
        try:
            return await self._accept(body, kind)
        finally:
            self._busy -= 1
            if not self._busy:
                self._settled.set()
                self._settled = trio.Event()

    async def _accept(self, body: bytes, kind: str | None) -> int:
        try:
            decoded = self._decode(body, kind)
            sizes, build = self._plan(decoded)
            upto = 0

            def stamped() -> list[Columns]:
                nonlocal upto
                columns = build()
                upto = self.seq
                return columns

            firsts: list[int] = []
            with trio.move_on_after(self.max_wait) as waited:
                self._waiting += 1
                try:
                    firsts = await _admit(sizes, stamped)
                finally:
                    self._waiting -= 1
            if waited.cancelled_caught:
                raise IntakeError(
                    503,
                    f"the rings had no room for {len(decoded)} events within {self.max_wait:g} s;"
                    " nothing was accepted: retry later",
                    retry_after=max(1, math.ceil(self.max_wait)),
                )
        except IntakeError as refused:
            self.refuse(refused.status)
            raise
        self._accepted += len(decoded)
        self._requests_accepted += 1
        remote = [
            (partition, first + count)
            for (partition, count), first in zip(sizes, firsts, strict=True)
            if isinstance(partition, RemotePartition)
        ]
        for partition, end in remote:
            try:
                await partition.wait_for(end, durable=self.durable)
            except TopicClosedError as error:  # the node gave up: the run is ending
                raise IntakeError(503, f"{error}; retry later", retry_after=1) from None
        if self.admitted is not None and len(remote) < len(sizes):
            await self.admitted(upto)
        return len(decoded)

    def _decode(self, body: bytes, kind: str | None) -> list[Any]:
        decoder = self.decoder(kind)
        if not body.strip():
            raise IntakeError(400, "the request has no body; send one JSON event or an array")
        try:
            decoded = decoder.decode(body)
        except msgspec.ValidationError as error:
            message = str(error)
            found = _AT.search(message)
            if len(message) > MAX_MESSAGE:  # it quotes the value: never echo a megabyte
                message = message[: MAX_MESSAGE // 2] + " ... " + message[-MAX_MESSAGE // 4 :]
            raise IntakeError(
                422,
                f"{message}; nothing of the request was accepted",
                path=found.group(1) if found else "$",
            ) from None
        except msgspec.DecodeError as error:
            raise IntakeError(
                400, f"malformed JSON: {error}; send one JSON event or a JSON array of them"
            ) from None
        return decoded if isinstance(decoded, list) else [decoded]

    def _plan(
        self, decoded: Sequence[Any]
    ) -> tuple[list[tuple[Admitting, int]], Callable[[], list[Columns]]]:
        # Where each event goes (its key decides, and the client gave the key), and what
        # makes the records once there is room: the events stamped then.
        groups: list[tuple[Route, Sequence[tuple[int, Any]], Any]] = []
        sizes: list[tuple[Admitting, int]] = []
        by_kind: dict[str, list[tuple[int, Any]]] = {}
        for number, given in enumerate(decoded):
            by_kind.setdefault(given.__struct_config__.tag, []).append((number, given))
        for tag, items in by_kind.items():
            route = self.routes[tag]
            topic, field = route.topic, route.key_field
            if topic.closed:
                raise IntakeError(503, f"topic {topic.name!r} is closed; nothing was accepted")
            keys = [getattr(given, field) for _, given in items] if field else [None] * len(items)
            shares = topic.split(Columns(keys, items, [0.0] * len(items)))
            partitions: Sequence[Admitting] = topic.partitions
            for partition, share in zip(partitions, shares, strict=True):
                if len(share):
                    sizes.append((partition, len(share)))
                    groups.append((route, share.values, share.keys))

        def build() -> list[Columns]:
            now, first = self.now(), self.seq
            self.seq += len(decoded)
            built: list[Columns] = []
            counted: dict[str, list[Any]] = {}
            source = self.source
            for route, items, keys in groups:
                make = route.event_type
                if route.stamped_last:  # by position: three times faster than by name
                    events = [
                        make(*astuple(given), now, source, first + number)
                        for number, given in items
                    ]
                else:
                    events = [
                        make(**asdict(given), timestamp=now, source=source, seq=first + number)
                        for number, given in items
                    ]
                built.append(Columns(keys, events, [now] * len(events)))
                counted.setdefault(route.topic.name, []).extend(events)
            for topic, events in counted.items():
                self.produced[topic].count(self.source, events, sum(e.seq for e in events))
            return built

        return sizes, build

    def refuse(self, status: int) -> None:
        """Count a request of events refused before it reached the intake (by the API: a
        missing token, a body that is not JSON, a service stopping), as its own refusals
        are counted."""
        self._refused[status] = self._refused.get(status, 0) + 1

    async def settled(self) -> None:
        """Return once no request is being taken (waiting for room in a ring, or until what
        it admitted is held as its answer requires)."""
        while self._busy:
            await self._settled.wait()

    def statistics(self) -> IntakeStatistics:
        """Return a snapshot of the intake's counters."""
        return IntakeStatistics(
            accepted=self._accepted,
            requests_accepted=self._requests_accepted,
            refused=dict(self._refused),
            waiting=self._waiting,
        )


async def _admit(
    sizes: list[tuple[Admitting, int]], build: Callable[[], list[Columns]]
) -> list[int]:
    # admit_sized, its errors as refusals: nothing of the request was accepted.
    try:
        return await admit_sized(sizes, build)
    except TopicClosedError as error:
        raise IntakeError(503, f"{error}; nothing was accepted") from None
    except BatchTooLargeError as error:
        raise IntakeError(413, f"{error}; nothing was accepted") from None
