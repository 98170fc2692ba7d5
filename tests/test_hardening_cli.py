"""What a user gets for a mistake: one clear line and exit code 2 before anything runs, and a
clear failure, never a hang, for a run that cannot go on."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from actors import RecordBatch
from sim.cli import build_parser, main
from sim.cli.summary import print_summary
from sim.report import Report
from sim.resume import hold, let_go
from sim.workloads import VideoEvent
from tests.test_split import run_nodes, split_data
from topology import ConsumerTally, Topology

ROOT = Path(__file__).resolve().parent.parent
VIDEO_SITE = ROOT / "topology" / "examples" / "video-site.yaml"

GOOD = """\
name: t
topics:
  events: {partitions: 2, capacity: 100, key: video_id}
producers:
  site: {workload: video_site, topic: events, events: 100}
consumers:
  stats: {processor: video_stats, topic: events}
"""


def validate(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]) -> str:
    """Validate ``text`` as a file; return standard error (the exit code must be 2)."""
    path = tmp_path / "t.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    assert main(["validate", str(path)]) == 2
    return capsys.readouterr().err


# -- a file that is not UTF-8 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["validate"], ["run", "--quiet", "--no-log"], ["node", "--node", "broker", "--no-log"]],
    ids=["validate", "run", "node"],
)
def test_a_file_that_is_not_utf8_is_one_line_naming_the_byte_and_exit_2(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("name: t", "name: caf\xe9", 1).encode("latin-1"))
    assert main([command[0], str(path), *command[1:]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"{path}: line 1, column 10 (byte 9): byte 0xe9 is not UTF-8 text; save the file as UTF-8"
    ]
    assert not list(tmp_path.glob("reports/*"))


# -- duplicate keys, and every problem of a block ------------------------------------------------


def test_a_key_given_twice_is_refused_with_its_path_and_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace(
        "events: {partitions: 2, capacity: 100, key: video_id}",
        "events:\n    partitions: 2\n    capacity: 100\n    partitions: 3",
    ).replace("name: t\n", "name: t\nseed: 1\nseed: 2\n")
    err = validate(tmp_path, text, capsys)
    assert "2 problems" in err
    assert "$.seed: given twice (lines 2 and 3)" in err
    assert "$.topics.events.partitions: given twice (lines 6 and 8)" in err


def test_a_key_given_twice_on_one_line_and_inside_params_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("events: 100}", "events: 100, params: {videos: 5, videos: 50}}")
    err = validate(tmp_path, text, capsys)
    assert "$.producers.site.params.videos: given twice (line 5)" in err


def test_every_problem_of_a_params_block_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace(
        "events: 100}",
        "events: 100, params: {videos: 0, users: 0, zipf: -1, max_watch_seconds: 10, "
        "mix: {view: -1}}}",
    ).replace("processor: video_stats", "processor: blogger_analytics, params: {window: 0, top: 0}")
    err = validate(tmp_path, text, capsys)
    assert "7 problems" in err
    for problem in (
        "$.producers.site.params.videos: must be >= 1, got 0",
        "$.producers.site.params.users: must be >= 1, got 0",
        "$.producers.site.params.zipf: must be >= 0, got -1",
        "$.producers.site.params.max_watch_seconds: must be >= 30, got 10",
        "$.producers.site.params.mix: weights must be >= 0 and not all zero",
        "$.consumers.stats.params.window: must be > 0 seconds, got 0",
        "$.consumers.stats.params.top: must be >= 1, got 0",
    ):
        assert problem in err


def test_every_problem_of_a_topic_or_producer_block_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("partitions: 2, capacity: 100", "partitions: 0, capacity: 0, retention: -1")
    text = text.replace("events: 100}", "events: -1, instances: 0, linger: -1, duration: 5}")
    err = validate(tmp_path, text, capsys)
    for problem in (
        "$.topics.events.partitions: must be >= 1, got 0",
        "$.topics.events.capacity: must be >= 1 or 'dynamic', got 0",
        "$.topics.events.retention: must be >= 0, got -1",
        "$.producers.site.events: must be >= 0, got -1",
        "$.producers.site.instances: must be >= 1, got 0",
        "$.producers.site.linger: must be >= 0, got -1",
        "$.producers.site.duration: give either 'events' or 'duration', not both",
        "$.producers.site.rate: required with 'duration'",
    ):
        assert problem in err


# -- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "partitions: 2",
            "partitions: 100000000",
            "$.topics.events.partitions: at most 1,024 partitions per topic, got 100,000,000: "
            "each partition is a ring",
        ),
        (
            "capacity: 100",
            "capacity: 100000000",
            "$.topics: at most 10,000,000 records in all rings (partitions x (capacity + "
            "retention), over the topics), got 200,000,000: a record held in a ring takes",
        ),
        (
            "capacity: 100",
            "capacity: 100, retention: 9000000",
            "$.topics: at most 10,000,000 records in all rings",
        ),
        (
            "capacity: 100",
            "capacity: dynamic, retention: 9000000",
            "$.topics: at most 10,000,000 records in all rings",
        ),
        (
            "events: 100}",
            "events: 100, instances: 100000000}",
            "$.producers.site.instances: at most 256 instances, got 100,000,000: each instance",
        ),
        (
            "topic: events}",
            "topic: events, instances: 100000000}",
            "$.consumers.stats.instances: at most 256 instances, got 100,000,000",
        ),
        (
            "events: 100}",
            "events: 10000000000000}",
            "$.producers.site.events: at most 1,000,000,000,000 events, got 10,000,000,000,000: "
            "at a million events a second",
        ),
        (
            "events: 100}",
            "rate: 1000000, duration: 100000000}",
            "$.producers.site.duration: at most 1,000,000,000,000 events (duration x rate)",
        ),
        (
            "events: 100}",
            "events: 100, max_batch: 100000000}",
            "$.producers.site.max_batch: at most 100,000 records per batch",
        ),
        ("events: 100}", "events: 100, rate: .inf}", "$.producers.site.rate: expected a finite"),
        (
            "events: 100}",
            "events: 100, params: {videos: 100000000}}",
            "$.producers.site.params.videos: at most 1,000,000 videos, got 100,000,000: every "
            "producer keeps the catalogue in memory",
        ),
        (
            "events: 100}",
            "events: 100, params: {users: 100000000000000000000}}",
            "$.producers.site.params.users: at most 9,007,199,254,740,992 users",
        ),
    ],
)
def test_absurd_sizes_are_refused_with_the_limit_and_its_reason(
    old: str, new: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert old in GOOD
    err = " ".join(validate(tmp_path, GOOD.replace(old, new, 1), capsys).split())
    assert " ".join(problem.split()) in err


def test_run_refuses_absurd_sizes_before_building_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(GOOD.replace("partitions: 2", "partitions: 100000000"))
    assert main(["run", str(path), "--quiet", "--no-log"]) == 2
    assert "at most 1,024 partitions" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


# -- topics nothing consumes, and runs that cannot progress ----------------------------------------


@pytest.mark.parametrize(
    ("capacity", "why"),
    [("100", "block for good once its rings are full"), ("dynamic", "block while no consumer")],
)
def test_a_topic_nothing_consumes_is_refused_unless_allowed(
    capacity: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("capacity: 100", f"capacity: {capacity}")
    unconsumed = text.split("consumers:")[0] + "consumers: {}\n"
    err = " ".join(validate(tmp_path, unconsumed, capsys).split())
    assert (
        "$.topics.events: no consumer reads this topic, so its producers (site) would " + why
    ) in err
    assert "set 'allow_unconsumed: true' if only taps read it" in err
    allowed = unconsumed.replace("key: video_id", "key: video_id, allow_unconsumed: true")
    path = tmp_path / "allowed.yaml"
    path.write_text(allowed)
    assert main(["validate", str(path)]) == 0


@pytest.mark.parametrize("capacity", ["100", "dynamic"])
def test_a_run_whose_producers_cannot_progress_fails_as_stalled(
    capacity: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing reads the topic and its rings fill (a dynamic ring takes nothing without a
    consumer): the run stops after 10 simulated seconds instead of spinning for ever."""
    path = tmp_path / "stuck.yaml"
    path.write_text(
        GOOD.replace("capacity: 100", f"capacity: {capacity}")
        .replace("key: video_id", "key: video_id, allow_unconsumed: true")
        .replace("events: 100}", "events: 100000, rate: 1000}")
        .split("consumers:")[0]
        + "consumers: {}\n"
    )
    report = tmp_path / "report.json"
    code = main(["run", str(path), "--quiet", "--no-log", "--no-chart", "--report", str(report)])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1
    data = json.loads(report.read_text())
    assert data["status"] == "failed"
    assert data["error"].startswith(
        "stalled: no record accepted or committed for 10 s of the run's clock; producers wait "
        "to send to events[0]"
    )
    assert "no consumer group reads topic 'events'" in data["error"]
    assert data["events_produced"] < 100_000
    assert "run failed: stalled:" in out


