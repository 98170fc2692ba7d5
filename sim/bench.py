"""Benchmarks of this machine: the raw Trio channel against the ringflow pipeline.

Every figure is measured in the same process run, so ratios compare like with like on a noisy
machine; each measurement is repeated and the median reported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import trio.testing

import topology
from actors import Columns, ConsumerGroup, Record, Topic, open_producer

from .baseline import plain_loop
from .bench_gateway import measure_gateway, measure_tap_latency
from .bench_http import HTTP_CASES, measure_http
from .bench_relay import measure_outage, measure_relay
from .bench_versus import (
    UGC_AT_THROUGHPUT,
    as_shipped,
    example_topology,
    headline,
    peak_rss_mb,
    versus_loop,
)
from .redis_logging import LogSettings
from .redis_server import EmbeddedRedis
from .report import LoggingReport, digest
from .resume import open_checkpoints
from .run import REGISTRY, load_topology, relaxed_gc, run_pipeline
from .workloads import VideoSite, VideoSiteParams

T = TypeVar("T")


@attrs.frozen
class BenchSettings:
    """What ``ringflow bench`` measures, and how much."""

    records: int = 5_000_000
    """Records carried by the raw channel and by the batched pipeline."""
    batch: int = 1000
    """Records per batch."""
    single_records: int = 200_000
    """Records sent one per send (that path is slow, so it carries fewer)."""
    repeat: int = 3
    """How many times each throughput is measured; medians are reported."""
    memory_records: int = 5_000_000
    """Records in the slow-consumer memory run (0 skips it)."""
    video_events: int = 2_000_000
    """Events of the video-site topology run against the plain loop (0 skips it)."""
    restore_records: int = 1_000_000
    """Records held in rings in the epoch whose restore is timed (0 skips it)."""
    gateway_records: int = 2_000_000
    """Records sent through a websocket gateway and through raw trio-websocket (0 skips it)."""
    tap_seconds: float = 5.0
    """Seconds of a 10,000 records/s stream whose delay to a tap is measured (0 skips it)."""
    headline_events: int = 10_000_000
    """Events of the video-site run with checkpoints and Redis logging on, compared with the
    plain loop and Bytewax over as many events, each in a fresh process (0 skips it)."""
    ugc_events: int = 4_000_000
    """Events of the UGC example run the same way against its plain loop, its producers at a
    traffic where batches fill (``UGC_AT_THROUGHPUT``; 0 skips it)."""
    ugc_shipped_events: int = 120_000
    """Events of the UGC example as shipped, everything on: 1,000 a simulated second, batches
    of a dozen events (0 skips it)."""
    http_seconds: float = 15.0
    """Seconds of each HTTP measurement (``ringflow serve`` loaded by ``ringflow load``);
    0 skips them."""
    outage_seconds: float = 30.0
    """Seconds the receiver of a served topology's webhook relay is away while clients send
    1,000 events a second (0 skips it)."""
    relay_events: int = 100_000
    """Events relayed to a webhook receiver that takes everything and to one that fails 30%
    of requests and leaves 5% unanswered, ``repeat`` times each (0 skips it)."""
    bytewax_python: str | None = None
    """The Python interpreter that has Bytewax installed (None: this one, if it has)."""


def _batch_of(size: int) -> list[Record]:
    return [Record(i, i, 0.0) for i in range(size)]


def _columns_of(size: int) -> Columns:
    return Columns(list(range(size)), list(range(size)), [0.0] * size)


def measure_raw_channel(records: int, batch: int) -> float:
    """Return records per second through one Trio memory channel carrying whole batches."""
    payload = _batch_of(batch)
    batches = records // batch

    async def main() -> None:
        send, receive = trio.open_memory_channel[list[Record]](10)

        async def produce() -> None:
            async with send:
                for _ in range(batches):
                    await send.send(payload)

        async def consume() -> None:
            count = 0
            async with receive:
                async for items in receive:
                    count += len(items)
            assert count == batches * batch

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            nursery.start_soon(consume)

    return _timed(main, batches * batch)


def measure_pipeline(records: int, batch: int, *, one_by_one: bool = False) -> float:
    """Return records per second from a producer through a partition to a consumer group.

    With ``one_by_one`` every record is its own batch (``max_batch=1``), sent with ``send``.
    """
    payload = _batch_of(batch)
    columns = _columns_of(batch)
    batches = records // batch

    async def main() -> None:
        topic = Topic("bench", partitions=1, capacity=10 * batch)
        group = ConsumerGroup("bench", topic)

        async def produce() -> None:
            if one_by_one:
                async with open_producer(topic, max_batch=1, linger=0) as producer:
                    for _ in range(batches):
                        for record in payload:
                            await producer.send(record)
            else:
                async with open_producer(topic, max_batch=batch) as producer:
                    for _ in range(batches):
                        await producer.send_many(columns)

        async def consume() -> None:
            count = 0
            async with group.join() as consumer:
                async for items in consumer.batches():
                    count += len(items)
            assert count == batches * batch

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(produce)

    return _timed(main, batches * batch)


def _timed(main: Callable[[], Any], records: int) -> float:
    started = time.perf_counter()
    trio.run(main)
    return records / (time.perf_counter() - started)


def slow_consumer_run(records: int, batch: int) -> dict[str, float]:
    """Run a pipeline whose consumer is ten times slower than its producer, in virtual time.

    Every record is a fresh object, so memory use is real. Returns the peak resident set
    size of this process in MB and the ring's peak depth.
    """
    capacity = 10 * batch

    async def main() -> int:
        topic = Topic("slow", partitions=1, capacity=capacity)
        group = ConsumerGroup("slow", topic)

        async def produce() -> None:
            async with open_producer(topic, max_batch=batch) as producer:
                for start in range(0, records, batch):
                    await producer.send_many(
                        [Record(i, i, trio.current_time()) for i in range(start, start + batch)]
                    )
                    await trio.sleep(0.001)

        async def consume() -> None:
            async with group.join() as consumer:
                async for _items in consumer.batches():
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(produce)
        return topic.statistics()[0].peak_depth

    peak_depth = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return {
        "peak_rss_mb": peak_rss_mb(),
        "peak_depth": peak_depth,
        "capacity": capacity,
    }


def measure_slow_consumer_memory(records: int, batch: int) -> dict[str, float]:
    """Run :func:`slow_consumer_run` in a fresh Python process and return what it reports."""
    code = (
        "import json, sys; from sim.bench import slow_consumer_run; "
        f"print(json.dumps(slow_consumer_run({records}, {batch})))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def measure_video_site(events: int) -> tuple[float, float, bool]:
    """Run the video-site example and the plain loop over the same events.

    Returns events per second of the ringflow run, of the plain loop, and whether both
    computed the same aggregates.
    """
    spec = load_topology(example_topology("video-site.yaml"))
    report = run_pipeline(topology.Pipeline.build(spec, REGISTRY, events=events)).report
    with relaxed_gc():
        loop = plain_loop(topology.Pipeline.build(spec, REGISTRY, events=events))
    same = digest(loop["aggregates"]) == report.digest
    return report.events_per_second or 0.0, loop["events_per_second"], same


def measure_checkpoint_cost(
    events: int, *, checkpoints_first: bool = False
) -> tuple[float, float, int]:
    """Run the video-site example with an epoch every simulated second and without.

    Args:
        events: Events of each run.
        checkpoints_first: Run the checkpointed one first (rounds alternate, so that neither
            always runs in a process that has already done the other).

    Returns:
        Events per second with checkpoints, without, and the epochs written.
    """
    spec = load_topology(example_topology("video-site.yaml"))

    def without() -> float:
        pipeline = topology.Pipeline.build(spec, REGISTRY, events=events)
        return float(run_pipeline(pipeline).report.events_per_second or 0.0)

    def with_checkpoints() -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as state:
            pipeline = topology.Pipeline.build(spec, REGISTRY, events=events)
            settings, pipeline = open_checkpoints(pipeline, Path(state))
            result = run_pipeline(pipeline, checkpoints=settings)
            return float(result.report.events_per_second or 0.0), len(result.pipeline.epochs)

    if checkpoints_first:
        (on, epochs), off = with_checkpoints(), without()
    else:
        off, (on, epochs) = without(), with_checkpoints()
    return on, off, epochs


def measure_logging_cost(events: int, *, logging_first: bool = False) -> tuple[float, float, int]:
    """Run the video-site example logging every event to a real embedded Redis, and without.

    Returns events per second with logging, without, and the entries dropped.
    """
    spec = load_topology(example_topology("video-site.yaml"))

    def without() -> float:
        pipeline = topology.Pipeline.build(spec, REGISTRY, events=events)
        return float(run_pipeline(pipeline).report.events_per_second or 0.0)

    def logged() -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as folder:
            server = EmbeddedRedis.start(Path(folder))
            try:
                pipeline = topology.Pipeline.build(spec, REGISTRY, events=events)
                report = run_pipeline(pipeline, logging=LogSettings(server.url, "bench")).report
            finally:
                server.stop(save=False)
        assert isinstance(report.logging, LoggingReport), report.logging
        return float(report.events_per_second or 0.0), sum(report.logging.dropped.values())

    if logging_first:
        (on, dropped), off = logged(), without()
    else:
        off, (on, dropped) = without(), logged()
    return on, off, dropped


def measure_restore(records: int) -> dict[str, float]:
    """Write an epoch whose rings hold ``records`` video events, then time restoring it.

    Returns the seconds to load the epoch and rebuild the pipeline from it, and the epoch's
    size in MB.
    """
    spec = load_topology(example_topology("video-site.yaml"))
    topic = attrs.evolve(spec.topics["events"], capacity=records)
    spec = attrs.evolve(spec, topics={"events": topic})
    pipeline = topology.Pipeline.build(spec, REGISTRY, events=records)
    events = VideoSite(VideoSiteParams(), 0, "site", 0).generate(records, 0.0, 0.0001)["events"]
    keys, stamps = events.columns["video_id"], events.columns["timestamp"]

    async def fill() -> None:
        for group in pipeline.groups.values():
            assert group  # registered: the records are held until they commit
        parts = pipeline.topics["events"].split(Columns(keys, events, stamps))
        for partition, part in zip(pipeline.topics["events"].partitions, parts, strict=True):
            for start in range(0, len(part), 1000):
                await partition.send(
                    Columns(
                        part.keys[start : start + 1000],
                        part.values[start : start + 1000],
                        part.timestamps[start : start + 1000],
                    )
                )

    snapshot = trio.run(_then, fill, pipeline.capture)
    with tempfile.TemporaryDirectory() as state:
        store = topology.CheckpointStore.open(Path(state), pipeline.fingerprint)
        info = store.write(snapshot)
        started = time.perf_counter()
        loaded = store.load()
        restored = topology.Pipeline.build(spec, REGISTRY, events=records, restore=loaded)
        seconds = time.perf_counter() - started
    held = sum(p.statistics().depth for p in restored.topics["events"].partitions)
    assert held == records == info.ring_records
    return {"restore_seconds": seconds, "epoch_mb": info.bytes / 1e6}


async def _then(first: Callable[[], Awaitable[None]], then: Callable[[], T]) -> T:
    # Awaits ``first``, then returns what ``then`` gives, in the same Trio run.
    await first()
    return then()


def machine() -> dict[str, Any]:
    """Describe this machine in a few words for the report."""
    return {
        "python": platform.python_version(),
        "trio": trio.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def run_bench(
    settings: BenchSettings, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Measure everything ``ringflow bench`` reports and return it as one JSON-ready dict."""
    raw: list[float] = []
    pipeline: list[float] = []
    single: list[float] = []
    ratios: list[float] = []
    for round_ in range(1, settings.repeat + 1):
        progress(f"round {round_}/{settings.repeat}: raw channel")
        raw.append(measure_raw_channel(settings.records, settings.batch))
        progress(f"round {round_}/{settings.repeat}: pipeline, batches of {settings.batch}")
        pipeline.append(measure_pipeline(settings.records, settings.batch))
        ratios.append(pipeline[-1] / raw[-1])
        progress(f"round {round_}/{settings.repeat}: pipeline, one record per send")
        single.append(measure_pipeline(settings.single_records, settings.batch, one_by_one=True))
    result: dict[str, Any] = {
        "records": settings.records,
        "batch": settings.batch,
        "single_records": settings.single_records,
        "repeat": settings.repeat,
        "raw_records_per_s": statistics.median(raw),
        "pipeline_records_per_s": statistics.median(pipeline),
        "single_records_per_s": statistics.median(single),
        "ratio": statistics.median(ratios),
    }
    if settings.video_events:
        runs: list[float] = []
        loops: list[float] = []
        video_ratios: list[float] = []
        same = True
        for round_ in range(1, settings.repeat + 1):
            progress(
                f"round {round_}/{settings.repeat}: video site, "
                f"{settings.video_events:,} events, ringflow run and plain loop"
            )
            run_rate, loop_rate, agree = measure_video_site(settings.video_events)
            runs.append(run_rate)
            loops.append(loop_rate)
            video_ratios.append(run_rate / loop_rate)
            same = same and agree
        result["video_events"] = settings.video_events
        result["video_run_events_per_s"] = statistics.median(runs)
        result["plain_loop_events_per_s"] = statistics.median(loops)
        result["video_ratio"] = statistics.median(video_ratios)
        result["video_same_aggregates"] = same
    if settings.video_events:
        with_ckpt: list[float] = []
        without: list[float] = []
        costs: list[float] = []
        for round_ in range(1, settings.repeat + 1):
            progress(f"round {round_}/{settings.repeat}: video site with and without checkpoints")
            on, off, epochs = measure_checkpoint_cost(
                settings.video_events, checkpoints_first=round_ % 2 == 0
            )
            with_ckpt.append(on)
            without.append(off)
            costs.append(1 - on / off)
        result["checkpoint_every_second_events_per_s"] = statistics.median(with_ckpt)
        result["no_checkpoint_events_per_s"] = statistics.median(without)
        result["checkpoint_cost"] = statistics.median(costs)
        result["checkpoint_epochs"] = epochs
    if settings.video_events:
        logged_rates: list[float] = []
        plain_rates: list[float] = []
        log_ratios: list[float] = []
        dropped = 0
        for round_ in range(1, settings.repeat + 1):
            progress(f"round {round_}/{settings.repeat}: video site logging to Redis and not")
            on, off, lost = measure_logging_cost(
                settings.video_events, logging_first=round_ % 2 == 0
            )
            logged_rates.append(on)
            plain_rates.append(off)
            log_ratios.append(on / off)
            dropped += lost
        result["logging_events_per_s"] = statistics.median(logged_rates)
        result["no_logging_events_per_s"] = statistics.median(plain_rates)
        result["logging_ratio"] = statistics.median(log_ratios)
        result["logging_dropped_entries"] = dropped
    if settings.headline_events:
        result.update(
            headline(settings.headline_events, settings.repeat, settings.bytewax_python, progress)
        )
    if settings.ugc_events:
        result.update(
            versus_loop(
                "ugc.yaml", settings.ugc_events, settings.repeat, progress, UGC_AT_THROUGHPUT
            )
        )
    if settings.ugc_shipped_events:
        result["ugc_shipped_events"] = settings.ugc_shipped_events
        result["ugc_shipped_events_per_s"] = as_shipped(
            "ugc.yaml", settings.ugc_shipped_events, settings.repeat, progress
        )
    if settings.gateway_records:
        gateway_rates: list[float] = []
        raw_rates: list[float] = []
        gateway_ratios: list[float] = []
        for round_ in range(1, settings.repeat + 1):
            progress(
                f"round {round_}/{settings.repeat}: {settings.gateway_records:,} records through "
                "a gateway and through raw trio-websocket"
            )
            through, raw_ws = measure_gateway(
                settings.gateway_records, settings.batch, raw_first=round_ % 2 == 0
            )
            gateway_rates.append(through)
            raw_rates.append(raw_ws)
            gateway_ratios.append(through / raw_ws)
        result["gateway_records"] = settings.gateway_records
        result["gateway_records_per_s"] = statistics.median(gateway_rates)
        result["raw_websocket_records_per_s"] = statistics.median(raw_rates)
        result["gateway_ratio"] = statistics.median(gateway_ratios)
    if settings.tap_seconds:
        progress(f"tap latency at 10,000 records/s for {settings.tap_seconds:g} s (real time)")
        latency = measure_tap_latency(10_000, settings.tap_seconds)
        result["tap_latency_records"] = latency["records"]
        result["tap_latency_p50_ms"] = latency["p50"] * 1000
        result["tap_latency_p99_ms"] = latency["p99"] * 1000
        result["tap_latency_max_ms"] = latency["max"] * 1000
    if settings.restore_records:
        progress(f"restoring an epoch holding {settings.restore_records:,} records")
        restores = [measure_restore(settings.restore_records) for _ in range(settings.repeat)]
        result["restore_records"] = settings.restore_records
        result["restore_seconds"] = statistics.median(r["restore_seconds"] for r in restores)
        result["restore_epoch_mb"] = restores[0]["epoch_mb"]
    if settings.memory_records:
        progress(f"slow consumer over {settings.memory_records:,} records (fresh process)")
        memory = measure_slow_consumer_memory(settings.memory_records, settings.batch)
        result["slow_consumer_records"] = settings.memory_records
        result["slow_consumer_peak_rss_mb"] = memory["peak_rss_mb"]
        result["slow_consumer_peak_depth"] = memory["peak_depth"]
        result["slow_consumer_capacity"] = memory["capacity"]
    if settings.http_seconds:
        for name, example, acks, rps, batch in HTTP_CASES:
            progress(
                f"HTTP: {example} with acks {acks}, {rps:,.0f} requests/s of {batch} "
                f"event{'s' if batch > 1 else ''} for {settings.http_seconds:g} s (real time)"
            )
            measured = measure_http(example, acks, rps, batch, settings.http_seconds)
            result[f"http_{name}"] = {
                "requests_per_s": rps,
                "events_per_request": batch,
                "achieved_per_s": measured["achieved_rps"],
                "events_per_s": measured["achieved_rps"] * batch,
                "latency_ms": measured["latency_ms"],
                "errors": measured["errors"],
                "storage_lag_s": measured["storage_lag_s"],
            }
    if settings.relay_events:
        progress(f"relay: {settings.relay_events:,} events to a webhook, clean and failing")
        result["relay"] = measure_relay(settings.relay_events, settings.repeat)
    if settings.outage_seconds:
        progress(f"relay: a receiver away for {settings.outage_seconds:g} s under serve")
        result["outage"] = measure_outage(settings.outage_seconds)
    result["machine"] = machine()
    return result
