"""Running topologies: determinism, correctness against a reference, invariants, reports."""

from __future__ import annotations

import json
import signal
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import attrs
import cattrs
import numpy as np
import pytest
import trio
import trio.testing

from actors import Columns, Partition, Table
from sim.cli import main
from sim.processors import VideoStats
from sim.report import Report, digest, read_report, write_report
from sim.run import REGISTRY, load_topology, run_pipeline
from sim.workloads import VIDEO_KINDS, VideoSite, VideoSiteParams
from topology import Pipeline, Topology

EXAMPLES = Path(__file__).parent.parent / "topology" / "examples"
EVENTS = 30_000


def video_site(**topic_changes: Any) -> Topology:
    topology = load_topology(EXAMPLES / "video-site.yaml")
    if topic_changes:
        topic = attrs.evolve(topology.topics["events"], **topic_changes)
        topology = attrs.evolve(topology, topics={"events": topic})
    return topology


def run(topology: Topology, *, seed: int | None = None, events: int = EVENTS) -> dict[str, Any]:
    pipeline = Pipeline.build(topology, REGISTRY, seed=seed, events=events)
    return run_pipeline(pipeline).report.to_dict()


def test_same_seed_gives_the_same_digest_twice_and_with_other_partitioning() -> None:
    first = run(video_site())
    second = run(video_site())
    other_layout = run(video_site(partitions=3, capacity=700))
    assert first["digest"] == second["digest"] == other_layout["digest"]
    assert first["aggregates"] == other_layout["aggregates"]
    assert first["expect_ok"]


def test_two_producers_on_one_topic_keep_their_own_order_and_tallies() -> None:
    topology = video_site()
    site = topology.producers["site"]
    both = attrs.evolve(topology, producers={"site": site, "mirror": site})
    report = run(both, events=20_000)
    assert report["expect_ok"], report["expect"]
    assert report["events_consumed"] == 20_000


def test_a_different_seed_gives_different_aggregates() -> None:
    assert run(video_site(), seed=1)["digest"] != run(video_site(), seed=2)["digest"]


