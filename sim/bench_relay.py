"""``ringflow bench``'s relay figures: the video site relayed to a webhook receiver on this
machine's loopback that takes everything, against one that fails 30% of requests with 500
and leaves 5% without an answer; every record must arrive (once, by its id)."""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

import attrs
import trio

from actors import Request, Response, serve_http
from topology import Pipeline, Topology

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
