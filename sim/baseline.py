"""The same events and aggregation as a topology run, in a plain Python loop with no broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actors import Table
from topology import Pipeline

from .reference import ReferenceBloggerAnalytics, ReferenceUgcCounters, ReferenceVideoStats

REFERENCES: dict[str, Callable[[Any], Any]] = {
    "video_stats": ReferenceVideoStats,
    "blogger_analytics": ReferenceBloggerAnalytics,
    "ugc_counters": ReferenceUgcCounters,
}
"""The per-event loop of each processor (see :mod:`sim.reference`)."""


def plain_loop(pipeline: Pipeline, chunk: int = 1000) -> dict[str, Any]:
    """Generate every event of ``pipeline``'s producers and aggregate it directly, one event
    at a time in Python: what a user would write by hand.

    Each producer instance's events are made a chunk at a time (the workload's numpy draws,
    then one Python object per event) and go straight to the per-event loop of each consumer
    reading their topic (:data:`REFERENCES`; a processor with none is used as it is): no
    records, partitions, groups, tasks or checks. Returns the aggregates, the event count and
    the events per second.
    """
    topology, registry = pipeline.topology, pipeline.registry
    readers: dict[str, list[Any]] = {}
    folders: dict[str, Any] = {}
    for name, consumer in topology.consumers.items():
        reference = REFERENCES.get(consumer.processor)
        params = registry.processor_params(topology, name)
        folders[name] = pipeline.processors[name] if reference is None else reference(params)
        for topic in consumer.topic_names:
            readers.setdefault(topic, []).append(folders[name])
    started = time.perf_counter()
    events = 0
    for plan in pipeline.plans:
        spec = topology.producers[plan.producer]
        if spec.workload is None:
            continue  # a folder's files: nothing to generate
        kind = registry.workloads[spec.workload]
        params = registry.workload_params(topology, plan.producer)
        workload = kind.make(params, pipeline.seed, plan.producer, plan.instance, plan.source)
        interval = 1 / plan.rate if plan.rate else 0.0
        topic_of = {s: spec.topic if spec.topic else spec.topics[s] for s in kind.streams}
        done = 0
        while done < plan.events:
            count = min(chunk, plan.events - done)
            for stream, batch in workload.generate(count, done * interval, interval).items():
                rows = batch.rows() if isinstance(batch, Table) else batch
                for processor in readers.get(topic_of[stream], ()):
                    processor.process(rows)
            done += count
        events += done
    seconds = time.perf_counter() - started
    return {
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds if seconds else None,
        "aggregates": {name: p.result() for name, p in folders.items()},
    }
