"""Checkpoints: the store, consistent epochs, rollback after crashes, resume after a stop."""

from __future__ import annotations

import functools
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio
import trio.testing
from rich.console import Console

from actors import Columns, GatewayCheckpoint, RemotePartitionState, RemoteTopicState
from sim.cli import main
from sim.cli.summary import print_summary
from sim.processors import BloggerAnalytics
from sim.report import Report
from sim.resume import open_checkpoints
from sim.run import REGISTRY, run_pipeline
from sim.workloads import VideoSite
from tests.examples import small_batch_file, video_site_in_small_batches
from tests.test_split import epochs_in
from topology import (
    CheckpointError,
    CheckpointSettings,
    CheckpointStore,
    DamagedEpoch,
    Pipeline,
    Snapshot,
    TopicSummary,
    Topology,
    describe_part,
)
from topology.checkpoint import FILE_NAME
from topology.snapshot import GatewayPart, RemoteTopicPart, decode, encode

EXAMPLES = Path(__file__).parent.parent / "topology" / "examples"
EVENTS = 60_000


def topology() -> Topology:
    return video_site_in_small_batches()


def reference_digest(events: int = EVENTS) -> str:
    pipeline = Pipeline.build(topology(), REGISTRY, events=events)
    return str(run_pipeline(pipeline).report.digest)


def run_with_state(state: Path, events: int = EVENTS, **kwargs: Any) -> dict[str, Any]:
    pipeline = Pipeline.build(topology(), REGISTRY, events=events)
    checkpoints, pipeline = open_checkpoints(pipeline, state)
    return run_pipeline(pipeline, checkpoints=checkpoints, **kwargs).report.to_dict()


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
    with pytest.raises(CheckpointError, match="schema version 99, newer than this ringflow's 4"):
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


def test_parts_are_described_as_the_checkpoints_command_lists_them(tmp_path: Path) -> None:
    report = run_with_state(tmp_path)
    store = CheckpointStore.open(
        tmp_path, Pipeline.build(topology(), REGISTRY, events=EVENTS).fingerprint
    )
    loaded = store.load()
    store.close()
    assert loaded is not None
    parts = loaded[1]
    described = {key: describe_part(*key, data) for key, data in parts.items()}
    committed = report["partitions"][0]["committed"]
    assert described["partition", "events/0"] == (
        f"offsets {committed['video-stats']:,}..{report['partitions'][0]['records']:,}; "
        "committed " + ", ".join(f"{g}={o:,}" for g, o in committed.items())
    )
    assert described["producer", "site/0"] == f"{EVENTS // 2:,} events made"
    assert described["consumer", "video-stats"] == f"{EVENTS:,} records processed"
    assert described["topic", "events"] == f"{EVENTS:,} records produced"
    assert described["processor", "video-stats"] == described["run", "clock"] == ""


def test_parts_of_older_schemas_are_described_by_position() -> None:
    def old(kind: str, data: Any) -> str:
        return describe_part(kind, "x", msgspec.msgpack.encode(data), schema=2)

    assert (
        old("partition", [5, 1_200, {"g": 1_000}, 9, []]) == "offsets 5..1,200; committed g=1,000"
    )
    assert old("producer", {"done": 4_000, "workload": []}) == "4,000 events made"
    assert old("consumer", {"records": 12}) == "12 records processed"
    assert old("topic", [3_000, [], {}]) == "3,000 records produced"
    assert old("sequences", {"p-0": 3}) == ""


