"""Checkpoints that can be trusted: damaged epochs, SIGTERM, the report's path, resumed runs."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import yaml

import sim.run
from sim.cli import main
from sim.resume import open_checkpoints
from sim.run import REGISTRY, load_topology, run_pipeline
from tests.test_split import epochs_in
from topology import CheckpointSettings, CheckpointStore, Pipeline, Snapshot, Topology
from topology.checkpoint import FILE_NAME
from topology.snapshot import ProcessorPart, encode

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "topology" / "examples"
VIDEO_SITE = EXAMPLES / "video-site.yaml"
EVENTS = 60_000

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def _wide_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines printed are not wrapped (the assertions read whole lines)."""
    monkeypatch.setenv("COLUMNS", "250")


def topology() -> Topology:
    return load_topology(VIDEO_SITE)


@functools.cache
def reference(events: int = EVENTS) -> dict[str, Any]:
    """The report of an uninterrupted run without checkpoints."""
    return run_pipeline(Pipeline.build(topology(), REGISTRY, events=events)).report.to_dict()


def fingerprint(events: int = EVENTS) -> str:
    return Pipeline.build(topology(), REGISTRY, events=events).fingerprint


def run_with_state(state: Path, events: int = EVENTS, **kwargs: Any) -> dict[str, Any]:
    pipeline = Pipeline.build(topology(), REGISTRY, events=events)
    checkpoints, pipeline = open_checkpoints(pipeline, state)
    return run_pipeline(pipeline, checkpoints=checkpoints, **kwargs).report.to_dict()


def rate_of(events: int, wall: float) -> Any:
    """What a report's ``events_per_second`` may be, given its ``wall_seconds``: wall time is
    rounded to the microsecond, the rate to 0.1."""
    return pytest.approx(
        (events / (wall + 5e-7) + events / (wall - 5e-7)) / 2,
        abs=(events / (wall - 5e-7) - events / (wall + 5e-7)) / 2 + 0.05,
    )


def cli_run(state: Path | None, report: Path, *extra: str, events: int = EVENTS) -> int:
    args = ["run", str(VIDEO_SITE), "--events", str(events), "--report", str(report)]
    if state is not None:
        args += ["--state", str(state)]
    return main([*args, "--quiet", "--no-chart", "--no-log", *extra])