def test_a_slow_producer_is_not_a_stall(tmp_path: Path) -> None:
    """An event every 20 simulated seconds: no progress for long stretches, but nobody waits."""
    path = tmp_path / "slow.yaml"
    path.write_text(GOOD.replace("events: 100}", "events: 3, rate: 0.05}"))
    report = tmp_path / "report.json"
    assert (
        main(["run", str(path), "--quiet", "--no-log", "--no-chart", "--report", str(report)]) == 0
    )
    data = json.loads(report.read_text())
    assert data["status"] == "completed"
    assert data["sim_seconds"] >= 40


# -- events that do not fit the processor ----------------------------------------------------------


def test_a_processor_that_cannot_read_the_workloads_events_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = " ".join(
        validate(
            tmp_path, GOOD.replace("processor: video_stats", "processor: ugc_counters"), capsys
        ).split()
    )
    assert (
        "$.consumers.stats.processor: processor 'ugc_counters' accepts Click, PageView, "
        "CustomEvent, WatchProgress events, but topic 'events' carries VideoEvent events from "
        "workload 'video_site' (producer 'site'); use a processor that accepts them "
        "(blogger_analytics, clickhouse, redis_stream, video_stats, webhook) or read another "
        "topic"
    ) in err


def test_a_video_processor_on_a_ugc_topic_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "topology" / "examples" / "ugc.yaml").read_text()
    text = text.replace("processor: ugc_counters", "processor: video_stats", 1)
    err = " ".join(validate(tmp_path, text, capsys).split())
    assert "processor 'video_stats' accepts VideoEvent events, but topic 'clicks' carries " in err
    assert "Click events from workload 'ugc' (producer 'frontend'); use a processor that " in err
    assert "accepts them (clickhouse, redis_stream, ugc_counters, webhook)" in err