def test_a_remote_topic_s_part_is_stored_as_named_fields_and_restored_whole() -> None:
    state = RemoteTopicState(
        (
            RemotePartitionState(
                next_sequence=5,
                retained=(
                    (0, Columns([1, 2], [10, 20], [1.0, 2.0])),
                    (2, Columns([3], [30], [3.0])),
                ),
            ),
            RemotePartitionState(next_sequence=0),
        )
    )
    data = encode(RemoteTopicPart.of(state))
    assert msgspec.msgpack.decode(data) == {
        "v": 1,
        "partitions": [
            {
                "next_sequence": 5,
                "retained": [
                    {"sequence": 0, "keys": [1, 2], "values": [10, 20], "timestamps": [1.0, 2.0]},
                    {"sequence": 2, "keys": [3], "values": [30], "timestamps": [3.0]},
                ],
            },
            {"next_sequence": 0, "retained": []},
        ],
        "finished": False,
    }
    part = decode("remote", data, int)
    assert isinstance(part, RemoteTopicPart)
    assert part.state() == state
    # Written before a link kept its finish: not finished.
    older = {"v": 1, "partitions": [{"next_sequence": 0, "retained": []}]}
    part = decode("remote", msgspec.msgpack.encode(older), int)
    assert isinstance(part, RemoteTopicPart)
    assert not part.state().finished
    finished = attrs.evolve(state, finished=True)
    assert decode("remote", encode(RemoteTopicPart.of(finished)), int).state() == finished  # type: ignore[union-attr]


def test_a_gateway_s_part_is_stored_as_named_fields_and_restored_whole() -> None:
    summary = TopicSummary(records=3, seq_sums=[(0, 6)], kinds={"view": 3})
    state = GatewayCheckpoint(
        finished=(("events", "p1"), ("events", "p2")),
        summaries={"events": {"p1": summary, "p2": [1, [[1, 1]], {"like": 1}]}},
        left=(("stats", "events", "stats-0"),),
    )
    data = encode(GatewayPart.of(state))
    assert msgspec.msgpack.decode(data) == {
        "v": 1,
        "finished": [["events", "p1"], ["events", "p2"]],
        "summaries": {
            "events": {"p1": [3, [[0, 6]], {"view": 3}], "p2": [1, [[1, 1]], {"like": 1}]}
        },
        "left": [["stats", "events", "stats-0"]],
    }
    part = decode("gateway", data)
    assert isinstance(part, GatewayPart)
    assert part.state() == attrs.evolve(
        state,
        summaries={"events": {"p1": summary, "p2": TopicSummary(1, [(1, 1)], {"like": 1})}},
    )
    with pytest.raises(msgspec.ValidationError):
        GatewayPart.of(GatewayCheckpoint(summaries={"events": {"p1": "not a summary"}}))


def test_a_gateway_s_part_from_before_members_left_was_kept_restores_with_none() -> None:
    data = msgspec.msgpack.encode({"v": 1, "finished": [["events", "p1"]], "summaries": {}})
    part = decode("gateway", data)
    assert isinstance(part, GatewayPart)
    assert part.state().left == ()
    assert part.state().finished == (("events", "p1"),)


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"\xc1", "not MessagePack"), (msgspec.msgpack.encode([1, 2]), "not what this part holds")],
)
def test_a_part_that_cannot_be_described_says_why(data: bytes, problem: str) -> None:
    with pytest.raises(DamagedEpoch) as caught:
        describe_part("partition", "events/0", data)
    assert (caught.value.part, caught.value.problem) == ("partition/events/0", problem)


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
    assert checkpoints["final_epoch"] == "written"
    store = CheckpointStore.open(
        tmp_path, Pipeline.build(topology(), REGISTRY, events=EVENTS).fingerprint
    )
    assert [e.final for e in store.epochs()] == [False, True]


def test_the_summary_says_when_the_final_epoch_was_not_written(tmp_path: Path) -> None:
    report = run_with_state(tmp_path)
    written = summary_of(report)
    assert "the final epoch" not in written
    for outcome in ("timed out", "failed"):
        late = {**report, "checkpoints": {**report["checkpoints"], "final_epoch": outcome}}
        assert Report.from_dict(late).checkpoints.final_epoch == outcome  # type: ignore[union-attr]
        assert (
            f"the final epoch {outcome}: running the same command again resumes from the last "
            "epoch written"
        ) in summary_of(late)


def summary_of(report: dict[str, Any]) -> str:
    """The summary ``ringflow run`` prints for ``report``."""
    console = Console(file=io.StringIO(), width=300)
    print_summary(console, Report.from_dict(report), Path("r.json"))
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


