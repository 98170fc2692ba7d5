"""The report of a run: its figures, aggregates, their digest, the invariants, and a chart.

:class:`Report` and the classes of its sections are what every reader uses (the summary, the
exit code, the bench, the chart). The JSON file is written and read through one cattrs
converter, :data:`REPORT_CONVERTER`, and ``docs/report.md`` documents its fields.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.strategies import configure_union_passthrough

from topology import LATENCY_RESOLUTION, DamagedEpoch, EpochInfo, Pipeline, Segment

Status = Literal["completed", "interrupted", "failed"]
"""How a run ended."""

TIMELINE_COLUMNS = ("sim_seconds", "wall_seconds", "produced", "consumed", "lag")
"""The columns of a timeline row, in order."""


@attrs.frozen(kw_only=True)
class ConsumerCount:
    """What one consumer processed."""

    records: int
    """Records processed, in total."""
    per_topic: dict[str, int]
    """Records processed per topic."""


@attrs.frozen(kw_only=True)
class DeliveryReport:
    """How one consumer's sink took its records, in this process (not kept across resumes)."""

    attempts: int
    """Calls to the sink."""
    retries: int
    """Failed calls tried again."""
    failures: int
    """Failed calls, retried or not."""
    given_up: int
    """Deliveries given up on (their records dead-lettered, or the consumer stopped)."""
    dead_lettered: int
    """Records sent to the dead-letter topic."""
    breaker: str
    """The circuit breaker's state at the end: ``closed``, ``open`` or ``half-open``."""
    breaker_opened: int
    """Times the breaker opened."""


@attrs.frozen(kw_only=True)
class SegmentReport:
    """One process's share of the run (the first, then one per resume)."""

    segment: int
    """1, 2, ... in order."""
    resumed_from_epoch: int | None
    """The epoch it resumed from; None for the first."""
    started_at: float
    """Unix time it started."""
    wall_seconds: float
    """Real seconds it ran."""
    events_from: int
    """Events produced when it started."""
    events_to: int
    """Events produced when it ended (or at the epoch the next one resumed from)."""
    sim_from: float
    """The run's simulated time when it started."""
    sim_to: float
    """The run's simulated time when it ended."""
    events: int
    """Events it produced."""
    events_per_second: float | None
    """Its throughput; None if it took no time."""

    @classmethod
    def of(cls, segment: Segment) -> SegmentReport:
        """The report's entry for ``segment``."""
        rate = segment.events_per_second
        return cls(
            segment=segment.number,
            resumed_from_epoch=segment.resumed_from_epoch,
            started_at=segment.started_at,
            wall_seconds=round(segment.wall_seconds, 6),
            events_from=segment.events_from,
            events_to=segment.events_to,
            sim_from=round(segment.sim_from, 6),
            sim_to=round(segment.sim_to, 6),
            events=segment.events,
            events_per_second=None if rate is None else round(rate, 1),
        )


@attrs.frozen(kw_only=True)
class Latency:
    """Percentiles of the time from an event's timestamp to its processing, in seconds; None
    when no record was sampled."""

    p50: float | None
    """The median."""
    p95: float | None
    """The 95th percentile."""
    p99: float | None
    """The 99th percentile."""

    @classmethod
    def of(cls, histogram: Counter[int]) -> Latency:
        """The percentiles of a latency histogram (buckets of ``1 / LATENCY_RESOLUTION`` s)."""
        p50, p95, p99 = (_percentile(histogram, p) for p in (50, 95, 99))
        return cls(p50=p50, p95=p95, p99=p99)


def _percentile(histogram: Counter[int], point: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, round(point / 100 * total))
    seen = 0
    for bucket, count in sorted(histogram.items()):
        seen += count
        if seen >= rank:
            return bucket / LATENCY_RESOLUTION
    return None  # pragma: no cover - the last bucket reaches the total


