"""Records, the batches that carry them, and the msgspec codec for batches on the hot path."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import attrs
import msgspec

Key: TypeAlias = str | int | None
"""What a record may be keyed by. Records with equal keys land on the same partition."""


@attrs.frozen
class Record:
    """One event.

    A producer fills in ``key``, ``value`` and ``timestamp``; a record handed to a consumer
    one by one also says where it was stored (``topic``, ``partition`` and ``offset``).

    Attributes:
        key: What the record is partitioned by, or None to spread records round robin.
        value: The payload: anything msgspec can encode (numbers, strings, lists, dicts,
            attrs classes).
        timestamp: When the event happened, in seconds of the run's clock.
        topic: The topic it was stored in, once stored.
        partition: The partition it was stored in, once stored.
        offset: Its offset in that partition, once stored.
    """

    key: Key
    value: Any
    timestamp: float = 0.0
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@attrs.frozen
class RecordBatch:
    """Records stored together in one partition, with consecutive offsets.

    Batches are what move through ringflow: one hop costs the same for a batch of a thousand
    records as for one record, so everything is sent, stored and delivered a batch at a time.
    The record at index ``i`` has offset ``base_offset + i``.

    Attributes:
        topic: The topic the records belong to.
        partition: The partition they were stored in.
        base_offset: The offset of the first record.
        records: The records, in offset order.
    """

    topic: str
    partition: int
    base_offset: int
    records: Sequence[Record]

    @property
    def next_offset(self) -> int:
        """The offset just past the last record of the batch."""
        return self.base_offset + len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def stored_records(self) -> Iterator[Record]:
        """Yield the records with their topic, partition and offset filled in."""
        topic, partition, offset = self.topic, self.partition, self.base_offset
        for record in self.records:
            yield Record(record.key, record.value, record.timestamp, topic, partition, offset)
            offset += 1


class BatchCodec:
    """Encodes and decodes :class:`RecordBatch` with msgspec's MessagePack.

    The encoder and decoder are built once and reused: that is most of msgspec's speed.

    Example:
        >>> codec = BatchCodec()
        >>> batch = RecordBatch("views", 0, 10, [Record("k", 1, 0.5)])
        >>> codec.decode(codec.encode(batch)) == batch
        True
    """

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(RecordBatch)

    def encode(self, batch: RecordBatch) -> bytes:
        """Return the MessagePack bytes of ``batch``."""
        return self._encoder.encode(batch)

    def decode(self, data: bytes) -> RecordBatch:
        """Return the batch encoded in ``data``.

        Raises:
            msgspec.ValidationError: ``data`` is MessagePack but not a batch.
            msgspec.DecodeError: ``data`` is not valid MessagePack.
        """
        return self._decoder.decode(data)
