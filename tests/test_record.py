from __future__ import annotations

import msgspec
import pytest

from actors import BatchCodec, Columns, Record, RecordBatch, StoredRecord


def test_codec_round_trips_a_batch() -> None:
    codec = BatchCodec()
    batch = RecordBatch.from_records(
        "views", 2, 40, [Record("k", {"video": 7, "tags": ["a"]}, 1.5), Record(3, None)]
    )
    decoded = codec.decode(codec.encode(batch))
    assert decoded == batch
    assert decoded.records == [
        StoredRecord("k", {"video": 7, "tags": ["a"]}, 1.5, "views", 2, 40),
        StoredRecord(3, None, 0.0, "views", 2, 41),
    ]


def test_codec_refuses_garbage() -> None:
    codec = BatchCodec()
    with pytest.raises(msgspec.DecodeError):
        codec.decode(b"\xc1not msgpack")
    with pytest.raises(msgspec.ValidationError):
        codec.decode(msgspec.msgpack.encode({"topic": "t"}))


def test_stored_records_carry_positions() -> None:
    batch = RecordBatch.from_records("t", 1, 10, [Record("a", 1, 0.5), Record("b", 2, 0.7)])
    assert [(r.topic, r.partition, r.offset, r.key) for r in batch.stored_records()] == [
        ("t", 1, 10, "a"),
        ("t", 1, 11, "b"),
    ]
    assert (len(batch), batch.next_offset) == (2, 12)
    assert batch.record(1) == StoredRecord("b", 2, 0.7, "t", 1, 11)


def test_slices_keep_offsets_and_columns_line_up() -> None:
    batch = RecordBatch("t", 0, 100, ["a", "b", "c", "d"], [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    part = batch.slice(1, 3)
    assert (part.base_offset, part.next_offset) == (101, 103)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in part.records] == [
        (101, "b", 2, 0.2),
        (102, "c", 3, 0.3),
    ]
    columns = Columns.from_records([Record("x", 9, 1.0), Record(None, 8)])
    assert (columns.keys, columns.values, columns.timestamps, len(columns)) == (
        ["x", None],
        [9, 8],
        [1.0, 0.0],
        2,
    )
