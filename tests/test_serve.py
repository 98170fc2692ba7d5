"""Serving a topology: its ``http`` section, events taken over real HTTP on 127.0.0.1, acks,
graceful stops and resumes, the ClickHouse sink (a real chdb engine) and ``ringflow serve``."""

from __future__ import annotations

import fcntl
import io
import itertools
import json
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
import yaml
from rich.console import Console

from actors import (
    ConsumerGroup,
    Record,
    RecordBatch,
    Request,
    Response,
    StoreError,
    Topic,
    open_clickhouse,
    serve_http,
)
from sim.bench_http import serve_in_child, stop
from sim.cli.ringflow import main
from sim.events import Playback
from sim.live import LiveView
from sim.load import HttpConnection, LoadError, LoadSettings, run_load
from sim.resume import open_checkpoints
from sim.run import REGISTRY
from sim.sinks import ClickHouseParams, ClickHouseSink
from tests.examples import EXAMPLES
from topology import (
    CheckpointStore,
    ConsumerTally,
    IntakeSettings,
    Pipeline,
    Sink,
    SinkContext,
    Topology,
    TopologyError,
    consume,
)

JSON = [("content-type", "application/json")]

UGC: dict[str, Any] = {
    "name": "ugc-served",
    "topics": {
        "clicks": {"partitions": 2, "capacity": 1000, "key": "user_id"},
        "views": {"partitions": 1, "capacity": 1000, "key": "user_id"},
    },
    "http": {"routes": {"click": "clicks", "page_view": "views"}},
    "consumers": {"counters": {"topics": ["clicks", "views"], "processor": "ugc_counters"}},
}

ESS: dict[str, Any] = {
    "name": "ess-served",
    "topics": {"playback": {"partitions": 2, "capacity": 10000, "key": "user_id"}},
    "http": {"routes": {"playback": "playback"}, "acks": "durable"},
    "consumers": {"store": {"topic": "playback", "processor": "clickhouse"}},
    "checkpoint": {"every": 1.0},
    "redis": {"enabled": False},
}


def click(user: int) -> dict[str, Any]:
    return {"type": "click", "user_id": user, "page": "/p", "element": "play"}


def playback(user: int, action: str = "start") -> dict[str, Any]:
    return {
        "type": "playback",
        "user_id": user,
        "movie_id": 7,
        "action": action,
        "position_s": 0,
        "device": "web",
    }


def topology_of(data: dict[str, Any]) -> Topology:
    return Topology.from_dict(data)


@asynccontextmanager
async def served(
    pipeline: Pipeline, state: Path | None = None
) -> AsyncIterator[tuple[HttpConnection, Pipeline]]:
    """Run ``pipeline`` on port 0 (with checkpoints in ``state``); hand a connection to its
    API; stop it gracefully when the block ends."""
    checkpoints = None
    if state is not None:
        checkpoints, pipeline = open_checkpoints(pipeline, state)
        pipeline.state_folder = state
    pipeline.serving = IntakeSettings(("127.0.0.1", 0), None)
    assert pipeline.intake is not None
    listening = trio.Event()
    pipeline.intake.on_listening = lambda url: listening.set()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.run, None, checkpoints)
            await listening.wait()
            assert pipeline.intake.server is not None
            connection = HttpConnection("127.0.0.1", pipeline.intake.server.port)
            yield connection, pipeline
            await connection.close()
            pipeline.stop()
    finally:
        if checkpoints is not None:
            checkpoints.store.close()


async def post(connection: HttpConnection, target: str, body: Any) -> tuple[int, Any]:
    status, _, answer = await connection.request("POST", target, json.dumps(body).encode(), JSON)
    return status, json.loads(answer)


async def get(connection: HttpConnection, target: str) -> tuple[int, Any]:
    status, _, answer = await connection.request("GET", target)
    return status, json.loads(answer)


# -- the http section ------------------------------------------------------------------------