# -- records without a key -------------------------------------------------------------------------


def test_records_without_a_key_over_several_partitions_pass_the_order_check(
    tmp_path: Path,
) -> None:
    path = tmp_path / "unkeyed.yaml"
    path.write_text(
        GOOD.replace("partitions: 2, capacity: 100, key: video_id", "partitions: 3, capacity: 50")
        .replace("events: 100}", "events: 5000, instances: 2, max_batch: 7}")
        .replace("topic: events}", "topic: events, instances: 2}")
    )
    report = tmp_path / "report.json"
    assert (
        main(["run", str(path), "--quiet", "--no-log", "--no-chart", "--report", str(report)]) == 0
    )
    data = json.loads(report.read_text())
    assert data["expect"]["per_key_order"] == {
        "ok": True,
        "detail": "every key's events arrived in the order sent",
    }
    assert len({p["partition"] for p in data["partitions"] if p["records"]}) == 3


def unkeyed_batch(partition: int, seqs: list[int], offset: int) -> RecordBatch:
    events = [VideoEvent("view", 1, 2, 3, 0.0, 0, 0, seq) for seq in seqs]
    return RecordBatch("events", partition, offset, [None] * len(seqs), events, [0.0] * len(seqs))


def test_unkeyed_records_still_must_keep_their_order_within_a_partition() -> None:
    tally = ConsumerTally("stats", ("events",), 1, True)
    tally.observe("events", unkeyed_batch(0, [0, 2], 0), 0.0)
    tally.observe("events", unkeyed_batch(1, [1, 3], 0), 0.0)  # round robin: fine
    assert tally.order_violations == 0
    tally.observe("events", unkeyed_batch(0, [1], 2), 0.0)  # older than 2, in partition 0
    assert tally.order_violations == 1
    assert (
        tally.first_violation == "topic 'events', key None: event 1 of source 0 came after event 2"
    )