def flip_a_bit(database: Path, epoch: int, kind: str, name: str) -> None:
    """Flip one bit of a part's bytes in the database file itself, as a bad disk would."""
    with closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (blob,) = db.execute(
            "SELECT data FROM parts WHERE epoch = ? AND kind = ? AND name = ?", (epoch, kind, name)
        ).fetchone()
    raw = bytearray(database.read_bytes())
    for start in range(len(blob) // 2, len(blob) - 16):
        window = bytes(blob[start : start + 16])
        if raw.count(window) == 1:
            raw[raw.index(window) + 8] ^= 0x04
            database.write_bytes(bytes(raw))
            return
    raise AssertionError(f"no unique run of bytes of {kind}/{name} in {database}")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- item: damaged epochs -------------------------------------------------------------------


def test_a_flipped_bit_in_the_newest_epoch_falls_back_to_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    first = run_with_state(state)
    assert first["checkpoints"]["epochs_written"] == 2  # one at t=1 s, the final one
    flip_a_bit(state / FILE_NAME, 2, "processor", "video-stats")
    capsys.readouterr()
    code = cli_run(state, tmp_path / "r.json")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert lines(err) == [
        f"warning: {state / FILE_NAME}: epoch 2 is damaged: processor/video-stats does not "
        "match its checksum; passed over for an older epoch"
    ]
    assert "resuming from epoch 1 of" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["digest"] == reference()["digest"]
    assert report["expect_ok"], report["expect"]
    assert report["checkpoints"]["resumed_from_epoch"] == 1
    assert report["checkpoints"]["damaged_epochs"] == [
        {"epoch": 2, "part": "processor/video-stats", "problem": "does not match its checksum"}
    ]


def test_no_intact_epoch_is_refused_in_one_line_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    run_with_state(state)
    flip_a_bit(state / FILE_NAME, 2, "processor", "video-stats")
    flip_a_bit(state / FILE_NAME, 1, "processor", "blogger-analytics")
    before = (state / FILE_NAME).read_bytes()
    capsys.readouterr()
    code = cli_run(state, tmp_path / "r.json")
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert lines(err) == [
        f"{state / FILE_NAME} has no intact epoch to resume from (processor/video-stats does "
        "not match its checksum in epoch 2; processor/blogger-analytics does not match its "
        "checksum in epoch 1); it was left as it is. Move it away to start afresh, or restore "
        "it from a backup"
    ]
    assert (state / FILE_NAME).read_bytes() == before
    assert not (tmp_path / "r.json").exists()


def write_buggy_epoch(state: Path, kind: str, name: str, data: bytes, drop: list[int]) -> None:
    """Drop epochs ``drop`` and write a copy of epoch 1 whose part ``kind/name`` is ``data``,
    with checksums that match, as a buggy writer would."""
    store = CheckpointStore.open(state, fingerprint())
    loaded = store.load(1)
    assert loaded is not None
    info, parts = loaded
    assert (kind, name) in parts
    parts[kind, name] = data
    store.close()
    with closing(sqlite3.connect(state / FILE_NAME)) as db, db:
        db.execute("PRAGMA foreign_keys = ON")
        db.executemany("DELETE FROM epochs WHERE epoch = ?", [(n,) for n in drop])
    store = CheckpointStore.open(state, fingerprint())
    store.write(Snapshot(info.sim_time, info.events_produced, info.ring_records, parts))
    store.close()


@pytest.mark.parametrize(
    ("kind", "name", "data", "problem"),
    [
        ("processor", "video-stats", b"\xc1 not MessagePack", "DecodeError"),
        ("processor", "video-stats", msgspec.msgpack.encode(5), "ValidationError"),
        (
            "processor",
            "video-stats",
            encode(ProcessorPart(state=msgspec.Raw(msgspec.msgpack.encode(5)))),
            "ValidationError: Expected `object`, got `int`",
        ),
        (
            "processor",
            "video-stats",
            # The layout of schema 2: a row per video, read by position.
            msgspec.msgpack.encode({"v": 1, "state": [[7, 1, 0, 0, 0, 0, 0, 3]]}),
            "ValidationError: Expected `object`, got `array`",
        ),
        (
            "producer",
            "site/0",
            # A workload's position read by string keys, as schema 2 kept it.
            msgspec.msgpack.encode(
                {"v": 1, "done": 0, "workload": {"random": [3, [0], None], "seq": 0, "counts": {}}}
            ),
            "ValidationError: Object",
        ),
        ("partition", "events/0", msgspec.msgpack.encode("a string"), "ValidationError"),
        (
            "partition",
            "events/0",
            msgspec.msgpack.encode([0, 0, {"video-stats": 0}, 0, []]),  # schema 2's layout
            "ValidationError",
        ),
    ],
)
def test_a_part_that_cannot_be_restored_falls_back_or_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    name: str,
    data: bytes,
    problem: str,
) -> None:
    """Its checksum matches (a buggy writer wrote it so), but it does not restore."""
    state = tmp_path / "state"
    run_with_state(state)
    write_buggy_epoch(state, kind, name, data, drop=[2])  # the buggy one becomes epoch 2
    capsys.readouterr()
    assert cli_run(state, tmp_path / "r.json") == 0
    out, err = capsys.readouterr()
    [warning] = lines(err)
    assert warning.startswith(
        f"warning: {state / FILE_NAME}: epoch 2 is damaged: {kind}/{name} cannot be restored "
        f"({problem}"
    )
    assert "resuming from epoch 1 of" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["digest"] == reference()["digest"]
    assert report["expect_ok"]

    alone = tmp_path / "alone"  # the buggy epoch is the only one: nothing to fall back to
    run_with_state(alone)
    write_buggy_epoch(alone, kind, name, data, drop=[1, 2])
    before = (alone / FILE_NAME).read_bytes()
    capsys.readouterr()
    assert cli_run(alone, tmp_path / "r2.json") == 2
    out, err = capsys.readouterr()
    [refusal] = lines(err)
    assert refusal.startswith(f"{alone / FILE_NAME} has no intact epoch to resume from ")
    assert f"{kind}/{name} cannot be restored ({problem}" in refusal
    assert refusal.endswith("Move it away to start afresh, or restore it from a backup")
    assert (alone / FILE_NAME).read_bytes() == before
    assert not (tmp_path / "r2.json").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "it is empty: 0 bytes"), (b"PK\x03\x04" + b"\x00" * 60, "it is not an SQLite file")],
)
def test_an_empty_or_foreign_file_is_refused_and_not_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_bytes(content)
    for command in (
        lambda: cli_run(state, tmp_path / "r.json"),
        lambda: main(["checkpoints", str(state)]),
    ):
        capsys.readouterr()
        assert command() == 2
        _, err = capsys.readouterr()
        assert lines(err) == [
            f"{state / FILE_NAME} is not a usable checkpoint database ({problem}); it was "
            "left as it is. Move it away to start afresh, or restore it from a backup"
        ]
        assert (state / FILE_NAME).read_bytes() == content
        assert (state / FILE_NAME).stat().st_size == len(content)
        assert sorted(p.name for p in state.iterdir()) == [FILE_NAME]


