"""The frames gateways exchange: MessagePack arrays, one per binary websocket message.

Every connection opens with :class:`Hello` from the client. Its first two fields never
change, so two ringflow versions can always tell each other apart and refuse politely.
Close codes in the 4000 range carry a reason meant for people: see :data:`CLOSE_CODES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

import msgspec

from .record import Columns
from .table import TableData, all_finite, pack_array, pack_values, unpack_array, unpack_values

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""The largest websocket message a node accepts (a larger one closes that connection)."""

PROTOCOL = 1
"""The wire protocol's version. Peers must speak the same one."""

try:
    SOFTWARE = version("ringflow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    SOFTWARE = "unknown"

DONE = 1000
"""The normal close: a gateway closes with it once a member's leave is recorded, or a
connection's work is done."""
UNAUTHORIZED = 4001
INCOMPATIBLE = 4002
MALFORMED = 4003
NOT_FOUND = 4004
SHUTTING_DOWN = 4005
DISAGREEMENT = 4006
IDLE_MEMBER = 4007
DUPLICATE = 4008
CLOSE_CODES = {
    UNAUTHORIZED: "missing or wrong token",
    INCOMPATIBLE: "the peer speaks another protocol version",
    MALFORMED: "a frame could not be decoded or broke the protocol",
    NOT_FOUND: "no such topic, group or endpoint on this node",
    SHUTTING_DOWN: "the node is stopping",
    DISAGREEMENT: "the nodes run different topologies, seeds or numbers of events",
    IDLE_MEMBER: "a group member asked for nothing for a session timeout: it lost its partitions",
    DUPLICATE: "another connection of the same producer is open: each node runs once",
}
"""ringflow's close codes and what they mean; the close reason adds the details."""

MAX_NAME = 200
"""The longest topic, producer, member or group name a hello may carry."""

T = TypeVar("T")
Key = Union[str, int, None]  # noqa: UP007 - msgspec needs a runtime union here


class Hello(msgspec.Struct, tag="hello", array_like=True):
    """The client's first frame: who it is and what it wants."""

    protocol: int
    software: str
    role: str
    """``produce`` or ``consume``."""
    topic: str
    name: str
    """The producer's id (its numbered records are counted per id) or the member's name."""
    group: str = ""
    max_records: int = 0
    positions: list[tuple[int, int]] = []
    """A consumer's processed offsets per partition, committed before anything is delivered."""
    agreement: dict[str, str] = {}
    """What every node of one topology must agree on (see :func:`disagreement`), with the
    connecting node's name under ``node``; empty when the client has nothing to compare."""


class Welcome(msgspec.Struct, tag="welcome", array_like=True):
    """The server's answer to :class:`Hello`."""

    protocol: int
    software: str
    partitions: int
    capacity: int | None
    sequences: list[int] = []
    """For a producer: the number each partition expects next from it."""


class Batch(msgspec.Struct, Generic[T], tag="batch", array_like=True):
    """Producer to server: records ``sequence``, ``sequence + 1``, ... for one partition."""

    partition: int
    sequence: int
    keys: list[Key] | bytes
    """The keys, or the bytes of an int64 array of them."""
    values: list[T] | TableData
    """The values, or a table of them (columns as typed buffers)."""
    timestamps: list[float] | bytes
    """The timestamps, or the bytes of a float64 array of them."""


class Window(msgspec.Struct, tag="window", array_like=True):
    """Server to producer: what one partition has accepted, kept and will take."""

    partition: int
    acked: int
    """Every record numbered below this was accepted."""
    durable: int
    """Every record numbered below this is in a written checkpoint: the producer may forget it."""
    limit: int | None
    """The producer may send records numbered below this (None: no limit). This is the credit:
    the free room in the ring when the window was sent."""


class Finish(msgspec.Struct, tag="finish", array_like=True):
    """Producer to server: it has sent everything and will send no more."""

    summary: Any = None
    """What the producer says it sent (plain data), passed on to consumers with :class:`End`."""


class Finished(msgspec.Struct, tag="finished", array_like=True):
    """Server to producer: the finish is recorded."""


class Next(msgspec.Struct, tag="next", array_like=True):
    """Consumer to server: commit these offsets, then deliver the next batch."""

    offsets: list[tuple[int, int]]


class Delivery(msgspec.Struct, Generic[T], tag="delivery", array_like=True):
    """Server to consumer: a batch of records with their offsets."""

    partition: int
    base_offset: int
    keys: list[Any] | bytes
    values: list[T] | TableData
    timestamps: list[float] | bytes


class Idle(msgspec.Struct, tag="idle", array_like=True):
    """Server to consumer: nothing to deliver for a while; ask again (with fresh commits)."""


class End(msgspec.Struct, tag="end", array_like=True):
    """Server to consumer: the topic is closed and the group has had every record."""

    summaries: dict[str, Any] = {}
    """The summary of every producer of the topic, by producer id."""


class Leave(msgspec.Struct, tag="leave", array_like=True):
    """Consumer to server: commit these offsets and leave the group in good order."""

    offsets: list[tuple[int, int]]


ENCODER = msgspec.msgpack.Encoder()


def batch_frame(partition: int, sequence: int, columns: Columns) -> bytes:
    """Encode records ``sequence``, ``sequence + 1``, ... of one partition as a batch frame."""
    frame = Batch(
        partition,
        sequence,
        pack_array(columns.keys),
        pack_values(columns.values),
        pack_array(columns.timestamps),
    )
    return ENCODER.encode(frame)


def delivery_frame(batch: Any) -> bytes:
    """Encode a stored batch (a :class:`~actors.record.RecordBatch`) as a delivery frame."""
    return ENCODER.encode(
        Delivery(
            batch.partition,
            batch.base_offset,
            pack_array(batch.keys),
            pack_values(batch.values),
            pack_array(batch.timestamps),
        )
    )


def value_types(value_type: Any) -> tuple[type, ...]:
    """The event types a topic's ``value_type`` (one type, a union, or Any) names."""
    if value_type is Any:
        return ()
    if get_origin(value_type) is Union:
        return get_args(value_type)
    return (value_type,)


def frame_columns(frame: Batch[Any] | Delivery[Any], value_type: Any = Any) -> Columns:
    """The records of a batch or delivery frame as columns: typed buffers become arrays, a
    table is checked against ``value_type`` (the topic's event types) field by field.

    Raises:
        ValueError: What is wrong with a column, in words.
    """
    try:
        return Columns(
            unpack_array(frame.keys, "<i8"),
            unpack_values(frame.values, value_types(value_type)),
            unpack_array(frame.timestamps, "<f8"),
        )
    except ValueError as exc:
        raise ValueError(f"{type(frame).__name__.lower()}: {exc}") from None


def decoder(value_type: Any = Any) -> msgspec.msgpack.Decoder[Any]:
    """Return a decoder of every frame, with record values decoded as ``value_type``."""
    frames = Union[  # noqa: UP007
        Hello,
        Welcome,
        Batch[value_type],
        Window,
        Finish,
        Finished,
        Next,
        Delivery[value_type],
        Idle,
        End,
        Leave,
    ]
    return msgspec.msgpack.Decoder(frames)


DECODE_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)
"""What decoding a peer's bytes may raise: not MessagePack, not the schema, a string that is
not UTF-8, nesting too deep."""

