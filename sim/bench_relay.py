"""``ringflow bench``'s relay figures: the video site relayed to a webhook receiver on this
machine's loopback that takes everything, against one that fails 30% of requests with 500
and leaves 5% without an answer; every record must arrive (once, by its id)."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio
import yaml

from actors import Request, Response, serve_http
from topology import Pipeline, Topology

from .bench_http import serve_in_child, stop
from .load import LoadSettings, run_load
from .run import REGISTRY

RELAY_PARTITIONS = 16
"""Partitions of the relayed topic, each delivered by its own consumer instance: a batch
being retried holds back its partition only."""

FAILING = 0.30
"""The share of requests the failing receiver answers with 500."""

SILENT = 0.05
"""The share it does not answer before the relay's attempt times out."""

ATTEMPT_TIMEOUT = 0.25
"""Seconds an attempt may take in the benchmark's topology."""


def relay_topology(url: str, events: int) -> Topology:
    """The video site relayed to ``url``: :data:`RELAY_PARTITIONS` partitions and instances,
    retries without limit, a breaker that only a receiver failing every request opens."""
    return Topology.from_dict(
        {
            "name": "bench-relay",
            "clock": "real",
            "topics": {
                "events": {
                    "partitions": RELAY_PARTITIONS,
                    "capacity": 20_000,
                    "key": "video_id",
                }
            },
            "producers": {
                "site": {
                    "workload": "video_site",
                    "topic": "events",
                    "events": events,
                    "max_batch": 500,
                    "params": {"videos": 1000, "bloggers": 10, "users": 1_000_000},
                }
            },
            "consumers": {
                "relay": {
                    "topic": "events",
                    "processor": "webhook",
                    "instances": RELAY_PARTITIONS,
                    "params": {"url": url, "connections": RELAY_PARTITIONS},
                    "retry": {
                        "initial": 0.01,
                        "maximum": 0.5,
                        "max_attempts": None,
                        "attempt_timeout": ATTEMPT_TIMEOUT,
                    },
                    "breaker": {"threshold": 50, "cool_down": 1.0},
                }
            },
            "redis": {"enabled": False},
        }
    )


@attrs.define(eq=False)
class Receiver:
    """A webhook receiver that keeps each record once by its id, failing ``failing`` of the
    requests with 500 and leaving ``silent`` of them unanswered past the attempt timeout."""

    failing: float = 0.0
    silent: float = 0.0
    rng: random.Random = attrs.field(factory=lambda: random.Random(7))
    ids: set[str] = attrs.field(factory=set)
    requests: int = 0
    again: int = 0
    """Records received again after they were taken (dropped by their id)."""

    async def __call__(self, request: Request) -> Response:
        self.requests += 1
        draw = self.rng.random()
        if draw < self.silent:
            await trio.sleep(ATTEMPT_TIMEOUT * 4)  # the relay gave up on it
            return Response.json(503, {"error": "too late"})
        if draw < self.silent + self.failing:
            return Response.json(500, {"error": "flaky"})
        for record in json.loads(request.body)["records"]:
            if record["id"] in self.ids:
                self.again += 1
            else:
                self.ids.add(record["id"])
        return Response.json(200, {})


async def _relay_once(events: int, receiver: Receiver) -> float:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, receiver, "127.0.0.1", 0)
        pipeline = Pipeline.build(
            relay_topology(f"http://127.0.0.1:{server.port}/", events), REGISTRY
        )
        started = time.perf_counter()
        await pipeline.run()
        seconds = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    if len(receiver.ids) != events:
        raise RuntimeError(f"the receiver took {len(receiver.ids):,} of {events:,} records")
    return seconds


def measure_relay(events: int, repeat: int) -> dict[str, Any]:
    """Relay ``events`` to a receiver that takes everything and to a failing one, alternately,
    ``repeat`` times each; return the median throughputs, their ratio, and what the failing
    receiver saw.

    Raises:
        RuntimeError: A receiver did not get every record.
    """
    clean, failing, seen = [], [], []
    for _ in range(repeat):
        clean.append(events / trio.run(_relay_once, events, Receiver()))
        flaky = Receiver(failing=FAILING, silent=SILENT)
        failing.append(events / trio.run(_relay_once, events, flaky))
        seen.append(flaky)
    clean_rate, failing_rate = statistics.median(clean), statistics.median(failing)
    return {
        "events": events,
        "clean_records_per_s": round(clean_rate, 1),
        "failing_records_per_s": round(failing_rate, 1),
        "ratio": round(failing_rate / clean_rate, 3),
        "failing_requests": statistics.median(r.requests for r in seen),
        "failing_records_again": statistics.median(r.again for r in seen),
        "every_record_delivered": True,
    }