_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE epochs (epoch INTEGER PRIMARY KEY, created_at REAL NOT NULL, sim_time REAL NOT NULL,
    events_produced INTEGER NOT NULL, ring_records INTEGER NOT NULL, bytes INTEGER NOT NULL,
    write_seconds REAL NOT NULL, final INTEGER NOT NULL);
CREATE TABLE parts (epoch INTEGER NOT NULL REFERENCES epochs(epoch) ON DELETE CASCADE,
    kind TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (epoch, kind, name));
"""


def test_a_store_of_the_older_schema_is_refused_and_can_still_be_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with closing(sqlite3.connect(state / FILE_NAME)) as db, db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA_1)
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema_version", "1"), ("fingerprint", fingerprint()), ("topology", "video-site")],
        )
        db.execute("INSERT INTO epochs VALUES (1, 0, 1.0, 50000, 10, 3, 0.001, 0)")
        db.execute("INSERT INTO parts VALUES (1, 'topic', 'events', ?)", (b"\x91\x00",))
    before = (state / FILE_NAME).read_bytes()
    capsys.readouterr()
    assert cli_run(state, tmp_path / "r.json") == 2
    [refusal] = lines(capsys.readouterr().err)
    assert refusal == (
        f"{state / FILE_NAME} has schema version 1, older than this ringflow's 4: its epochs "
        "carry no checksums, so they cannot be verified and it is not resumed (it was left as "
        "it is). Finish the run with the ringflow that wrote it, or use another state folder "
        "(checkpoint.path in the file, or --state) to start afresh"
    )
    assert (state / FILE_NAME).read_bytes() == before
    assert main(["checkpoints", str(state)]) == 0
    listing = capsys.readouterr().out
    assert "an older schema: epochs have no checksums to verify" in listing
    assert "50,000" in listing


def test_a_store_of_schema_2_is_refused_and_can_still_be_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Schema 2 had checksums, but its parts were lists read by position: it is refused with
    what to do, left as it is, and still listed."""
    state = tmp_path / "state"
    store = CheckpointStore.open(state, fingerprint(), name="video-site")
    parts = {
        ("topic", "events"): msgspec.msgpack.encode([50_000, [[0, 7]], {"view": 50_000}]),
        ("partition", "events/0"): msgspec.msgpack.encode([0, 10, {"video-stats": 10}, 10, []]),
    }
    store.write(Snapshot(1.0, 50_000, 0, parts))
    store.close()
    with closing(sqlite3.connect(state / FILE_NAME)) as db, db:
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    before = (state / FILE_NAME).read_bytes()
    capsys.readouterr()
    assert cli_run(state, tmp_path / "r.json") == 2
    [refusal] = lines(capsys.readouterr().err)
    assert refusal == (
        f"{state / FILE_NAME} has schema version 2, older than this ringflow's 4: its epochs "
        "are in an older layout that this ringflow does not read, so it is not resumed (it was "
        "left as it is). "
        "Finish the run with the ringflow that wrote it, or use another state folder "
        "(checkpoint.path in the file, or --state) to start afresh"
    )
    assert (state / FILE_NAME).read_bytes() == before
    assert not (tmp_path / "r.json").exists()
    assert main(["checkpoints", str(state)]) == 0
    assert "50,000" in capsys.readouterr().out
    assert main(["checkpoints", str(state), "--epoch", "1"]) == 0
    listing = capsys.readouterr().out
    assert "50,000 records produced" in listing
    assert "offsets 0..10; committed video-stats=10" in listing


