"""`ringflow node` and `ringflow tap` subprocesses that are refused or misconfigured fail with
one clear line and the documented exit code, and the nodes they talk to carry on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_split import COMPOSE, SPLIT, free_ports, single_process
from topology import Topology

pytestmark = pytest.mark.timeout(120)

NAMES = ("producers", "broker", "consumers")


def node(
    name: str, ports: list[int], tmp_path: Path, *extra: str, token: str | None = None
) -> subprocess.Popen[str]:
    """Start `ringflow node` for ``name`` of the split example on ``ports`` (one per node)."""
    env = {k: v for k, v in os.environ.items() if k != "RINGFLOW_TOKEN"}
    env["RINGFLOW_PEERS"] = ",".join(
        f"{n}=127.0.0.1:{p}" for n, p in zip(NAMES, ports, strict=True)
    )
    if token is not None:
        env["RINGFLOW_TOKEN"] = token
    port = ports[NAMES.index(name)]
    command = [sys.executable, "-m", "sim", "node", str(SPLIT), "--node", name, "--no-log"]
    command += ["--listen", f"127.0.0.1:{port}", "--report", str(tmp_path / f"{name}.json")]
    return subprocess.Popen(
        [*command, *extra],
        cwd=COMPOSE.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_nodes_that_disagree_are_refused_and_the_broker_serves_the_right_ones(
    tmp_path: Path,
) -> None:
    """Broker and consumers with seed 7 and 2,000 events; producers with seed 42 and 1,000:
    the producers' node stops with one line naming both settings and exit 2; the broker keeps
    serving, and producers started right give the seed-7 result."""
    ports = free_ports(3)
    right = ("--seed", "7", "--events", "2000")
    broker = node("broker", ports, tmp_path, *right)
    consumers = node("consumers", ports, tmp_path, *right)
    wrong = finish(node("producers", ports, tmp_path, "--seed", "42", "--events", "1000"))
    code, _, err = wrong
    assert code == 2, wrong
    (line,) = err.strip().splitlines()
    assert (
        "refused the connection (4006): nodes producers and broker disagree on seed (42 vs 7)"
        in line
    )
    assert "events (1000 vs 2000)" in line
    assert "give every node the same topology file, --seed and --events" in line
    assert broker.poll() is None
    assert consumers.poll() is None
    good = finish(node("producers", ports, tmp_path, *right))
    assert good[0] == 0, good
    results = {"broker": finish(broker), "consumers": finish(consumers)}
    for name, result in results.items():
        assert result[0] == 0, (name, result)
    # The broker, running without a log, still tells its operator what it refused.
    assert "gateway: closed a connection from" in results["broker"][2]
    assert "disagree on seed (42 vs 7)" in results["broker"][2]
    report = json.loads((tmp_path / "consumers.json").read_text())
    data = yaml.safe_load(SPLIT.read_text())
    data["seed"] = 7
    expected = single_process(Topology.from_dict(data), 2000)
    assert report["seed"] == 7
    assert report["digest"] == expected["digest"]
    assert report["expect_ok"], report["expect"]


@pytest.mark.parametrize("refused", ["consumers", "producers"])
def test_a_node_refused_for_its_token_fails_cleanly_with_its_report(
    tmp_path: Path, refused: str
) -> None:
    ports = free_ports(3)
    broker = node("broker", ports, tmp_path, "--events", "1000", token="right")
    try:
        code, out, err = finish(node(refused, ports, tmp_path, "--events", "1000", token="wrong"))
    finally:
        broker.kill()
        broker.communicate()
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    assert err == ""
    assert "run failed:" in out
    assert "refused the connection (4001): wrong token" in out
    assert "restarts" not in out  # the refusal, not how the supervisor gave up
    report = json.loads((tmp_path / f"{refused}.json").read_text())
    assert report["status"] == "failed"
    assert "(4001): wrong token" in report["error"]
    assert report["checkpoints"] is None


def test_a_node_refused_with_checkpoints_does_not_roll_back_again_and_again(
    tmp_path: Path,
) -> None:
    ports = free_ports(3)
    broker = node("broker", ports, tmp_path, "--events", "1000", token="right")
    state = str(tmp_path / "state")
    try:
        code, out, _ = finish(
            node("consumers", ports, tmp_path, "--events", "1000", "--state", state, token="x")
        )
    finally:
        broker.kill()
        broker.communicate()
    assert code == 1, out
    assert "rolled back" not in out
    report = json.loads((tmp_path / "consumers.json").read_text())
    assert report["checkpoints"]["rollbacks"] == []


def test_a_node_whose_listen_address_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = [*free_ports(1), port, *free_ports(1)]
        started = time.monotonic()
        code, out, err = finish(node("broker", ports, tmp_path, "--events", "10"))
    assert code == 2
    assert err.splitlines() == [
        f"cannot listen on 127.0.0.1:{port}: address already in use; stop what listens there "
        "or give this node another address (--listen HOST:PORT)"
    ]
    assert "Traceback" not in out
    assert time.monotonic() - started < 30
    assert not (tmp_path / "broker.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "-3"], "argument --partition: must be at least 0, got -3"),
        (["--partition", "x"], "argument --partition: expected a whole number, got 'x'"),
        (["--limit", "0"], "argument --limit: must be at least 1, got 0"),
    ],
)
def test_tap_options_state_their_real_bounds(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sim", "tap", "ws://127.0.0.1:1/tap/events", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_tap_partition_zero_is_accepted() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sim",
            "tap",
            "ws://127.0.0.1:1/tap/events",
            "--partition",
            "0",
            "--wait",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1  # parsed, then nothing to reach
    assert "cannot reach ws://127.0.0.1:1/tap/events?from=latest&partition=0" in done.stderr
