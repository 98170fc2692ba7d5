"""Logging to a real redis-server started on a unix socket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from actors import RedisLogger, counters_key, redact, stream_key
from sim.cli import main
from sim.redis_logging import LoggingUnavailable, LogSettings
from sim.redis_server import EmbeddedRedis
from sim.resume import open_checkpoints
from sim.run import REGISTRY, load_topology, run_pipeline
from tests.examples import video_site_in_small_batches
from topology import CheckpointStore, Pipeline
from topology.snapshot import decode

EXAMPLES = Path(__file__).parent.parent / "topology" / "examples"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    started = EmbeddedRedis.start(tmp_path / "redis")
    yield started
    started.stop(save=False)


def client(server: EmbeddedRedis) -> Any:
    return redis.Redis(unix_socket_path=str(server.socket_path), decode_responses=True)


def logged_run(url: str, events: int = 30_000, **kwargs: Any) -> dict[str, Any]:
    pipeline = Pipeline.build(video_site_in_small_batches(), REGISTRY, events=events)
    settings = LogSettings(
        url, "run-1", **{k: v for k, v in kwargs.items() if k in ("maxlen", "fail_if_unavailable")}
    )
    return run_pipeline(
        pipeline, logging=settings, **{k: v for k, v in kwargs.items() if k == "on_refresh"}
    ).report.to_dict()


def test_every_category_lands_with_its_fields(server: EmbeddedRedis) -> None:
    report = logged_run(server.url)
    db = client(server)
    incoming = db.xrange(stream_key("run-1", "incoming"))
    outgoing = db.xrange(stream_key("run-1", "outgoing"))
    meta = [fields for _, fields in db.xrange(stream_key("run-1", "meta"))]
    assert set(incoming[0][1]) == {"topic", "partition", "offset", "records"}
    assert set(outgoing[0][1]) == {"group", "member", "topic", "partition", "offset", "records"}
    events = [m["event"] for m in meta]
    assert events[0] == "run_started"
    assert events[-1] == "run_ended"
    assert "rebalance" in events
    assert meta[-1]["digest"] == report["digest"]
    assert db.xlen(stream_key("run-1", "errors")) == 0
    assert db.hget("ringflow:run:run-1", "status") == "completed"
    assert db.zscore("ringflow:runs", "run-1") is not None


def test_counters_equal_the_report(server: EmbeddedRedis) -> None:
    report = logged_run(server.url)
    counters = {k: int(v) for k, v in client(server).hgetall(counters_key("run-1")).items()}
    assert counters["incoming:records"] == report["events_produced"] == 30_000
    assert counters["outgoing:records"] == sum(c["records"] for c in report["consumers"].values())
    assert counters["incoming:entries"] == report["logging"]["written"]["incoming"]
    assert counters["incoming:dropped"] == 0
    assert (
        sum(int(f["records"]) for _, f in client(server).xrange(stream_key("run-1", "incoming")))
        == 30_000
    )


def test_streams_are_trimmed_near_maxlen(server: EmbeddedRedis) -> None:
    report = logged_run(server.url, events=200_000, maxlen=100)
    length = client(server).xlen(stream_key("run-1", "outgoing"))
    assert report["logging"]["written"]["outgoing"] > 400
    # Approximate trimming removes whole nodes of 100 entries, so a little more is left.
    assert 100 <= length < 300


def test_redis_killed_and_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    """Redis is killed mid-run and started again (empty) once the logger has seen a write fail;
    the run's result does not change, and logging resumes, registering the run again."""
    folder = tmp_path / "redis"
    servers = [EmbeddedRedis.start(folder)]
    loggers: list[RedisLogger] = []
    killed = threading.Event()

    def chaos(pipeline: Pipeline, now: float) -> None:
        if not killed.is_set() and pipeline.events_consumed > 60_000:
            servers[0].process.kill()
            servers[0].process.wait()
            killed.set()

    def restart_after_a_failure() -> None:
        # The logger may see the failure during the run or in its final flush (given 60 s).
        if not killed.wait(60):
            return
        deadline = time.monotonic() + 60
        while loggers[0].statistics().failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        servers.append(EmbeddedRedis.start(folder))

    restarter = threading.Thread(target=restart_after_a_failure)
    restarter.start()
    try:
        topology = load_topology(EXAMPLES / "video-site.yaml")
        pipeline = Pipeline.build(topology, REGISTRY, events=200_000)
        report = run_pipeline(
            pipeline,
            logging=LogSettings(servers[0].url, "run-1", flush_timeout=60),
            on_refresh=chaos,
            refresh_every=0,
            on_logger=loggers.append,
        ).report.to_dict()
        restarter.join()
        assert len(servers) == 2
        plain = run_pipeline(Pipeline.build(topology, REGISTRY, events=200_000)).report.to_dict()
        assert report["status"] == "completed"
        assert report["digest"] == plain["digest"]
        assert report["expect_ok"]
        assert report["logging"]["failures"] >= 1
        assert report["logging"]["unwritten"] == 0
        assert "Error" in report["logging"]["last_error"]
        # Logging resumed on the new server: the end of the run is there, and the run is
        # registered there again.
        db = client(servers[-1])
        events = [f["event"] for _, f in db.xrange(stream_key("run-1", "meta"))]
        assert events[-1] == "run_ended"
        assert db.hget("ringflow:run:run-1", "status") == "completed"
        assert db.hget("ringflow:run:run-1", "topology") == "video-site"
        assert db.zscore("ringflow:runs", "run-1") is not None
    finally:
        killed.set()
        restarter.join()
        for server in servers:
            server.stop(save=False)


