"""Split topologies: the nodes section, nodes in one process, and `ringflow node` subprocesses.

Nodes talk over real websockets on 127.0.0.1 and run on the real clock.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from rich.console import Console

from actors import Columns, ConsumerGroup, Gateway, Topic, open_producer
from sim.report import build_report
from sim.run import REGISTRY, run_pipeline
from sim.tap import stream, tap_url
from topology import Pipeline, Placement, Topology, TopologyError

EXAMPLES = Path(__file__).resolve().parent.parent / "topology" / "examples"
SPLIT = EXAMPLES / "video-site-split.yaml"

pytestmark = pytest.mark.timeout(120)

KILL_SEED = os.environ.get("RINGFLOW_KILL_SEED", "0")
"""Seeds the moments kill tests pick; 'make stress' runs them with many seeds."""

_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_node_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way leaves its node processes running: stop them."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def split_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SPLIT.read_text())
    for node, port in zip(data["nodes"].values(), free_ports(len(data["nodes"])), strict=True):
        node["listen"] = f"127.0.0.1:{port}"
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(TopologyError) as caught:
        Topology.from_dict(data)
    return caught.value.problems


def single_process(topology: Topology, events: int) -> dict[str, Any]:
    pipeline = Pipeline.build(topology, REGISTRY, events=events)

    async def main() -> dict[str, Any]:
        await pipeline.run()
        return build_report(pipeline, status="completed").to_dict()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def run_nodes(topology: Topology, events: int) -> dict[str, dict[str, Any]]:
    pipelines = {
        node: Pipeline.build(topology, REGISTRY, events=events, placement=Placement(node))
        for node in topology.nodes
    }
    async with trio.open_nursery() as nursery:
        for pipeline in pipelines.values():
            nursery.start_soon(pipeline.run)
    return {node: build_report(p, status="completed").to_dict() for node, p in pipelines.items()}


# -- the nodes section --------------------------------------------------------------------------


def test_the_split_example_is_valid_and_puts_everything_on_a_node() -> None:
    topology = Topology.from_yaml(SPLIT.read_text())
    assert set(topology.nodes) == {"producers", "broker", "consumers"}
    assert topology.node_of("topics", "events") == "broker"
    assert topology.node_of("consumers", "video-stats") == "consumers"
    assert topology.gateway.token_env == "RINGFLOW_TOKEN"


def test_nodes_naming_unknown_or_doubly_placed_things_are_refused() -> None:
    data = split_data()
    data["nodes"]["broker"]["topics"] = ["events", "evnets"]
    data["nodes"]["consumers"]["consumers"] = ["video-stats", "video-stats"]
    data["nodes"]["producers"]["listen"] = data["nodes"]["broker"]["listen"]
    problems = problems_of(data)
    assert any("$.nodes.broker.topics: no topic named 'evnets'" in p for p in problems)
    assert any("'video-stats' is already on node 'consumers'" in p for p in problems)
    assert any("consumers 'blogger-analytics' on no node" in p for p in problems)
    assert any("is also where node 'producers' listens" in p for p in problems)


def test_a_node_listening_beyond_loopback_needs_a_token_and_addresses_must_parse() -> None:
    data = split_data()
    data["gateway"] = {}
    data["nodes"]["broker"]["listen"] = "0.0.0.0:7402"
    (problem,) = problems_of(data)
    assert problem.startswith("$.nodes.broker.listen: 0.0.0.0:7402 is reachable from other")
    assert "set gateway.token_env" in problem
    data["nodes"]["producers"]["listen"] = "localhost"
    data["nodes"]["consumers"]["listen"] = "127.0.0.1:99999"
    problems = problems_of(data)
    assert "$.nodes.producers.listen: 'localhost' is not HOST:PORT" in problems
    assert any(p.startswith("$.nodes.consumers.listen: port 99999") for p in problems)


def test_an_unknown_node_or_peer_is_refused_with_the_nodes_listed() -> None:
    topology = Topology.from_dict(split_data())
    with pytest.raises(TopologyError, match="no node named 'brokr'; nodes are: broker, "):
        Pipeline.build(topology, REGISTRY, placement=Placement("brokr"))
    with pytest.raises(TopologyError, match=r"peers\.db: no node named 'db'"):
        Pipeline.build(topology, REGISTRY, placement=Placement("broker", peers={"db": "x:1"}))
    whole = Topology.from_yaml((EXAMPLES / "video-site.yaml").read_text())
    with pytest.raises(TopologyError, match="has no nodes"):
        Pipeline.build(whole, REGISTRY, placement=Placement("broker"))


# -- nodes in one process --------------------------------------------------------------------


async def test_three_nodes_give_the_aggregates_of_one_process() -> None:
    topology = Topology.from_dict(split_data())
    expected = await trio.to_thread.run_sync(single_process, topology, 30_000)
    reports = await run_nodes(topology, 30_000)
    consumers = reports["consumers"]
    assert consumers["digest"] == expected["digest"]
    assert consumers["aggregates"] == expected["aggregates"]
    assert consumers["expect_ok"], consumers["expect"]
    assert consumers["events_produced"] == consumers["events_consumed"] == 30_000
    assert reports["producers"]["events_produced"] == 30_000
    broker = reports["broker"]
    assert sum(p["records"] for p in broker["partitions"]) == 30_000
    assert broker["expect"] == {}  # no consumers there: checked on the consumers' node


async def test_nodes_that_depend_on_each_other_in_a_cycle_start_and_finish() -> None:
    # a hosts t1 and writes to t2; b hosts t2 and writes to t1; each reads the other's topic.
    ports = free_ports(2)
    site = {"workload": "video_site", "events": 4000, "params": {"videos": 50, "users": 1000}}
    data = {
        "name": "cycle",
        "topics": {"t1": {"partitions": 2, "key": "video_id"}, "t2": {"key": "video_id"}},
        "producers": {"p1": {**site, "topic": "t1"}, "p2": {**site, "topic": "t2"}},
        "consumers": {
            "c1": {"topic": "t1", "processor": "video_stats"},
            "c2": {"topic": "t2", "processor": "video_stats"},
        },
        "nodes": {
            "a": {"listen": f"127.0.0.1:{ports[0]}", "topics": ["t1"], "producers": ["p2"]},
            "b": {"listen": f"127.0.0.1:{ports[1]}", "topics": ["t2"], "producers": ["p1"]},
        },
    }
    data["nodes"]["a"]["consumers"] = ["c2"]
    data["nodes"]["b"]["consumers"] = ["c1"]
    topology = Topology.from_dict(data)
    expected = await trio.to_thread.run_sync(single_process, topology, 8000)
    with trio.fail_after(60):
        reports = await run_nodes(topology, 8000)
    assert reports["a"]["aggregates"]["c2"] == expected["aggregates"]["c2"]
    assert reports["b"]["aggregates"]["c1"] == expected["aggregates"]["c1"]
    assert reports["a"]["expect_ok"]
    assert reports["b"]["expect_ok"]


# -- taps through the command's code -----------------------------------------------------------


def test_tap_urls_carry_the_options_and_bad_ones_are_refused() -> None:
    url = tap_url("ws://127.0.0.1:7402/tap/events", "earliest", 1, hold=True)
    assert url == "ws://127.0.0.1:7402/tap/events?from=earliest&partition=1&hold=true"
    for bad in ("http://h:1/tap/x", "ws://h:1/node", "ws://h:1/tap"):
        with pytest.raises(ValueError, match=r"/tap/TOPIC"):
            tap_url(bad, "latest", None, hold=False)
    with pytest.raises(ValueError, match="--from 'soon'"):
        tap_url("ws://h:1/tap/x", "soon", None, hold=False)


async def test_the_tap_command_prints_json_lines_up_to_its_limit() -> None:
    topic = Topic("events", partitions=2, capacity=1000)
    ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    async with open_producer(topic) as producer:
        values = list(range(300))
        await producer.send_many(Columns([v % 5 for v in values], values, [0.5] * 300))
    out, err = io.StringIO(), Console(file=io.StringIO())
    async with trio.open_nursery() as nursery:
        server = await nursery.start(gateway.serve, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/tap/events?from=earliest"
        assert await stream(url, out, err, limit=250) == 0
        everything = io.StringIO()
        assert await stream(url, everything, err) == 0  # to the end: the topic is closed
        nursery.cancel_scope.cancel()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 250
    assert set(lines[0]) == {"topic", "partition", "offset", "key", "timestamp", "value"}
    for partition in (0, 1):
        offsets = [line["offset"] for line in lines if line["partition"] == partition]
        assert offsets == list(range(len(offsets)))
    assert len(everything.getvalue().splitlines()) == 300
    assert "events ended" in err.file.getvalue()  # type: ignore[attr-defined]


# -- `ringflow node` as subprocesses ----------------------------------------------------------


COMPOSE = Path(__file__).resolve().parent.parent / "compose.yml"


def compose_commands() -> dict[str, list[str]]:
    """The command of each node's service in compose.yml."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {
        name: service["command"]
        for name, service in services.items()
        if service.get("command", [None, None])[:2] == ["ringflow", "node"]
    }