def test_the_checkpoints_command_shows_damaged_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    run_with_state(state)
    capsys.readouterr()
    assert main(["checkpoints", str(state)]) == 0
    intact = capsys.readouterr().out
    assert "DAMAGED" not in intact
    assert "completed" in intact  # the final epoch of a completed run
    flip_a_bit(state / FILE_NAME, 2, "processor", "video-stats")
    assert main(["checkpoints", str(state)]) == 0
    listing = capsys.readouterr().out
    rows = {line.split()[1]: line for line in listing.splitlines() if line.startswith("│")}
    assert "DAMAGED" in rows["2"]
    assert "DAMAGED" not in rows["1"]
    assert (
        "damaged: epoch 2 is damaged: processor/video-stats does not match its checksum" in listing
    )
    assert main(["checkpoints", str(state), "--epoch", "2"]) == 0
    detail = capsys.readouterr().out
    [row] = [line for line in detail.splitlines() if "│ processor │ video-stats" in line]
    assert "damaged" in row
    assert "60,000 events made" in detail or "events made" in detail


# -- item: SIGTERM --------------------------------------------------------------------------


def run_command(state: Path, report: Path, events: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sim",
        "run",
        str(VIDEO_SITE),
        "--events",
        str(events),
        "--state",
        str(state),
        "--report",
        str(report),
        "--quiet",
        "--no-chart",
        *extra,
    ]


WIDE = {**os.environ, "COLUMNS": "250"}
"""Lines are not wrapped in the subprocesses' output."""


