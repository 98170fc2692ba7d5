"""Benchmarks of the websocket gateway on loopback, on the real clock.

- Throughput: video-site events crossing a gateway (a remote producer writing batches of them
  as tables to a partition on a gateway, read there by a consumer group) against raw
  trio-websocket carrying the same encoded batches to a server that decodes and checks them
  as a gateway does, in the same run.
- Tap latency: a tap client's delay from a record's acceptance by its partition to its arrival,
  at a steady rate.
"""

from __future__ import annotations

import json
import statistics
import time
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from actors import (
    Columns,
    ConsumerGroup,
    Gateway,
    Topic,
    batch_frame,
    connect,
    decoder,
    frame_columns,
    open_remote_topic,
)

from .workloads import VideoEvent, VideoSite, VideoSiteParams


def _batches(records: int, batch: int) -> list[Columns]:
    # Video-site events as the workload makes them: a table, keyed by video.
    site = VideoSite(VideoSiteParams(), 0, "bench", 0)
    batches = []
    for start in range(0, records, batch):
        events = site.generate(min(batch, records - start), start * 1e-5, 1e-5)["events"]
        batches.append(Columns(events.columns["video_id"], events, events.columns["timestamp"]))
    return batches


async def _raw(records: int, batch: int) -> float:
    batches = _batches(records, batch)
    decode = decoder(VideoEvent)
    received = 0
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        nonlocal received
        ws = await request.accept()
        try:
            while received < records:
                data = await ws.get_message()
                assert isinstance(data, bytes)
                frame = decode.decode(data)
                received += len(frame_columns(frame, VideoEvent))
        except ConnectionClosed:
            return
        done.set()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, None, max_message_size=1 << 24)
        )
        connection = await connect(nursery, f"ws://127.0.0.1:{server.port}/raw")
        started = time.perf_counter()
        for index, columns in enumerate(batches):  # encoded here, as a remote producer does
            await connection.ws.send_message(batch_frame(0, index * batch, columns))
        await done.wait()
        elapsed = time.perf_counter() - started
        await connection.close()
        nursery.cancel_scope.cancel()
    return records / elapsed


async def _through_gateway(records: int, batch: int) -> float:
    topic = Topic("bench", partitions=1, capacity=100 * batch)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"bench": topic}, value_types={"bench": VideoEvent})
    gateway.expect_producers("bench", {"p"})
    batches = _batches(records, batch)
    consumed = 0

    async def consume() -> None:
        nonlocal consumed
        async with group.join("m") as member:
            async for got in member.batches():
                consumed += len(got)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(gateway.serve, "127.0.0.1", 0)
        async with trio.open_nursery() as work:
            work.start_soon(consume)
            async with open_remote_topic(
                f"ws://127.0.0.1:{server.port}/node", "bench", "p"
            ) as remote:
                started = time.perf_counter()
                partition = remote.partitions[0]
                for columns in batches:
                    await partition.send(columns)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    assert consumed == records, (consumed, records)
    return records / elapsed


def measure_gateway(records: int, batch: int, *, raw_first: bool) -> tuple[float, float]:
    """Return records per second through a gateway and through raw trio-websocket."""
    if raw_first:
        raw = trio.run(_raw, records, batch)
        through = trio.run(_through_gateway, records, batch)
    else:
        through = trio.run(_through_gateway, records, batch)
        raw = trio.run(_raw, records, batch)
    return through, raw


async def _tap_latency(rate: int, seconds: float, batch: int) -> list[float]:
    topic = Topic("bench", partitions=1, capacity=10 * rate)
    group = ConsumerGroup("g", topic)
    gateway = Gateway({"bench": topic})
    delays: list[float] = []
    total = int(rate * seconds)

    async def produce() -> None:
        interval = batch / rate
        start = trio.current_time()
        for index, offset in enumerate(range(0, total, batch)):
            await trio.sleep_until(start + index * interval)
            now = trio.current_time()
            await topic.partitions[0].send(
                Columns([None] * batch, list(range(offset, offset + batch)), [now] * batch)
            )
        topic.close()

    async def drain() -> None:  # a real group reads too, so the ring never fills
        async with group.join("m") as member:
            async for _ in member.batches():
                pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(gateway.serve, "127.0.0.1", 0)
        connection = await connect(nursery, f"ws://127.0.0.1:{server.port}/tap/bench?from=latest")
        nursery.start_soon(drain)
        nursery.start_soon(produce)
        while True:
            message = json.loads(await connection.ws.get_message())
            if message["type"] == "end":
                break
            now = trio.current_time()
            delays.extend(now - record["timestamp"] for record in message.get("records", ()))
        await connection.close()
        nursery.cancel_scope.cancel()
    return delays


def measure_tap_latency(
    rate: int = 10_000, seconds: float = 5.0, batch: int = 10
) -> dict[str, float]:
    """Return the p50, p99 and maximum delay (seconds) from acceptance to a tap, at ``rate``."""
    delays = sorted(trio.run(_tap_latency, rate, seconds, batch))
    return {
        "records": len(delays),
        "p50": statistics.median(delays),
        "p99": delays[int(len(delays) * 0.99) - 1],
        "max": delays[-1],
    }
