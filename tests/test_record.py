from __future__ import annotations

import msgspec
import pytest

from actors import BatchCodec, Record, RecordBatch


def test_codec_round_trips_a_batch() -> None:
    codec = BatchCodec()
    batch = RecordBatch(
        "views", 2, 40, [Record("k", {"video": 7, "tags": ["a"]}, 1.5), Record(3, None)]
    )
    assert codec.decode(codec.encode(batch)) == batch


def test_codec_refuses_garbage() -> None:
    codec = BatchCodec()
    with pytest.raises(msgspec.DecodeError):
        codec.decode(b"\xc1not msgpack")
    with pytest.raises(msgspec.ValidationError):
        codec.decode(msgspec.msgpack.encode({"topic": "t"}))


def test_stored_records_carry_positions() -> None:
    batch = RecordBatch("t", 1, 10, [Record("a", 1, 0.5), Record("b", 2, 0.7)])
    assert [(r.topic, r.partition, r.offset, r.key) for r in batch.stored_records()] == [
        ("t", 1, 10, "a"),
        ("t", 1, 11, "b"),
    ]
    assert (len(batch), batch.next_offset) == (2, 12)
