"""Checkpoints: the store, consistent epochs, rollback after crashes, resume after a stop."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from sim.cli import main
from sim.processors import BloggerAnalytics
from sim.run import REGISTRY, load_topology, open_checkpoints, run_pipeline
from sim.workloads import VideoSite
from tests.test_split import epochs_in
from topology import CheckpointError, CheckpointStore, Pipeline, Topology
from topology.checkpoint import FILE_NAME, Snapshot

EXAMPLES = Path(__file__).parent.parent / "topology" / "examples"
EVENTS = 60_000


def topology() -> Topology:
    return load_topology(EXAMPLES / "video-site.yaml")


def reference_digest(events: int = EVENTS) -> str:
    pipeline = Pipeline.build(topology(), REGISTRY, events=events)
    return str(run_pipeline(pipeline).report["digest"])


def run_with_state(state: Path, events: int = EVENTS, **kwargs: Any) -> dict[str, Any]:
    pipeline = Pipeline.build(topology(), REGISTRY, events=events)
    checkpoints, pipeline = open_checkpoints(pipeline, state)
    return run_pipeline(pipeline, checkpoints=checkpoints, **kwargs).report


# -- the store ---------------------------------------------------------------------------


def snapshot(n: int) -> Snapshot:
    return Snapshot(float(n), n * 10, n, {("part", "x"): bytes([n]) * 10})


def test_store_keeps_the_newest_epochs(tmp_path: Path) -> None:
    store = CheckpointStore.open(tmp_path, "print", keep=2, name="t")
    for n in range(1, 5):
        assert store.write(snapshot(n)).epoch == n
    assert [e.epoch for e in store.epochs()] == [3, 4]
    loaded = store.load()
    assert loaded is not None
    assert loaded[0].epoch == 4
    assert loaded[1] == {("part", "x"): bytes([4]) * 10}
    with pytest.raises(CheckpointError, match="has no epoch 1; it keeps 3, 4"):
        store.load(1)


def test_a_crash_while_writing_leaves_the_previous_epoch_intact(tmp_path: Path) -> None:
    class Crashing(CheckpointStore):
        def _before_commit(self, db: sqlite3.Connection, epoch: int) -> None:
            raise sqlite3.OperationalError("disk I/O error (injected)")

    store = CheckpointStore.open(tmp_path, "print", keep=3)
    store.write(snapshot(1))
    crashing = Crashing(store.path, "print", keep=3)
    with pytest.raises(CheckpointError, match="injected"):
        crashing.write(snapshot(2))
    assert [e.epoch for e in store.epochs()] == [1]
    loaded = store.load()
    assert loaded is not None
    assert loaded[1] == {("part", "x"): bytes([1]) * 10}


def test_state_of_another_topology_is_refused_and_left_alone(tmp_path: Path) -> None:
    store = CheckpointStore.open(tmp_path, "mine", keep=3, name="mine")
    store.write(snapshot(1))
    before = (tmp_path / FILE_NAME).read_bytes()
    with pytest.raises(CheckpointError, match="holds checkpoints of another topology"):
        CheckpointStore.open(tmp_path, "yours")
    assert (tmp_path / FILE_NAME).read_bytes() == before


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    CheckpointStore.open(tmp_path, "print")
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CheckpointError, match="schema version 99, newer than this ringflow's 3"):
        CheckpointStore.open(tmp_path, "print")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_database_is_refused_and_left_alone(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore.open(tmp_path, "print")
    for n in range(1, 4):
        store.write(snapshot(n))
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = tmp_path / FILE_NAME
    data = path.read_bytes()
    path.write_bytes(b"not a database" * 100 if damage == "garbage" else data[: len(data) // 3])
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="not a usable checkpoint database"):
        CheckpointStore.open(tmp_path, "print")
    assert path.read_bytes() == before


def test_a_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot create the state folder"):
        CheckpointStore.open(tmp_path / "file" / "state", "print")


# -- runs ---------------------------------------------------------------------------------


def test_checkpointed_run_gives_the_same_aggregates_and_writes_epochs(tmp_path: Path) -> None:
    report = run_with_state(tmp_path)
    assert report["digest"] == reference_digest()
    assert report["expect_ok"]
    checkpoints = report["checkpoints"]
    # 60,000 events at 50,000 a second: epochs at t=1 and a final one.
    assert checkpoints["epochs_written"] == 2
    store = CheckpointStore.open(
        tmp_path, Pipeline.build(topology(), REGISTRY, events=EVENTS).fingerprint
    )
    assert [e.final for e in store.epochs()] == [False, True]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crashes_at_random_points_roll_back_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    crash_in = {
        "processor": rng.randrange(20, 120),  # batches processed before the crash
        "workload": rng.randrange(10, 100),  # chunks generated before the crash
        "write": rng.randrange(1, 3),  # epochs written before a write crashes
    }
    calls = {"processor": 0, "workload": 0, "write": 0}

    def crash_once(what: str) -> None:
        calls[what] += 1
        if calls[what] == crash_in[what]:
            raise RuntimeError(f"injected crash in {what}")

    process, generate, write = BloggerAnalytics.process, VideoSite.generate, CheckpointStore.write

    def crashing_process(self: BloggerAnalytics, events: Any) -> None:
        crash_once("processor")
        process(self, events)

    def crashing_generate(self: VideoSite, *args: Any) -> Any:
        crash_once("workload")
        return generate(self, *args)

    def crashing_write(self: CheckpointStore, snap: Snapshot) -> Any:
        crash_once("write")
        return write(self, snap)

    monkeypatch.setattr(BloggerAnalytics, "process", crashing_process)
    monkeypatch.setattr(VideoSite, "generate", crashing_generate)
    monkeypatch.setattr(CheckpointStore, "write", crashing_write)
    spec = attrs.evolve(topology().checkpoint or topology_checkpoint(), every=0.25)
    report = run_with_state_spec(tmp_path, spec, events=150_000)
    monkeypatch.undo()
    errors = sorted(
        next(
            w for w in ("processor", "workload", "write") if f"injected crash in {w}" in r["error"]
        )
        for r in report["checkpoints"]["rollbacks"]
    )
    assert errors == ["processor", "workload", "write"]
    assert report["digest"] == reference_digest(150_000)
    assert report["expect_ok"], report["expect"]


def topology_checkpoint() -> Any:
    from topology import CheckpointSpec

    return CheckpointSpec()


def run_with_state_spec(state: Path, spec: Any, events: int) -> dict[str, Any]:
    changed = attrs.evolve(topology(), checkpoint=attrs.evolve(spec, path=str(state)))
    pipeline = Pipeline.build(changed, REGISTRY, events=events)
    checkpoints, pipeline = open_checkpoints(pipeline, None)
    return run_pipeline(pipeline, checkpoints=checkpoints).report


def test_epochs_can_be_triggered_by_records_alone(tmp_path: Path) -> None:
    spec = attrs.evolve(topology_checkpoint(), every=None, every_records=15_000, keep=10)
    report = run_with_state_spec(tmp_path, spec, events=EVENTS)
    store = CheckpointStore.open(
        tmp_path, Pipeline.build(topology(), REGISTRY, events=EVENTS).fingerprint, keep=10
    )
    produced = [e.events_produced for e in store.epochs()]
    # One epoch per 15,000 events (a producer finishes its chunk first), then the final one.
    assert len(produced) == 4
    assert all(15_000 <= b - a < 20_000 for a, b in zip([0, *produced], produced[:3], strict=False))
    assert produced[-1] == EVENTS
    assert report["digest"] == reference_digest()


def test_resume_after_a_graceful_stop_continues_exactly(tmp_path: Path) -> None:
    stopped = []

    def stop_once(pipeline: Pipeline, now: float) -> None:
        if not stopped and pipeline.events_consumed > 40_000:
            stopped.append(pipeline.events_consumed)
            signal.raise_signal(signal.SIGINT)

    first = run_with_state(
        tmp_path, events=120_000, on_refresh=stop_once, refresh_every=0, handle_sigint=True
    )
    assert first["status"] == "interrupted"
    assert 40_000 < first["events_produced"] < 120_000
    second = run_with_state(tmp_path, events=120_000)
    assert second["checkpoints"]["resumed_from_epoch"] is not None
    assert second["status"] == "completed"
    assert second["events_produced"] == second["events_consumed"] == 120_000
    assert second["digest"] == reference_digest(120_000)
    assert second["expect_ok"]


@pytest.mark.kill
def test_killed_processes_resume_to_the_same_digest(tmp_path: Path) -> None:
    """SIGKILL the real command at seeded random moments, then run it until it completes."""
    state, report = tmp_path / "state", tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "sim",
        "run",
        str(EXAMPLES / "video-site.yaml"),
        "--events",
        "600000",
        "--state",
        str(state),
        "--report",
        str(report),
        "--quiet",
        "--no-chart",
    ]
    # Seeded moments counted in epochs (plus a fraction of a second), so that they mean the
    # same on a fast and a slow machine: 'make stress' repeats this with other seeds.
    rng = random.Random(f"7/{os.environ.get('RINGFLOW_KILL_SEED', '0')}")
    kills = 0
    for _ in range(3):
        target = epochs_in(state) + rng.randrange(3)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while epochs_in(state) < target and process.poll() is None:
                assert time.monotonic() < deadline, f"no epoch {target} within 60 s"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert kills >= 2
    epochs = epochs_in(state)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert ("resuming from epoch" in done.stdout) == bool(epochs), done.stdout
    import json

    result = json.loads(report.read_text())
    assert result["digest"] == reference_digest(600_000)
    assert result["expect_ok"]


def test_cli_lists_and_shows_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_with_state(tmp_path)
    capsys.readouterr()
    assert main(["checkpoints", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "topology 'video-site'" in listing
    assert main(["checkpoints", str(tmp_path), "--epoch", "2"]) == 0
    detail = capsys.readouterr().out
    assert "epoch 2" in detail
    assert "60,000 events made" in detail or "events made" in detail
    assert main(["checkpoints", str(tmp_path / "nothing")]) == 2


def test_cli_refuses_state_of_another_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_with_state(tmp_path)
    before = (tmp_path / FILE_NAME).read_bytes()
    code = main(
        [
            "run",
            str(EXAMPLES / "video-site.yaml"),
            "--events",
            "999",
            "--state",
            str(tmp_path),
            "--quiet",
            "--no-chart",
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2
    assert "holds checkpoints of another topology or settings" in capsys.readouterr().err
    assert (tmp_path / FILE_NAME).read_bytes() == before