def test_an_http_section_names_known_kinds_topics_and_key_fields() -> None:
    bad = {
        **UGC,
        "topics": {**UGC["topics"], "views": {"partitions": 1, "key": "movie_id"}},
        "http": {"routes": {"click": "clicks", "page_view": "views", "purchase": "nowhere"}},
    }
    with pytest.raises(TopologyError) as raised:
        Pipeline.build(topology_of(bad), REGISTRY)
    problems = str(raised.value)
    assert "$.http.routes.purchase: no topic named 'nowhere'" in problems
    routes = {"click": "clicks", "page_view": "views", "purchase": "clicks"}
    with pytest.raises(TopologyError) as raised:
        Pipeline.build(topology_of({**bad, "http": {"routes": routes}}), REGISTRY)
    assert "$.http.routes.purchase: unknown event kind 'purchase'; known: click" in str(
        raised.value
    )
    with pytest.raises(TopologyError) as raised:
        Pipeline.build(topology_of({**bad, "http": UGC["http"]}), REGISTRY)
    assert "$.topics.views.key: PageView events (kind 'page_view') have no field 'movie_id'" in (
        str(raised.value)
    )


def test_a_topology_of_http_alone_is_valid_and_a_producerless_one_without_it_is_not() -> None:
    assert topology_of(UGC).producers == {}
    without = {k: v for k, v in UGC.items() if k != "http"}
    with pytest.raises(TopologyError, match=r"\$.producers: at least one producer is needed"):
        topology_of(without)


def test_run_and_chaos_refuse_a_served_topology_and_serve_refuses_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served_file = tmp_path / "served.yaml"
    served_file.write_text(yaml.safe_dump(UGC))
    assert main(["run", str(served_file)]) == 2
    assert "serve it with 'ringflow serve" in capsys.readouterr().err
    assert main(["chaos", str(served_file)]) == 2
    assert "'ringflow chaos' cannot simulate" in capsys.readouterr().err
    simulated = Path(__file__).parent.parent / "topology" / "examples" / "ugc.yaml"
    assert main(["serve", str(simulated)]) == 2
    assert (
        "takes no events over HTTP and watches no folder ('files' producers), so there is "
        "nothing to serve" in capsys.readouterr().err
    )
    durable = tmp_path / "durable.yaml"
    durable.write_text(yaml.safe_dump({**UGC, "http": {**UGC["http"], "acks": "durable"}}))
    assert main(["serve", str(durable), "--no-log"]) == 2
    assert "needs checkpoints" in capsys.readouterr().err
    assert main(["serve", str(served_file), "--listen", "nowhere"]) == 2
    assert "--listen: 'nowhere' is not HOST:PORT" in capsys.readouterr().err


def test_a_served_topology_checks_per_key_order_only_when_asked() -> None:
    # Its clients bring keys without end: the table of every key seen would grow as long as
    # it serves, and go into every epoch.
    assert not topology_of(UGC).expect.per_key_order
    asked = topology_of({**UGC, "expect": {"per_key_order": True}})
    assert asked.expect.per_key_order
    data = yaml.safe_load((EXAMPLES / "video-site.yaml").read_text())
    del data["expect"]
    assert Topology.from_dict(data).expect.per_key_order  # simulated: on unless turned off


def test_a_missing_token_variable_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RINGFLOW_TEST_TOKEN", raising=False)
    path = tmp_path / "t.yaml"
    path.write_text(
        yaml.safe_dump({**UGC, "http": {**UGC["http"], "token_env": "RINGFLOW_TEST_TOKEN"}})
    )
    assert main(["serve", str(path), "--no-log"]) == 2
    assert "RINGFLOW_TEST_TOKEN is unset or empty" in capsys.readouterr().err


def test_an_address_in_use_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(UGC))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", str(path), "--no-log", "--listen", f"127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in err
    assert "Traceback" not in err


async def test_a_clickhouse_folder_another_process_has_open_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ch"
    folder.mkdir()
    with (folder / "status").open("wb") as status:  # as a running ClickHouse holds it
        fcntl.flock(status, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StoreError, match="in use by another process"):
            async with open_clickhouse(folder):
                pass
    async with open_clickhouse(folder) as store:  # let go (or its process killed): it opens
        await store.execute("SELECT 1")


# -- taking events ---------------------------------------------------------------------------


