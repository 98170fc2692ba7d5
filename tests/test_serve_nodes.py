"""The HTTP API on nodes of a split topology: a node with an ``api`` address takes events into
topics on other nodes through their gateways, over real websockets and HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
import yaml

from actors import (
    Columns,
    Gateway,
    GatewayError,
    RemoteTopic,
    Topic,
    admit_sized,
    open_remote_topic,
)
from actors.wire import DUPLICATE
from sim.cli.ringflow import main
from sim.load import HttpConnection
from sim.redis_server import parent_death_hook
from sim.resume import open_checkpoints
from sim.run import REGISTRY
from tests.test_serve import click, playback, post, rows
from tests.test_split import KILL_SEED, free_ports
from topology import (
    CheckpointSettings,
    CheckpointStore,
    IntakeSettings,
    Pipeline,
    Placement,
    Snapshot,
    Topology,
    TopologyError,
)
from topology.epochs import Barrier, Checkpointer

pytestmark = pytest.mark.timeout(180)

EXAMPLE = Path(__file__).resolve().parent.parent / "topology" / "examples" / "ess-split.yaml"


def split_ugc() -> dict[str, Any]:
    """Clicks taken by an edge node's API into a broker node's topic, counted there."""
    broker, edge = free_ports(2)
    return {
        "name": "ugc-split",
        "topics": {"clicks": {"partitions": 2, "capacity": 1000, "key": "user_id"}},
        "http": {"routes": {"click": "clicks"}},
        "consumers": {"counters": {"topic": "clicks", "processor": "ugc_counters"}},
        "checkpoint": {"every": 0.05},
        "redis": {"enabled": False},
        "nodes": {
            "broker": {
                "listen": f"127.0.0.1:{broker}",
                "topics": ["clicks"],
                "consumers": ["counters"],
            },
            "edge": {"listen": f"127.0.0.1:{edge}", "api": "127.0.0.1:0"},
        },
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(TopologyError) as caught:
        Topology.from_dict(data)
    return caught.value.problems


# -- the file ----------------------------------------------------------------------------------


def test_the_api_runs_on_the_nodes_that_give_an_address_and_only_with_an_http_section() -> None:
    data = split_ugc()
    assert Topology.from_dict(data).nodes["edge"].api == "127.0.0.1:0"
    del data["nodes"]["edge"]["api"]
    assert any("none does" in p for p in problems_of(data))
    data = split_ugc()
    data["producers"] = {"site": {"workload": "ugc", "topic": "clicks", "events": 10}}
    data["nodes"]["broker"]["producers"] = ["site"]
    del data["http"]
    assert any(
        p.startswith("$.nodes.edge.api: the topology has no 'http'") for p in problems_of(data)
    )
    data = split_ugc()
    data["nodes"]["edge"]["api"] = data["nodes"]["broker"]["listen"]
    assert any(
        p.startswith("$.nodes.edge.api: ") and "node 'broker'" in p for p in problems_of(data)
    )
    data = split_ugc()
    data["nodes"]["edge"]["api"] = "nowhere"
    assert any(p.startswith("$.nodes.edge.api") for p in problems_of(data))


def test_an_edge_takes_bodies_of_at_most_half_the_largest_message_its_broker_takes() -> None:
    data = split_ugc()
    data["gateway"] = {"max_message_size": 1 << 20}
    topology = Topology.from_dict(data)
    edge = Pipeline.build(topology, REGISTRY, placement=Placement("edge"))
    assert edge.intake is not None
    assert edge.intake.max_body == 1 << 19  # http.max_body is 1 MiB
    data["nodes"]["broker"]["api"] = "127.0.0.1:0"  # its routes go to its own rings
    broker = Pipeline.build(Topology.from_dict(data), REGISTRY, placement=Placement("broker"))
    assert broker.intake is not None
    assert broker.intake.max_body == 1 << 20


def test_serve_refuses_a_split_topology_and_node_refuses_an_api_where_none_is_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(split_ugc()))
    assert main(["serve", str(path)]) == 2
    assert "ringflow node" in capsys.readouterr().err
    command = ["node", str(path), "--node", "broker", "--api", "127.0.0.1:0"]
    assert main(command) == 2
    assert "node broker serves no API" in capsys.readouterr().err
    assert main(["validate", str(EXAMPLE)]) == 0
    assert "on nodes broker, edge" in capsys.readouterr().out


def test_an_edge_whose_broker_never_comes_stops_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = split_ugc()
    data["gateway"] = {"connect_timeout": 0.5}
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(data))
    command = ["node", str(path), "--node", "edge", "--state", str(tmp_path / "edge")]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"cannot reach ws://{data['nodes']['broker']['listen']}/node" in err
    assert "Traceback" not in err


# -- admission into remote partitions ---------------------------------------------------------


@asynccontextmanager
async def gateway_with(topic: Topic, max_message_size: int = 1 << 24) -> AsyncIterator[str]:
    gateway = Gateway({topic.name: topic}, {}, max_message_size=max_message_size)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(gateway.serve, "127.0.0.1", 0)
        yield f"ws://127.0.0.1:{server.port}/node"
        nursery.cancel_scope.cancel()


async def test_a_request_enters_local_and_remote_partitions_all_at_once_or_not_at_all() -> None:
    local = Topic("here", partitions=1, capacity=10)
    far = Topic("far", partitions=1, capacity=5)  # no consumer: its window only shrinks
    here, there = local.partitions[0], None
    async with gateway_with(far) as url, open_remote_topic(url, "far", "api") as remote:
        there = remote.partitions[0]
        built = 0

        def build(*shares: int) -> Callable[[], list[Columns]]:
            def make() -> list[Columns]:
                nonlocal built
                built += 1
                return [Columns(list(range(n)), ["v"] * n, [0.0] * n) for n in shares]

            return make

        with trio.fail_after(10):
            assert await admit_sized([(there, 3)], build(3)) == [0]
            await there.wait_for(3, durable=True)
        # Four more records do not fit the window of two: nothing is made, nothing taken.
        with trio.move_on_after(0.5) as waited:
            await admit_sized([(here, 2), (there, 4)], build(2, 4))
        assert waited.cancelled_caught
        assert (built, here.end_offset, remote.statistics().numbered) == (1, 0, (3,))
        assert await admit_sized([(here, 2), (there, 2)], build(2, 2)) == [0, 3]
        with trio.fail_after(10):
            await there.wait_for(5, durable=True)
        assert (here.end_offset, far.partitions[0].end_offset) == (2, 5)
        assert far.partitions[0].next_sequence("api") == 5


async def test_a_producer_that_makes_new_records_numbers_them_after_what_the_node_has() -> None:
    far = Topic("far", partitions=1, capacity=100)
    async with gateway_with(far) as url:
        for round_ in range(2):  # a second API process, started without the first one's state
            values = [f"{round_}-{i}" for i in range(5)]
            async with open_remote_topic(url, "far", "api", adopt=True, finish=False) as remote:
                first = await admit_sized(
                    [(remote.partitions[0], 5)],
                    lambda values=values: [Columns([0] * 5, values, [0.0] * 5)],
                )
                assert first == [5 * round_]
                with trio.fail_after(10):
                    await remote.partitions[0].wait_for(first[0] + 5, durable=True)
        assert far.partitions[0].end_offset == 10, (
            "the second one's records were taken as duplicates"
        )
        assert not far.closed, "a producer that does not finish leaves the topic open"
        # A producer that makes the same records again is not moved on: the node skips them.
        async with open_remote_topic(url, "far", "api") as again:
            await again.partitions[0].send(Columns([0], ["0-0"], [0.0]))
        assert far.partitions[0].end_offset == 10


async def test_an_epoch_asked_for_soon_is_taken_at_once_and_rests_as_long_as_it_took(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = CheckpointStore.open(tmp_path, "f" * 64)
    captured: list[float] = []

    def capture(final: bool) -> tuple[Snapshot, None]:
        captured.append(trio.current_time())
        return Snapshot(0.0, 0, 0, {}, final), None

    async def slow_write() -> None:
        await trio.sleep(0.1)  # every epoch takes 0.1 s to write

    actor = Checkpointer(Barrier(), capture, lambda _: None, lambda: 0)
    actor.before_write = lambda: slow_write
    settings = CheckpointSettings(store, every=10.0, in_thread=False)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.serve, store)
        nursery.start_soon(actor.periodic, settings)
        await trio.sleep(1.0)
        actor.soon()  # at 1.0: taken at once
        await trio.sleep(0.05)
        actor.soon()  # while it is written: the next one, after a rest of 0.1 s
        actor.soon()
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert actor.statistics().epochs_written == 2
    assert [round(t - start, 6) for t in captured] == [1.0, 1.2]
    store.close()


async def test_records_too_many_for_one_message_go_as_several() -> None:
    far = Topic("far", partitions=1, capacity=1000)
    values = [f"{i:05d}" + "x" * 95 for i in range(500)]  # about 50 KB in all
    async with (
        gateway_with(far, max_message_size=8192) as url,
        open_remote_topic(url, "far", "api", max_message_size=8192, give_up=5) as remote,
    ):
        with trio.fail_after(20):
            while not remote.partitions[0].can_take(500):
                await remote.partitions[0].wait_room_changed()
            await admit_sized(
                [(remote.partitions[0], 500)],
                lambda: [Columns([0] * 500, values, [0.0] * 500)],
            )
            await remote.partitions[0].wait_for(500, durable=True)
        assert remote.statistics().reconnects == 0
    stored = [v for batch in far.partitions[0].snapshot().batches for v in batch.values]
    assert stored == values


async def test_a_second_process_running_as_the_same_producer_is_refused() -> None:
    far = Topic("far", partitions=1, capacity=100)
    async with (
        gateway_with(far) as url,
        open_remote_topic(url, "far", "api", adopt=True, finish=False),
    ):
        with pytest.raises(GatewayError, match="connected already") as refused:
            async with open_remote_topic(url, "far", "api", adopt=True, finish=False):
                pass
        assert refused.value.code == DUPLICATE
    # Once the first has gone, the producer connects again.
    async with gateway_with(far) as url:
        for _ in range(2):
            async with open_remote_topic(url, "far", "api", adopt=True, finish=False):
                pass


# -- an edge node and a broker node in one process ---------------------------------------------


@asynccontextmanager
async def running(topology: Topology, node: str, state: Path) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline.build(topology, REGISTRY, placement=Placement(node))
    checkpoints, pipeline = open_checkpoints(pipeline, state)
    listening = trio.Event()
    if pipeline.intake is not None:
        pipeline.serving = IntakeSettings(("127.0.0.1", 0), None)
        pipeline.intake.on_listening = lambda url: listening.set()
    else:
        listening.set()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.run, None, checkpoints)
            with trio.fail_after(30):
                await listening.wait()
            yield pipeline
            if pipeline.intake is None:
                nursery.cancel_scope.cancel()
            else:
                pipeline.stop()
    finally:
        assert checkpoints is not None
        checkpoints.store.close()


def link_of(edge: Pipeline) -> RemoteTopic:
    assert edge.node is not None
    topic = edge.node.links["http/edge/clicks"].topic
    assert topic is not None
    return topic


async def test_an_edge_answers_once_the_broker_s_epoch_holds_its_events(tmp_path: Path) -> None:
    topology = Topology.from_dict(split_ugc())
    async with running(topology, "broker", tmp_path / "broker") as broker:
        async with running(topology, "edge", tmp_path / "edge") as edge:
            assert edge.intake is not None
            assert edge.intake.server is not None
            connection = HttpConnection("127.0.0.1", edge.intake.server.port)
            status, answer = await post(connection, "/events", [click(u) for u in range(50)])
            assert (status, answer) == (202, {"accepted": 50})
            # Answered only once the broker's epoch holds every one of them.
            assert sum(link_of(edge).statistics().durable) == 50
            status, answer = await post(connection, "/events", [click(1), {"type": "click"}])
            assert status == 422
            assert sum(link_of(edge).statistics().numbered) == 50, "a refused request sent events"
            await connection.close()
        # The edge stopped gracefully; one started afresh (no state) carries on after them.
        async with running(topology, "edge", tmp_path / "edge-2") as edge:
            assert edge.intake is not None
            assert edge.intake.server is not None
            connection = HttpConnection("127.0.0.1", edge.intake.server.port)
            status, _ = await post(connection, "/events/click", [click(u) for u in range(50, 60)])
            assert status == 202
            await connection.close()
            assert link_of(edge).statistics().numbered != (0, 0)
        tally = broker.tallies["counters"]
        with trio.fail_after(10):
            while tally.records < 60:  # noqa: ASYNC110 (consumed in the background)
                await trio.sleep(0.01)
        held = [p.next_sequence("http-edge") for p in broker.topics["clicks"].partitions]
        assert sum(held) == 60
        assert not broker.topics["clicks"].closed, "an API that stops does not close its topics"


# -- ringflow node processes, killed --------------------------------------------------------


def start_node(path: Path, node: str, state: Path) -> tuple[subprocess.Popen[str], int | None]:
    """``ringflow node PATH --node NODE``, its state in ``state``; return it and, for a node
    with an API, the API's port once it listens."""
    command = [sys.executable, "-m", "sim", "node", str(path), "--node", node, "--no-log"]
    command += ["--state", str(state), "--report", str(state / "report.json")]
    serves = Topology.from_file(path).nodes[node].api is not None
    if serves:
        command += ["--api", "127.0.0.1:0"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=parent_death_hook(),
    )
    if not serves:
        return process, None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, int(line.rsplit(":", 1)[1])
    _, err = process.communicate()
    raise AssertionError(f"node {node} stopped before listening: {err}")


