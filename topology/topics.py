"""The topics of a topology as built for one process, their rings restored first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from actors import Topic

from .plan import value_type
from .registry import Registry
from .schema import Topology
from .sections import NodeSpec
from .snapshot import PartitionContents, Stateful, restore_parts


def make_topics(
    topology: Topology,
    types: Mapping[str, tuple[type, ...]],
    here: NodeSpec | None,
    parts: Mapping[tuple[str, str], bytes],
) -> dict[str, Topic]:
    """The topics whose rings live in this process (all, or those of node ``here``), each
    partition restored from ``parts`` (an epoch's) when it has one there.

    Partitions are restored before anything else is built: consumer groups register on them,
    and a partition restores only while fresh.

    Raises:
        DamagedEpoch: A partition's part cannot be restored.
    """
    topics = {
        name: Topic(
            name,
            partitions=spec.partitions,
            capacity=spec.ring_capacity,
            retention=spec.retention,
        )
        for name, spec in topology.topics.items()
        if here is None or name in here.topics
    }
    contents: dict[tuple[str, str], Stateful[Any]] = {
        ("partition", f"{name}/{p.index}"): PartitionContents(p, name, value_type(types[name]))
        for name, topic in topics.items()
        for p in topic.partitions
    }
    restore_parts(
        contents, parts, {key: value_type(types[key[1].rsplit("/", 1)[0]]) for key in contents}
    )
    return topics


def durable_reads(
    topology: Topology, registry: Registry, topics: Mapping[str, Topic]
) -> list[Topic]:
    """The topics here read by a consumer whose processor reads only what an epoch holds."""
    names = {
        topic
        for spec in topology.consumers.values()
        if registry.processors[spec.processor].reads_durable
        for topic in spec.topic_names
    }
    return [topics[name] for name in sorted(names) if name in topics]


def hold_back(topics: list[Topic], soon: Callable[[], None]) -> None:
    """Let readers of ``topics`` see only records an epoch holds (see :func:`exposing`)."""
    for topic in topics:
        for partition in topic.partitions:
            partition.hold_back(soon)
            partition.expose(partition.end_offset)  # restored: held by the epoch


def exposing(topics: list[Topic]) -> Callable[[], None] | None:
    """What to call once the epoch captured now is written: readers of ``topics`` may then
    have every record they hold now."""
    if not topics:
        return None
    ends = {partition: partition.end_offset for t in topics for partition in t.partitions}

    def expose() -> None:
        for partition, end in ends.items():
            partition.expose(end)

    return expose
