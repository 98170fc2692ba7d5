"""The report of a run: figures, aggregates, their digest, the invariants, and a chart."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from topology import LATENCY_RESOLUTION, EpochInfo, Pipeline, Segment


def canonical_json(data: Any) -> bytes:
    """Return ``data`` as JSON with sorted keys and no spaces: the form the digest is taken of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(aggregates: Any) -> str:
    """Return the sha256 of the canonical JSON of ``aggregates``."""
    return hashlib.sha256(canonical_json(aggregates)).hexdigest()


def percentiles(histogram: Counter[int], points: tuple[float, ...]) -> dict[str, float | None]:
    """Return the given percentiles of a latency histogram, in seconds."""
    total = sum(histogram.values())
    result: dict[str, float | None] = {}
    if not total:
        return {f"p{p:g}": None for p in points}
    ordered = sorted(histogram.items())
    for p in points:
        rank = max(1, round(p / 100 * total))
        seen = 0
        for bucket, count in ordered:
            seen += count
            if seen >= rank:
                result[f"p{p:g}"] = bucket / LATENCY_RESOLUTION
                break
    return result


def this_segment(pipeline: Pipeline, resumed: EpochInfo | None, number: int) -> Segment:
    """The segment a pipeline ran in this process, from its start (fresh or resumed from
    ``resumed``) to its end."""
    started = pipeline.wall_started or 0.0
    return Segment(
        number=number,
        resumed_from_epoch=None if resumed is None else resumed.epoch,
        started_at=time.time() - (time.perf_counter() - started),
        wall_seconds=(pipeline.wall_finished or started) - started,
        events_from=0 if resumed is None else resumed.events_produced,
        events_to=pipeline.events_produced,
        sim_from=0.0 if resumed is None else resumed.sim_time,
        sim_to=(pipeline.finished_at or 0.0) - pipeline.origin,
    )


def segment_report(segment: Segment) -> dict[str, Any]:
    """A segment as the report shows it."""
    rate = segment.events_per_second
    return {
        **segment.to_dict(),
        "wall_seconds": round(segment.wall_seconds, 6),
        "sim_from": round(segment.sim_from, 6),
        "sim_to": round(segment.sim_to, 6),
        "events": segment.events,
        "events_per_second": None if rate is None else round(rate, 1),
    }


