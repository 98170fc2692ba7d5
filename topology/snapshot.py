"""Snapshots: one versioned msgspec ``Struct`` per kind of state an epoch saves.

An epoch is a set of parts, each stored under (kind, name), such as ``("partition",
"events/0")`` or ``("processor", "video-stats")``. Every kind has one ``Struct`` here, encoded
as a MessagePack map with its field names and the version ``v`` of its layout: capture writes
it, restore reads it, and ``ringflow checkpoints`` describes it with :func:`describe_part`, all
through the same class.

Each kind decodes as its one class: a part that says another ``v``, lacks a required field or
has one of another type is "not what this part holds", and is refused as damage (restoring it
raises :class:`DamagedEpoch`, and its epoch is passed over), never misread. Old layouts are
not kept: a new layout of a kind is a new ``Struct`` with the next ``v``, and the store's
``SCHEMA_VERSION`` is raised with it, so a store of the old layout is refused as a whole, with
a message that says why, before any of its parts is read.

Every object whose state an epoch keeps has the :class:`Stateful` interface: ``capture()``
gives its part, ``restore(part)`` takes one back. What a processor or a workload keeps is
theirs to define, as the versioned :class:`~topology.State` their type declares
(``state_type``): :class:`ProcessorPart` and :class:`ProducerPart` carry its bytes unread, and
only that type decodes them, under the same rules.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

import attrs
import msgspec

from actors import (
    Columns,
    GatewayCheckpoint,
    Key,
    Partition,
    PartitionState,
    RecordBatch,
    RemotePartitionState,
    RemoteTopicState,
    TableData,
    all_finite,
    pack_array,
    pack_values,
    unpack_array,
    unpack_values,
    value_types,
)

from .integrity import DamagedEpoch
from .registry import Processor, State

V = TypeVar("V")
P = TypeVar("P", bound="Part")
S = TypeVar("S", bound=State)


class Part(msgspec.Struct, frozen=True, kw_only=True, tag_field="v"):
    """One kind of state in an epoch; ``v`` is the version of its layout."""


class StoredBatch(msgspec.Struct, Generic[V], frozen=True):
    """A batch held in a partition's ring: keys and timestamps as lists or the bytes of an
    array, values as a list or a table (see :mod:`actors.table`)."""

    base_offset: int
    keys: list[Key] | bytes
    values: list[V] | TableData
    timestamps: list[float] | bytes

    @classmethod
    def of(cls, base_offset: int, columns: Columns | RecordBatch) -> StoredBatch[Any]:
        """The stored form of ``columns`` from ``base_offset`` on."""
        return StoredBatch(
            base_offset,
            pack_array(columns.keys),
            pack_values(columns.values),
            pack_array(columns.timestamps),
        )

    def columns(self, value_type: Any) -> Columns:
        """The records as columns; a table is checked against ``value_type``.

        Raises:
            ValueError: A column is not what it should be.
        """
        return Columns(
            unpack_array(self.keys, "<i8"),
            unpack_values(self.values, value_types(value_type)),
            unpack_array(self.timestamps, "<f8"),
        )


class PartitionPart(Part, Generic[V], frozen=True, tag=1):
    """A partition: its offsets, each group's commit, the records it holds, and the
    sequence numbers of producers on other nodes (what makes their resends idempotent)."""

    start_offset: int
    end_offset: int
    committed: dict[str, int]
    peak_depth: int
    batches: list[StoredBatch[V]]
    sequences: dict[str, int] = {}

    @classmethod
    def of(cls, state: PartitionState) -> PartitionPart[Any]:
        """The part of a partition's :meth:`~actors.Partition.snapshot`."""
        return PartitionPart(
            start_offset=state.start_offset,
            end_offset=state.end_offset,
            committed=state.committed,
            peak_depth=state.peak_depth,
            batches=[StoredBatch.of(b.base_offset, b) for b in state.batches],
            sequences=state.sequences,
        )

    def state(self, topic: str, index: int, value_type: Any = Any) -> PartitionState:
        """What :meth:`~actors.Partition.restore` takes, for partition ``index`` of ``topic``
        whose values are ``value_type``.

        Raises:
            ValueError: A batch's columns are not what they should be.
        """
        if not 0 <= self.start_offset <= self.end_offset:
            raise ValueError(f"offsets {self.start_offset} to {self.end_offset} are not a range")
        if any(not 0 <= offset <= self.end_offset for offset in self.committed.values()):
            raise ValueError(f"a group's commit lies beyond the end {self.end_offset}")
        batches = []
        at = None
        for b in self.batches:
            columns = b.columns(value_type)
            count = len(columns.values)
            if not count or not count == len(columns.keys) == len(columns.timestamps):
                raise ValueError(
                    f"a batch of {len(columns.keys)} keys, {count} values and "
                    f"{len(columns.timestamps)} timestamps"
                )
            if not all_finite(columns.timestamps):
                raise ValueError("a timestamp is not a finite number")
            if at is not None and b.base_offset != at:
                raise ValueError(
                    f"a batch starts at {b.base_offset}, not {at} where the last ended"
                )
            at = b.base_offset + count
            batches.append(
                RecordBatch(
                    topic, index, b.base_offset, columns.keys, columns.values, columns.timestamps
                )
            )
        if batches and (at != self.end_offset or batches[0].base_offset > self.start_offset):
            raise ValueError(
                f"the batches hold offsets {batches[0].base_offset} to {at}, not the records "
                f"from {self.start_offset} to {self.end_offset}"
            )
        return PartitionState(
            self.start_offset,
            self.end_offset,
            dict(self.committed),
            batches,
            self.peak_depth,
            dict(self.sequences),
        )