async def test_a_stop_and_a_periodic_epoch_asked_at_once_are_both_answered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The timer asks for an epoch at t=1 s and a stop (Ctrl-C) at the same instant: neither
    waits for ever, the stop's epoch is final and written, and the run goes on to the end."""
    pipeline = Pipeline.build(topology(), REGISTRY, events=EVENTS)
    store = CheckpointStore.open(tmp_path, pipeline.fingerprint, keep=10)
    settings = CheckpointSettings(store, every=1.0, in_thread=False)
    with trio.fail_after(600):  # simulated seconds: the run takes 1.2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.run, None, settings)
            await trio.sleep(settings.every or 0)  # the timer's instant
            with trio.move_on_after(settings.final_timeout) as waiting:
                stop = await pipeline.checkpoint(store, final=True, in_thread=False)
            assert not waiting.cancelled_caught, "the stop's epoch timed out"
    assert stop.final
    assert stop in pipeline.epochs
    assert pipeline.events_consumed == EVENTS
    numbers = [e.epoch for e in pipeline.epochs]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [e.epoch for e in store.epochs()] == numbers
    assert pipeline.epochs[-1].final  # the end of the run still writes its final epoch
    store.close()


async def test_the_last_epoch_of_a_stopped_run_holds_everything_it_made(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A stop's epoch waits after its capture (for the log to be written, say): producers
    behind their schedule make nothing meanwhile, so the stopped run's figures are the
    epoch's, and running it again carries on from exactly there."""
    pipeline = Pipeline.build(topology(), REGISTRY, events=EVENTS)
    store = CheckpointStore.open(tmp_path, pipeline.fingerprint, keep=10)
    settings = CheckpointSettings(store, every=None, in_thread=False)

    def before_write() -> Callable[[], Awaitable[None]]:
        return functools.partial(trio.sleep, 0.5)  # the log is slow to answer

    pipeline.before_epoch_write = before_write
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline.run, None, settings)
        await trio.sleep(0.3)
        last = await pipeline.checkpoint(store, final=True, in_thread=False, last=True)
        made = pipeline.events_produced
        nursery.cancel_scope.cancel()
    assert 0 < last.events_produced < EVENTS
    assert made == last.events_produced
    store.close()


