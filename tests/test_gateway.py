"""Gateways over real websockets on 127.0.0.1 (real clock: autojump and sockets do not mix)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection
from websockets.sync.client import connect as sync_connect

from actors import (
    Columns,
    ConsumerGroup,
    Gateway,
    GatewayCheckpoint,
    GatewayError,
    GatewayStatistics,
    MemberEndpointStatistics,
    ProducerEndpointStatistics,
    RemoteConsumerStatistics,
    RemoteGroup,
    RemotePartitionState,
    RemoteTopic,
    RemoteTopicState,
    TapEndpointStatistics,
    Topic,
    connect,
    open_producer,
    open_remote_topic,
    remote_topic,  # the module, to break its connections on purpose
)
from actors.connection import binary
from actors.wire import ENCODER, PROTOCOL, SOFTWARE, Finish, Hello

pytestmark = pytest.mark.timeout(60)


def columns(start: int, count: int, keys: int = 7) -> Columns:
    values = list(range(start, start + count))
    return Columns([v % keys for v in values], values, [float(v) for v in values])


@asynccontextmanager
async def serving(gateway: Gateway) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(gateway.serve, "127.0.0.1", 0)
        yield f"ws://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(url: str, token: str | None = None) -> AsyncIterator[WebSocketConnection]:
    async with trio.open_nursery() as nursery:
        connection = await connect(nursery, url, token=token)
        try:
            yield connection.ws
        finally:
            await connection.close()


async def close_of(ws: WebSocketConnection) -> tuple[int, str]:
    """Read until the server closes the connection; its close code and reason."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        reason = closed.reason
    assert reason is not None
    return reason.code, reason.reason or ""


async def drop(ws: WebSocketConnection) -> None:
    """Break the TCP connection under a websocket, as a network failure does."""
    await trio.aclose_forcefully(ws._stream)


async def drain(group: ConsumerGroup, name: str = "local") -> list[tuple[int, int, int]]:
    """Everything a local member reads, as (partition, offset, value)."""
    seen: list[tuple[int, int, int]] = []
    async with group.join(name) as member:
        async for batch in member.batches():
            seen.extend(
                (batch.partition, batch.base_offset + i, v) for i, v in enumerate(batch.values)
            )
    return seen


async def test_a_remote_producer_writes_in_order_and_its_finish_closes_the_topic() -> None:
    topic = Topic("events", partitions=3, capacity=1000)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    gateway.expect_producers("events", {"p1"})
    async with serving(gateway) as url, trio.open_nursery() as nursery:
        result: list[list[tuple[int, int, int]]] = []

        async def consume() -> None:
            result.append(await drain(group))

        nursery.start_soon(consume)
        async with (
            open_remote_topic(f"{url}/node", "events", "p1") as remote,
            open_producer(remote, max_batch=100, linger=0.01) as producer,
        ):
            for start in range(0, 5000, 250):
                await producer.send_many(columns(start, 250))
        assert not gateway.waiting_for
    (seen,) = result
    assert sorted(v for _, _, v in seen) == list(range(5000))
    for index in range(3):  # per partition: offsets dense, values (one producer) rising
        mine = [(o, v) for p, o, v in seen if p == index]
        assert [o for o, _ in mine] == list(range(len(mine)))
        assert [v for _, v in mine] == sorted(v for _, v in mine)
        assert {v % 7 for _, v in mine} <= {
            k for k in range(7) if topic.partitioner.partition_for(k) == index
        }


async def test_a_full_ring_blocks_a_remote_producer_until_room_is_freed() -> None:
    topic = Topic("events", partitions=1, capacity=10)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    async with (
        serving(gateway) as url,
        open_remote_topic(f"{url}/node", "events", "p1") as remote,
    ):
        await remote.partitions[0].send(columns(0, 10))
        with trio.move_on_after(0.5) as blocked:
            await remote.partitions[0].send(columns(10, 5))
        assert blocked.cancelled_caught  # the window is closed: the ring is full
        assert topic.partitions[0].end_offset == 10
        async with group.join("m", auto_commit=False) as member:
            batch = await member.get_batch()
            await member.commit({0: 6})  # frees 6 records
            with trio.fail_after(5):
                await remote.partitions[0].send(columns(10, 5))
                after = await member.get_batch()
        assert len(batch) == 10
        assert (after.base_offset, list(after.values)) == (10, list(range(10, 15)))