# -- numeric options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "t.yaml", "--events", "-5"], "argument --events: must be at least 0, got -5"),
        (["run", "t.yaml", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["node", "t.yaml", "--node", "b", "--seed", "-1"], "--seed: must be at least 0, got -1"),
        (
            ["run", "t.yaml", "--events", "10_000_000_000_000"],
            "argument --events: must be at most 1,000,000,000,000, got 10,000,000,000,000",
        ),
        (["tap", "ws://h:1/tap/t", "--partition", "-3"], "--partition: must be at least 0, got -3"),
        (["tap", "ws://h:1/tap/t", "--limit", "0"], "--limit: must be at least 1, got 0"),
        (["tap", "ws://h:1/tap/t", "--wait", "-1"], "--wait: must be a finite number >= 0, got -1"),
        (["logs", "--limit", "0"], "--limit: must be at least 1, got 0"),
        (["checkpoints", "s", "--epoch", "0"], "--epoch: must be at least 1, got 0"),
        (["bench", "--records", "0"], "--records: must be at least 1, got 0"),
        (["bench", "--memory-records", "-1"], "--memory-records: must be at least 0, got -1"),
        (["bench", "--tap-seconds", "nan"], "--tap-seconds: must be a finite number >= 0, got nan"),
        (["run", "t.yaml", "--events", "ten"], "--events: expected a whole number, got 'ten'"),
    ],
)
def test_numeric_options_name_their_real_bounds(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_negative_tap_offset_is_refused_with_its_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["tap", "ws://127.0.0.1:1/tap/events", "--from", "-5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "--from '-5': expected earliest, latest or an offset (0 or more)"
    )


def test_the_bounds_themselves_are_accepted() -> None:
    parser = build_parser()
    run = parser.parse_args(["run", "t.yaml", "--events", "0", "--seed", "0"])
    assert (run.events, run.seed) == (0, 0)
    tap = parser.parse_args(["tap", "ws://h:1/tap/t", "--partition", "0", "--wait", "0"])
    assert (tap.partition, tap.wait) == (0, 0.0)
    bench = parser.parse_args(["bench", "--memory-records", "0", "--tap-seconds", "0"])
    assert (bench.memory_records, bench.tap_seconds) == (0, 0.0)


# -- the broker's summary --------------------------------------------------------------------------


def summary(report: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=300)
    print_summary(console, Report.from_dict(report), Path("r.json"))
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


async def test_the_broker_node_summary_shows_what_its_rings_did_and_no_digest() -> None:
    topology = Topology.from_dict(split_data())
    reports = await run_nodes(topology, 6000)
    broker = reports["broker"]
    text = summary(broker)
    assert "digest" not in text
    assert broker["digest"] is None  # nothing to digest where no consumer runs
    assert reports["producers"]["digest"] is None
    assert "events produced" not in text
    assert "events consumed" not in text
    rows = {
        cells[0]: cells[1]
        for line in text.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2
    }
    assert rows["records accepted"] == "6,000"
    assert rows["records delivered to group video-stats"] == "6,000"
    assert rows["records delivered to group blogger-analytics"] == "6,000"
    assert rows["records in rings"] == "0"
    for part in broker["partitions"]:
        assert part["delivered"] == {
            "video-stats": part["records"],
            "blogger-analytics": part["records"],
        }
        assert rows[f"events[{part['partition']}]"] == (
            f"{part['records']:,} accepted, {part['records']:,} delivered to each group, 0 in "
            f"ring (peak {part['peak_depth']:,} of 20,000)"
        )
    assert sum(p["records"] for p in broker["partitions"]) == 6000
    consumers = summary(reports["consumers"])
    assert "digest of aggregates" in consumers
    assert "records accepted" not in consumers


# -- output into a pipe ----------------------------------------------------------------------------


def test_output_into_a_pipe_is_never_wrapped_or_cut(tmp_path: Path) -> None:
    state = tmp_path / ("a-state-folder-with-a-long-name-" * 3)
    report = tmp_path / "r.json"
    args = ["--events", "300000", "--no-log", "--quiet", "--no-chart", "--report", str(report)]
    assert main(["run", str(VIDEO_SITE), "--state", str(state), *args]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_TERMINAL", "TTY_INTERACTIVE")}
    env["COLUMNS"] = "40"
    shown = subprocess.run(
        [sys.executable, "-m", "sim", "checkpoints", str(state)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout
    assert "…" not in shown
    header = shown.splitlines()[0]
    assert re.fullmatch(
        rf"{re.escape(str(state))}/checkpoints\.sqlite3: topology 'video-site', schema \d+, "
        r"fingerprint [0-9a-f]{12}",
        header,
    )
    assert "300,000" in shown
    final = [line for line in shown.splitlines() if " completed " in line]
    assert len(final) == 1
    assert "300,000" in final[0]


# -- the README ------------------------------------------------------------------------------------


def test_the_readme_writes_reports_only_where_git_ignores_them() -> None:
    readme = (ROOT / "README.md").read_text()
    paths = re.findall(r"--report (\S+)", readme)
    assert paths
    for path in paths:
        assert path.startswith("reports/"), path
    assert "/reports/" in (ROOT / ".gitignore").read_text().splitlines()


# -- what validate must catch so that run never fails on it --------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "name: t\x00x\n", "the control character U+0000 cannot appear in a topology", id="nul"
        ),
        pytest.param(
            "name: t\x07x\n", "the control character U+0007 cannot appear in a topology", id="bel"
        ),
        pytest.param(
            GOOD + "seed: " + "[" * 600 + "]" * 600 + "\n", "nested too deeply", id="deep-list"
        ),
        pytest.param(
            GOOD.replace("key: video_id", "key: nope"),
            "$.topics.events.key: VideoEvent events of workload 'video_site' have no field "
            "'nope'; their fields are kind, user_id, video_id",
            id="key-not-a-field",
        ),
        pytest.param(
            GOOD + 'redis: {url: "redis://u:secretpw@[::1"}\n',
            "$.redis.url: is not a usable URL: Invalid IPv6 URL",
            id="redis-ipv6",
        ),
        pytest.param(GOOD + "seed: -1\n", "$.seed: must be >= 0, got -1", id="seed"),
        pytest.param(
            GOOD + 'redis: {url: "redis://:99999999"}\n',
            "$.redis.url: is not a usable URL: Port out of range",
            id="redis-port",
        ),
    ],
)
def test_validate_catches_what_would_fail_a_run_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    err = validate(tmp_path, text, capsys)
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert problem in line
    assert "secretpw" not in err


def test_a_report_name_too_long_and_a_tap_port_out_of_range_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / ("a" * 300 + ".json")
    assert (
        main(["run", str(VIDEO_SITE), "--events", "100", "--no-log", "--report", str(report)]) == 2
    )
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.endswith("File name too long; choose another path with --report")
    assert main(["tap", "ws://127.0.0.1:99999/tap/events"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "is not a ws://HOST:PORT/tap/TOPIC address: Port out of range" in line


@pytest.mark.parametrize("value", ["[]", "null", "5"])
def test_a_section_that_is_not_a_mapping_is_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    err = validate(tmp_path, GOOD + f"redis: {value}\ngateway: {value}\n", capsys)
    assert "$.redis: expected a mapping" in err
    assert "$.gateway: expected a mapping" in err
    assert "Error" not in err  # no exception's name for a user's mistake


def test_messages_of_the_lower_layers_get_the_flag_that_sets_their_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The builder names a peer as a setting; the CLI says which flag gave it."""
    split = ROOT / "topology" / "examples" / "video-site-split.yaml"
    args = ["node", str(split), "--node", "broker", "--peer", "db=127.0.0.1:1"]
    assert main([*args, "--state", str(tmp_path / "s")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--peer db: no node named 'db'; nodes are: broker, consumers, producers" in line
    assert "peers." not in line
    listen = ["node", str(split), "--node", "broker", "--listen", "1.2.3.4:99999"]
    assert main([*listen, "--state", str(tmp_path / "s")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(": --listen: port 99999 of '1.2.3.4:99999' is not between 1 and 65535")
    whole = ["node", str(VIDEO_SITE), "--node", "broker", "--state", str(tmp_path / "w")]
    assert main(whole) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(
        "$.nodes: the topology has no nodes, so no part of it runs as a node; run it whole "
        "with 'ringflow run'"
    )


def test_a_state_folder_another_process_holds_is_refused_and_free_once_let_go(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(GOOD)
    state = tmp_path / "state"
    command = [sys.executable, "-m", "sim", "run", str(path), "--state", str(state)]
    command += ["--no-log", "--quiet", "--no-chart", "--report", str(tmp_path / "r.json")]
    hold(state)  # as a run in this process would, while it runs
    try:
        refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        let_go(state)
    assert refused.returncode == 2
    assert f"the state folder {state} is in use by another ringflow process (pid " in (
        refused.stderr
    )
    assert not (tmp_path / "r.json").exists()
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
