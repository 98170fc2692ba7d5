"""A gateway checks every frame and every tap query before anything touches a ring.

Real websockets on 127.0.0.1 (real clock); a well-behaved producer and consumer run beside
each bad client and must lose nothing.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio

from actors import (
    ConsumerGroup,
    Gateway,
    GatewayError,
    RemoteGroup,
    Topic,
    batch_frame,
    open_producer,
    open_remote_topic,
)
from actors.wire import ENCODER, Batch, Finish, Hello, Leave, Next, describe_decode_error
from tests.test_gateway import client, close_of, columns, serving

pytestmark = pytest.mark.timeout(60)

GOOD_RECORDS = 3000
SUMMARY = tuple[int, list[tuple[int, int]], dict[str, int]]


def hello(role: str = "produce", name: str = "bad", **fields: Any) -> bytes:
    fields.setdefault("group", "g" if role == "consume" else "")
    return ENCODER.encode(Hello(1, "test", role, fields.pop("topic", "events"), name, **fields))


def batch(partition: int = 0, sequence: int = 0, keys: Any = None, values: Any = None,
          stamps: Any = None) -> bytes:  # fmt: skip
    values = [1, 2, 3] if values is None else values
    keys = [0] * len(values) if keys is None else keys
    stamps = [0.0] * len(values) if stamps is None else stamps
    return msgspec.msgpack.encode(["batch", partition, sequence, keys, values, stamps])


@asynccontextmanager
async def good_traffic(gateway: Gateway, url: str) -> AsyncIterator[list[int]]:
    """A remote producer sends GOOD_RECORDS records while the block runs; a remote member
    of group 'g' reads them to the end. Yields the values it read (complete after the block)."""
    seen: list[int] = []
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            remote = RemoteGroup(f"{url}/node", "events", "g")
            async with remote.join("good-consumer") as member:
                async for got in member.batches():
                    seen.extend(got.values)

        async def produce() -> None:
            async with open_remote_topic(f"{url}/node", "events", "good") as remote:
                for start in range(0, GOOD_RECORDS, 100):
                    await remote.partitions[start // 100 % 2].send(columns(start, 100))
                    await trio.sleep(0.005)
                remote.summary = [GOOD_RECORDS, [], {}]

        nursery.start_soon(consume)
        nursery.start_soon(produce)
        yield seen


def gateway_of(capacity: int = 100_000) -> tuple[Gateway, Topic]:
    """A gateway of topic 'events' (for good traffic) and 'fuzz' (for the fuzzer's hellos and
    batches that happen to be valid), each with a group 'g'."""
    topic = Topic("events", partitions=2, capacity=capacity)
    fuzz = Topic("fuzz", partitions=2, capacity=capacity)
    gateway = Gateway(
        {"events": topic, "fuzz": fuzz},
        {("g", "events"): ConsumerGroup("g", topic), ("g", "fuzz"): ConsumerGroup("g", fuzz)},
        value_types={"events": int, "fuzz": int},
        summary_type=SUMMARY,
    )
    gateway.expect_producers("events", {"good"})
    return gateway, topic


BAD_FRAMES = [
    pytest.param([hello(), batch(keys=[1, 2])], "2 keys, 3 values and 3 timestamps", id="keys"),
    pytest.param([hello(), batch(stamps=[0.0])], "3 keys, 3 values and 1 timestamps", id="stamps"),
    pytest.param([hello(), batch(partition=2)], "no partition 2 (the topic has 2)", id="partition"),
    pytest.param([hello(), batch(partition=-1)], "no partition -1", id="negative-partition"),
    pytest.param([hello(), batch(sequence=-5)], "sequence -5 is negative", id="sequence"),
    pytest.param([hello(), batch(sequence=10)], "records 0 to 9 are missing", id="gap"),
    pytest.param(
        [hello(), batch(stamps=[0.0, float("nan"), 1.0])], "not a finite number", id="nan"
    ),
    pytest.param([hello(), batch(keys=[{}, 1, 2])], "in keys", id="key-type"),
    pytest.param([hello(), batch(values=[1, "two", 3])], "Expected `int`, got `str`", id="value"),
    pytest.param(
        [hello(), batch(values=list(range(100_001)))], "cannot fit in partition", id="too-big"
    ),
    pytest.param(
        [hello(), batch(keys=["a", "b", "c"]).replace(b"\xa1b", b"\xa1\xff")],
        "not valid UTF-8",
        id="utf8-in-batch",
    ),
    pytest.param([hello().replace(b"\xa3bad", b"\xa3b\xffd")], "not valid UTF-8", id="utf8-hello"),
    pytest.param([hello(name="")], "name must be 1 to 200 characters", id="empty-name"),
    pytest.param([hello(name="x" * 201)], "name must be 1 to 200 characters", id="long-name"),
    pytest.param([hello(role="steal")], "unknown role 'steal'", id="role"),
    pytest.param([hello("consume", max_records=-1)], "max_records must be 0", id="max-records"),
    pytest.param(
        [hello("consume", positions=[(9, 0)])], "positions: no partition 9", id="positions"
    ),
    pytest.param(
        [hello("consume"), ENCODER.encode(Next([(0, -3)]))],
        "next: offsets: offset -3 of partition 0 is negative",
        id="next",
    ),
    pytest.param(
        [hello("consume"), ENCODER.encode(Leave([(7, 0)]))],
        "leave: offsets: no partition 7",
        id="leave",
    ),
    pytest.param([hello(), ENCODER.encode(Finish({"all": "of it"}))], "finish: summary", id="sum"),
    pytest.param([hello(), ENCODER.encode(Next([]))], "unexpected Next frame", id="wrong-frame"),
]


@pytest.mark.parametrize(("frames", "reason"), BAD_FRAMES)
async def test_a_bad_frame_is_refused_with_4003_and_harms_no_one(
    frames: list[bytes], reason: str
) -> None:
    gateway, topic = gateway_of()
    async with serving(gateway) as url, good_traffic(gateway, url) as seen:
        async with client(f"{url}/node") as ws:
            for frame in frames:
                await ws.send_message(frame)
            with trio.fail_after(10):
                code, why = await close_of(ws)
        assert (code, reason in why) == (4003, True), why
    assert sorted(seen) == list(range(GOOD_RECORDS))  # every accepted record, once
    assert sum(p.end_offset for p in topic.partitions) == GOOD_RECORDS  # none of the bad
    assert gateway.statistics().refused == 1


async def test_a_well_formed_batch_of_a_producer_is_still_accepted() -> None:
    """The checks refuse only what is wrong: a valid hand-made batch goes in."""
    gateway, topic = gateway_of()
    async with serving(gateway) as url, client(f"{url}/node") as ws:
        await ws.send_message(hello())
        await ws.get_message()  # welcome
        await ws.send_message(batch(partition=1, keys=["a", None, 3], values=[7, 8, 9]))
        with trio.fail_after(5):
            while topic.partitions[1].end_offset < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert list(topic.partitions[1].read(0).values) == [7, 8, 9]  # type: ignore[union-attr]


async def test_random_mutations_of_valid_frames_get_4003_never_an_internal_error() -> None:
    """Seeded fuzzing: hellos and batches with bytes flipped, cut or inserted."""
    gateway, _ = gateway_of(capacity=10_000_000)
    valid = {
        "hello": hello(topic="fuzz"),
        "consume": hello("consume", name="fuzz", topic="fuzz"),
        "batch": bytes(batch_frame(0, 0, columns(0, 20))),
        "strings": batch(keys=["ab", "cd", "ef"], values=[1, 2, 3], stamps=[0.5, 1.5, 2.5]),
    }
    rng = random.Random(20261122)
    codes: dict[int, int] = {}
    async with serving(gateway) as url, good_traffic(gateway, url) as seen:
        for _ in range(150):
            kind = rng.choice(sorted(valid))
            data = bytearray(valid[kind])
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data))
                action = rng.choice(["flip", "cut", "insert", "byte"])
                if action == "flip":
                    data[at] ^= 1 << rng.randrange(8)
                elif action == "cut":
                    del data[at:]
                    data = data or bytearray(b"\x90")
                elif action == "insert":
                    data[at:at] = bytes([rng.randrange(256)])
                else:
                    data[at] = rng.choice([0xC1, 0xFF, 0xDC, 0xA1, 0x7F, 0x00])
            frames = [bytes(data)]
            if kind not in ("hello", "consume"):
                frames.insert(0, hello(topic="fuzz"))
            async with client(f"{url}/node") as ws:
                for frame in frames:
                    await ws.send_message(frame)
                await ws.send_message("end")  # a text frame: refused if nothing else was
                with trio.fail_after(10):
                    code, why = await close_of(ws)
            codes[code] = codes.get(code, 0) + 1
            assert code in (4002, 4003, 4004), (code, why, bytes(data))
    assert codes.get(4003, 0) > 100
    assert sorted(seen) == list(range(GOOD_RECORDS))


async def test_a_text_frame_or_garbage_after_a_good_hello_is_4003() -> None:
    gateway, _ = gateway_of()
    async with serving(gateway) as url:
        for frame in ("text", b"\xc1", b"\x91\xa5batch"):
            async with client(f"{url}/node") as ws:
                await ws.send_message(hello())
                await ws.get_message()
                await ws.send_message(frame)
                code, why = await close_of(ws)
            assert code == 4003, why


# -- taps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("from=-5", "from=-5: expected earliest, latest or an offset (0 or more)"),
        ("from=soon", "from=soon: expected earliest, latest or an offset (0 or more)"),
        ("from=" + "9" * 5000, "from=99999999999999999999...: expected earliest, latest or an"),
        ("hold=maybe", "hold=maybe: expected true or false"),
        ("hold=", "hold=: expected true or false"),
        ("colour=red", "unknown parameter 'colour'; a tap takes partition, from, hold, token"),
        ("from=earliest&from=latest", "parameter 'from' given twice"),
        ("partition=0&partition=1", "parameter 'partition' given twice"),
        ("partition=abc", "partition=abc: topic 'events' has partitions 0 to 1"),
        ("partition=2", "partition=2: topic 'events' has partitions 0 to 1"),
        ("partition=-1", "partition=-1: topic 'events' has partitions 0 to 1"),
    ],
)
async def test_a_bad_tap_parameter_is_refused_with_4003_naming_it(query: str, reason: str) -> None:
    gateway, _ = gateway_of()
    async with serving(gateway) as url, client(f"{url}/tap/events?{query}") as ws:
        code, why = await close_of(ws)
    assert code == 4003
    assert why.startswith(reason), why


async def test_good_tap_parameters_still_work() -> None:
    gateway, topic = gateway_of()
    await topic.partitions[1].send(columns(0, 10))
    async with (
        serving(gateway) as url,
        client(f"{url}/tap/events?partition=1&from=3&hold=false") as ws,
    ):
        message = msgspec.json.decode(await ws.get_message())
    assert [r["offset"] for r in message["records"]] == list(range(3, 10))


async def test_a_node_of_other_settings_is_refused_with_4006_naming_them() -> None:
    topic = Topic("events", partitions=1, capacity=1000)
    group = ConsumerGroup("g", topic)
    ours = {"node": "broker", "seed": "7", "events": "200000", "plans": "a", "topology": "t"}
    gateway = Gateway({"events": topic}, {("g", "events"): group}, agreement=ours)
    theirs = {**ours, "node": "producers", "seed": "42", "events": "100000", "plans": "b"}
    async with serving(gateway) as url:
        with pytest.raises(GatewayError) as refused:
            async with open_remote_topic(f"{url}/node", "events", "p", agreement=theirs):
                pass
        assert refused.value.code == 4006
        assert str(refused.value).endswith(
            "(4006): nodes producers and broker disagree on seed (42 vs 7), events (100000 vs "
            "200000), plans (b vs a)"
        )
        remote = RemoteGroup(f"{url}/node", "events", "g", agreement={**ours, "topology": "u"})
        with pytest.raises(GatewayError, match=r"\(4006\): .* on topology \(u vs t\)"):
            async with remote.join("m"):
                pass
        agreed = {**ours, "node": "producers"}
        async with open_remote_topic(f"{url}/node", "events", "p", agreement=agreed) as good:
            await good.partitions[0].send(columns(0, 5))
    assert topic.partitions[0].end_offset == 5
    assert gateway.statistics().refused == 2


def test_frames_name_their_fields_in_errors() -> None:
    decoder = msgspec.msgpack.Decoder(Batch[int])
    with pytest.raises(msgspec.ValidationError) as caught:
        decoder.decode(batch(values=["x", "y", "z"]))
    message = describe_decode_error(caught.value, batch(values=["x", "y", "z"]))
    assert message == "Expected `int`, got `str` - in values[0]"


async def test_a_node_waits_for_a_holding_tap_to_read_everything() -> None:
    """A tap with hold=true holds the ring like a consumer group, so the node is not done
    (its run does not end) until the tap has had every record and the end."""
    topic = Topic("events", partitions=1, capacity=100)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"events": topic}, {("g", "events"): group})
    partition = topic.partitions[0]
    async with serving(gateway) as url, client(f"{url}/tap/events?hold=true") as tap:
        with trio.fail_after(10):
            while not any(n.startswith("tap:") for n in partition.statistics().committed):  # noqa: ASYNC110
                await trio.sleep(0.01)  # the tap has not registered yet
        async with open_producer(topic, max_batch=10) as producer:
            await producer.send_many(columns(0, 50))
        async with group.join("local") as member:  # the group reads everything
            async for _ in member.batches():
                pass
        assert topic.closed
        assert not gateway.drained()  # the tap has read nothing yet
        seen: list[int] = []
        while True:
            message = json.loads(await tap.get_message())
            if message["type"] == "end":
                break
            seen.extend(record["value"] for record in message["records"])
        assert seen == list(range(50))
        with trio.fail_after(10):
            while not gateway.drained():  # noqa: ASYNC110
                await trio.sleep(0.01)
