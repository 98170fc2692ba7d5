"""Sessions of remote consumer-group members: a reconnect never skips a record.

Real websockets on 127.0.0.1 and the real clock (autojump and sockets do not mix).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from trio_websocket import WebSocketConnection

from actors import Columns, Consumer, ConsumerGroup, Gateway, Topic, connect, decoder
from actors.gateway.endpoint import Signal
from actors.wire import (
    ENCODER,
    IDLE_MEMBER,
    PROTOCOL,
    SOFTWARE,
    Delivery,
    Hello,
    Next,
    Welcome,
)
from sim.run import REGISTRY
from tests.test_gateway import close_of
from topology import EpochInfo, Pipeline, Placement, Topology
from topology.snapshot import MemberPart, decode, encode

SPLIT = Path(__file__).resolve().parent.parent / "topology" / "examples" / "video-site-split.yaml"

pytestmark = pytest.mark.timeout(60)

DECODE = decoder()


@asynccontextmanager
async def member(url: str, name: str) -> AsyncIterator[WebSocketConnection]:
    """A raw remote member of group ``g`` on topic ``events`` that has said hello."""
    async with trio.open_nursery() as nursery:
        connection = await connect(nursery, url)
        ws = connection.ws
        try:
            hello = Hello(
                protocol=PROTOCOL,
                software=SOFTWARE,
                role="consume",
                topic="events",
                name=name,
                group="g",
            )
            await ws.send_message(ENCODER.encode(hello))
            assert isinstance(DECODE.decode(await ws.get_message()), Welcome)
            yield ws
        finally:
            await connection.close()


async def next_delivery(ws: WebSocketConnection) -> Delivery[Any]:
    await ws.send_message(ENCODER.encode(Next([])))
    frame = DECODE.decode(await ws.get_message())
    assert isinstance(frame, Delivery), frame
    return frame


async def test_a_reconnect_waits_for_the_old_connection_to_let_go_of_its_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old connection's handler was woken with records just before the member came
    back, and fetches a batch after the new connection has arrived: that batch must be
    delivered again on the new connection, not skipped."""
    topic = Topic("events", partitions=1, capacity=1000)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic}, {("g", "events"): group})
    # The old handler, already woken, runs only once the new connection has said hello.
    woken = trio.Event()
    real_get_batch = Consumer.get_batch
    fetches = 0

    async def get_batch(self: Consumer) -> Any:
        nonlocal fetches
        fetches += 1
        if fetches == 2:  # the old connection's second request
            with trio.CancelScope(shield=True):
                await woken.wait()
            return self.get_batch_nowait()
        return await real_get_batch(self)

    monkeypatch.setattr(Consumer, "get_batch", get_batch)

    def on_event(category: str, message: str) -> None:
        if "reconnected" in message:
            woken.set()

    gateway.on_event = on_event
    topic.partitions[0].send_nowait(Columns(list(range(10)), list(range(10)), [0.0] * 10))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(gateway.serve, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/node"
        async with member(url, "m") as old:
            first = await next_delivery(old)
            assert (first.base_offset, len(first.values)) == (0, 10)
            # Processed nothing; ask again (the handler parks), then come back on a new
            # connection as a restarted process does.
            topic.partitions[0].send_nowait(
                Columns(list(range(10)), list(range(10, 20)), [0.0] * 10)
            )
            await old.send_message(ENCODER.encode(Next([])))
            async with member(url, "m") as new:
                again = await next_delivery(new)
                assert again.base_offset == 0, "records handed to the old connection skipped"
                assert again.values == list(range(10))
                after = await next_delivery(new)
                assert (after.base_offset, after.values) == (10, list(range(10, 20)))
        nursery.cancel_scope.cancel()


async def test_a_restored_node_keeps_its_members_positions_in_epochs_before_they_join() -> None:
    """A consumers' node restored from an epoch writes the next epoch before its members
    have reconnected (the broker may be down): the processed positions must be in it, or a
    second restart would process those records again."""
    data = yaml.safe_load(SPLIT.read_text())
    topology = Topology.from_dict(data)
    saved = encode(MemberPart(processed={0: 1234, 3: 77}))
    parts = {("member", f"video-stats/{i}/events"): saved for i in range(2)}
    info = EpochInfo(1, 0.0, 0.0, 0, 0, len(saved), 0.0, False)
    pipeline = Pipeline.build(
        topology, REGISTRY, placement=Placement("consumers"), restore=(info, parts)
    )
    snapshot = pipeline.capture()
    for instance in range(2):
        data = snapshot.parts["member", f"video-stats/{instance}/events"]
        assert decode("member", data) == MemberPart(processed={0: 1234, 3: 77})
    empty = decode("member", snapshot.parts["member", "blogger-analytics/0/events"])
    assert empty == MemberPart(processed={})


async def test_a_member_that_never_asks_loses_its_partitions_after_the_session_timeout() -> None:
    """A member that joins and then asks for nothing would hold its partitions, and so its
    group and the producers, for ever: after the session timeout it is closed with 4007 and
    the other members get its partitions."""
    topic = Topic("events", partitions=2, capacity=1000)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic}, {("g", "events"): group}, session_timeout=0.5)
    for index in range(2):
        topic.partitions[index].send_nowait(Columns([index] * 5, list(range(5)), [0.0] * 5))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(gateway.serve, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/node"
        async with member(url, "a-lazy") as lazy, member(url, "b-busy") as busy:
            assert group.statistics().assignment == {"a-lazy": (0,), "b-busy": (1,)}
            first = await next_delivery(busy)
            assert first.partition == 1
            # The busy member keeps asking (idle answers come every 0.5 s) until the lazy
            # one's partition is handed to it.
            with trio.fail_after(10):
                while True:
                    await busy.send_message(ENCODER.encode(Next([(1, 5)])))
                    frame = DECODE.decode(await busy.get_message())
                    if isinstance(frame, Delivery):
                        break
            assert (frame.partition, frame.values) == (0, list(range(5)))
            assert group.statistics().assignment == {"b-busy": (0, 1)}
            code, reason = await close_of(lazy)
            assert code == IDLE_MEMBER
            assert "a-lazy asked for nothing for 0.5 s" in reason
        nursery.cancel_scope.cancel()


async def test_a_signal_wakes_a_waiter_that_waits_again_before_another_has_woken() -> None:
    # A member's session task and a reconnecting connection's handler both wait on the
    # session's signal. Found by chaos (a dropped connection): when the handler woke after
    # the session task had waited again, it replaced the event the session task waited on,
    # so the member's leave never woke it and the broker node never finished. Which of two
    # tasks woken together runs first is Trio's choice: 20 rounds leave the old code a
    # chance of one in a million to pass.
    for _ in range(20):
        signal = Signal()
        woken: list[str] = []

        async def waiter(name: str, rounds: int, signal: Signal, woken: list[str]) -> None:
            for _ in range(rounds):
                await signal.wait()
                woken.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "session", 2, signal, woken)
            nursery.start_soon(waiter, "handler", 1, signal, woken)
            await trio.testing.wait_all_tasks_blocked()
            signal.set()  # both wake
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(woken) == ["handler", "session"]
            signal.set()  # the session task waits again, and must wake
            await trio.testing.wait_all_tasks_blocked()
            assert woken.count("session") == 2
            nursery.cancel_scope.cancel()


async def test_a_signal_set_before_anyone_waits_wakes_the_next_wait() -> None:
    signal = Signal()
    signal.set()
    with trio.fail_after(1):
        await signal.wait()
    with trio.move_on_after(1) as waited:
        await signal.wait()
    assert waited.cancelled_caught  # one set, one wake