def build_report(
    pipeline: Pipeline,
    *,
    status: str,
    error: str | None = None,
    samples: list[list[float]] | None = None,
    earlier: Sequence[Segment] = (),
    resumed: EpochInfo | None = None,
    already_complete: bool = False,
) -> dict[str, Any]:
    """Assemble the report of a finished, failed or interrupted run.

    Call it inside the Trio run (partition statistics read the run's clock).

    Args:
        pipeline: The pipeline that ran.
        status: ``completed``, ``interrupted`` or ``failed``.
        error: What failed.
        samples: The timeline's rows.
        earlier: The segments (processes) of the run before this one, from the epoch it
            resumed from: wall time and throughput are given per segment and in total.
        resumed: The epoch this process resumed from.
        already_complete: The epoch was the final one of a completed run, so this process
            did nothing: the figures are those of the segments that did the work.
    """
    segments = list(earlier)
    if not already_complete:
        segments.append(this_segment(pipeline, resumed, len(segments) + 1))
    wall = sum(s.wall_seconds for s in segments)
    # Simulated time goes on across resumes: from the run's start to its end.
    sim = (pipeline.finished_at or 0.0) - pipeline.origin
    latency: Counter[int] = Counter()
    if pipeline.placement is None:  # across nodes, each has its own origin of event time
        for tally in pipeline.tallies.values():
            latency.update(tally.latency)
    aggregates = {name: processor.result() for name, processor in pipeline.processors.items()}
    delivered: dict[tuple[str, int], dict[str, int]] = {}
    for topic_name, group in pipeline.local_groups():
        for index, offset in enumerate(group.statistics().delivered):
            delivered.setdefault((topic_name, index), {})[group.name] = offset
    partitions = [
        {
            "topic": s.topic,
            "partition": s.partition,
            "records": s.end_offset,
            "capacity": s.capacity,
            "depth": s.depth,
            "peak_depth": s.peak_depth,
            "blocked_seconds": round(s.blocked_seconds, 6),
            "delivered": delivered.get((s.topic, s.partition), {}),
            "committed": s.committed,
            "lag": s.lag,
        }
        for topic in pipeline.topics.values()
        for s in topic.statistics()
    ]
    expectations = pipeline.expectations() if status == "completed" else []
    produced = pipeline.events_produced
    return {
        "topology": pipeline.topology.name,
        "seed": pipeline.seed,
        "clock": "real" if pipeline.placement is not None else pipeline.topology.clock,
        "node": None if pipeline.placement is None else pipeline.placement.node,
        "status": status,
        "already_complete": already_complete,
        "error": error,
        "events_planned": pipeline.events_planned,
        "events_produced": produced,
        "events_consumed": pipeline.events_consumed,
        "consumers": {
            name: {"records": tally.records, "per_topic": dict(tally.per_topic)}
            for name, tally in pipeline.tallies.items()
        },
        "wall_seconds": round(wall, 6),
        "sim_seconds": round(sim, 6),
        "events_per_second": round(produced / wall, 1) if wall > 0 else None,
        "segments": [segment_report(s) for s in segments],
        "latency_seconds": percentiles(latency, (50, 95, 99)),
        "latency_sampled_records": sum(latency.values()),
        "partitions": partitions,
        "expect": {e.name: {"ok": e.ok, "detail": e.detail} for e in expectations},
        "expect_ok": all(e.ok for e in expectations) if status == "completed" else False,
        # A node that runs no consumer has no aggregates, so nothing to digest.
        "digest": digest(aggregates) if pipeline.processors else None,
        "aggregates": aggregates,
        "timeline": {
            "columns": ["sim_seconds", "wall_seconds", "produced", "consumed", "lag"],
            "rows": samples or [],
        },
    }


def broker_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for the summary of a node that hosts topics: what its rings accepted, delivered
    to each consumer group, and still hold, in total and per partition."""
    parts = report["partitions"]
    groups = sorted({group for p in parts for group in p["delivered"]})
    rows = [("records accepted", f"{sum(p['records'] for p in parts):,}")]
    rows.extend(
        (
            f"records delivered to group {group}",
            f"{sum(p['delivered'].get(group, 0) for p in parts):,}",
        )
        for group in groups
    )
    rows.append(("records in rings", f"{sum(p['depth'] for p in parts):,}"))
    for p in parts:
        capacity = "dynamic" if p["capacity"] is None else f"{p['capacity']:,}"
        counts = {group: p["delivered"].get(group, 0) for group in groups}
        if len(set(counts.values())) == 1:
            delivered = f"{next(iter(counts.values())):,} delivered to each group"
        else:
            delivered = ", ".join(f"{n:,} delivered to {group}" for group, n in counts.items())
        rows.append(
            (
                f"{p['topic']}[{p['partition']}]",
                f"{p['records']:,} accepted, {delivered or 'no group'}, {p['depth']:,} in ring "
                f"(peak {p['peak_depth']:,} of {capacity})",
            )
        )
    return rows


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def write_chart(report: dict[str, Any], path: Path) -> str | None:
    """Draw throughput and lag over simulated time to a PNG; return why not, or None.

    Needs matplotlib (``pip install 'ringflow[plot]'``); without it the run still works.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install 'ringflow[plot]')"
    rows = report["timeline"]["rows"]
    if len(rows) < 2:
        return "no chart: the run was too short to sample"
    times = [r[0] for r in rows]
    rates = [0.0] + [
        (b[3] - a[3]) / (b[0] - a[0]) if b[0] > a[0] else 0.0 for a, b in itertools.pairwise(rows)
    ]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(times, rates, color="tab:blue")
    top.set_ylabel("consumed events / simulated s")
    top.set_title(f"{report['topology']} (seed {report['seed']})")
    bottom.plot(times, [r[4] for r in rows], color="tab:red")
    bottom.set_ylabel("lag (records)")
    bottom.set_xlabel("simulated seconds")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