def stop_with_sigterm_after_an_epoch(command: list[str], state: Path, cwd: Path) -> tuple[int, str]:
    """Start ``command``, send it SIGTERM once ``state`` holds an epoch; its exit code and
    output."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=WIDE
    )
    deadline = time.monotonic() + 60
    while epochs_in(state) < 1:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch written within 60 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    return process.returncode, output


def test_sigterm_stops_a_run_as_ctrl_c_does_and_a_rerun_completes_it(tmp_path: Path) -> None:
    """The real command with its embedded Redis: SIGTERM once an epoch exists, then rerun."""
    events = 600_000
    state, report = tmp_path / "state", tmp_path / "report.json"
    command = run_command(state, report, events)
    code, output = stop_with_sigterm_after_an_epoch(command, state, tmp_path)
    assert code == 143, output
    assert "interrupted by SIGTERM: the report is partial" in output
    partial = json.loads(report.read_text())
    assert (partial["status"], partial["stopped_by"]) == ("interrupted", "SIGTERM")
    assert 0 < partial["events_produced"] < events
    assert partial["expect"] == {}
    # The same shutdown as Ctrl-C: a final epoch, and the embedded Redis stopped.
    store = CheckpointStore.open(state, fingerprint(events))
    newest = store.epochs()[-1]
    store.close()
    assert newest.final
    assert not newest.completed
    assert newest.events_produced == partial["events_produced"]
    with (
        socket.socket(socket.AF_UNIX) as client,
        pytest.raises((ConnectionRefusedError, FileNotFoundError)),
    ):
        client.connect(str(state / "redis.sock"))

    rerun = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env=WIDE
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming from epoch {newest.epoch} of" in rerun.stdout
    assert "(the run was stopped there)" in rerun.stdout
    final = json.loads(report.read_text())
    assert final["digest"] == reference(events)["digest"]
    assert final["expect_ok"], final["expect"]
    # Wall time and throughput per segment and in total; simulated time goes on.
    first, second = final["segments"]
    assert (first["resumed_from_epoch"], second["resumed_from_epoch"]) == (None, newest.epoch)
    assert first["events_to"] == second["events_from"] == newest.events_produced
    assert first["events"] + second["events"] == events
    assert first["wall_seconds"] > 0
    assert final["wall_seconds"] == pytest.approx(
        first["wall_seconds"] + second["wall_seconds"], abs=2e-6
    )
    assert rate_of(events, final["wall_seconds"]) == final["events_per_second"]
    assert second["sim_from"] == first["sim_to"] == pytest.approx(newest.sim_time, abs=1e-6)
    assert final["sim_seconds"] == pytest.approx(reference(events)["sim_seconds"], abs=1e-3)
    assert "wall time" in rerun.stdout
    assert "over 2 segments" in rerun.stdout


def test_sigterm_during_a_run_writes_a_final_epoch_in_process(tmp_path: Path) -> None:
    raised: list[int] = []

    def terminate_once(pipeline: Pipeline, now: float) -> None:
        if not raised and pipeline.events_consumed > 40_000:
            raised.append(pipeline.events_consumed)
            signal.raise_signal(signal.SIGTERM)

    report = run_with_state(
        tmp_path, events=120_000, on_refresh=terminate_once, refresh_every=0, handle_sigint=True
    )
    assert raised
    assert (report["status"], report["stopped_by"]) == ("interrupted", "SIGTERM")
    store = CheckpointStore.open(tmp_path, fingerprint(120_000))
    newest = store.epochs()[-1]
    store.close()
    assert newest.final
    assert newest.events_produced == report["events_produced"]


def test_sigterm_stops_a_node_with_exit_143_and_a_partial_report(tmp_path: Path) -> None:
    """The broker's node alone: it writes epochs while it waits for its peers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state, report = tmp_path / "state", tmp_path / "broker.json"
    command = [
        sys.executable,
        "-m",
        "sim",
        "node",
        str(EXAMPLES / "video-site-split.yaml"),
        "--node",
        "broker",
        "--listen",
        f"127.0.0.1:{port}",
        "--events",
        "10000",
        "--state",
        str(state),
        "--report",
        str(report),
        "--no-log",
    ]
    code, output = stop_with_sigterm_after_an_epoch(command, state, tmp_path)
    assert code == 143, output
    assert "interrupted by SIGTERM" in output
    partial = json.loads(report.read_text())
    assert (partial["status"], partial["stopped_by"]) == ("interrupted", "SIGTERM")


def test_compose_gives_every_ringflow_service_time_for_a_final_epoch() -> None:
    services = yaml.safe_load((ROOT / "compose.yml").read_text())["services"]
    ringflow = {n: s for n, s in services.items() if s.get("command", [""])[0] == "ringflow"}
    assert set(ringflow) >= {"producers", "broker", "consumers"}
    final_timeout = attrs.fields(CheckpointSettings).final_timeout.default
    for name, service in ringflow.items():
        grace = service.get("stop_grace_period")
        assert grace is not None, f"{name} has no stop_grace_period"
        assert grace.endswith("s")
        # A final epoch, then the logger's final flush (10 s each at most), then Redis.
        assert int(grace[:-1]) >= final_timeout + 10 + 5, name