async def test_every_request_of_an_epoch_whose_hook_fails_gets_the_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Epochs are written, but what runs after each write (logging it) fails: every request
    hears of the failure, each with an error of its own (the first of an epoch the error
    itself, the others a CheckpointError caused by it), and none waits for ever."""
    pipeline = Pipeline.build(topology(), REGISTRY, events=EVENTS)
    store = CheckpointStore.open(tmp_path, pipeline.fingerprint, keep=10)

    def log(info: Any) -> None:
        raise OSError("the log is gone")

    pipeline.on_epoch = log
    errors: list[BaseException] = []

    async def ask(final: bool) -> None:
        try:
            await pipeline.checkpoint(store, final=final, in_thread=False)
        except Exception as exc:
            errors.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, False)
            nursery.start_soon(ask, True)
    assert len(errors) == 2
    assert errors[0] is not errors[1]
    for error in errors:
        assert str(error) == "the log is gone"
        if isinstance(error, CheckpointError):  # it shared the epoch of the other
            assert isinstance(error.__cause__, OSError)
            assert error.__cause__ in errors
        else:
            assert isinstance(error, OSError)
    assert 1 <= len(store.epochs()) <= 2  # written before the hook failed
    store.close()


async def test_epochs_asked_at_once_of_a_pipeline_that_is_not_running_are_both_written(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    pipeline = Pipeline.build(topology(), REGISTRY, events=EVENTS)
    store = CheckpointStore.open(tmp_path, pipeline.fingerprint, keep=10)
    answers: list[Any] = []

    async def ask(final: bool) -> None:
        answers.append(await pipeline.checkpoint(store, final=final, in_thread=False))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, False)
            nursery.start_soon(ask, True)
    assert len(answers) == 2
    assert [e.epoch for e in store.epochs()] == sorted({a.epoch for a in answers})
    assert any(a.final for a in answers)
    store.close()


class StalledStore(CheckpointStore):
    """A store whose final epoch stalls in the write, as on a disk that hangs."""

    release = threading.Event()
    written = threading.Event()

    def write(self, snap: Snapshot) -> Any:
        if snap.final:
            self.release.wait(timeout=20)
        info = super().write(snap)
        self.written.set()
        return info


async def test_the_final_timeout_bounds_a_final_epoch_whose_write_hangs(tmp_path: Path) -> None:
    """The write goes on in its thread; the run returns after the final timeout, says so, and
    the epoch lands whole when the write ends."""
    pipeline = Pipeline.build(topology(), REGISTRY, events=2_000)
    store = StalledStore.open(tmp_path, pipeline.fingerprint)
    settings = CheckpointSettings(store, every=None, final_timeout=0.2, in_thread=True)
    StalledStore.release.clear()
    StalledStore.written.clear()
    await pipeline.run(None, settings)
    assert not StalledStore.written.is_set(), "the run waited for the write"
    store.close()  # does not wait for the write either
    assert not StalledStore.written.is_set()
    StalledStore.release.set()
    assert pipeline.statistics().final_epoch == "timed out"
    assert pipeline.epochs == []
    assert await trio.to_thread.run_sync(StalledStore.written.wait, 20)
    epochs = store.epochs()
    assert [(e.epoch, e.final) for e in epochs] == [(1, True)]
    assert store.verify(1) is None
    store.close()


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

    process = BloggerAnalytics.process_columns
    generate, write = VideoSite.generate, CheckpointStore.write

    def crashing_process(self: BloggerAnalytics, events: Any) -> None:
        crash_once("processor")
        process(self, events)

    def crashing_generate(self: VideoSite, *args: Any) -> Any:
        crash_once("workload")
        return generate(self, *args)

    def crashing_write(self: CheckpointStore, snap: Snapshot) -> Any:
        crash_once("write")
        return write(self, snap)

    monkeypatch.setattr(BloggerAnalytics, "process_columns", crashing_process)
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
    return run_pipeline(pipeline, checkpoints=checkpoints).report.to_dict()


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


KILLED_EVENTS = 2_000_000
"""Events of the run killed at random moments: about 40 epochs, so that each of three
processes is killed mid-run rather than finishing first."""


@pytest.mark.kill
def test_killed_processes_resume_to_the_same_digest(tmp_path: Path) -> None:
    """SIGKILL the real command at seeded random moments, then run it until it completes."""
    state, report = tmp_path / "state", tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "sim",
        "run",
        str(small_batch_file(tmp_path)),
        "--events",
        str(KILLED_EVENTS),
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
    kills, completed = 0, False
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
        # A resumed run may finish what was left before the moment to kill it comes.
        completed = completed or process.returncode == 0
    assert kills >= 2
    epochs = epochs_in(state)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    if completed:
        assert "already complete: epoch" in done.stdout, done.stdout
    else:
        assert ("resuming from epoch" in done.stdout) == bool(epochs), done.stdout
    import json

    result = json.loads(report.read_text())
    assert result["digest"] == reference_digest(KILLED_EVENTS)
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


def test_epochs_go_on_while_consumers_drain_after_the_producers_finished(
    tmp_path: Path,
) -> None:
    # The producers are done within a second; a slow consumer drains for about six more:
    # epochs hold its progress meanwhile, so a crash then resends only what followed the
    # newest (periodic epochs used to stop with the producers).
    pipeline = Pipeline.build(topology(), REGISTRY, events=6_000)
    checkpoints, pipeline = open_checkpoints(pipeline, tmp_path)
    assert checkpoints is not None
    assert checkpoints.every == 1.0

    async def slow(member: str, records: int) -> None:
        if member.startswith("video-stats"):
            await trio.sleep(records * 0.002)

    pipeline.pace = slow
    report = run_pipeline(pipeline, checkpoints=checkpoints).report
    assert report.status == "completed"
    draining = [e for e in pipeline.epochs if e.events_produced == 6_000 and not e.final]
    assert len(draining) >= 5, [(e.sim_time, e.events_produced) for e in pipeline.epochs]
    held = [e.ring_records for e in draining]
    assert held == sorted(held, reverse=True)
    assert held[0] > held[-1]
