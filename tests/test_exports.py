"""The packages export exactly their public API."""

from __future__ import annotations

import types

import actors


def test_actors_exports_are_public_and_exist() -> None:
    public = {name for name in vars(actors) if not name.startswith("_")}
    modules = {
        "errors",
        "group",
        "partition",
        "partitioner",
        "producer",
        "record",
        "supervisor",
        "topic",
    }
    exported = public - modules
    for name in exported:
        value = getattr(actors, name)
        if isinstance(value, types.UnionType):  # a type alias such as Key
            continue
        module = getattr(value, "__module__", "actors.")
        assert module.startswith("actors."), f"{name} comes from {module}, not from actors"
    for name in (
        "Topic",
        "Partition",
        "ConsumerGroup",
        "Consumer",
        "Record",
        "RecordBatch",
        "open_producer",
        "open_supervisor",
        "RingflowError",
        "BatchCodec",
    ):
        assert name in exported


def test_every_error_derives_from_ringflow_error() -> None:
    errors = [
        value
        for name, value in vars(actors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(errors) >= 6
    for error in errors:
        assert issubclass(error, actors.RingflowError)