class ProcessorPart(Part, frozen=True, tag=1):
    """A processor's state: its :class:`~topology.State`, kept as encoded (opaque here)."""

    state: msgspec.Raw

    @classmethod
    def of(cls, state: State) -> ProcessorPart:
        """The part of what a processor's ``snapshot()`` gave."""
        return ProcessorPart(state=_raw(state))

    def state_as(self, state_type: type[S]) -> S:
        """The state, decoded as the processor's type declares it.

        Raises:
            msgspec.ValidationError: It is not a ``state_type`` (another shape or version).
        """
        return _decode_state(self.state, state_type)


class ConsumerTallyPart(Part, frozen=True, tag=1):
    """What a consumer has processed and checked (see ``ConsumerTally``)."""

    records: int
    per_topic: dict[str, int]
    seq_sums: dict[str, list[int]]
    order_violations: int
    first_violation: str | None
    strangers: dict[str, int]
    latency: list[tuple[int, int]]
    """(bucket, records) pairs of the latency sample."""
    last_seq: list[tuple[str, int, list[int]]]
    """(topic, partition, last sequence number per source) of the order check."""
    key_partition: dict[str, list[tuple[Key, int]]]
    """Empty: where each key was seen, as epochs written before the per-key check took its
    partition from the key alone (ignored when restored)."""
    key_table: dict[str, bytes] = {}
    """Empty likewise (ignored when restored)."""


class TopicTallyPart(Part, frozen=True, tag=1):
    """What producers got accepted into one topic (see ``TopicTally``)."""

    records: int
    seq_sums: dict[int, int]
    kinds: dict[str, int]


class TopicSummary(msgspec.Struct, frozen=True, array_like=True):
    """What one producer instance says it sent to a topic, as nodes pass it on.

    This travels in the gateways' frames, which are MessagePack arrays: it keeps their
    positional layout, checked field by field when it arrives.
    """

    records: int
    seq_sums: list[tuple[int, int]]
    kinds: dict[str, int]


class ProducerPart(Part, frozen=True, tag=1):
    """Where a producer instance is: events made, its workload's position (a
    :class:`~topology.State`, kept as encoded: opaque here), the records it made that no
    partition had accepted yet (by stream, one list of batches per partition, kept as
    encoded), and on a node of a split topology what it sent to each topic."""

    done: int
    workload: msgspec.Raw
    sent: dict[str, TopicTallyPart] = {}
    buffered: dict[str, msgspec.Raw] = {}

    @classmethod
    def of(
        cls,
        done: int,
        position: State,
        sent: dict[str, TopicTallyPart],
        buffered: Mapping[str, Sequence[Sequence[Columns]]] | None = None,
    ) -> ProducerPart:
        """The part of a producer instance that made ``done`` events, whose workload gave
        ``position``, with ``buffered`` records by stream (see
        :meth:`~actors.Producer.buffered`)."""
        return ProducerPart(
            done=done,
            workload=_raw(position),
            sent=sent,
            buffered={
                stream: msgspec.Raw(
                    _ENCODER.encode([[StoredBatch.of(0, c) for c in part] for part in parts])
                )
                for stream, parts in (buffered or {}).items()
                if any(parts)
            },
        )

    def position_as(self, state_type: type[S]) -> S:
        """The workload's position, decoded as the workload's type declares it.

        Raises:
            msgspec.ValidationError: It is not a ``state_type`` (another shape or version).
        """
        return _decode_state(self.workload, state_type)

    def buffered_as(self, stream: str, value_type: Any) -> list[list[Columns]]:
        """The records of ``stream`` no partition had accepted, for a topic of ``value_type``.

        Raises:
            msgspec.ValidationError, ValueError: They are not what they should be.
        """
        raw = self.buffered.get(stream)
        if raw is None:
            return []
        parts = _buffered_decoder(value_type).decode(raw)
        return [[batch.columns(value_type) for batch in part] for part in parts]