_AT = re.compile(r" - at `\$\[(\d+)\]([^`]*)`")


def describe_decode_error(exc: Exception, data: bytes) -> str:
    """Say what is wrong with ``data`` in words: the field of the frame, not ``$[3]``."""
    if isinstance(exc, UnicodeDecodeError) or "Invalid UTF-8" in str(exc):
        # msgspec before 0.23 raised UnicodeDecodeError; 0.23 raises its own DecodeError.
        return "a string is not valid UTF-8"
    if isinstance(exc, RecursionError):
        return "values nested too deep"
    message = str(exc)
    match = _AT.search(message)
    if match is None:
        return message
    kind = _FRAMES.get(_tag_of(data))
    index = int(match.group(1)) - 1  # index 0 is the tag
    if kind is None or not 0 <= index < len(kind.__struct_fields__):
        return message
    field = kind.__struct_fields__[index] + match.group(2)
    return f"{message[: match.start()]} - in {field}{message[match.end() :]}"


def _tag_of(data: bytes) -> Any:
    try:
        raw = msgspec.msgpack.decode(data)
    except DECODE_ERRORS:
        return None
    return raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], str) else None


def check_hello(data: bytes | str) -> tuple[int, str] | None:
    """Return (protocol, software) from a frame that starts like :class:`Hello`, else None.

    Read without the full schema, so that a peer of another version is named, not garbled.
    """
    if isinstance(data, str):
        return None
    try:
        raw = msgspec.msgpack.decode(data)
    except DECODE_ERRORS:
        return None
    if (
        isinstance(raw, list)
        and len(raw) >= 3
        and raw[0] == "hello"
        and isinstance(raw[1], int)
        and isinstance(raw[2], str)
    ):
        return raw[1], raw[2]
    return None