@attrs.frozen(kw_only=True)
class PartitionReport:
    """One partition of a topic whose ring lives in this process, at the end of the run."""

    topic: str
    """The topic."""
    partition: int
    """The partition's index."""
    records: int
    """Records accepted."""
    capacity: int | None
    """The ring's capacity; None for a dynamic ring."""
    depth: int
    """Records still in the ring."""
    peak_depth: int
    """The most records the ring held."""
    blocked_seconds: float
    """Producers' time waiting for room."""
    delivered: dict[str, int]
    """Per consumer group, the offset just past the last record delivered."""
    committed: dict[str, int]
    """Per consumer group, the committed offset."""
    lag: dict[str, int]
    """Per consumer group, records accepted but not committed."""


@attrs.frozen(kw_only=True)
class ExpectResult:
    """The outcome of one ``expect`` invariant."""

    ok: bool
    """Whether it held."""
    detail: str
    """What was found."""


@attrs.frozen(kw_only=True)
class Timeline:
    """Samples taken about every quarter of a real second; the chart is drawn from them."""

    columns: list[str] = attrs.field(factory=lambda: list(TIMELINE_COLUMNS))
    """The names of a row's values: :data:`TIMELINE_COLUMNS`."""
    rows: list[list[int | float]] = attrs.field(factory=list)
    """One row per sample."""


@attrs.frozen(kw_only=True)
class DamagedEpochReport:
    """An epoch passed over because it is damaged."""

    epoch: int | None
    """Its number."""
    part: str
    """What is damaged (``kind/name`` of a part, or ``epoch record``)."""
    problem: str
    """What was found."""

    @classmethod
    def of(cls, damage: DamagedEpoch) -> DamagedEpochReport:
        """The report's entry for ``damage``."""
        return cls(epoch=damage.epoch, part=damage.part, problem=damage.problem)


@attrs.frozen(kw_only=True)
class Rollback:
    """A rollback to the newest intact epoch after a crash."""

    error: str
    """What crashed."""
    to_epoch: int | None
    """The epoch rolled back to; None when none was written yet (the run started over)."""
    at: float
    """The run's simulated time of the crash."""
    damaged_epochs: list[str]
    """The damaged epochs passed over, as messages."""


@attrs.frozen(kw_only=True)
class CheckpointReport:
    """The checkpoints of a run that had them."""

    database: str
    """The checkpoint database's path."""
    resumed_from_epoch: int | None
    """The epoch the pipeline that finished was restored from."""
    damaged_epochs: list[DamagedEpochReport]
    """The damaged epochs passed over to reach the one resumed from."""
    epochs_written: int
    """Epochs written by this process."""
    last_epoch: int | None
    """The newest epoch written."""
    write_seconds_total: float
    """Real seconds spent writing epochs."""
    rollbacks: list[Rollback]
    """Every rollback, in order."""
    final_epoch: str = "not asked"
    """What became of the final epoch: ``written``, ``failed``, ``timed out`` (not written
    within ``final_timeout``; the run resumes from the epoch before it) or ``not asked``."""


@attrs.frozen(kw_only=True)
class LoggingOff:
    """Logging was configured, but Redis was unavailable: nothing was logged."""

    enabled: Literal[False] = False
    """Always false."""
    reason: str
    """Why."""


@attrs.frozen(kw_only=True)
class LoggingReport:
    """What a run logged to Redis."""

    enabled: Literal[True] = True
    """Always true."""
    url: str
    """Where (the password hidden)."""
    run_id: str
    """The run id the entries are under."""
    segment: int
    """This process's segment of the logged run."""
    written: dict[str, int]
    """Entries written per category."""
    records: dict[str, int]
    """Records the written entries stand for, per category."""
    dropped: dict[str, int]
    """Entries dropped per category while Redis fell behind."""
    unwritten: int
    """Entries still not written when the run ended."""
    failures: int
    """Writes that failed and were retried."""
    last_error: str | None
    """The last write error."""