# -- item: the report's path ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("folder", "it is a folder"),
        ("under a file", "is a file, not a folder"),
        ("/sys/ringflow-report.json", "Permission denied"),
        ("/sys/ringflow-reports/report.json", "cannot be created (Operation not permitted)"),
    ],
)
def test_a_report_path_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, problem: str
) -> None:
    if where == "folder":
        path = tmp_path / "out"
        path.mkdir()
    elif where == "under a file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "report.json"
    else:
        path = Path(where)
    state = tmp_path / "state"
    capsys.readouterr()
    assert cli_run(state, path) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = lines(err)
    assert line.startswith(f"cannot write the report to {path}: ")
    assert problem in line
    assert line.endswith("; choose another path with --report")
    assert not state.exists()  # nothing was run


def test_a_full_disk_at_the_end_saves_the_report_in_the_state_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/dev/full accepts the check (it opens) and fails every write: ENOSPC."""
    state = tmp_path / "state"
    capsys.readouterr()
    code = cli_run(state, Path("/dev/full"))
    out, err = capsys.readouterr()
    assert code == 1, out + err
    digest = reference()["digest"]
    assert "cannot write the report to /dev/full: No space left on device" in out
    assert f"digest: {digest}" in out
    saved = state / "report-video-site-seed42.json"
    assert f"report saved instead to: {saved}" in out
    report = json.loads(saved.read_text())
    assert (report["status"], report["digest"]) == ("completed", digest)


def test_a_report_path_taken_during_the_run_goes_to_a_temporary_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out" / "report.json"
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    real = sim.run.run_pipeline

    def taking_the_path(*args: Any, **kwargs: Any) -> Any:
        path.mkdir()  # after the check: something else made a folder there meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(sim.run, "run_pipeline", taking_the_path)
    capsys.readouterr()
    assert cli_run(None, path) == 1
    out = capsys.readouterr().out
    assert f"cannot write the report to {path}: Is a directory" in out
    [saved] = temporary.glob("ringflow-video-site-*.json")
    assert f"report saved instead to: {saved}" in out
    report = json.loads(saved.read_text())
    assert report["digest"] == reference()["digest"]
    assert f"digest: {report['digest']}" in out


# -- item: resumed runs' figures ------------------------------------------------------------


def test_a_rerun_of_a_completed_state_says_so_and_shows_the_original_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    first = run_with_state(state)
    store = CheckpointStore.open(state, fingerprint())
    epochs = store.epochs()
    store.close()
    assert epochs[-1].completed
    capsys.readouterr()
    assert cli_run(state, tmp_path / "r.json") == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"already complete: epoch 2 of {state / FILE_NAME} is the final epoch of a completed run"
    )
    rerun = json.loads((tmp_path / "r.json").read_text())
    assert rerun["already_complete"]
    assert rerun["status"] == "completed"
    assert rerun["digest"] == first["digest"]
    [segment] = rerun["segments"]
    assert (segment["segment"], segment["resumed_from_epoch"]) == (1, None)
    assert (segment["events_from"], segment["events_to"], segment["events"]) == (0, EVENTS, EVENTS)
    # The original run's wall time, up to its final epoch (a moment before its end).
    assert segment["wall_seconds"] == pytest.approx(first["wall_seconds"], abs=0.05)
    assert rerun["wall_seconds"] == segment["wall_seconds"]
    assert rate_of(EVENTS, rerun["wall_seconds"]) == rerun["events_per_second"]
    assert rerun["sim_seconds"] == first["sim_seconds"]
    # Nothing was run, so nothing new was written.
    store = CheckpointStore.open(state, fingerprint())
    assert store.epochs() == epochs
    store.close()


def test_simulated_time_goes_on_across_a_resume_whatever_the_clock_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting on Redis before a run lets autojump move the virtual clock; an epoch's time and
    the report's simulated time must not carry that jump."""
    import trio.testing

    make_clock = trio.testing.MockClock

    def starting_late(**kwargs: Any) -> trio.testing.MockClock:
        clock = make_clock(**kwargs)
        clock.jump(5.0)
        return clock

    monkeypatch.setattr(trio.testing, "MockClock", starting_late)
    stopped: list[int] = []

    def stop_once(pipeline: Pipeline, now: float) -> None:
        if not stopped and pipeline.events_consumed > 40_000:
            stopped.append(pipeline.events_consumed)
            signal.raise_signal(signal.SIGINT)

    first = run_with_state(
        tmp_path, events=120_000, on_refresh=stop_once, refresh_every=0, handle_sigint=True
    )
    assert first["status"] == "interrupted"
    second = run_with_state(tmp_path, events=120_000)
    expected = reference(120_000)["sim_seconds"]
    assert second["sim_seconds"] == pytest.approx(expected, abs=1e-3)
    store = CheckpointStore.open(tmp_path, fingerprint(120_000))
    final = store.epochs()[-1]
    store.close()
    assert final.sim_time == pytest.approx(expected, abs=1e-3)
    first_segment, second_segment = second["segments"]
    assert first_segment["sim_to"] == second_segment["sim_from"] == first["sim_seconds"]
    assert second["timeline"]["rows"][0][0] >= second_segment["sim_from"]