def incompatible(theirs: tuple[int, str]) -> str:
    """The close reason for a peer of another protocol version (both versions named)."""
    return (
        f"incompatible ringflow: peer {theirs[1]} speaks protocol {theirs[0]}, "
        f"this node {SOFTWARE} speaks {PROTOCOL}"
    )[:120]


_FRAMES: dict[Any, type[msgspec.Struct]] = {
    kind.__struct_config__.tag: kind
    for kind in (Hello, Welcome, Batch, Window, Finish, Finished, Next, Delivery, Idle, End, Leave)
}


def hello_problem(hello: Hello) -> str | None:
    """What is wrong with a hello that decoded, or None: names, sizes, positions."""
    if hello.role not in ("produce", "consume"):
        return f"unknown role {hello.role!r}; use produce or consume"
    for field in ("topic", "name") + (("group",) if hello.role == "consume" else ()):
        value = getattr(hello, field)
        if not value or len(value) > MAX_NAME:
            return f"hello: {field} must be 1 to {MAX_NAME} characters, got {len(value)}"
    if hello.max_records < 0:
        return f"hello: max_records must be 0 (no limit) or more, got {hello.max_records}"
    return None


def offsets_problem(offsets: list[tuple[int, int]], partitions: int, where: str) -> str | None:
    """What is wrong with (partition, offset) pairs for a topic of ``partitions``, or None."""
    for partition, offset in offsets:
        if not 0 <= partition < partitions:
            return f"{where}: no partition {partition} (the topic has {partitions})"
        if offset < 0:
            return f"{where}: offset {offset} of partition {partition} is negative"
    return None


def batch_problem(batch: Batch[Any], columns: Columns, partitions: int) -> str | None:
    """What is wrong with a decoded batch (and its :func:`frame_columns`) for a topic of
    ``partitions``, or None.

    Checked before a record of it touches a ring: the partition exists, the sequence number
    is not negative, the three columns are equally long, and timestamps are finite.
    """
    if not 0 <= batch.partition < partitions:
        return f"batch: no partition {batch.partition} (the topic has {partitions})"
    if batch.sequence < 0:
        return f"batch: sequence {batch.sequence} is negative"
    keys, values, stamps = len(columns.keys), len(columns.values), len(columns.timestamps)
    if not keys == values == stamps:
        return f"batch: {keys} keys, {values} values and {stamps} timestamps; they must match"
    if not all_finite(columns.timestamps):
        return "batch: a timestamp is not a finite number"
    return None


def disagreement(ours: Mapping[str, str], theirs: Mapping[str, str]) -> str | None:
    """Name what two nodes of one topology disagree on, with both values, or None.

    Settings only one side names are not compared; ``node`` names each side.
    """
    differ = [
        f"{name} ({theirs[name]} vs {ours[name]})"
        for name in ("seed", "events", "plans", "topology")
        if name in ours and name in theirs and ours[name] != theirs[name]
    ]
    if not differ:
        return None
    both = f"{theirs.get('node', 'the peer')} and {ours.get('node', 'this node')}"
    return f"nodes {both} disagree on {', '.join(differ)}"