@attrs.define(eq=False)
class Outage:
    """A webhook receiver that is away (503) while :attr:`down`, and keeps records once by
    id otherwise."""

    down: bool = False
    ids: set[str] = attrs.field(factory=set)
    refused: int = 0
    wanted: int | None = None
    """Set :attr:`reached` once it holds this many records."""
    reached: trio.Event = attrs.field(factory=trio.Event)

    async def __call__(self, request: Request) -> Response:
        if self.down:
            self.refused += 1
            return Response.json(503, {"error": "down"}, headers=[("retry-after", "1")])
        for record in json.loads(request.body)["records"]:
            self.ids.add(record["id"])
        self.check()
        return Response.json(200, {})

    def check(self) -> None:
        """Set :attr:`reached` if it holds :attr:`wanted` records."""
        if self.wanted is not None and len(self.ids) >= self.wanted:
            self.reached.set()


def outage_topology(url: str) -> dict[str, Any]:
    """Seed 001's playback API relayed to ``url``: rings of 2 x 5,000 records, so that a
    receiver away for long holds the clients back within seconds."""
    return {
        "name": "ess-relay",
        "topics": {"playback": {"partitions": 2, "capacity": 5000, "key": "user_id"}},
        "http": {
            "listen": "127.0.0.1:0",
            "routes": {"playback": "playback"},
            "acks": "durable",
            "max_wait": 2.0,
        },
        "consumers": {
            "relay": {
                "topic": "playback",
                "processor": "webhook",
                "instances": 2,
                "params": {"url": url},
                "retry": {"initial": 0.05, "maximum": 2.0, "max_attempts": None},
                "breaker": {"threshold": 5, "cool_down": 2.0},
            }
        },
        "checkpoint": {"every": 1.0},
    }


def measure_outage(outage: float, rps: float = 1000.0, before: float = 5.0) -> dict[str, Any]:
    """Serve :func:`outage_topology` in a child process, load it at ``rps`` single-event
    requests; the receiver is away for ``outage`` seconds after ``before``. Return what the
    clients got, the serving process's memory before and during the outage, and whether every
    accepted event reached the receiver once it was back (waiting up to a minute)."""
    receiver = Outage()
    folder = Path(tempfile.mkdtemp(prefix="ringflow-bench-outage-"))
    result: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(serve_http, receiver, "127.0.0.1", 0)).port
            path = folder / "ess-relay.yaml"
            path.write_text(yaml.safe_dump(outage_topology(f"http://127.0.0.1:{port}/")))
            server, url = await trio.to_thread.run_sync(serve_in_child, path, folder / "state")
            rss: dict[str, list[int]] = {"before": [], "outage": [], "after": []}
            phase = "before"

            async def sample() -> None:
                while True:
                    rss[phase].append(_rss_kb(server.pid))
                    await trio.sleep(0.5)

            nursery.start_soon(sample)
            settings = LoadSettings(url, rps=rps, duration=before + outage + 10.0, mix="ess")
            async with trio.open_nursery() as load:
                load.start_soon(_outage, receiver, before, outage)

                async def go() -> None:
                    result["load"] = attrs.asdict(await run_load(settings))

                load.start_soon(go)

                async def phases() -> None:
                    nonlocal phase
                    await trio.sleep(before)
                    phase = "outage"
                    await trio.sleep(outage)
                    phase = "after"

                load.start_soon(phases)
            accepted = result["load"]["events_accepted"]
            receiver.wanted = accepted
            receiver.check()
            with trio.move_on_after(60):
                await receiver.reached.wait()
            result["delivered"] = len(receiver.ids)
            result["every_accepted_event_delivered"] = len(receiver.ids) >= accepted
            result["rss_mb"] = {k: round(max(v, default=0) / 1024, 1) for k, v in rss.items()}
            await trio.to_thread.run_sync(stop, server)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load = result.pop("load")
    return {
        "outage_s": outage,
        "rps": rps,
        "events_accepted": load["events_accepted"],
        "statuses": load["statuses"],
        "latency_ms": load["latency_ms"],
        "receiver_refused": receiver.refused,
        **result,
    }


async def _outage(receiver: Outage, before: float, outage: float) -> None:
    await trio.sleep(before)
    receiver.down = True
    await trio.sleep(outage)
    receiver.down = False


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