@attrs.frozen(kw_only=True)
class Report:
    """The report of a finished, failed or interrupted run (``docs/report.md``)."""

    topology: str
    """The topology's name."""
    seed: int
    """The run's seed."""
    clock: Literal["virtual", "real"]
    """The run's clock."""
    node: str | None
    """The node of a split topology this is the report of; None for a whole topology."""
    status: Status
    """How the run ended."""
    already_complete: bool
    """The state folder held the final epoch of a completed run: nothing was run."""
    error: str | None
    """What failed, for a failed run."""
    events_planned: int
    """Events the producers were to make."""
    events_produced: int
    """Events accepted by partitions."""
    events_consumed: int
    """Records processed by every consumer: the smallest count over consumers."""
    consumers: dict[str, ConsumerCount]
    """Per consumer, what it processed."""
    wall_seconds: float
    """Real time the run took, over all its segments."""
    sim_seconds: float
    """Time on the run's clock from its start to its end."""
    events_per_second: float | None
    """Events produced per real second, over all segments."""
    segments: list[SegmentReport]
    """One entry per process that worked on the run."""
    latency_seconds: Latency
    """Percentiles of the latency from an event's timestamp to its processing."""
    latency_sampled_records: int
    """How many records the percentiles come from."""
    partitions: list[PartitionReport]
    """Per partition whose ring lives in this process."""
    expect: dict[str, ExpectResult]
    """Per invariant, its outcome; empty for a run that did not complete."""
    expect_ok: bool
    """Whether every invariant held."""
    digest: str | None
    """sha256 of the canonical JSON of ``aggregates``; None without consumers."""
    aggregates: dict[str, Any]
    """Each consumer's processor result."""
    timeline: Timeline
    """Samples of this segment."""
    stopped_by: str | None = None
    """``SIGINT`` or ``SIGTERM`` for an interrupted run."""
    checkpoints: CheckpointReport | None = None
    """With checkpoints, what they did."""
    logging: LoggingReport | LoggingOff | None = None
    deliveries: dict[str, DeliveryReport] = attrs.field(factory=dict)
    """By consumer whose processor is a sink, how it took its records (see delivery.md)."""
    """With logging, what was logged (or why nothing was)."""

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON file holds it."""
        data: dict[str, Any] = REPORT_CONVERTER.unstructure(self)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """The report that :meth:`to_dict` (or a report file) gave.

        Raises:
            cattrs.BaseValidationError: ``data`` is not a report.
        """
        return REPORT_CONVERTER.structure(data, cls)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    # Timeline rows mix seconds (floats) and counts (ints): each keeps its own type.
    configure_union_passthrough(int | float | str | bool | None, converter)
    logging_type = LoggingReport | LoggingOff | None

    def structure_logging(data: Any, _: Any) -> LoggingReport | LoggingOff | None:
        if data is None:
            return None
        if data.get("enabled"):
            return converter.structure(data, LoggingReport)
        return converter.structure(data, LoggingOff)

    converter.register_structure_hook_func(lambda t: t == logging_type, structure_logging)
    return converter


REPORT_CONVERTER = _make_converter()
"""The one converter between :class:`Report` and its JSON form."""


def canonical_json(data: Any) -> bytes:
    """Return ``data`` as JSON with sorted keys and no spaces: the form the digest is taken of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(aggregates: Any) -> str:
    """Return the sha256 of the canonical JSON of ``aggregates``."""
    return hashlib.sha256(canonical_json(aggregates)).hexdigest()


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


