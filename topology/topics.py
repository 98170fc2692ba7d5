"""The topics of a topology as built for one process, their rings restored first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors import Topic

from .plan import value_type
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