async def test_a_dropped_producer_connection_resumes_without_loss_or_duplicates() -> None:
    topic = Topic("events", partitions=2, capacity=500)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    gateway.expect_producers("events", {"p1"})
    async with serving(gateway) as url, trio.open_nursery() as nursery:
        result: list[list[tuple[int, int, int]]] = []

        async def consume() -> None:
            result.append(await drain(group))

        nursery.start_soon(consume)
        async with open_remote_topic(f"{url}/node", "events", "p1") as remote:
            for start in range(0, 6000, 200):
                await remote.partitions[start // 200 % 2].send(columns(start, 200))
                if start in (1000, 3000):
                    ws = remote._ws
                    assert ws is not None
                    await drop(ws)
        assert remote.statistics().reconnects >= 2
    values = sorted(v for _, _, v in result[0])
    assert values == list(range(6000))


async def test_a_remote_producer_reconnects_when_two_tasks_of_its_connection_fail_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first connection's reader and writer both see it drop in the same step: the
    failures come as one exception group, which must count as one dropped connection."""
    topic = Topic("events", partitions=2, capacity=500)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    gateway.expect_producers("events", {"p1"})
    drop_both = trio.Event()
    connections = 0
    greet = remote_topic.greet

    async def greet_then_fail_twice(nursery: trio.Nursery, *args: Any, **kwargs: Any) -> Any:
        nonlocal connections
        connections += 1
        connection, welcome = await greet(nursery, *args, **kwargs)
        if connections == 1:

            async def fail() -> None:
                await drop_both.wait()
                raise ConnectionClosed(CloseReason(1006, None))

            nursery.start_soon(fail, name="reader")
            nursery.start_soon(fail, name="writer")
        return connection, welcome

    monkeypatch.setattr(remote_topic, "greet", greet_then_fail_twice)
    async with serving(gateway) as url, trio.open_nursery() as nursery:
        result: list[list[tuple[int, int, int]]] = []

        async def consume() -> None:
            result.append(await drain(group))

        nursery.start_soon(consume)
        async with open_remote_topic(f"{url}/node", "events", "p1") as remote:
            for start in range(0, 4000, 200):
                await remote.partitions[start // 200 % 2].send(columns(start, 200))
                if start == 1000:
                    drop_both.set()
        statistics = remote.statistics()
    assert (connections, statistics.reconnects, statistics.finished) == (2, 1, True)
    assert statistics.numbered == (2000, 2000)
    assert statistics.retained == (0, 0)
    assert sorted(v for _, _, v in result[0]) == list(range(4000))  # once each


async def test_remote_consumers_share_a_group_and_skip_what_they_processed() -> None:
    topic = Topic("events", partitions=4, capacity=20000)
    gateway = Gateway({"events": topic}, {("g", "events"): ConsumerGroup("g", topic)})
    async with open_producer(topic) as producer:
        await producer.send_many(columns(0, 8000))
    async with serving(gateway) as url:
        remote = RemoteGroup(f"{url}/node", "events", "g")
        seen: dict[str, list[int]] = {"a": [], "b": []}

        async def member(name: str) -> None:
            async with remote.join(name, auto_commit=False) as consumer:
                count = 0
                async for batch in consumer.batches():
                    seen[name].extend(batch.values)
                    consumer.commit_nowait()
                    count += 1
                    if count == 3 and name == "a":
                        ws = consumer._ws
                        assert ws is not None
                        await ws.aclose()  # reconnects as the same member

        async with trio.open_nursery() as nursery:
            nursery.start_soon(member, "a")
            nursery.start_soon(member, "b")
    assert sorted(seen["a"] + seen["b"]) == list(range(8000))


async def test_a_remote_member_counts_its_reconnects_and_the_records_it_skipped() -> None:
    """With durable commits and no checkpoint, the group rewinds a reconnected member to
    offset 0: the ten records it processed come again and are skipped."""
    topic = Topic("events", partitions=1, capacity=1000)
    gateway = Gateway({"events": topic}, {("g", "events"): ConsumerGroup("g", topic)})
    async with open_producer(topic) as producer:
        await producer.send_many(columns(0, 100))
    async with serving(gateway) as url:
        remote = RemoteGroup(f"{url}/node", "events", "g")
        async with remote.join("a", max_records=10, durable_commits=True) as member:
            first = await member.get_batch()
            before = member.statistics()
            assert member._ws is not None
            await drop(member._ws)
            with trio.fail_after(10):
                second = await member.get_batch()
            after = member.statistics()
            group = remote.statistics()
    assert (first.base_offset, second.base_offset) == (0, 10)
    assert before == RemoteConsumerStatistics("a", True, 0, 0, 0)
    assert after == RemoteConsumerStatistics("a", True, 1, 0, 10)
    assert (group.members, group.reconnects, group.skipped) == (1, 1, 10)
    assert (group.processed, group.durable) == ({0: 10}, {})
    assert remote.statistics().members == 0


async def test_gateway_statistics_count_connections_refusals_and_each_endpoint() -> None:
    topic = Topic("events", partitions=1, capacity=100)
    gateway = Gateway({"events": topic}, {("g", "events"): ConsumerGroup("g", topic)})
    gateway.expect_producers("events", {"p1"})
    assert gateway.statistics() == GatewayStatistics(
        connections=0,
        refused=0,
        producers=ProducerEndpointStatistics(connected=0, finished=0, waiting_for=1),
        members=MemberEndpointStatistics(sessions=0, attached=0, left=0),
        taps=TapEndpointStatistics(opened=0, streaming=0, holding=0),
    )
    async with serving(gateway) as url:
        async with client(f"{url}/tap/nowhere") as ws:
            assert (await close_of(ws))[0] == 4004
        assert (gateway.statistics().connections, gateway.statistics().refused) == (1, 1)
        async with open_remote_topic(f"{url}/node", "events", "p1") as remote:
            await remote.partitions[0].send(columns(0, 10))  # waits for a first window
            assert gateway.statistics().producers.connected == 1
        producers = gateway.statistics().producers
        assert (producers.finished, producers.waiting_for) == (1, 0)
        async with client(f"{url}/tap/events?from=earliest") as tap:
            assert json.loads(await tap.get_message())["type"] == "records"
            assert gateway.statistics().taps == TapEndpointStatistics(1, 1, 0)
            async with RemoteGroup(f"{url}/node", "events", "g").join("m") as member:
                await member.get_batch()
                members = gateway.statistics().members
                assert (members.sessions, members.attached) == (1, 1)
        assert gateway.statistics().connections == 4


async def test_a_tap_streams_json_to_an_independent_client() -> None:
    topic = Topic("events", partitions=2, capacity=10000)
    ConsumerGroup("g", topic)  # a real group that never reads: the tap must not commit for it
    gateway = Gateway({"events": topic})
    async with open_producer(topic) as producer:
        await producer.send_many(columns(0, 300))
    async with serving(gateway) as url:

        def read() -> list[dict[str, Any]]:
            messages = []
            with sync_connect(f"{url}/tap/events?partition=1&from=earliest") as client:
                for message in client:
                    messages.append(json.loads(message))
            return messages

        messages = await trio.to_thread.run_sync(read)
    assert messages[-1] == {"type": "end", "topic": "events"}
    records = [r for m in messages[:-1] for r in m["records"]]
    assert {m["partition"] for m in messages[:-1]} == {1}
    assert [r["offset"] for r in records] == list(range(topic.partitions[1].end_offset))
    assert [r["value"] for r in records] == sorted(r["value"] for r in records)
    assert all(r["timestamp"] == float(r["value"]) for r in records)
    assert topic.partitions[1].statistics().committed == {"g": 0}


async def test_a_tap_behind_the_ring_is_told_how_many_records_it_missed() -> None:
    topic = Topic("events", partitions=1, capacity=100)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    async with group.join("m", auto_commit=False) as member:
        for start in range(0, 500, 100):  # the group reads and frees everything
            await topic.partitions[0].send(columns(start, 100))
            await member.get_batch()
            member.commit_nowait()
    async with serving(gateway) as url, client(f"{url}/tap/events?from=120") as ws:
        skipped = json.loads(await ws.get_message())
        await topic.partitions[0].send(columns(500, 30))
        records = json.loads(await ws.get_message())
    assert skipped == {
        "type": "skipped",
        "topic": "events",
        "partition": 0,
        "from": 120,
        "to": 500,
        "missed": 380,
    }
    assert [r["offset"] for r in records["records"]] == list(range(500, 530))


@pytest.mark.parametrize(
    ("token", "path", "reason"),
    [
        (None, "/tap/events", "missing token"),
        ("nope", "/tap/events", "wrong token"),  # in an Authorization header
        (None, "/tap/events?token=nope", "wrong token"),
    ],
)
async def test_a_wrong_or_missing_token_is_refused(
    token: str | None, path: str, reason: str
) -> None:
    gateway = Gateway({"events": Topic("events")}, token="s3cret")
    async with serving(gateway) as url:
        async with client(url + path, token) as ws:
            code, why = await close_of(ws)
        assert code == 4001
        assert reason in why
        with pytest.raises(GatewayError, match="4001"):
            async with open_remote_topic(f"{url}/node", "events", "p", token="bad"):
                pass
        async with open_remote_topic(f"{url}/node", "events", "p", token="s3cret") as remote:
            assert remote.partition_count == 1


async def test_malformed_and_oversized_frames_close_only_their_connection() -> None:
    topic = Topic("events", partitions=1, capacity=1000)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic}, max_message_size=64 * 1024)
    async with serving(gateway) as url, open_remote_topic(f"{url}/node", "events", "good") as good:
        cases: list[tuple[Callable[[], bytes | str], int, str]] = [
            (lambda: b"\xc1garbage", 4003, "first frame must be a hello"),
            (lambda: "text", 4003, "first frame must be a hello"),
            (lambda: b"x" * 100_000, 1009, ""),
        ]
        for make, expected, reason in cases:
            async with client(f"{url}/node") as ws:
                await ws.send_message(make())
                code, why = await close_of(ws)
            assert code == expected
            assert reason in why
        async with client(f"{url}/node") as ws:
            hello = Hello(1, "test", "produce", "events", "bad")
            await ws.send_message(ENCODER.encode(hello))
            await ws.get_message()  # welcome
            await ws.send_message(msgspec.msgpack.encode(["batch", 0, "not a number"]))
            code, why = await close_of(ws)
            assert code == 4003
            assert "malformed frame" in why
        await good.partitions[0].send(columns(0, 10))  # the good connection is untouched
        async with group.join("m") as member:
            with trio.fail_after(5):
                batch = await member.get_batch()
    assert list(batch.values) == list(range(10))
    assert gateway.statistics().refused == 3


async def test_a_peer_of_another_version_is_refused_with_both_versions_named() -> None:
    gateway = Gateway({"events": Topic("events")})
    async with serving(gateway) as url, client(f"{url}/node") as ws:
        await ws.send_message(msgspec.msgpack.encode(["hello", 99, "9.9.9", "future"]))
        code, why = await close_of(ws)
    assert code == 4002
    assert "9.9.9 speaks protocol 99" in why
    assert "speaks 1" in why


async def test_an_unreachable_node_is_retried_then_reported() -> None:
    with trio.socket.socket() as sock:  # a port nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(GatewayError, match=f"cannot reach ws://127.0.0.1:{port}/node"):
        async with open_remote_topic(f"ws://127.0.0.1:{port}/node", "events", "p", give_up=0.5):
            pass


async def test_a_stopping_node_closes_its_connections_with_4005() -> None:
    topic = Topic("events", partitions=1)
    ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    stop = trio.CancelScope()

    async def node(task_status: trio.TaskStatus[Any]) -> None:
        with stop:
            await gateway.serve("127.0.0.1", 0, task_status=task_status)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(node)
        async with client(f"ws://127.0.0.1:{server.port}/tap/events") as ws:
            stop.cancel()  # the node stops while a tap is connected
            with trio.fail_after(5):
                code, why = await close_of(ws)
    assert (code, why) == (4005, "the node is stopping")


async def test_a_vanished_node_s_partitions_go_to_the_others_after_the_session_timeout() -> None:
    topic = Topic("events", partitions=2, capacity=5000)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic}, {("g", "events"): group}, session_timeout=0.3)
    async with open_producer(topic) as producer:
        await producer.send_many(columns(0, 2000))
    seen: dict[str, list[int]] = {"a": [], "b": []}
    async with serving(gateway) as url:
        node_a = RemoteGroup(f"{url}/node", "events", "g")  # two nodes: nothing shared
        node_b = RemoteGroup(f"{url}/node", "events", "g")
        with trio.CancelScope() as vanish:
            async with node_a.join("a", max_records=100) as a:
                seen["a"].extend((await a.get_batch()).values)
                assert a._ws is not None
                await drop(a._ws)  # the node dies: no leave, no commit of that batch
                vanish.cancel()
        with trio.fail_after(10):
            async with node_b.join("b", max_records=100) as b:
                async for batch in b.batches():
                    seen["b"].extend(batch.values)
    assert sorted(set(seen["a"]) | set(seen["b"])) == list(range(2000))
    assert len(seen["b"]) == 2000  # b took over a's partition from its last commit
    assert gateway.drained()


async def test_durable_commits_made_while_waiting_reach_the_group_and_free_the_ring() -> None:
    topic = Topic("events", partitions=1, capacity=100)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic}, {("g", "events"): group})
    seen: list[int] = []
    async with serving(gateway) as url, trio.open_nursery() as nursery:

        async def produce() -> None:
            async with open_producer(topic) as producer:
                await producer.send_many(columns(0, 300))  # blocks until commits free room

        nursery.start_soon(produce)
        remote = RemoteGroup(f"{url}/node", "events", "g")
        async with remote.join("m", durable_commits=True) as member:

            async def checkpoints() -> None:  # this side's epochs, every 0.1 s
                while True:
                    await trio.sleep(0.1)
                    member.mark_durable(member.positions)

            nursery.start_soon(checkpoints)
            with trio.fail_after(10):
                async for batch in member.batches():
                    seen.extend(batch.values)
            nursery.cancel_scope.cancel()
    assert seen == list(range(300))


@pytest.mark.parametrize("hold", [True, False])
async def test_a_holding_tap_holds_the_ring_and_a_lossy_one_does_not(hold: bool) -> None:
    topic = Topic("events", partitions=1, capacity=1000)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic})
    big = "x" * 2000  # 20,000 records of 2 KB: far more than socket buffers hold
    values = [f"{i}:{big}" for i in range(20_000)]
    async with serving(gateway) as url, trio.open_nursery() as nursery:
        query = "from=earliest" + ("&hold=true" if hold else "")
        async with client(f"{url}/tap/events?{query}") as tap:
            nursery.start_soon(drain, group)
            produced = trio.Event()

            async def produce() -> None:
                async with open_producer(topic, max_batch=500) as producer:
                    await producer.send_many(Columns([0] * 20_000, values, [0.0] * 20_000))
                produced.set()

            nursery.start_soon(produce)
            partition = topic.partitions[0]
            with trio.fail_after(20):  # the tap reads nothing meanwhile
                if hold:  # the group has read everything accepted; the ring is full: the tap
                    while partition.free_room or group.statistics().lag[0]:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                else:
                    await produced.wait()
            accepted = partition.end_offset
            if hold:
                assert accepted < 20_000  # producers wait for the tap, not only for the group
                assert not produced.is_set()
            else:
                assert accepted == 20_000
            offsets, skipped = [], 0
            with trio.fail_after(30):
                while True:
                    message = json.loads(await tap.get_message())
                    if message["type"] == "end":
                        break
                    if message["type"] == "skipped":
                        skipped += message["missed"]
                    else:
                        offsets.extend(r["offset"] for r in message["records"])
    if hold:
        assert (offsets, skipped) == (list(range(20_000)), 0)
    else:
        assert skipped > 0
        assert len(offsets) + skipped == 20_000


async def test_a_remote_topic_s_state_keeps_what_is_not_durable_and_a_restored_one_resends_it() -> (
    None
):
    """The first node never makes the records durable, so the producer keeps them; a
    producer restored from its state resends them to a fresh node, then goes on numbering."""
    first = Topic("events", partitions=2, capacity=100)
    with trio.fail_after(10):
        async with serving(Gateway({"events": first}, durable_only=True)) as url:
            with trio.CancelScope() as stop:
                async with open_remote_topic(f"{url}/node", "events", "p1") as remote:
                    await remote.partitions[1].send(columns(0, 4))
                    await remote.partitions[1].send(columns(4, 3))
                    state = remote.snapshot()
                    stop.cancel()  # leave without waiting for what never becomes durable
    assert state == RemoteTopicState(
        (
            RemotePartitionState(next_sequence=0),
            RemotePartitionState(
                next_sequence=7, retained=((0, columns(0, 4)), (4, columns(4, 3)))
            ),
        )
    )
    second = Topic("events", partitions=2, capacity=100)
    group = ConsumerGroup("g", second)
    gateway = Gateway({"events": second})
    gateway.expect_producers("events", {"p1"})
    with trio.fail_after(10):
        async with serving(gateway) as url, trio.open_nursery() as nursery:
            result: list[list[tuple[int, int, int]]] = []

            async def consume() -> None:
                result.append(await drain(group))

            nursery.start_soon(consume)
            async with open_remote_topic(f"{url}/node", "events", "p1", restore=state) as remote:
                await remote.partitions[1].send(columns(7, 3))
            assert remote.statistics().numbered == (0, 10)
    assert result[0] == [(1, offset, offset) for offset in range(10)]


async def test_a_gateway_s_state_names_the_producers_that_finished_and_what_they_sent() -> None:
    topic = Topic("events", partitions=1, capacity=100)
    gateway = Gateway({"events": topic})
    gateway.expect_producers("events", {"p1", "p2"})
    with trio.fail_after(10):
        async with (
            serving(gateway) as url,
            open_remote_topic(f"{url}/node", "events", "p1") as remote,
        ):
            await remote.partitions[0].send(columns(0, 3))
            remote.summary = {"records": 3}
    state = gateway.snapshot()
    assert state == GatewayCheckpoint(
        finished=(("events", "p1"),), summaries={"events": {"p1": {"records": 3}}}
    )
    restored = Gateway({"events": Topic("events", partitions=1, capacity=100)})
    restored.restore(state)
    restored.expect_producers("events", {"p1", "p2"})
    assert restored.waiting_for == {"events": {"p2"}}  # p1 finished before the checkpoint
    assert restored.summaries == {"events": {"p1": {"records": 3}}}
    assert restored.snapshot() == state


async def test_a_finished_producer_stays_connected_until_its_own_side_keeps_the_finish() -> None:
    """Told its finish is recorded, a producer closes its connection only once an epoch of
    its own node holds the finish: a restart of its node from before then finds the node
    still waiting for it. Restored finished, it needs no connection at all."""
    topic = Topic("events", partitions=2, capacity=100)
    gateway = Gateway({"events": topic})
    gateway.expect_producers("events", {"p1"})
    asked, kept = trio.Event(), trio.Event()
    remotes: list[RemoteTopic] = []

    async def keep_finish() -> None:
        asked.set()
        await kept.wait()

    async def produce(url: str) -> None:
        async with open_remote_topic(
            f"{url}/node", "events", "p1", keep_finish=keep_finish
        ) as remote:
            remotes.append(remote)
            await remote.partitions[1].send(columns(0, 3))

    with trio.fail_after(10):
        async with serving(gateway) as url, trio.open_nursery() as nursery:
            nursery.start_soon(produce, url)
            await asked.wait()
            assert remotes[0].statistics().finished
            assert not gateway.waiting_for  # the finish is recorded there
            assert gateway.statistics().producers.connected == 1  # and the link still open
            kept.set()
    state = remotes[0].snapshot()
    assert state.finished
    # The node is gone: a producer restored finished neither connects nor waits for it.
    with trio.fail_after(1):
        async with open_remote_topic(
            "ws://127.0.0.1:9/node", "events", "p1", restore=state
        ) as again:
            assert again.partition_count == 2
        assert again.statistics().finished


async def answered(ws: WebSocketConnection) -> None:
    """Read frames until the node says the finish is recorded."""
    while msgspec.msgpack.decode(binary(await ws.get_message())) != ["finished"]:
        pass


async def test_a_finished_producer_that_breaks_off_again_is_waited_for_again() -> None:
    """Its finish answered into a broken connection, a producer comes back and its new
    connection breaks too before it finishes again: the node still waits for it (it may
    come back from before its finish), until it closes in good order after its answer."""
    topic = Topic("events", partitions=1, capacity=100)
    gateway = Gateway({"events": topic}, linger=30)
    gateway.expect_producers("events", {"p1"})
    hello = ENCODER.encode(Hello(PROTOCOL, SOFTWARE, "produce", "events", "p1"))
    with trio.fail_after(10):
        async with serving(gateway) as url:
            async with client(f"{url}/node") as ws:
                await ws.send_message(hello)
                await ws.send_message(ENCODER.encode(Finish()))
                await answered(ws)
                await drop(ws)
            await trio.sleep(0.1)
            assert not gateway.drained()  # the answer may not have reached it
            async with client(f"{url}/node") as ws:
                await ws.send_message(hello)
                await drop(ws)
            await trio.sleep(0.1)
            assert not gateway.drained()  # still: it broke off before its answer
            async with client(f"{url}/node") as ws:
                await ws.send_message(hello)
                await ws.send_message(ENCODER.encode(Finish()))
                await answered(ws)
            await trio.sleep(0.1)
            assert gateway.drained()