def build_report(
    pipeline: Pipeline,
    *,
    status: Status,
    error: str | None = None,
    samples: list[list[int | float]] | None = None,
    earlier: Sequence[Segment] = (),
    resumed: EpochInfo | None = None,
    already_complete: bool = False,
    stopped_by: str | None = None,
    checkpoints: CheckpointReport | None = None,
    logging: LoggingReport | LoggingOff | None = None,
) -> Report:
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
        stopped_by: The signal that stopped an interrupted run.
        checkpoints: What the run's checkpoints did.
        logging: What the run logged.
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
        PartitionReport(
            topic=s.topic,
            partition=s.partition,
            records=s.end_offset,
            capacity=s.capacity,
            depth=s.depth,
            peak_depth=s.peak_depth,
            blocked_seconds=round(s.blocked_seconds, 6),
            delivered=delivered.get((s.topic, s.partition), {}),
            committed=s.committed,
            lag=s.lag,
        )
        for topic in pipeline.topics.values()
        for s in topic.statistics()
    ]
    expectations = pipeline.expectations() if status == "completed" else []
    produced = pipeline.events_produced
    return Report(
        topology=pipeline.topology.name,
        seed=pipeline.seed,
        clock="real" if pipeline.placement is not None else pipeline.topology.clock,
        node=None if pipeline.placement is None else pipeline.placement.node,
        status=status,
        already_complete=already_complete,
        error=error,
        events_planned=pipeline.events_planned,
        events_produced=produced,
        events_consumed=pipeline.events_consumed,
        consumers={
            name: ConsumerCount(records=tally.records, per_topic=dict(tally.per_topic))
            for name, tally in pipeline.tallies.items()
        },
        wall_seconds=round(wall, 6),
        sim_seconds=round(sim, 6),
        events_per_second=round(produced / wall, 1) if wall > 0 else None,
        segments=[SegmentReport.of(s) for s in segments],
        latency_seconds=Latency.of(latency),
        latency_sampled_records=sum(latency.values()),
        partitions=partitions,
        expect={e.name: ExpectResult(ok=e.ok, detail=e.detail) for e in expectations},
        expect_ok=all(e.ok for e in expectations) if status == "completed" else False,
        # A node that runs no consumer has no aggregates, so nothing to digest.
        digest=digest(aggregates) if pipeline.processors else None,
        aggregates=aggregates,
        timeline=Timeline(rows=samples or []),
        stopped_by=stopped_by,
        checkpoints=checkpoints,
        logging=logging,
        deliveries={
            name: DeliveryReport(
                attempts=d.statistics.attempts,
                retries=d.statistics.retries,
                failures=d.statistics.failures,
                given_up=d.statistics.given_up,
                dead_lettered=d.dead_lettered,
                breaker=d.breaker.state,
                breaker_opened=d.breaker.statistics().opened,
            )
            for name, d in pipeline.deliveries.items()
        },
    )


def write_report(report: Report, path: Path) -> None:
    """Write the report as indented JSON, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")


def read_report(path: Path) -> Report:
    """Read a report file that :func:`write_report` wrote.

    Raises:
        OSError: The file cannot be read.
        ValueError: It is not JSON.
        cattrs.BaseValidationError: It is not a report.
    """
    return Report.from_dict(json.loads(path.read_text()))


def write_chart(report: Report, path: Path) -> str | None:
    """Draw throughput and lag over simulated time to a PNG; return why not, or None.

    Needs matplotlib (``pip install 'ringflow[plot]'``); without it the run still works.
    """
    # An optional dependency, and a heavy one: imported only when a chart is drawn.
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install 'ringflow[plot]')"
    rows = report.timeline.rows
    if len(rows) < 2:
        return "no chart: the run was too short to sample"
    times = [r[0] for r in rows]
    rates = [0.0] + [
        (b[3] - a[3]) / (b[0] - a[0]) if b[0] > a[0] else 0.0 for a, b in itertools.pairwise(rows)
    ]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(times, rates, color="tab:blue")
    top.set_ylabel("consumed events / simulated s")
    top.set_title(f"{report.topology} (seed {report.seed})")
    bottom.plot(times, [r[4] for r in rows], color="tab:red")
    bottom.set_ylabel("lag (records)")
    bottom.set_xlabel("simulated seconds")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