def test_unreachable_redis_warns_or_fails_as_configured(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nothing.sock"
    report = logged_run(url)
    assert report["status"] == "completed"
    assert report["logging"]["enabled"] is False
    assert f"Redis at {url} is unavailable: cannot connect" in report["logging"]["reason"]
    with pytest.raises(LoggingUnavailable, match="is unavailable: cannot connect"):
        logged_run(url, fail_if_unavailable=True)


def test_wrong_password_is_named_without_showing_it(server: EmbeddedRedis) -> None:
    client(server).config_set("requirepass", "right")
    url = f"unix://default:Pa55-not-this@{server.socket_path}"
    try:
        report = logged_run(url)
    finally:
        redis.Redis(unix_socket_path=str(server.socket_path), password="right").config_set(
            "requirepass", ""
        )
    reason = report["logging"]["reason"]
    assert "authentication failed: check the user and password in the URL" in reason
    assert "Pa55-not-this" not in reason
    assert "default:***@" in reason


def test_a_read_only_replica_is_explained(server: EmbeddedRedis) -> None:
    client(server).replicaof("127.0.0.1", "1")  # a replica of nothing: writes are refused
    try:
        report = logged_run(server.url)
    finally:
        client(server).replicaof("NO", "ONE")
    assert "read-only replica: point redis.url at the primary" in report["logging"]["reason"]


def test_a_full_buffer_drops_low_value_entries_first() -> None:
    logger = RedisLogger(client=None, run_id="r", capacity=4)
    logger.emit("errors", event="boom")
    logger.emit("meta", event="start")
    logger.emit("incoming", 10)
    logger.emit("outgoing", 10)
    logger.emit("incoming", 10)  # full: the oldest incoming goes
    logger.emit("errors", event="again")  # full: the other incoming goes
    logger.emit("meta", event="more")  # full: outgoing goes
    logger.emit("errors", event="third")  # full: only meta and errors left, meta goes first
    stats = logger.statistics()
    assert stats.dropped == {"incoming": 2, "outgoing": 1, "errors": 0, "meta": 1}
    assert stats.pending == 4


def test_redact_hides_passwords() -> None:
    assert redact("redis://user:secret@host:6380/0") == "redis://user:***@host:6380/0"
    assert redact("redis://host:6379") == "redis://host:6379"
    assert redact("redis://:secret@host") == "redis://:***@host"
    assert redact("redis://u:p@ss@host:bad") == "redis://u:***@host:bad"


def test_logged_text_that_looks_like_a_number_is_printed_as_it_was() -> None:
    from sim.logs import field_value

    assert [field_value(t) for t in ("7", "-3", "0.25", "12345678901234567890")] == [
        7,
        -3,
        0.25,
        12345678901234567890,
    ]
    assert [field_value(t) for t in ("007", "1e5", "nan", "inf", "+4", "1_000")] == [
        "007",
        "1e5",
        "nan",
        "inf",
        "+4",
        "1_000",
    ]


def test_ringflow_logs_reads_what_a_run_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code = main(
        [
            "run",
            str(EXAMPLES / "video-site.yaml"),
            "--events",
            "20000",
            "--state",
            str(state),
            "--quiet",
            "--no-chart",
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    capsys.readouterr()
    assert main(["logs", "--state", str(state), "--category", "incoming"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert {line["category"] for line in lines} == {"incoming"}
    assert lines[0]["run"] == report["logging"]["run_id"]
    assert sum(line["records"] for line in lines) == 20_000
    assert "20,000" in captured.err  # the counters table
    assert main(["logs", "--state", str(state), "--run", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("on_unavailable", "code", "message"),
    [("warn", 0, "not logged: Redis at"), ("fail", 2, "is unavailable: cannot connect")],
)
def test_cli_warns_or_refuses_when_redis_is_unreachable(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    on_unavailable: str,
    code: int,
    message: str,
) -> None:
    text = (EXAMPLES / "video-site.yaml").read_text() + (
        f"\nredis:\n  url: unix://{tmp_path}/absent.sock\n  on_unavailable: {on_unavailable}\n"
    )
    path = tmp_path / "t.yaml"
    path.write_text(text)
    report = tmp_path / "r.json"
    result = main(
        ["run", str(path), "--events", "5000", "--quiet", "--no-chart", "--report", str(report)]
    )
    captured = capsys.readouterr()
    assert result == code
    assert message in " ".join((captured.out + captured.err).split())
    assert report.exists() == (code == 0)


def test_a_malformed_url_is_reported_without_its_password(tmp_path: Path) -> None:
    report = logged_run("redis://user:Se-cret@host:notaport/0")
    reason = report["logging"]["reason"]
    assert "redis://user:***@" in reason or "not a Redis URL" in reason
    assert "Se-cret" not in reason
    assert report["status"] == "completed"


def test_the_quick_packer_packs_as_redis_py_does() -> None:
    from actors import make_client

    client = make_client("redis://127.0.0.1:1/0")
    pool = client.connection_pool
    quick = pool.make_connection()
    plain = type(quick).__mro__[1](**pool.connection_kwargs)
    for args in [
        ("XADD", "ringflow:run:é", "MAXLEN", "~", 100000, "5-1", "topic", "events", "offset", 7),
        ("HSET", b"key", "n", -3, "x", 2**62),
        ("HSET", "key", "at", 1.5, "v", 0.1 + 0.2),  # floats: redis-py's own path
    ]:
        assert b"".join(quick.pack_command(*args)) == b"".join(plain.pack_command(*args))


def test_an_epoch_is_written_only_once_the_log_holds_its_records(
    server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run resumed from an epoch never logs its records again: had the log not held them
    when the epoch was written, a crash just then would have lost their entries for good.
    (Records the producers still buffer are in the epoch too, but not yet in a ring: they
    are logged once a partition takes them, after a resume as well.)"""
    db = client(server)
    seen: list[tuple[int, int]] = []
    write = CheckpointStore.write

    def checked(store: CheckpointStore, snapshot: Any) -> Any:
        info = write(store, snapshot)
        logged = int(db.hget(counters_key("run-1"), "incoming:records") or 0)
        accepted = sum(
            decode(kind, data).end_offset  # type: ignore[attr-defined]
            for (kind, _), data in snapshot.parts.items()
            if kind == "partition"
        )
        seen.append((accepted, logged))
        return info

    monkeypatch.setattr(CheckpointStore, "write", checked)
    pipeline = Pipeline.build(video_site_in_small_batches(), REGISTRY, events=200_000)
    settings, pipeline = open_checkpoints(pipeline, tmp_path / "state")
    run_pipeline(pipeline, checkpoints=settings, logging=LogSettings(server.url, "run-1"))
    assert len(seen) >= 4
    assert [logged >= accepted for accepted, logged in seen] == [True] * len(seen), seen
