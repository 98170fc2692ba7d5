"""``ringflow validate`` and ``ringflow run`` refuse bad topology files with clear messages."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.cli import main
from topology import Topology, TopologyError

GOOD = """
name: t
topics:
  events: {partitions: 2, capacity: 100, key: video_id}
producers:
  site: {workload: video_site, topic: events, events: 100}
consumers:
  stats: {processor: video_stats, topic: events}
"""

NODES = """
nodes:
  a: {listen: "127.0.0.1:7501", producers: [site], topics: [events]}
  b: {listen: "127.0.0.1:7502", consumers: [stats]}
"""

CASES = [
    (
        GOOD + NODES + "checkpoint: {every: null, every_records: 1000}\n",
        "$.checkpoint.every: a topology with nodes needs epochs by time",
    ),
    ("name: [unclosed", "line 1, column 16: malformed YAML"),
    ("", "$: expected a mapping of topology fields, got empty"),
    ("- just\n- a list\n", "$: expected a mapping of topology fields, got a list"),
    (GOOD + "colour: red\n", "$: unknown field colour; allowed: name, topics"),
    (GOOD + "1: 2\n", "$: unknown field 1; allowed: name, topics"),
    (GOOD + "null: 2\n", "$: unknown field None; allowed: name, topics"),
    (
        GOOD.replace("key: video_id", "key: video_id, size: 3"),
        "$.topics.events: unknown field size",
    ),
    (
        GOOD.replace("partitions: 2", "partitions: 0"),
        "$.topics.events.partitions: must be >= 1, got 0",
    ),
    (
        GOOD.replace("capacity: 100", "capacity: -4"),
        "$.topics.events.capacity: must be >= 1 or 'dynamic', got -4",
    ),
    (
        GOOD.replace("capacity: 100", "capacity: lots"),
        "$.topics.events.capacity: expected a whole number of records or 'dynamic', got 'lots'",
    ),
    (
        GOOD.replace("events: 100}", "events: 100, instances: '2'}"),
        "$.producers.site.instances: expected a whole number, got str '2'",
    ),
    (
        GOOD.replace("workload: video_site", "workload: videos"),
        "$.producers.site.workload: unknown workload 'videos'; known: social, ugc, video_site",
    ),
    (
        GOOD.replace("processor: video_stats", "processor: stats"),
        "$.consumers.stats.processor: unknown processor 'stats'",
    ),
    (
        GOOD.replace("topic: events, events", "topic: evnts, events"),
        "$.producers.site.topic: no topic named 'evnts'; topics are: events",
    ),
    (
        GOOD
        + "  orphan: {processor: video_stats, topic: other}\n"
        "  # other exists but nobody writes to it\n".replace("  #", "#")
        + "",
        "$.consumers.orphan.topic: no topic named 'other'",
    ),
    (
        GOOD.replace("events: 100}", "events: 100, params: {vidoes: 5}}"),
        "$.producers.site.params: unknown field vidoes; allowed: videos, bloggers",
    ),
    (
        GOOD.replace("events: 100}", "events: 100, params: {videos: 5, bloggers: 9}}"),
        "$.producers.site.params.bloggers: cannot exceed videos (5)",
    ),
    (
        GOOD.replace("events: 100}", "rate: 10}"),
        "$.producers.site.events: required: say how many events (or give 'duration')",
    ),
    (GOOD + "clock: wall\n", "$.clock: must be one of: virtual, real; got 'wall'"),
    (
        GOOD.replace(
            "workload: video_site, topic: events", "workload: ugc, topics: {click: events}"
        ),
        "$.producers.site.topics: no topic for streams custom, page_view, watch_progress",
    ),
    (
        GOOD.replace(
            "processor: video_stats, topic: events",
            "processor: blogger_analytics, topic: events, params: {window: 0}",
        ),
        "$.consumers.stats.params.window: must be > 0 seconds, got 0.0",
    ),
]


@pytest.mark.parametrize(("text", "message"), CASES)
def test_validate_explains_the_problem_and_exits_2(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert " ".join(message.split()) in err


def test_every_problem_is_listed_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("partitions: 2", "partitions: 0") + "seed: 1.5\nextra: 1\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert "$.topics.events.partitions: must be >= 1, got 0" in err
    assert "$.seed: expected a whole number, got float 1.5" in err
    assert "$: unknown field extra" in err


def test_a_consumer_of_a_topic_nobody_writes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        GOOD.replace("topics:\n", "topics:\n  quiet: {}\n")
        + "  idle: {processor: video_stats, topic: quiet}\n"
    )
    assert main(["validate", str(path)]) == 2
    assert "$.consumers.idle.topic: no producer writes to topic 'quiet'" in capsys.readouterr().err


def test_run_refuses_a_bad_file_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("partitions: 2", "partitions: -1"))
    report = tmp_path / "report.json"
    assert main(["run", str(path), "--report", str(report), "--quiet"]) == 2
    assert "$.topics.events.partitions: must be >= 1, got -1" in capsys.readouterr().err
    assert not report.exists()


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the file: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["video-site.yaml", "ugc.yaml"])
def test_examples_are_valid(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).parent.parent / "topology" / "examples" / name
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid topology" in out
    assert "1 producer," in out  # counted in words that agree with the number


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"topics": {"it's": {"partitions": 0}}}, "$.topics.it's.partitions: must be >= 1, got 0"),
        (
            {"topics": {"a @ b": {"capacity": "x"}}},
            "$.topics.a @ b.capacity: expected a whole number of records or 'dynamic', got 'x'",
        ),
        (
            {"topics": {"x]y[z": {"partitions": "q"}}},
            "$.topics.x]y[z.partitions: expected a whole number, got str 'q'",
        ),
        ({"topics": {1: {}}}, "$.topics[1]: expected a string, got int 1"),
        (
            {"topics": {datetime.date(2020, 1, 2): {}}},
            "$.topics[2020-01-02]: expected a string, got date datetime.date(2020, 1, 2)",
        ),
        (
            {"consumers": {"stats": {"processor": "video_stats", "topics": ["events", 7]}}},
            "$.consumers.stats.topics[1]: expected a string, got int 7",
        ),
        ({"nodes": {"n": [1]}}, "$.nodes.n: expected a mapping"),
    ],
)
def test_a_problem_names_its_place_as_the_file_writes_it(
    change: dict[str, Any], problem: str
) -> None:
    """Keys read as the file writes them (``.events``, ``[1]``), whatever their characters."""
    data = yaml.safe_load(GOOD)
    for section, entries in change.items():
        data.setdefault(section, {}).update(entries)
    with pytest.raises(TopologyError) as info:
        Topology.from_dict(data, "t")
    assert info.value.problems == [problem]