async def test_events_taken_over_http_are_consumed_once_and_in_order() -> None:
    pipeline = Pipeline.build(topology_of(UGC), REGISTRY)
    async with served(pipeline) as (api, running):
        assert await post(api, "/events", [click(1), click(2), click(1)]) == (202, {"accepted": 3})
        view = {"user_id": 5, "page": "/p", "duration_ms": 10}
        assert await post(api, "/events/page_view", view) == (202, {"accepted": 1})
        status, refused = await post(api, "/events", [click(3), {**click(4), "user_id": -1}])
        assert (status, refused["path"]) == (422, "$[1].user_id")
    assert running.intake is not None
    assert running.intake.intake.seq == 4
    assert all(e.ok for e in running.expectations()), running.expectations()
    totals = running.processors["counters"].totals()
    assert totals == {"click": 3, "page_view": 1, "custom": 0, "watch_progress": 0}
    assert running.topics["clicks"].closed  # the intake stopped, so its topics closed


async def test_a_stopping_service_answers_503_and_the_run_ends() -> None:
    pipeline = Pipeline.build(topology_of(UGC), REGISTRY)
    async with served(pipeline) as (api, running):
        assert (await post(api, "/events", click(1)))[0] == 202
        running.stop()
        status, said = await post(api, "/events", click(2))
        assert status == 503
        assert "stopping" in said["error"]
        assert (await get(api, "/health"))[1]["status"] == "stopping"
    assert running.events_produced == running.events_consumed == 1


async def test_durable_acks_answer_once_an_epoch_holds_the_events(tmp_path: Path) -> None:
    data = {**UGC, "http": {**UGC["http"], "acks": "durable"}, "redis": {"enabled": False}}
    data["checkpoint"] = {"every": 3600.0}  # no periodic epoch comes in time: one is asked for
    pipeline = Pipeline.build(topology_of(data), REGISTRY)
    async with served(pipeline, tmp_path) as (api, running):
        assert await post(api, "/events", [click(1), click(2)]) == (202, {"accepted": 2})
        assert running.epochs, "answered before any epoch was written"
        epoch = running.epochs[-1].epoch
        assert (await post(api, "/events", click(3)))[0] == 202
        assert running.epochs[-1].epoch > epoch
    # Served again from the same folder: numbering goes on, and nothing is lost or doubled.
    again = Pipeline.build(topology_of(data), REGISTRY)
    async with served(again, tmp_path) as (api, resumed):
        assert resumed.restored_from is not None
        assert (await post(api, "/events", click(4)))[0] == 202
    assert resumed.intake is not None
    assert resumed.intake.intake.seq == 4
    assert resumed.produced["clicks"].records == 4
    assert all(e.ok for e in resumed.expectations()), resumed.expectations()


# -- the ClickHouse sink ---------------------------------------------------------------------