TAMPERINGS = [
    # (SQL on the newest epoch, whether an older epoch is still there to fall back to)
    pytest.param(
        "UPDATE epochs SET segments = CAST(x'5bff5d' AS TEXT) WHERE epoch = 2",
        True,
        id="segments-not-utf8",
    ),
    pytest.param("UPDATE parts SET data = 'abc' WHERE epoch = 2", True, id="data-as-text"),
    pytest.param(
        "UPDATE parts SET name = CAST(name AS BLOB) WHERE epoch = 2", True, id="name-as-blob"
    ),
    pytest.param("UPDATE epochs SET sim_time = 'abc' WHERE epoch = 2", False, id="figure-text"),
    pytest.param(
        "UPDATE meta SET value = 'abc' WHERE key = 'schema_version'", False, id="schema-text"
    ),
    pytest.param("DROP TABLE parts", False, id="no-parts-table"),
]


@pytest.mark.parametrize(("sql", "falls_back"), TAMPERINGS)
def test_a_database_damaged_in_its_structure_is_passed_over_or_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sql: str, falls_back: bool
) -> None:
    """Not a flipped bit but a column of the wrong type or encoding, a missing table: the
    epoch is passed over like any damaged one, or the folder refused with exit 2; never a
    traceback, in `run` or in `checkpoints`."""
    state = tmp_path / "state"
    run_with_state(state)
    with closing(sqlite3.connect(state / FILE_NAME)) as db:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute(sql)
        db.commit()
    capsys.readouterr()
    code = cli_run(state, tmp_path / "r.json")
    out, err = capsys.readouterr()
    if falls_back:
        assert code == 0, out + err
        (warning,) = lines(err)
        assert warning.startswith(f"warning: {state / FILE_NAME}: epoch 2 is damaged: ")
        assert warning.endswith("passed over for an older epoch")
        assert json.loads((tmp_path / "r.json").read_text())["digest"] == reference()["digest"]
    else:
        assert code == 2, out + err
        (line,) = lines(err)
        assert str(state / FILE_NAME) in line
    assert "Traceback" not in out + err
    assert main(["checkpoints", str(state)]) in (0, 2)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err


def test_state_on_the_command_line_wins_over_the_file_s_checkpoint_path(
    tmp_path: Path,
) -> None:
    # The file's path was taken even with --state, which the docs and the refusal to
    # resume another topology's folder both offer as the way to choose the folder.
    data = yaml.safe_load(VIDEO_SITE.read_text())
    data["checkpoint"] = {"path": str(tmp_path / "in-file")}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    args = ["run", str(path), "--events", "2000", "--report", str(tmp_path / "r.json")]
    assert (
        main([*args, "--state", str(tmp_path / "given"), "--quiet", "--no-chart", "--no-log"]) == 0
    )
    assert (tmp_path / "given" / "checkpoints.sqlite3").exists()
    assert not (tmp_path / "in-file").exists()
