"""The embedded Redis and the log across crashes, restarts and the end of a run, with real
``ringflow`` processes and real ``redis-server`` processes."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console

import sim.run
from actors import RUNS_KEY, counters_key, stream_key
from sim.cli import main
from sim.cli.summary import print_summary
from sim.redis_logging import LogSettings
from sim.redis_server import PID_FILE, EmbeddedRedis, ping
from sim.report import Report
from sim.run import REGISTRY, load_topology, run_pipeline
from topology import Pipeline, Topology, TopologyError

EXAMPLES = Path(__file__).parent.parent / "topology" / "examples"


def servers_of(folder: Path) -> list[int]:
    """The pids of the redis-server processes working in ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if name.startswith("redis-server") and cwd == str(folder.resolve()) and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    running: subprocess.Popen[str] | None = None,
) -> None:
    """Poll ``condition``; fail after ``timeout`` s, or at once if ``running`` has ended."""
    deadline = time.monotonic() + timeout
    while not condition():
        if running is not None and running.poll() is not None:
            _, err = running.communicate()
            raise AssertionError(f"{what}: the run ended first ({running.returncode}): {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def command(state: Path, *extra: str, topology: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sim",
        "run",
        str(topology or EXAMPLES / "video-site.yaml"),
        "--state",
        str(state),
        "--quiet",
        "--no-chart",
        *extra,
    ]


META = ("--category", "meta")


def small_run(state: Path, report: Path) -> list[str]:
    return [
        "run",
        str(EXAMPLES / "video-site.yaml"),
        "--events",
        "5000",
        "--state",
        str(state),
        "--quiet",
        "--no-chart",
        "--report",
        str(report),
    ]


def reader(state: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(state / "redis.sock"), decode_responses=True)


def logged_meta(state: Path) -> list[dict[str, Any]]:
    """The meta entries the run of ``state`` logged, if its Redis answers."""
    if not ping(state / "redis.sock"):
        return []
    with reader(state) as db:
        runs = db.zrange(RUNS_KEY, 0, -1)
        return [fields for run in runs for _, fields in db.xrange(stream_key(run, "meta"))]


def wait_until_logging(state: Path) -> None:
    """Wait until the run of ``state`` has logged its start."""
    wait_until(lambda: any(m["event"] == "run_started" for m in logged_meta(state)), "logging")