async def test_stored_events_are_read_back_in_pages_and_counted(tmp_path: Path) -> None:
    pipeline = Pipeline.build(topology_of(ESS), REGISTRY)
    async with served(pipeline, tmp_path) as (api, running):
        for user in range(25):
            action = "stop" if user % 5 == 0 else "start"
            assert (await post(api, "/events", playback(user, action)))[0] == 202
        store = running.processors["store"]
        with trio.fail_after(10):
            # The sink writes from a worker thread: nothing to wait on but its count.
            while sum(store.totals().values()) < 25:  # noqa: ASYNC110
                await trio.sleep(0.01)
        seen, cursor, pages = [], None, 0
        while True:
            status, page = await get(
                api, "/events?limit=10" + (f"&cursor={cursor}" if cursor else "")
            )
            assert status == 200
            seen += page["events"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert sorted(e["user_id"] for e in seen) == list(range(25))
        stored = [e["stored_at"] for e in seen]
        assert stored == sorted(stored)  # in the order stored
        first = seen[0]
        assert first["type"] == "playback"
        assert first["device"] == "web"
        assert first["stored_at"] >= first["received_at"] > 1.7e9
        assert not [name for name in first if name.startswith("_")]  # nothing of the sink's own
        status, one = await get(api, "/events?user_id=10")
        assert [e["action"] for e in one["events"]] == ["stop"]
        status, none = await get(api, f"/events?to={first['received_at']}")
        assert none["events"] == []
        status, stats = await get(api, "/stats")
        assert stats["total"] == 25
        assert stats["by_type"] == {"playback": 25}
        assert len(stats["by_day"]) == 1
        for bad in (
            "limit=0",
            "limit=x",
            "user_id=abc",
            "cursor=nonsense",
            "from=yesterday",
            "from=inf",
            "to=1e308",
            "user_id=-1",
            "user_id=%C2%B2",
            "limit=%C2%B2",
            "limit=1&limit=5",
            "colour=red",
        ):
            status, said = await get(api, f"/events?{bad}")
            assert status == 400, bad
            assert said["error"]
        status, said = await get(api, "/stats?colour=red")
        assert (status, said["error"]) == (400, "GET /stats takes no parameters; got 'colour'")
        status, headers, _ = await api.request("DELETE", "/events")
        assert (status, headers["allow"]) == (405, "GET, HEAD, POST")
        status, _, _ = await api.request("POST", "/events", b"a=1", [("content-type", "text/x")])
        assert status == 415
        status, _, metrics = await api.request("GET", "/metrics")
        assert b'ringflow_storage_lag_seconds{quantile="0.95"}' in metrics
        assert b'ringflow_requests_refused_total{status="415"} 1' in metrics


def batch(first: int, users: list[int]) -> RecordBatch:
    events = [
        Playback(
            user_id=u,
            movie_id=1,
            action="start",
            position_s=0,
            device="tv",
            timestamp=1.8e9,
            source=0,
            seq=first + i,
        )
        for i, u in enumerate(users)
    ]
    return RecordBatch("playback", 0, first, users, events, [1.8e9] * len(users))


async def rows(path: Path) -> list[tuple[int, int]]:
    async with open_clickhouse(path) as store:
        found = await store.rows("SELECT _offset, user_id FROM ringflow.playback ORDER BY _offset")
    return [(r["_offset"], r["user_id"]) for r in found]


async def test_a_batch_consumed_again_after_a_crash_is_stored_once(tmp_path: Path) -> None:
    topics = {"playback": (Playback,)}
    params = ClickHouseParams(path=str(tmp_path / "ch"))
    first = ClickHouseSink(params)
    async with first.opened(SinkContext("store", topics, tmp_path, {("playback", 0): 0})):
        await first.write([batch(0, [10, 11, 12])])
        epoch = first.snapshot()  # the epoch: offsets 0-2 committed, 3-4 in the ring
        await first.write([batch(3, [13, 14])])  # stored, not committed by any epoch
        await first.write([batch(5, [15])])  # taken after the epoch: lost with the process
        await first.write([batch(3, [13, 14])])  # redelivered to the same sink
    # The process is killed and resumes from the epoch, whose ring ends at offset 5: the row
    # at offset 5 belonged to no epoch, and offset 5 now goes to another record.
    second = ClickHouseSink(params)
    second.restore(epoch)
    async with second.opened(SinkContext("store", topics, tmp_path, {("playback", 0): 5})):
        await second.write([batch(3, [13]), batch(4, [14, 99])])
    assert await rows(tmp_path / "ch") == [(0, 10), (1, 11), (2, 12), (3, 13), (4, 14), (5, 99)]
    assert second.result()["already_stored"] == 2
    assert second.result()["removed_past_epoch"] == 1
    assert second.totals() == {"playback": 6}
    # A run started afresh on the same folder (no checkpoints) numbers offsets from 0 again:
    # its records are its own, neither skipped nor removing the other run's.
    fresh = ClickHouseSink(params)
    async with fresh.opened(SinkContext("store", topics, tmp_path, {("playback", 0): 0})):
        await fresh.write([batch(0, [20, 21])])
    assert len(await rows(tmp_path / "ch")) == 8
    assert fresh.result()["already_stored"] == 0


async def test_rows_of_a_run_that_died_before_its_first_epoch_are_its_own_again(
    tmp_path: Path,
) -> None:
    CheckpointStore.open(tmp_path, "fingerprint").close()  # the run's database, no epoch
    topics = {"playback": (Playback,)}
    params = ClickHouseParams(path=str(tmp_path / "ch"))
    first = ClickHouseSink(params)
    async with first.opened(SinkContext("store", topics, tmp_path, {("playback", 0): 0})):
        await first.write([batch(0, [10, 11, 12])])  # then it dies: no epoch holds them
    again = ClickHouseSink(params)  # no epoch to restore: it starts from offset 0 again
    async with again.opened(SinkContext("store", topics, tmp_path, {("playback", 0): 0})):
        await again.write([batch(0, [30, 31])])
    assert await rows(tmp_path / "ch") == [(0, 30), (1, 31)]
    assert again.result()["removed_past_epoch"] == 3


class LingeringSink:
    """A sink that notes when it writes and how many records, lingering ``linger`` s."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.writes: list[tuple[float, int]] = []

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        yield

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        self.writes.append((trio.current_time(), sum(len(b.values) for b in batches)))

    def process(self, events: Sequence[Any]) -> None:
        raise AssertionError("a sink's consumer calls write, not process")

    def result(self) -> dict[str, Any]:
        return {}

    def totals(self) -> dict[str, int]:
        return {}

    def snapshot(self) -> Any:
        return None

    def restore(self, state: Any) -> None:
        pass


async def test_a_sink_writes_what_gathered_during_its_linger_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic("playback", partitions=1, capacity=1000)
    group = ConsumerGroup("store", topic)
    sink = LingeringSink(linger=1.0)
    assert isinstance(sink, Sink)
    tally = ConsumerTally("store", ("playback",), 1, check_order=True)

    async def trickle() -> None:  # ten records a second for three seconds
        for number in range(30):
            await topic.partitions[0].send([Record(number, batch(number, [number]).values[0])])
            await trio.sleep(0.1)
        topic.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        await consume(group, "store-0", "playback", sink, tally, max_records=None, origin=0.0)
    times = [when for when, _ in sink.writes]
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(times))
    assert sum(count for _, count in sink.writes) == 30 == tally.records
    assert len(sink.writes) <= 4  # a write a second, not one per record


async def test_a_partition_taken_by_a_rebalance_while_its_batch_waits_is_counted_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A sink's consumer gathers the batches ready before it writes: after a rebalance, that
    must not let go of a partition whose batch it holds, or the new owner is handed the same
    records and both count them."""
    topic = Topic("playback", partitions=2, capacity=1000)
    group = ConsumerGroup("store", topic)
    sink = LingeringSink(linger=1.0)
    tally = ConsumerTally("store", ("playback",), 1, check_order=True, partitions={"playback": 2})

    async def trickle() -> None:
        for number in range(40):
            event = batch(number, [number]).values[0]
            where = topic.partitioner.partition_for(number)
            await topic.partitions[where].send([Record(number, event)])
            await trio.sleep(0.1)
        topic.close()

    async def member(name: str, delay: float) -> None:
        await trio.sleep(delay)
        await consume(group, name, "playback", sink, tally, max_records=None, origin=0.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        nursery.start_soon(member, "store-0", 0.0)
        nursery.start_soon(member, "store-1", 0.55)  # joins while store-0's batch waits
    assert tally.records == 40
    assert sum(count for _, count in sink.writes) == 40
    assert tally.order_violations == 0


async def test_the_load_generator_reports_a_stalled_server_from_the_intended_send_times(
    tmp_path: Path,
) -> None:
    """A server that answers after 0.2 s: requests are due every 25 ms over two connections,
    so most wait for a connection, and that wait counts (no coordinated omission): a tester
    that timed each request from when it sent it would say 200 ms for every one."""

    async def slow(request: Request) -> Response:
        if request.method == "POST":
            await trio.sleep(0.2)
        return Response.json(202, {"accepted": 1})

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, slow, "127.0.0.1", 0)
        result = await run_load(
            LoadSettings(f"http://127.0.0.1:{server.port}", rps=40, duration=0.5, connections=2)
        )
        nursery.cancel_scope.cancel()
    assert result.requests == result.answered == 20
    # 20 requests, 2 at a time, 0.2 s each: the last (due at 0.475 s) is answered at ~2 s.
    assert result.latency_ms["max"] > 1_400
    assert result.latency_ms["p50"] > 700
    assert result.achieved_rps < 12
    assert result.errors == {}


async def test_the_load_generator_counts_its_rate_over_the_whole_run_when_a_server_stops() -> None:
    """A server that stops after ten answers: the rest of the run's requests fail, and the
    rate of 202s is over the whole run, not up to the last answer."""
    answered = 0
    stopped = trio.Event()

    async def ten(request: Request) -> Response:
        nonlocal answered
        if request.method != "POST":  # the load generator asks /health first
            return Response.json(200, {"status": "ok"})
        answered += 1
        if answered > 10:  # the eleventh is never answered: the server stops
            stopped.set()
            await trio.sleep_forever()
        return Response.json(202, {"accepted": 1})

    async with trio.open_nursery() as nursery:

        async def serve_until_ten(*, task_status: trio.TaskStatus[int]) -> None:
            async with trio.open_nursery() as serving:
                server = await serving.start(serve_http, ten, "127.0.0.1", 0)
                task_status.started(server.port)
                await stopped.wait()
                serving.cancel_scope.cancel()

        port = await nursery.start(serve_until_ten)
        settings = LoadSettings(f"http://127.0.0.1:{port}", rps=100, duration=1.0, connections=1)
        result = await run_load(settings)
    assert result.statuses == {"202": 10}
    assert sum(result.errors.values()) == 90
    assert result.duration_s > 0.8
    assert result.achieved_rps < 15


# -- ringflow serve as a process -------------------------------------------------------------


def start_serving(path: Path, state: Path) -> tuple[subprocess.Popen[str], int]:
    process, url = serve_in_child(path, state)
    return process, int(url.rsplit(":", 1)[1])


async def stored_users(state: Path) -> Counter[int]:
    """The users of the events stored in the ClickHouse folder of a stopped service."""
    return Counter(user for _, user in await rows(state / "clickhouse"))


async def test_the_load_generator_refuses_a_mix_the_api_does_not_take() -> None:
    pipeline = Pipeline.build(topology_of(UGC), REGISTRY)  # clicks and page views only
    async with served(pipeline) as (_, running):
        assert running.intake is not None
        assert running.intake.server is not None
        url = f"http://127.0.0.1:{running.intake.server.port}"
        with pytest.raises(LoadError, match="takes click, page_view; --mix ess sends playback"):
            await run_load(LoadSettings(url, rps=10, duration=0.1, mix="ess"))
        with pytest.raises(LoadError, match="sends custom, watch_progress as well"):
            await run_load(LoadSettings(url, rps=10, duration=0.1, mix="ugc"))
        with pytest.raises(LoadError, match="answered 404: is this the API"):
            await run_load(LoadSettings(url + "/api", rps=10, duration=0.1, mix="ugc"))


@pytest.mark.kill
async def test_every_event_acknowledged_before_a_sigkill_is_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "ess.yaml"
    path.write_text(yaml.safe_dump(ESS))
    state = tmp_path / "state"
    process, port = start_serving(path, state)
    acked: list[int] = []
    try:
        connection = HttpConnection("127.0.0.1", port)
        user = 0
        with trio.move_on_after(30):
            while True:
                batch_of = [playback(user + i) for i in range(20)]
                try:
                    status, _ = await post(connection, "/events", batch_of)
                except (OSError, h11.ProtocolError):
                    break  # killed
                assert status == 202
                acked += range(user, user + 20)
                user += 20
                if user == 2000:
                    process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    assert len(acked) >= 2000
    # Served again: it resumes from the newest epoch, and a graceful stop drains the rings
    # into ClickHouse.
    process, port = start_serving(path, state)
    try:
        # Offsets taken after the newest epoch are given again, to these events.
        connection = HttpConnection("127.0.0.1", port)
        status, _ = await post(connection, "/events", [playback(10**6 + i) for i in range(50)])
        assert status == 202
        await connection.close()
    finally:
        err = stop(process)
    assert process.returncode == 0, err
    stored = await stored_users(state)
    assert set(acked) <= set(stored), "an acknowledged event was lost"
    assert set(range(10**6, 10**6 + 50)) <= set(stored), "an event sent after the restart was lost"
    assert max(stored.values()) == 1, "an event was stored twice"


def test_serve_stops_on_sigterm_with_a_report_and_carries_on_when_served_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ess.yaml"
    path.write_text(yaml.safe_dump(ESS))
    state = tmp_path / "state"

    async def send(port: int, users: range) -> None:
        connection = HttpConnection("127.0.0.1", port)
        status, _ = await post(connection, "/events", [playback(u) for u in users])
        assert status == 202
        await connection.close()

    for users in (range(0, 30), range(30, 50)):
        process, port = start_serving(path, state)
        try:
            trio.run(send, port, users)
        finally:
            err = stop(process)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        report = json.loads((state / "report.json").read_text())
        assert (report["status"], report["stopped_by"]) == ("completed", "SIGTERM")
        assert trio.run(stored_users, state) == Counter(range(users.stop))


async def test_the_api_describes_itself_in_openapi_and_a_page() -> None:
    pipeline = Pipeline.build(topology_of(UGC), REGISTRY)
    async with served(pipeline) as (api, _):
        status, document = await get(api, "/openapi.json")
        assert status == 200
        assert document["openapi"] == "3.1.0"
        assert set(document["paths"]) == {
            "/events",
            "/events/click",
            "/events/page_view",
            "/health",
            "/metrics",
        }
        click = document["components"]["schemas"]["ClickInput"]
        assert set(click["required"]) == {"type", "user_id", "page", "element"}
        assert "timestamp" not in click["properties"]  # ringflow stamps it
        typed = document["paths"]["/events/click"]["post"]["requestBody"]["content"]
        [single, _] = typed["application/json"]["schema"]["oneOf"]
        name = single["$ref"].rsplit("/", 1)[1]
        on_route = document["components"]["schemas"][name]
        assert set(on_route["required"]) == {"user_id", "page", "element"}  # "type" may go
        status, _, page = await api.request("GET", "/docs")
        assert status == 200
        assert b"POST /events/click" in page
        assert b"ClickInput" in page
        status, _, _ = await api.request("POST", "/openapi.json")
        assert status == 405


async def test_empty_compressed_and_huge_refusals_say_what_to_do() -> None:
    pipeline = Pipeline.build(topology_of(UGC), REGISTRY)
    async with served(pipeline) as (api, running):
        status, _, said = await api.request("POST", "/events", b"", JSON)
        assert status == 400
        assert b"no body" in said
        gzip = [*JSON, ("content-encoding", "gzip")]
        status, _, said = await api.request("POST", "/events", b"\x1f\x8b", gzip)
        assert status == 415
        assert b"uncompressed" in said
        status, refused = await post(api, "/events", {**click(1), "element": 7, "page": 1})
        assert status == 422
        status, refused = await post(api, "/events", {"type": "x" * 100_000})
        assert status == 422
        assert len(refused["error"]) < 1_000
    assert running.events_produced == 0


async def test_a_client_sending_a_body_too_large_reads_the_413_sent_before_it() -> None:
    data = {**UGC, "http": {**UGC["http"], "max_body": 1024}}
    pipeline = Pipeline.build(topology_of(data), REGISTRY)
    async with served(pipeline) as (api, _):
        body = json.dumps([click(u) for u in range(50_000)]).encode()  # megabytes
        status, _, said = await api.request("POST", "/events", body, JSON)
        assert status == 413, said
        status, _ = await post(api, "/events", click(1))  # a new connection: it goes on
        assert status == 202


async def test_the_live_view_of_a_served_pipeline_counts_requests_not_simulated_time() -> None:
    pipeline = Pipeline.build(topology_of(UGC), REGISTRY)
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    async with served(pipeline) as (api, running):
        view = LiveView(console, running)
        assert (await post(api, "/events", [click(1), click(2)]))[0] == 202
        assert (await post(api, "/events", {"type": "nothing"}))[0] == 422
        view.refresh(running, trio.current_time())
        console.print(view.progress)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "1 requests accepted, 1 refused" in shown
    assert "simulated" not in shown
    assert "2/?" in shown
