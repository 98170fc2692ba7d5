"""What ``ringflow checkpoints`` says a part of an epoch holds, in a few words."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from .checkpoint import SCHEMA_VERSION
from .integrity import DamagedEpoch
from .snapshot import (
    KINDS,
    ConsumerTallyPart,
    Part,
    PartitionPart,
    ProducerPart,
    TopicTallyPart,
    decode,
)


def describe_part(kind: str, name: str, data: bytes, *, schema: int = SCHEMA_VERSION) -> str:
    """Say in a few words what a part holds, as ``ringflow checkpoints`` lists it.

    Args:
        kind: The part's kind (``partition``, ``producer``...).
        name: The part's name (``events/0``...).
        data: Its bytes.
        schema: The schema version of the store it comes from: parts of stores older than
            version 3 were positional lists.

    Returns:
        Offsets and commits of a partition, events made by a producer, records processed by
        a consumer or produced into a topic; nothing for other kinds.

    Raises:
        DamagedEpoch: The part is ``not MessagePack``, or ``not what this part holds``
            (its ``problem``).
    """
    try:
        if schema < 3:
            return _describe_positional(kind, msgspec.msgpack.decode(data))
        if kind not in KINDS:
            msgspec.msgpack.decode(data)
            return ""
        return _describe(decode(kind, data))
    except msgspec.ValidationError:
        raise DamagedEpoch(None, f"{kind}/{name}", "not what this part holds") from None
    except msgspec.DecodeError:
        raise DamagedEpoch(None, f"{kind}/{name}", "not MessagePack") from None
    except (TypeError, KeyError, IndexError, AttributeError, ValueError):
        raise DamagedEpoch(None, f"{kind}/{name}", "not what this part holds") from None


def _describe(part: Part) -> str:
    if isinstance(part, PartitionPart):
        return _offsets(part.start_offset, part.end_offset, part.committed)
    if isinstance(part, ProducerPart):
        return f"{part.done:,} events made"
    if isinstance(part, ConsumerTallyPart):
        return f"{part.records:,} records processed"
    if isinstance(part, TopicTallyPart):
        return f"{part.records:,} records produced"
    return ""


def _describe_positional(kind: str, decoded: Any) -> str:
    # Schemas 1 and 2: partitions and topic tallies were lists, read by position.
    if kind == "partition":
        return _offsets(decoded[0], decoded[1], decoded[2])
    if kind == "producer":
        return f"{decoded['done']:,} events made"
    if kind == "consumer":
        return f"{decoded['records']:,} records processed"
    if kind == "topic":
        return f"{decoded[0]:,} records produced"
    return ""


def _offsets(start: int, end: int, committed: Mapping[str, int]) -> str:
    return f"offsets {start:,}..{end:,}; committed " + ", ".join(
        f"{group}={offset:,}" for group, offset in committed.items()
    )
