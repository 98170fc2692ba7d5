"""What a process holds in memory during a chaos run, and the most it may hold."""

from __future__ import annotations

from topology import Pipeline


def held_records(pipeline: Pipeline) -> int:
    """Records ``pipeline`` holds now: in the rings of its partitions, and kept by its
    producers for resending to other nodes."""
    held = sum(
        partition.end_offset - partition.start_offset
        for topic in pipeline.topics.values()
        for partition in topic.partitions
    )
    if pipeline.node is not None:
        for link in pipeline.node.links.values():
            if link.topic is not None:
                held += sum(partition.retained for partition in link.topic.partitions)
    return held


def memory_bound(pipeline: Pipeline) -> int | None:
    """The most records ``pipeline`` may hold (see :class:`Memory`); None when a topic it
    holds or sends to has no capacity."""
    topology = pipeline.topology
    names = list(pipeline.topics)
    if pipeline.node is not None:
        names += [link.topic_name for link in pipeline.node.links.values()]
    bound = 0
    for name in names:
        spec = topology.topics[name]
        if not isinstance(spec.capacity, int):
            return None
        bound += spec.capacity * spec.partitions
    return bound