def follow_log(state: Path, kill_on_exit: list[subprocess.Popen[Any]]) -> subprocess.Popen[str]:
    """Start ``ringflow logs --follow`` of the meta entries of ``state``'s run."""
    follow = subprocess.Popen(
        [sys.executable, "-m", "sim", "logs", "--state", str(state), "--follow", *META],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kill_on_exit.append(follow)
    assert follow.stdout is not None
    return follow


@pytest.fixture
def kill_on_exit() -> Iterator[list[subprocess.Popen[Any]]]:
    processes: list[subprocess.Popen[Any]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()  # waits, and closes its pipes


# -- the embedded server dies with its owner ------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_takes_its_redis_server_with_it(
    tmp_path: Path, kill_on_exit: list[subprocess.Popen[Any]], sig: signal.Signals
) -> None:
    state = tmp_path / "state"
    run = subprocess.Popen(
        command(state, "--events", "5000000"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    kill_on_exit.append(run)
    wait_until_logging(state)
    (server,) = servers_of(state)
    assert run.poll() is None, "the run ended before it could be killed"
    os.kill(run.pid, sig)
    run.wait()
    wait_until(lambda: not servers_of(state), f"redis-server {server} to end with its owner")
    # It saved what was logged on its way out.
    assert (state / "redis.rdb").exists()


def test_a_resumed_run_logs_every_segment_under_one_run_id(
    tmp_path: Path, kill_on_exit: list[subprocess.Popen[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    state, report = tmp_path / "state", tmp_path / "report.json"
    args = command(state, "--events", "2000000", "--report", str(report))
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_on_exit.append(first)
    wait_until(
        lambda: any(m["event"] == "checkpoint" for m in logged_meta(state)),
        "an epoch",
        running=first,
    )
    assert first.poll() is None, "the run ended before it could be killed"
    first.kill()
    first.wait()
    wait_until(lambda: not servers_of(state), "the first segment's redis-server to end")

    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming from epoch" in done.stdout
    assert not servers_of(state)
    run_id = (state / "run-id").read_text().strip()
    assert f"as run {run_id}" in done.stdout
    assert json.loads(report.read_text())["logging"]["segment"] == 2

    capsys.readouterr()
    assert main(["logs", "--state", str(state), "--category", "meta"]) == 0
    meta = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["run"] for line in meta} == {run_id}
    started = [line for line in meta if line["event"] == "run_started"]
    assert [line["segment"] for line in started] == [1, 2]
    assert started[0]["resumed_from_epoch"] == -1
    assert started[1]["resumed_from_epoch"] >= 1
    # The first segment's epochs are there, before the second segment began.
    first_epochs = meta[: meta.index(started[1])]
    assert any(line["event"] == "checkpoint" for line in first_epochs)
    assert meta[-1]["event"] == "run_ended"
    assert meta[-1]["status"] == "completed"

    url, server = EmbeddedRedis.open_for_reading(state)
    db = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert db.zrange(RUNS_KEY, 0, -1) == [run_id]
        assert db.hget(f"ringflow:run:{run_id}", "segments") == "2"
        counters = db.hgetall(counters_key(run_id))
        # Both segments' entries are counted; the second replays what followed its epoch.
        assert int(counters["incoming:records"]) >= 2_000_000
        assert int(counters["meta:entries"]) == db.xlen(stream_key(run_id, "meta"))
    finally:
        db.close()
        assert server is not None
        server.stop()
    assert not servers_of(state)


def orphan_server(state: Path) -> int:
    """Start a redis-server on ``state`` from a process that then dies without stopping it (a
    server started off the main thread gets no parent-death signal), holding one marked run."""
    script = (
        "import os, sys, threading\n"
        "from pathlib import Path\n"
        "import redis\n"
        "from sim.redis_server import EmbeddedRedis\n"
        "box = []\n"
        "def start(): box.append(EmbeddedRedis.start(Path(sys.argv[1])))\n"
        "worker = threading.Thread(target=start)\n"
        "worker.start(); worker.join()\n"
        "db = redis.Redis(unix_socket_path=str(box[0].socket_path))\n"
        "db.zadd('ringflow:runs', {'before-the-crash': 1})\n"
        "print(box[0].process.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(state)], capture_output=True, text=True, check=False
    )
    return int(done.stdout)


def test_a_server_left_running_is_stopped_and_its_log_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    orphan = orphan_server(state)
    assert servers_of(state) == [orphan]
    code = main(small_run(state, tmp_path / "r.json"))
    assert code == 0
    captured = capsys.readouterr()
    assert f"stopped a redis-server left running in {state} (pid {orphan})" in " ".join(
        captured.err.split()
    )
    assert not servers_of(state)
    url, server = EmbeddedRedis.open_for_reading(state)
    try:
        with redis.Redis.from_url(url, decode_responses=True) as db:
            runs = db.zrange(RUNS_KEY, 0, -1)
    finally:
        assert server is not None
        server.stop()
    assert "before-the-crash" in runs
    assert len(runs) == 2


def test_a_stale_pid_file_never_gets_another_process_killed(
    tmp_path: Path, kill_on_exit: list[subprocess.Popen[Any]]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kill_on_exit.append(bystander)
    (state / PID_FILE).write_text(f"{bystander.pid} 1\n")
    (state / "redis.sock").write_text("")  # a stale socket path, too
    code = main(small_run(state, tmp_path / "r.json"))
    assert code == 0
    assert bystander.poll() is None
    assert json.loads((tmp_path / "r.json").read_text())["logging"]["enabled"]


def test_a_run_attaches_to_the_server_another_command_serves(tmp_path: Path) -> None:
    state = tmp_path / "state"
    serving = EmbeddedRedis.start(state)
    try:
        url, started = EmbeddedRedis.attach_or_start(state)
        assert started is None
        assert url == serving.url
        assert serving.ping()
    finally:
        serving.stop(save=False)


# -- the end of a run: bounded, quiet, and it says what was not written -----------------------


def test_the_end_of_a_run_without_redis_is_bounded_idle_and_counts_what_was_lost(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis.start(tmp_path / "redis")
    marks: dict[str, float] = {}

    def chaos(pipeline: Pipeline, now: float) -> None:
        if "killed" not in marks and pipeline.events_consumed > 60_000:
            server.process.kill()
            server.process.wait()
            marks["killed"] = 1
        marks["wall"] = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        marks["cpu"] = usage.ru_utime + usage.ru_stime

    try:
        topology = load_topology(EXAMPLES / "video-site.yaml")
        pipeline = Pipeline.build(topology, REGISTRY, events=200_000)
        report = run_pipeline(
            pipeline,
            logging=LogSettings(server.url, "run-1", flush_timeout=2.0),
            on_refresh=chaos,
            refresh_every=0,
        ).report.to_dict()
    finally:
        server.stop(save=False)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - marks["wall"]
    cpu = usage.ru_utime + usage.ru_stime - marks["cpu"]
    assert "killed" in marks
    assert report["status"] == "completed"
    logging = report["logging"]
    assert logging["unwritten"] > 0  # the run_ended entry at least
    assert logging["failures"] >= 1
    assert 2.0 <= wall < 8.0  # flush_timeout, not the old fixed 10 s
    assert cpu < 0.6, f"the end of the run used {cpu:.2f} s of CPU in {wall:.2f} s"

    console = Console(file=None, record=True, width=300)
    with console.capture() as captured:
        print_summary(console, Report.from_dict(report), tmp_path / "r.json")
    assert f"not written to Redis: {logging['unwritten']:,} entries" in captured.get()


def test_flush_timeout_must_be_positive() -> None:
    text = (EXAMPLES / "video-site.yaml").read_text() + "\nredis:\n  flush_timeout: 0\n"
    with pytest.raises(TopologyError, match=r"\$\.redis\.flush_timeout: must be > 0"):
        Topology.from_yaml(text, "t.yaml")
    topology = Topology.from_yaml(text.replace("flush_timeout: 0", "flush_timeout: 1.5"), "t")
    assert topology.redis.flush_timeout == 1.5


# -- unreachable Redis is said before the run -------------------------------------------------


@pytest.mark.parametrize(("on_unavailable", "code"), [("warn", 0), ("fail", 2)])
def test_unreachable_redis_is_said_before_the_run_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    on_unavailable: str,
    code: int,
) -> None:
    url = f"unix://{tmp_path}/absent.sock"
    path = tmp_path / "t.yaml"
    path.write_text(
        (EXAMPLES / "video-site.yaml").read_text()
        + f"\nredis:\n  url: {url}\n  on_unavailable: {on_unavailable}\n"
    )
    before_run: list[str] = []
    real_run = sim.run.run_pipeline

    def spy(*args: Any, **kwargs: Any) -> Any:
        captured = capsys.readouterr()
        before_run.append(" ".join((captured.out + captured.err).split()))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(sim.run, "run_pipeline", spy)
    report = tmp_path / "r.json"
    result = main(
        ["run", str(path), "--events", "5000", "--quiet", "--no-chart", "--report", str(report)]
    )
    after = " ".join(capsys.readouterr().err.split())
    assert result == code
    if on_unavailable == "fail":
        assert before_run == []  # refused before running
        assert f"Redis at {url} is unavailable: cannot connect" in after
        assert not report.exists()
    else:
        (said,) = before_run
        assert f"warning: Redis at {url} is unavailable: cannot connect" in said
        assert "running without logging" in said
        assert "logging to Redis at" not in said
        logging = json.loads(report.read_text())["logging"]
        assert logging["enabled"] is False
        assert "cannot connect" in logging["reason"]


def test_a_read_only_replica_is_said_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = EmbeddedRedis.start(tmp_path / "redis")
    db = redis.Redis(unix_socket_path=str(server.socket_path))
    db.replicaof("127.0.0.1", "1")
    try:
        path = tmp_path / "t.yaml"
        path.write_text(
            (EXAMPLES / "video-site.yaml").read_text()
            + f"\nredis:\n  url: {server.url}\n  on_unavailable: fail\n"
        )
        result = main(["run", str(path), "--events", "5000", "--quiet", "--no-chart"])
    finally:
        db.replicaof("NO", "ONE")
        server.stop(save=False)
    assert result == 2
    assert "read-only replica: point redis.url at the primary" in capsys.readouterr().err


# -- following a log to the end of its run ----------------------------------------------------


def test_logs_follow_ends_with_the_run(
    tmp_path: Path, kill_on_exit: list[subprocess.Popen[Any]]
) -> None:
    """The run's embedded Redis stops with the run, under a following ``ringflow logs``."""
    state = tmp_path / "state"
    topology = tmp_path / "real.yaml"
    text = (EXAMPLES / "video-site.yaml").read_text().replace("clock: virtual", "clock: real")
    topology.write_text(text.replace("rate: 50000 ", "rate: 25000 "))
    run = subprocess.Popen(
        command(state, "--events", "100000", topology=topology),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kill_on_exit.append(run)
    wait_until_logging(state)
    follow = follow_log(state, kill_on_exit)
    first = json.loads(follow.stdout.readline())
    assert first["event"] == "run_started"
    assert run.poll() is None, "the run ended before the log was followed"
    # The rest through the same buffered reader: communicate() reads the pipe itself and
    # would miss what readline() buffered, starting the output part-way through a line.
    out = follow.stdout.read()
    _, err = follow.communicate(timeout=60)
    assert run.wait(timeout=60) == 0
    assert follow.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[-1]["event"] == "run_ended"
    assert lines[-1]["status"] == "completed"
    assert "closed" not in err


def test_logs_follow_of_a_killed_run_says_it_did_not_end(
    tmp_path: Path, kill_on_exit: list[subprocess.Popen[Any]]
) -> None:
    state = tmp_path / "state"
    run = subprocess.Popen(
        command(state, "--events", "5000000"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    kill_on_exit.append(run)
    wait_until_logging(state)
    follow = follow_log(state, kill_on_exit)
    assert json.loads(follow.stdout.readline())["event"] == "run_started"
    run.kill()
    run.wait()
    _, err = follow.communicate(timeout=60)
    assert follow.returncode == 1
    assert "stopped before it ended" in " ".join(err.split())
    assert not servers_of(state)


def test_ctrl_c_at_a_terminal_stops_the_run_before_its_redis_server(
    tmp_path: Path, kill_on_exit: list[subprocess.Popen[Any]]
) -> None:
    """Ctrl-C sends SIGINT to the whole foreground process group: the embedded server, in a
    session of its own, does not get it, so the run writes its last entries (its end among
    them) before stopping the server."""
    state, report = tmp_path / "state", tmp_path / "r.json"
    run = subprocess.Popen(
        [*command(state, "--events", "5000000"), "--report", str(report)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
    )
    kill_on_exit.append(run)
    wait_until_logging(state)
    (server,) = servers_of(state)
    assert os.getsid(server) != os.getsid(run.pid)
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(timeout=60) == 130
    result = json.loads(report.read_text())
    assert result["status"] == "interrupted"
    assert result["logging"]["unwritten"] == 0, result["logging"]
    assert result["logging"]["failures"] == 0, result["logging"]