def node_command(node: str, events: int, report: Path) -> list[str]:
    """The node's command in compose.yml, run from the repository with this Python, plus the
    options of a short test run."""
    command = compose_commands()[node]
    assert command[0] == "ringflow"
    return [
        sys.executable,
        "-m",
        "sim",
        *command[1:],
        "--events",
        str(events),
        "--report",
        str(report),
        "--no-log",
    ]


def test_compose_runs_every_node_of_the_split_example_with_its_command() -> None:
    topology = Topology.from_yaml(SPLIT.read_text())
    commands = compose_commands()
    assert set(commands) == set(topology.nodes)
    for node, command in commands.items():
        assert command == [
            "ringflow",
            "node",
            "topology/examples/video-site-split.yaml",
            "--node",
            node,
        ]
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    peers = dict(
        p.split("=") for p in services["broker"]["environment"]["RINGFLOW_PEERS"].split(",")
    )
    for node in topology.nodes:
        port = topology.nodes[node].listen.rsplit(":", 1)[1]
        assert peers[node] == f"{node}:{port}"
        assert services[node]["environment"]["RINGFLOW_LISTEN"] == f"0.0.0.0:{port}"
    assert "redis" in services


@pytest.mark.parametrize("checkpoints", [False, True], ids=["plain", "checkpoints"])
def test_node_commands_as_subprocesses_equal_the_single_process_run(
    tmp_path: Path, checkpoints: bool
) -> None:
    """The commands compose.yml runs, on loopback: the consumers' aggregates equal `run`'s,
    and a tap of the broker streams what its rings hold (with checkpoints, what epochs hold)."""
    events = 100_000
    ports = free_ports(3)
    names = ["producers", "broker", "consumers"]
    env = {
        **os.environ,
        "RINGFLOW_PEERS": ",".join(f"{n}=127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)),
        "RINGFLOW_TOKEN": "s3cret",
    }
    processes = {}
    for name, port in zip(reversed(names), reversed(ports), strict=True):  # consumers first
        node_env = {**env, "RINGFLOW_LISTEN": f"127.0.0.1:{port}"}
        command = node_command(name, events, tmp_path / f"{name}.json")
        if checkpoints:
            command += ["--state", str(tmp_path / f"state-{name}")]
        processes[name] = subprocess.Popen(
            command,
            cwd=COMPOSE.parent,
            env=node_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _STARTED.append(processes[name])
        time.sleep(0.2)
    tap = subprocess.run(
        [
            sys.executable,
            "-m",
            "sim",
            "tap",
            f"ws://127.0.0.1:{ports[1]}/tap/events",
            "--from",
            "earliest",
            "--partition",
            "2",
            "--limit",
            "500",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    outputs = {name: process.communicate(timeout=90)[0] for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name]
    assert "token required" in outputs["broker"]
    reports = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in names}
    whole = Topology.from_yaml(SPLIT.read_text())
    expected = single_process(whole, events)
    assert reports["consumers"]["digest"] == expected["digest"]
    assert reports["consumers"]["expect_ok"], reports["consumers"]["expect"]
    assert reports["consumers"]["events_consumed"] == events
    assert tap.returncode == 0, tap.stderr
    records = [json.loads(line) for line in tap.stdout.splitlines()]
    offsets = [r["offset"] for r in records]  # from what the ring still held when it came
    assert offsets == list(range(offsets[0], offsets[0] + 500))
    assert {r["partition"] for r in records} == {2}
    assert {r["value"]["type"] for r in records} == {"video"}
    if not checkpoints:
        return
    # The same commands again on the finished state folders: each node is already complete,
    # says so and ends at once (none of them waits for the others), with the same results.
    for name, port in zip(names, ports, strict=True):
        command = node_command(name, events, tmp_path / f"again-{name}.json")
        command += ["--state", str(tmp_path / f"state-{name}")]
        again = subprocess.run(
            command,
            cwd=COMPOSE.parent,
            env={**env, "RINGFLOW_LISTEN": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already complete" in again.stdout
        report = json.loads((tmp_path / f"again-{name}.json").read_text())
        assert report["already_complete"]
        assert report["digest"] == reports[name]["digest"]
        assert report["events_consumed"] == reports[name]["events_consumed"]


def start_nodes(
    tmp_path: Path, events: int, extra: dict[str, list[str]] | None = None
) -> tuple[dict[str, subprocess.Popen[str]], dict[str, dict[str, str]], dict[str, list[str]]]:
    """Start the three node commands on free loopback ports, consumers first."""
    names = ["producers", "broker", "consumers"]
    ports = free_ports(3)
    env = {
        **os.environ,
        "RINGFLOW_PEERS": ",".join(f"{n}=127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)),
    }
    envs, commands, processes = {}, {}, {}
    for name, port in zip(reversed(names), reversed(ports), strict=True):
        envs[name] = {**env, "RINGFLOW_LISTEN": f"127.0.0.1:{port}"}
        commands[name] = node_command(name, events, tmp_path / f"{name}.json")
        commands[name] += (extra or {}).get(name, [])
        processes[name] = subprocess.Popen(
            commands[name],
            cwd=COMPOSE.parent,
            env=envs[name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _STARTED.append(processes[name])
    return processes, envs, commands


def epochs_in(state: Path) -> int:
    """The newest epoch's number in a state folder, 0 when there is none."""
    path = state / "checkpoints.sqlite3"
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()[0])
    except sqlite3.Error:  # no schema yet, or its first transaction still under way
        return 0


@pytest.mark.kill
@pytest.mark.parametrize("victim", ["broker", "consumers", "producers"])
def test_a_node_killed_and_restarted_loses_and_duplicates_nothing(
    tmp_path: Path, victim: str
) -> None:
    """SIGKILL one node mid-run and start it again: every node checkpoints its part."""
    events = 200_000  # four seconds of the example's 50,000 events a second
    states = {
        n: ["--state", str(tmp_path / f"state-{n}")] for n in ("producers", "broker", "consumers")
    }
    processes, envs, commands = start_nodes(tmp_path, events, states)
    # A seeded moment, counted in the victim's epochs so that it means the same on a fast and
    # a slow machine: 'make stress' repeats this test with other seeds under CPU load.
    rng = random.Random(f"{KILL_SEED}/{victim}")
    after_epochs, extra = rng.randrange(4), rng.uniform(0.0, 1.0)
    killed = processes.pop(victim)
    state = tmp_path / f"state-{victim}"
    deadline = time.monotonic() + 60
    while epochs_in(state) < after_epochs and killed.poll() is None:
        assert time.monotonic() < deadline, f"{victim} wrote no epoch {after_epochs} in 60 s"
        time.sleep(0.02)
    time.sleep(extra)
    outputs = {}
    if killed.poll() is None:
        killed.kill()  # SIGKILL: no final epoch, connections dropped mid-stream
        killed.communicate()  # it may not even have started: a moment like any other
        epochs = epochs_in(state)
        restarted = subprocess.run(
            commands[victim],
            cwd=COMPOSE.parent,
            env=envs[victim],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        # Killed before its first epoch, a node starts afresh (nothing it held was durable).
        assert ("resuming from epoch" in restarted.stdout) == bool(epochs), restarted.stdout
    else:  # it finished first: nothing to kill, the others must still end well
        outputs[victim] = killed.communicate()[0]
        processes[victim] = killed
    outputs.update({n: p.communicate(timeout=90)[0] for n, p in processes.items()})
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name]
    consumers = json.loads((tmp_path / "consumers.json").read_text())
    expected = single_process(Topology.from_yaml(SPLIT.read_text()), events)
    assert consumers["events_consumed"] == events
    assert consumers["expect_ok"], consumers["expect"]  # nothing lost, nothing twice
    assert consumers["digest"] == expected["digest"]


def test_a_node_refuses_to_listen_beyond_loopback_without_its_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RINGFLOW_TOKEN"}
    env["RINGFLOW_LISTEN"] = "0.0.0.0:7402"
    done = subprocess.run(
        node_command("broker", 10, tmp_path / "r.json"),
        cwd=COMPOSE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0:7402 without a shared token" in done.stderr
    assert "set RINGFLOW_TOKEN" in done.stderr


async def test_the_tap_command_retries_then_reports_an_unreachable_node() -> None:
    (port,) = free_ports(1)
    err = Console(file=io.StringIO(), width=200)
    url = f"ws://127.0.0.1:{port}/tap/events"
    assert await stream(url, io.StringIO(), err, wait=0.3) == 1
    assert f"cannot reach {url} (tried for 0.3 s)" in err.file.getvalue()  # type: ignore[attr-defined]


def test_a_node_whose_peer_never_comes_is_retried_then_fails_naming_it() -> None:
    data = split_data()
    data["gateway"] = {"connect_timeout": 0.5}
    topology = Topology.from_dict(data)
    pipeline = Pipeline.build(topology, REGISTRY, events=1000, placement=Placement("producers"))
    started = time.monotonic()
    report = run_pipeline(pipeline).report.to_dict()  # the broker never starts
    assert time.monotonic() - started >= 0.5  # it kept trying for the connect timeout
    broker = data["nodes"]["broker"]["listen"]
    assert report["status"] == "failed"
    assert f"cannot reach ws://{broker}/node (tried for 0.5 s)" in report["error"]