def test_aggregates_equal_a_reference_computed_from_the_same_events() -> None:
    topology = video_site()
    report = run(topology)
    pipeline = Pipeline.build(topology, REGISTRY, events=EVENTS)
    params = VideoSiteParams(**topology.producers["site"].params)
    views: Counter[int] = Counter()
    likes: Counter[int] = Counter()
    watch_ms: Counter[int] = Counter()
    window_views: dict[tuple[int, int], Counter[int]] = defaultdict(Counter)
    window = topology.consumers["blogger-analytics"].params["window"]
    for plan in pipeline.plans:
        assert plan.rate is not None
        workload = VideoSite(params, topology.seed, plan.producer, plan.instance, plan.source)
        for event in workload.generate(plan.events, 0.0, 1 / plan.rate)["events"]:
            if event.kind == "view":
                views[event.video_id] += 1
                window_views[event.blogger_id, int(event.timestamp // window)][event.video_id] += 1
            elif event.kind == "like":
                likes[event.video_id] += 1
            watch_ms[event.video_id] += event.watch_ms
    videos = report["aggregates"]["video-stats"]["videos"]
    assert {int(v): s["views"] for v, s in videos.items() if s["views"]} == dict(views)
    assert {int(v): s["likes"] for v, s in videos.items() if s["likes"]} == dict(likes)
    assert {int(v): s["watch_seconds"] for v, s in videos.items() if s["watch_seconds"]} == {
        v: ms / 1000 for v, ms in watch_ms.items() if ms
    }
    bloggers = report["aggregates"]["blogger-analytics"]["bloggers"]
    for (blogger, index), counts in window_views.items():
        windows = {w["start"]: w for w in bloggers[str(blogger)]["windows"]}
        summary = windows[index * window]
        assert summary["views"] == sum(counts.values())
        best = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
        assert summary["top_videos"] == [list(item) for item in best]
    # Every video and every blogger of the catalogue shows up with this many events.
    assert len(bloggers) == params.bloggers


def test_ugc_counts_every_kind_on_its_own_topic() -> None:
    topology = load_topology(EXAMPLES / "ugc.yaml")
    report = run(topology, events=8000)
    kinds = report["aggregates"]["counters"]["kinds"]
    assert sum(kinds.values()) == 8000
    assert set(kinds) == {"click", "page_view", "custom", "watch_progress"}
    per_topic = report["consumers"]["counters"]["per_topic"]
    assert per_topic["clicks"] == kinds["click"]
    assert per_topic["watch-progress"] == kinds["watch_progress"]
    assert report["expect_ok"]


def test_report_has_every_documented_field() -> None:
    topology = video_site()
    report = run(topology)
    for field in (
        "events_produced",
        "events_consumed",
        "wall_seconds",
        "sim_seconds",
        "events_per_second",
        "latency_seconds",
        "partitions",
        "aggregates",
        "digest",
        "expect",
    ):
        assert field in report
    assert report["events_produced"] == report["events_consumed"] == EVENTS
    # 50,000 events per simulated second: 30,000 take 0.6 s of simulated time.
    assert report["sim_seconds"] == pytest.approx(0.6, abs=0.06)
    latency = report["latency_seconds"]
    # A source makes a linger's worth of events at once, which then wait up to a linger.
    linger = topology.producers["site"].linger
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= 2 * linger
    assert len(report["partitions"]) == 4
    assert sum(p["records"] for p in report["partitions"]) == EVENTS
    assert all(p["peak_depth"] <= p["capacity"] for p in report["partitions"])
    assert set(report["expect"]) == {"no_loss", "per_key_order", "totals_match"}


def test_no_loss_fails_when_the_pipeline_drops_records(monkeypatch: pytest.MonkeyPatch) -> None:
    append = Partition._append

    def lossy(self: Partition, records: Columns) -> int:
        if len(records) > 1:  # drop the last record of every batch
            records = Columns(records.keys[:-1], records.values[:-1], records.timestamps[:-1])
        return append(self, records)

    monkeypatch.setattr(Partition, "_append", lossy)
    report = run(video_site())
    assert not report["expect"]["no_loss"]["ok"]
    assert "producers sent" in report["expect"]["no_loss"]["detail"]
    assert not report["expect_ok"]


def test_per_key_order_fails_when_batches_are_reordered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    append = Partition._append

    def backwards(self: Partition, records: Columns) -> int:
        return append(
            self, Columns(records.keys[::-1], records.values[::-1], records.timestamps[::-1])
        )

    monkeypatch.setattr(Partition, "_append", backwards)
    report = run(video_site())
    assert not report["expect"]["per_key_order"]["ok"]
    assert "came after event" in report["expect"]["per_key_order"]["detail"]
    assert report["expect"]["no_loss"]["ok"]  # nothing lost, only reordered


def test_per_key_order_fails_when_a_key_is_spread_over_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from actors import Partitioner

    monkeypatch.setattr(Partitioner, "partition_for", lambda self, key: next(self._round_robin))
    monkeypatch.setattr(
        Partitioner, "partition_array", lambda self, keys: np.arange(len(keys)) % self.partitions
    )
    report = run(video_site())
    assert not report["expect"]["per_key_order"]["ok"]
    assert "not in its own" in report["expect"]["per_key_order"]["detail"]


LIKE = VIDEO_KINDS.index("like")


def test_totals_match_fails_when_a_processor_miscounts(monkeypatch: pytest.MonkeyPatch) -> None:
    process = VideoStats.process_columns

    def forgetful(self: VideoStats, events: Table) -> None:
        process(self, events.take(np.flatnonzero(events.columns["kind"] != LIKE)))

    monkeypatch.setattr(VideoStats, "process_columns", forgetful)
    report = run(video_site())
    assert not report["expect"]["totals_match"]["ok"]
    assert "video-stats: like totals 0" in report["expect"]["totals_match"]["detail"]
    assert report["expect"]["no_loss"]["ok"]


def test_ctrl_c_stops_cleanly_with_a_partial_report() -> None:
    pipeline = Pipeline.build(video_site(), REGISTRY, events=2_000_000)
    raised = []

    def interrupt_once(pipeline: Pipeline, now: float) -> None:
        if not raised and pipeline.events_consumed > 50_000:
            raised.append(now)
            signal.raise_signal(signal.SIGINT)

    report = run_pipeline(
        pipeline, on_refresh=interrupt_once, refresh_every=0, handle_sigint=True
    ).report.to_dict()
    assert raised
    assert report["status"] == "interrupted"
    assert 50_000 < report["events_consumed"] < 2_000_000
    assert report["expect"] == {}
    assert len(report["aggregates"]["video-stats"]["videos"]) > 0


def test_cli_run_writes_the_report_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "out" / "report.json"
    code = main(
        [
            "run",
            str(EXAMPLES / "video-site.yaml"),
            "--events",
            "20000",
            "--seed",
            "5",
            "--report",
            str(report_path),
            "--quiet",
            "--no-chart",
        ]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    assert (report["seed"], report["events_produced"], report["status"]) == (5, 20000, "completed")
    out = capsys.readouterr().out
    assert "expect no_loss: ok" in out
    assert report["digest"][:16] in out


def test_cli_run_exits_1_when_an_invariant_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(VideoStats, "totals", lambda self: {"view": -1})
    code = main(
        [
            "run",
            str(EXAMPLES / "video-site.yaml"),
            "--events",
            "5000",
            "--report",
            str(tmp_path / "r.json"),
            "--quiet",
            "--no-chart",
        ]
    )
    assert code == 1
    assert "expect totals_match: FAILED" in capsys.readouterr().out


def test_real_clock_runs_on_the_wall_clock() -> None:
    """Without a rate nothing sleeps, so the real clock costs the test no waiting."""
    topology = video_site()
    producer = attrs.evolve(topology.producers["site"], rate=None)
    topology = attrs.evolve(topology, clock="real", producers={"site": producer})
    report = run(topology, events=5000)
    assert report["clock"] == "real"
    assert report["expect_ok"]
    # On the wall clock, simulated time is real time: about what the run took.
    assert report["sim_seconds"] == pytest.approx(report["wall_seconds"], rel=0.5, abs=0.05)


def test_event_time_does_not_depend_on_the_clock_at_start() -> None:
    """Waiting on I/O before the run (Redis, say) lets autojump move the clock first."""
    pipeline = Pipeline.build(video_site(), REGISTRY, events=EVENTS)
    clock = trio.testing.MockClock(autojump_threshold=0)
    clock.jump(123.456)
    trio.run(pipeline.run, clock=clock)
    aggregates = {name: p.result() for name, p in pipeline.processors.items()}
    assert digest(aggregates) == run(video_site())["digest"]


def test_a_report_file_reads_back_as_the_report_that_wrote_it(tmp_path: Path) -> None:
    report = run_pipeline(Pipeline.build(video_site(), REGISTRY, events=EVENTS)).report
    path = tmp_path / "report.json"
    write_report(report, path)
    again = read_report(path)
    assert again == report
    assert again.to_dict() == json.loads(path.read_text())
    write_report(again, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_a_file_that_is_not_a_report_is_refused_by_the_reader() -> None:
    data = run(video_site())
    Report.from_dict(data)  # the file's form reads back
    with pytest.raises(cattrs.ClassValidationError) as caught:
        Report.from_dict({**data, "unknown": 1})
    assert cattrs.transform_error(caught.value) == ["extra fields found (unknown) @ $"]