@functools.cache
def _buffered_decoder(value_type: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(list[list[StoredBatch[value_type]]])


class RetainedRecords(msgspec.Struct, Generic[V], frozen=True):
    """Records a producer sent to another node that the node has not made durable yet."""

    sequence: int
    keys: list[Key] | bytes
    values: list[V] | TableData
    timestamps: list[float] | bytes


class RemotePartitionPart(msgspec.Struct, Generic[V], frozen=True):
    """A producer's numbering for one partition on another node, and what it keeps to resend."""

    next_sequence: int
    retained: list[RetainedRecords[V]]


class RemoteTopicPart(Part, Generic[V], frozen=True, tag=1):
    """A producer's link to a topic on another node."""

    partitions: list[RemotePartitionPart[V]]
    finished: bool = False
    """Whether the other node had recorded the producer's finish."""

    @classmethod
    def of(cls, state: RemoteTopicState) -> RemoteTopicPart[Any]:
        """The part of a :meth:`~actors.RemoteTopic.snapshot`."""
        return RemoteTopicPart(
            partitions=[
                RemotePartitionPart(
                    next_sequence=partition.next_sequence,
                    retained=[
                        RetainedRecords(
                            sequence=sequence,
                            keys=pack_array(columns.keys),
                            values=pack_values(columns.values),
                            timestamps=pack_array(columns.timestamps),
                        )
                        for sequence, columns in partition.retained
                    ],
                )
                for partition in state.partitions
            ],
            finished=state.finished,
        )

    def state(self, value_type: Any = Any) -> RemoteTopicState:
        """What :meth:`~actors.RemoteTopic.restore` takes, for a topic of ``value_type``.

        Raises:
            ValueError: Retained records are not what they should be.
        """
        return RemoteTopicState(
            tuple(
                RemotePartitionState(
                    partition.next_sequence,
                    tuple(
                        (
                            r.sequence,
                            Columns(
                                unpack_array(r.keys, "<i8"),
                                unpack_values(r.values, value_types(value_type)),
                                unpack_array(r.timestamps, "<f8"),
                            ),
                        )
                        for r in partition.retained
                    ),
                )
                for partition in self.partitions
            ),
            finished=self.finished,
        )


class MemberPart(Part, frozen=True, tag=1):
    """Per partition, the offset that consumers here processed up to, of a group on another
    node; whether every member here was told the group had every record, and what its
    producers then said they sent."""

    processed: dict[int, int]
    ended: bool = False
    summaries: dict[str, Any] = {}


class GatewayPart(Part, frozen=True, tag=1):
    """A node's gateway: the producers on other nodes that finished, and what each sent;
    the members on other nodes that left."""

    finished: list[tuple[str, str]]
    """(topic, producer id) pairs."""
    summaries: dict[str, dict[str, TopicSummary]]
    """Per topic and producer id."""
    left: list[tuple[str, str, str]] = []
    """(group, topic, member) of each member that left (none in an epoch from before)."""

    @classmethod
    def of(cls, state: GatewayCheckpoint) -> GatewayPart:
        """The part of a :meth:`~actors.Gateway.snapshot`.

        Raises:
            msgspec.ValidationError: A summary is not a :class:`TopicSummary`.
        """
        return GatewayPart(
            finished=list(state.finished),
            summaries=msgspec.convert(state.summaries, dict[str, dict[str, TopicSummary]]),
            left=list(state.left),
        )

    def state(self) -> GatewayCheckpoint:
        """What :meth:`~actors.Gateway.restore` takes."""
        return GatewayCheckpoint(
            finished=tuple(self.finished),
            summaries={topic: dict(by) for topic, by in self.summaries.items()},
            left=tuple(self.left),
        )


class ClockPart(Part, frozen=True, tag=1):
    """The run's clock at the snapshot: simulated time, and event time (seconds since the
    run's origin, continuous across resumes)."""

    sim_time: float
    event_time: float


class IntakePart(Part, frozen=True, tag=1):
    """Where the HTTP intake of a served topology is: the sequence number of its next event."""

    seq: int = msgspec.field(default=0)


KINDS: Mapping[str, type[Part]] = {
    "partition": PartitionPart,
    "processor": ProcessorPart,
    "consumer": ConsumerTallyPart,
    "topic": TopicTallyPart,
    "producer": ProducerPart,
    "remote": RemoteTopicPart,
    "member": MemberPart,
    "gateway": GatewayPart,
    "run": ClockPart,
    "intake": IntakePart,
}
"""The class of each kind of part."""

GENERIC_KINDS = frozenset({"partition", "remote"})
"""Kinds whose parts hold records, decoded to the value type of their topic."""


class Stateful(Protocol[P]):
    """Something whose state an epoch keeps as one part."""

    def capture(self) -> P | None:
        """Return the state as its part; None when there is nothing to keep."""
        ...

    def restore(self, state: P) -> None:
        """Take back a part that :meth:`capture` gave."""
        ...


@attrs.define(eq=False)
class PartitionContents:
    """A partition's part of an epoch: what :class:`PartitionPart` holds."""

    partition: Partition
    topic: str
    value_type: Any = Any
    """The type of the topic's values (a table of another type is refused)."""

    def capture(self) -> PartitionPart[Any]:
        """Offsets, commits, the records held and the producers' sequence numbers."""
        return PartitionPart.of(self.partition.snapshot())

    def restore(self, state: PartitionPart[Any]) -> None:
        """Take them back; only on a fresh partition."""
        self.partition.restore(state.state(self.topic, self.partition.index, self.value_type))


@attrs.define(eq=False)
class ProcessorState:
    """A processor's part of an epoch: its own state, as the type it declares."""

    processor: Processor
    state_type: type[State]
    """The processor type's ``state_type``."""

    def capture(self) -> ProcessorPart:
        """What the processor's ``snapshot()`` gives."""
        return ProcessorPart.of(self.processor.snapshot())

    def restore(self, state: ProcessorPart) -> None:
        """Decode the state as :attr:`state_type` and hand it to the processor's
        ``restore()``.

        Raises:
            msgspec.ValidationError: The part holds no ``state_type``.
        """
        self.processor.restore(state.state_as(self.state_type))


@contextmanager
def restoring(kind: str, name: str) -> Iterator[None]:
    """Report a part that fails to decode or to restore as :class:`DamagedEpoch`.

    Its checksum matched, so it was written so: the bytes are not what its reader expects.
    """
    try:
        yield
    except (
        msgspec.DecodeError,
        KeyError,
        IndexError,
        TypeError,
        ValueError,
        AttributeError,
    ) as exc:
        raise DamagedEpoch(
            None, f"{kind}/{name}", f"cannot be restored ({type(exc).__name__}: {exc})"
        ) from None


_ENCODER = msgspec.msgpack.Encoder()


def encode(part: Part) -> bytes:
    """The bytes an epoch stores for ``part``."""
    return _ENCODER.encode(part)


def _raw(state: State) -> msgspec.Raw:
    return msgspec.Raw(_ENCODER.encode(state))


@functools.cache
def _state_decoder(state_type: type[State]) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(state_type)


def _decode_state(raw: msgspec.Raw, state_type: type[S]) -> S:
    return _state_decoder(state_type).decode(raw)  # type: ignore[no-any-return]


@functools.cache
def _decoder(kind: str, value_type: Any) -> msgspec.msgpack.Decoder[Any]:
    cls: Any = KINDS[kind]
    return msgspec.msgpack.Decoder(cls[value_type] if kind in GENERIC_KINDS else cls)


def decode(kind: str, data: bytes, value_type: Any = Any) -> Part:
    """Decode a part of ``kind``; records in it decode to ``value_type``.

    Raises:
        KeyError: ``kind`` is no kind of part.
        msgspec.DecodeError: The bytes are not such a part.
    """
    return _decoder(kind, value_type).decode(data)  # type: ignore[no-any-return]


def restore_parts(
    states: Mapping[tuple[str, str], Stateful[Any]],
    parts: Mapping[tuple[str, str], bytes],
    value_type: Mapping[tuple[str, str], Any] | None = None,
) -> None:
    """Restore each of ``states`` whose part is among ``parts``; other parts are left alone.

    Raises:
        DamagedEpoch: A part does not decode to its kind, or its owner refuses it.
    """
    for key, state in states.items():
        data = parts.get(key)
        if data is None:
            continue
        kind, name = key
        with restoring(kind, name):
            state.restore(decode(kind, data, (value_type or {}).get(key, Any)))


def capture_parts(states: Mapping[tuple[str, str], Stateful[Any]]) -> dict[tuple[str, str], bytes]:
    """The encoded parts of ``states`` that have something to keep."""
    parts = {}
    for key, state in states.items():
        part = state.capture()
        if part is not None:
            parts[key] = encode(part)
    return parts
