"""The same events and aggregation as a topology run, in a plain Python loop with no broker."""

from __future__ import annotations

import time
from typing import Any

from topology import Pipeline


def plain_loop(pipeline: Pipeline, chunk: int = 1000) -> dict[str, Any]:
    """Generate every event of ``pipeline``'s producers and aggregate it directly.

    Each producer instance's events go, a chunk at a time, straight to the processors of the
    consumers reading their topics: no records, partitions, groups, tasks or checks. Returns
    the aggregates, the event count and the events per second.
    """
    topology, registry = pipeline.topology, pipeline.registry
    readers: dict[str, list[Any]] = {}
    for name, consumer in topology.consumers.items():
        for topic in consumer.topic_names:
            readers.setdefault(topic, []).append(pipeline.processors[name])
    started = time.perf_counter()
    events = 0
    for plan in pipeline.plans:
        spec = topology.producers[plan.producer]
        kind = registry.workloads[spec.workload]
        params = registry.workload_params(topology, plan.producer)
        workload = kind.make(params, pipeline.seed, plan.producer, plan.instance, plan.source)
        interval = 1 / plan.rate if plan.rate else 0.0
        topic_of = {s: spec.topic if spec.topic else spec.topics[s] for s in kind.streams}
        done = 0
        while done < plan.events:
            count = min(chunk, plan.events - done)
            for stream, batch in workload.generate(count, done * interval, interval).items():
                for processor in readers.get(topic_of[stream], ()):
                    processor.process(batch)
            done += count
        events += done
    seconds = time.perf_counter() - started
    return {
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds if seconds else None,
        "aggregates": {name: p.result() for name, p in pipeline.processors.items()},
    }
