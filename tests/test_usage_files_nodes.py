"""The file pipeline over several nodes: a parser node per folder, all writing their sums
to the database's node; a parser node killed with SIGKILL and started again loses and
doubles nothing. Real ``ringflow node`` processes, real files, real SQLite."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.gen_files import generate_files
from tests.test_hardening_redis import wait_until
from tests.test_split import free_ports
from tests.test_usage_files import reference, ringflow, sqlite_totals


def nodes_topology(folder: Path) -> Path:
    ports = free_ports(3)
    data: dict[str, Any] = {
        "name": "usage-nodes",
        "clock": "real",
        "topics": {
            "files-a": {"partitions": 2, "capacity": 100},
            "files-b": {"partitions": 2, "capacity": 100},
            "sums-a": {"partitions": 3, "capacity": 50_000, "key": "user_id"},
            "sums-b": {"partitions": 3, "capacity": 50_000, "key": "user_id"},
        },
        "producers": {
            name: {
                "files": {"dir": str(folder / name), "poll": 0.1, "idle": 2},
                "topic": f"files-{name}",
            }
            for name in ("a", "b")
        },
        "consumers": {
            **{
                f"parse-{name}": {
                    "topic": f"files-{name}",
                    "processor": "usage_parser",
                    "instances": 2,
                    "output": f"sums-{name}",
                    "params": {"max_keys": 900, "chunk_bytes": 4096},
                }
                for name in ("a", "b")
            },
            "totals": {
                "topics": ["sums-a", "sums-b"],
                "processor": "usage_totals",
                "params": {"url": f"sqlite:///{folder / 'totals.sqlite'}"},
            },
        },
        "checkpoint": {"every": 0.2},
        "redis": {"enabled": False},
        "nodes": {
            "a": {
                "listen": f"127.0.0.1:{ports[0]}",
                "producers": ["a"],
                "topics": ["files-a", "sums-a"],
                "consumers": ["parse-a"],
            },
            "b": {
                "listen": f"127.0.0.1:{ports[1]}",
                "producers": ["b"],
                "topics": ["files-b", "sums-b"],
                "consumers": ["parse-b"],
            },
            "db": {"listen": f"127.0.0.1:{ports[2]}", "consumers": ["totals"]},
        },
    }
    path = folder / "usage.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def node(path: Path, name: str, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim",
            "node",
            str(path),
            "--node",
            name,
            "--state",
            str(folder / f"state-{name}"),
            "--report",
            str(folder / f"report-{name}.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_nodes(started: dict[str, subprocess.Popen[str]], what: str = "") -> None:
    """Wait for each node to end; each must exit 0."""
    for name, process in started.items():
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"{what}node {name}: {err}"


def kill_nodes(started: dict[str, subprocess.Popen[str]]) -> None:
    """Kill the nodes still running (after a failure)."""
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_two_parser_consumers_may_not_share_a_group(tmp_path: Path) -> None:
    path = nodes_topology(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["consumers"]["parse-b"]["topic"] = "files-a"  # both read folder a's files...
    for name in ("parse-a", "parse-b"):
        data["consumers"][name]["group"] = "parsers"  # ...in one group
    path.write_text(yaml.safe_dump(data))
    checked = ringflow("validate", path)
    assert checked.returncode == 2
    assert (
        "$.consumers.parse-b.group: group 'parsers' on topic 'files-a' is already used by "
        "consumer 'parse-a'" in checked.stdout + checked.stderr
    )


def test_a_parser_writes_its_sums_to_a_topic_on_its_own_node(tmp_path: Path) -> None:
    path = nodes_topology(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["nodes"]["a"]["topics"].remove("sums-a")
    data["nodes"]["db"]["topics"] = ["sums-a"]
    path.write_text(yaml.safe_dump(data))
    checked = ringflow("validate", path)
    assert checked.returncode == 2
    assert (
        "$.consumers.parse-a.output: topic 'sums-a' is on node 'db', the consumer on node 'a'; "
        "the records its processor makes go to a topic on its own node"
        in checked.stdout
        + checked.stderr
    )


@pytest.mark.kill
def test_a_parser_node_killed_mid_file_and_restarted_gives_the_exact_totals(
    tmp_path: Path,
) -> None:
    rng = random.Random(f"usage-nodes/{os.environ.get('RINGFLOW_KILL_SEED', '0')}")
    for seed, name in enumerate(("a", "b")):
        generate_files(tmp_path / name, files=4, size=60_000, users=1_000, seed=seed)
    expected: dict[int, int] = {}
    for name in ("a", "b"):
        for user, amount in reference(tmp_path / name)[0].items():
            expected[user] = expected.get(user, 0) + amount
    path = nodes_topology(tmp_path)
    store = tmp_path / "totals.sqlite"
    started = {name: node(path, name, tmp_path) for name in ("db", "b", "a")}
    try:
        wanted = rng.randrange(1, 4)

        def applied() -> bool:
            try:
                with sqlite3.connect(store) as db:
                    rows = db.execute("SELECT count(*) FROM ringflow_applied").fetchone()
            except sqlite3.OperationalError:
                return False
            return bool(rows and rows[0] >= wanted)

        wait_until(applied, "sums applied before the kill", running=started["a"])
        started["a"].kill()
        started["a"].communicate()
        assert started["a"].returncode == -9
        started["a"] = node(path, "a", tmp_path)  # the same command again
        finish_nodes(started)
    finally:
        kill_nodes(started)
    assert sqlite_totals(store) == expected
    files = sum(
        json.loads((tmp_path / f"report-{n}.json").read_text())["aggregates"][f"parse-{n}"]["files"]
        for n in ("a", "b")
    )
    assert files == 8
    for name in ("a", "b"):
        assert len(list((tmp_path / name / "done").iterdir())) == 4


def totals_now(store: Path) -> dict[int, int] | None:
    try:
        return sqlite_totals(store) if store.exists() else None
    except sqlite3.OperationalError:  # the table is not there yet
        return None


@pytest.mark.parametrize("stop", ["idle", "sigterm"])
def test_nodes_run_again_after_they_ended_take_the_files_that_came_since(
    tmp_path: Path, stop: str
) -> None:
    path = nodes_topology(tmp_path)
    if stop == "sigterm":  # watching until stopped
        data = yaml.safe_load(path.read_text())
        for name in ("a", "b"):
            del data["producers"][name]["files"]["idle"]
        path.write_text(yaml.safe_dump(data))
    store = tmp_path / "totals.sqlite"
    expected: dict[int, int] = {}
    for round_ in range(2):
        for seed, name in enumerate(("a", "b")):
            fresh = tmp_path / f"new-{name}-{round_}"
            generate_files(fresh, files=2, size=20_000, users=500, seed=10 * round_ + seed)
            for user, amount in reference(fresh)[0].items():
                expected[user] = expected.get(user, 0) + amount
            (tmp_path / name).mkdir(exist_ok=True)
            for made in fresh.iterdir():
                made.rename(tmp_path / name / f"{round_}-{made.name}")
        started = {name: node(path, name, tmp_path) for name in ("db", "b", "a")}
        try:
            if stop == "sigterm":
                wait_until(
                    lambda: totals_now(store) == expected,
                    f"round {round_}: every file applied",
                    running=started["db"],
                )
                for process in started.values():
                    process.send_signal(signal.SIGTERM)
            finish_nodes(started, f"round {round_}, ")
        finally:
            kill_nodes(started)
        assert sqlite_totals(store) == expected, f"round {round_}"
        for name in ("a", "b"):
            assert len(list((tmp_path / name / "done").iterdir())) == 2 * (round_ + 1)