@pytest.fixture
def killable() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


SENDERS = 4
"""Clients sending at once: when a node is killed, some requests are on their way."""


async def load_through(port: int, first: int, after: int, kill: Callable[[], None]) -> list[int]:
    """POST batches of 20 playback events of new users to the API on ``port`` from
    :data:`SENDERS` clients at once; call ``kill`` once ``after`` events are acknowledged;
    go on until the API stops answering or as many again are acknowledged. Return the
    users acknowledged."""
    acked: list[int] = []
    killed = False

    async def client(number: int, done: trio.CancelScope) -> None:
        nonlocal killed
        connection = HttpConnection("127.0.0.1", port)
        user = first + number * 10**4
        try:
            while True:
                events = [playback(user + i) for i in range(20)]
                try:
                    status, _ = await post(connection, "/events", events)
                except (OSError, h11.ProtocolError):
                    done.cancel()  # the API was killed
                    return
                assert status == 202
                acked.extend(range(user, user + 20))
                user += 20
                if len(acked) >= after and not killed:
                    killed = True
                    kill()
                if len(acked) >= 2 * after:
                    done.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await connection.close()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for number in range(SENDERS):
                nursery.start_soon(client, number, nursery.cancel_scope)
    assert killed
    return acked


@pytest.mark.kill
async def test_every_event_an_edge_acknowledged_is_stored_once_after_sigkills(
    tmp_path: Path, killable: list[subprocess.Popen[str]]
) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    broker_port, edge_port = free_ports(2)
    data["nodes"]["broker"]["listen"] = f"127.0.0.1:{broker_port}"
    del data["nodes"]["broker"]["api"]
    data["nodes"]["edge"]["listen"] = f"127.0.0.1:{edge_port}"
    data["redis"] = {"enabled": False}
    path = tmp_path / "ess-split.yaml"
    path.write_text(yaml.safe_dump(data))
    draw = random.Random(f"{KILL_SEED}-edge")
    broker, _ = start_node(path, "broker", tmp_path / "broker")
    killable.append(broker)
    edge, port = start_node(path, "edge", tmp_path / "edge")
    killable.append(edge)
    assert port is not None
    # The edge killed under load, then started again from its state.
    acked = await load_through(port, 0, 20 * draw.randint(10, 40), edge.kill)
    edge.communicate()
    edge, port = start_node(path, "edge", tmp_path / "edge")
    killable.append(edge)
    assert port is not None

    # The broker killed under load and started again: requests wait for it meanwhile, and
    # the edge sends it again what it does not hold.
    def restart_broker() -> None:
        nonlocal broker
        broker.kill()
        broker.communicate()
        broker, _ = start_node(path, "broker", tmp_path / "broker")
        killable.append(broker)

    acked += await load_through(port, 10**5, 20 * draw.randint(10, 40), restart_broker)
    for process, code in ((edge, 0), (broker, 143)):  # the broker stops as interrupted
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == code, err
        assert "Traceback" not in err
    stored = Counter(user for _, user in await rows(tmp_path / "broker" / "clickhouse"))
    assert set(acked) <= set(stored), "an acknowledged event was lost"
    assert max(stored.values()) == 1, "an event was stored twice"
    report = json.loads((tmp_path / "edge" / "report.json").read_text())
    assert report["status"] == "completed"
