"""Records, the batches that carry them, and the msgspec codec for batches on the hot path."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import attrs
import msgspec
import numpy as np
import numpy.typing as npt

from .table import (
    TableData,
    as_list,
    pack_array,
    pack_values,
    same,
    unpack_array,
    unpack_values,
)

Key: TypeAlias = str | int | None
"""What a record may be keyed by. Records with equal keys land on the same partition."""
Column: TypeAlias = Sequence[Any] | npt.NDArray[Any]
"""A column of a batch: a list, or a numpy array (int keys, float timestamps), or a
:class:`~actors.table.Table` of values."""


@attrs.frozen
class Record:
    """One event, as a producer sends it.

    Records are built once per event, so they carry only what a producer knows; where a record
    was stored is in its :class:`RecordBatch`, and a consumer reading record by record gets
    :class:`StoredRecord`, which adds it.

    Attributes:
        key: What the record is partitioned by, or None to spread records round robin.
        value: The payload: anything msgspec can encode (numbers, strings, lists, dicts,
            attrs classes, msgspec structs).
        timestamp: When the event happened, in seconds of the run's clock.
    """

    key: Key
    value: Any
    timestamp: float = 0.0


@attrs.frozen
class StoredRecord(Record):
    """A record as a consumer sees it: with the topic, partition and offset it was stored at.

    Attributes:
        topic: The topic it was stored in.
        partition: The partition it was stored in.
        offset: Its offset in that partition.
    """

    topic: str = ""
    partition: int = 0
    offset: int = 0


_BY_VALUES = attrs.cmp_using(eq=same, require_same_type=False)
"""Columns compare by their values, whatever their forms (lists, arrays, tables)."""
_INT64 = np.dtype("<i8")
_FLOAT64 = np.dtype("<f8")


def _keys(keys: Any) -> Any:
    # An array of keys is int64, as partitioners, tallies and the encoded forms expect; other
    # ints become int64 when they fit, anything else (strings, floats, numpy scalars) a list
    # of Python objects.
    if not isinstance(keys, np.ndarray) or keys.dtype == _INT64:
        return keys
    if keys.dtype.kind in "iu" and (
        not len(keys) or (int(keys.min()) >= -(2**63) and int(keys.max()) < 2**63)
    ):
        return keys.astype(_INT64)
    return keys.tolist()


def _timestamps(stamps: Any) -> Any:
    # An array of timestamps is float64; any other numbers are made so.
    if not isinstance(stamps, np.ndarray) or stamps.dtype == _FLOAT64:
        return stamps
    if stamps.dtype.kind in "iuf":
        return stamps.astype(_FLOAT64)
    return stamps.tolist()


@attrs.frozen
class Columns:
    """Records not yet stored, kept as three parallel columns rather than one object each.

    This is how batches travel: building a :class:`Record` per event costs more than
    everything else a partition does with it, so the hot path never does. Make one from
    records with :meth:`from_records`, or directly from columns of equal length: lists, or
    for the columnar fast path numpy arrays (int keys, float timestamps) and a
    :class:`~actors.table.Table` of values.

    Attributes:
        keys: The records' keys.
        values: The records' values.
        timestamps: The records' timestamps.
    """

    keys: Column = attrs.field(eq=_BY_VALUES, converter=_keys)
    values: Sequence[Any] = attrs.field(eq=_BY_VALUES)
    timestamps: Column = attrs.field(eq=_BY_VALUES, converter=_timestamps)

    @classmethod
    def from_records(cls, records: Sequence[Record]) -> Columns:
        """Return the columns of ``records``."""
        return cls(
            [record.key for record in records],
            [record.value for record in records],
            [record.timestamp for record in records],
        )

    def __len__(self) -> int:
        return len(self.values)


@attrs.frozen
class RecordBatch:
    """Records stored together in one partition, with consecutive offsets.

    Batches are what move through ringflow: one hop costs the same for a batch of a thousand
    records as for one record, so everything is sent, stored and delivered a batch at a time.
    The record at index ``i`` has offset ``base_offset + i``, key ``keys[i]``, value
    ``values[i]`` and timestamp ``timestamps[i]``.

    Attributes:
        topic: The topic the records belong to.
        partition: The partition they were stored in.
        base_offset: The offset of the first record.
        keys: The records' keys, in offset order.
        values: The records' values, in offset order.
        timestamps: The records' timestamps, in offset order.
    """

    topic: str
    partition: int
    base_offset: int
    keys: Column = attrs.field(eq=_BY_VALUES, converter=_keys)
    values: Sequence[Any] = attrs.field(eq=_BY_VALUES)
    timestamps: Column = attrs.field(eq=_BY_VALUES, converter=_timestamps)

    @classmethod
    def from_records(
        cls, topic: str, partition: int, base_offset: int, records: Sequence[Record]
    ) -> RecordBatch:
        """Return a batch holding ``records`` from ``base_offset`` on."""
        columns = Columns.from_records(records)
        return cls(topic, partition, base_offset, columns.keys, columns.values, columns.timestamps)

    @property
    def next_offset(self) -> int:
        """The offset just past the last record of the batch."""
        return self.base_offset + len(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def record(self, index: int) -> StoredRecord:
        """Return the record at ``index`` (0 is the first of the batch)."""
        key: Any = self.keys[index]
        timestamp = self.timestamps[index]
        return StoredRecord(
            key if key is None or isinstance(key, (str, int)) else key.item(),
            self.values[index],
            float(timestamp),
            self.topic,
            self.partition,
            self.base_offset + index,
        )

    @property
    def records(self) -> list[StoredRecord]:
        """The records as objects, with their positions: convenient, but built on each call."""
        return list(self.stored_records())

    def stored_records(self) -> Iterator[StoredRecord]:
        """Yield the records with their topic, partition and offset filled in."""
        topic, partition = self.topic, self.partition
        for offset, key, value, timestamp in zip(
            range(self.base_offset, self.next_offset),
            as_list(self.keys),
            as_list(self.values),
            as_list(self.timestamps),
            strict=True,
        ):
            yield StoredRecord(key, value, timestamp, topic, partition, offset)

    def slice(self, start: int, stop: int) -> RecordBatch:
        """Return the records from index ``start`` up to ``stop`` as a batch of their own."""
        return RecordBatch(
            self.topic,
            self.partition,
            self.base_offset + start,
            self.keys[start:stop],
            self.values[start:stop],
            self.timestamps[start:stop],
        )


class _EncodedBatch(msgspec.Struct, forbid_unknown_fields=True):
    # How :class:`BatchCodec` lays a batch out: columns as lists, typed buffers or a table.
    topic: str
    partition: int
    base_offset: int
    keys: list[Key] | bytes
    values: list[Any] | TableData
    timestamps: list[float] | bytes


class BatchCodec:
    """Encodes and decodes :class:`RecordBatch` with msgspec's MessagePack.

    Columns are encoded in the form they have: lists, or the typed buffers of numpy arrays
    and :class:`~actors.table.Table` values (decoded back to arrays and checked against
    ``types``, the event types the values may be). The encoder and decoder are built once and
    reused: that is most of msgspec's speed.

    Example:
        >>> codec = BatchCodec()
        >>> batch = RecordBatch("views", 0, 10, ["k"], [1], [0.5])
        >>> codec.decode(codec.encode(batch)) == batch
        True
    """

    def __init__(self, types: Sequence[type] = ()) -> None:
        self._types = tuple(types)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(_EncodedBatch)

    def encode(self, batch: RecordBatch) -> bytes:
        """Return the MessagePack bytes of ``batch``."""
        return self._encoder.encode(
            _EncodedBatch(
                batch.topic,
                batch.partition,
                batch.base_offset,
                pack_array(batch.keys),
                pack_values(batch.values),
                pack_array(batch.timestamps),
            )
        )

    def decode(self, data: bytes) -> RecordBatch:
        """Return the batch encoded in ``data``.

        Raises:
            msgspec.ValidationError: ``data`` is MessagePack but not a batch, or its columns
                are not what they should be.
            msgspec.DecodeError: ``data`` is not valid MessagePack.
        """
        encoded = self._decoder.decode(data)
        try:
            values = unpack_values(encoded.values, self._types)
            keys = unpack_array(encoded.keys, "<i8")
            stamps = unpack_array(encoded.timestamps, "<f8")
        except ValueError as exc:
            raise msgspec.ValidationError(str(exc)) from None
        return RecordBatch(
            encoded.topic, encoded.partition, encoded.base_offset, keys, values, stamps
        )
