"""Relays: the ``webhook`` sink against a real HTTP receiver on 127.0.0.1 that fails, times
out and refuses; every record is delivered (at least once, once by its id) or dead-lettered."""

from __future__ import annotations

import json
import random
from collections import Counter

import msgspec
import pytest
import trio

from actors import Request, Response, serve_http
from sim.relays import RelayError, WebhookParams, WebhookSink
from sim.report import Report, build_report
from sim.run import REGISTRY, load_topology
from sim.workloads import VideoEvent
from tests.examples import EXAMPLES
from topology import DeadLetter, Pipeline, SinkContext, Topology, TopologyError

POISON = "events/0/100"
"""The record the receiver refuses for good."""


def relay_topology(url: str, events: int = 2000) -> Topology:
    return Topology.from_dict(
        {
            "name": "relay-test",
            "clock": "real",
            "topics": {
                "events": {"partitions": 2, "capacity": 500, "key": "video_id"},
                "events-dlq": {"partitions": 1, "capacity": 1000},
            },
            "producers": {
                "site": {
                    "workload": "video_site",
                    "topic": "events",
                    "events": events,
                    "max_batch": 50,
                    "linger": 0.01,
                    "params": {"videos": 50, "users": 1000},
                }
            },
            "consumers": {
                "relay": {
                    "topic": "events",
                    "processor": "webhook",
                    "params": {"url": url},
                    "retry": {"initial": 0.01, "maximum": 0.1, "attempt_timeout": 0.5},
                    "breaker": {"threshold": 20, "cool_down": 0.2},
                    "dead_letter": "events-dlq",
                }
            },
            "redis": {"enabled": False},
        }
    )


class Receiver:
    """A webhook receiver that answers 500 to 30% of requests and too late to 5%, refuses
    any batch holding :data:`POISON` with 422, and keeps what it took by record id."""

    def __init__(self) -> None:
        self.rng = random.Random(11)
        self.taken: Counter[str] = Counter()
        self.keys: list[str] = []
        self.answers: Counter[int] = Counter()

    async def __call__(self, request: Request) -> Response:
        batch = json.loads(request.body)
        ids = [record["id"] for record in batch["records"]]
        draw = self.rng.random()
        if draw < 0.05:
            await trio.sleep(1.0)  # past the attempt's timeout
            return self._answer(Response.json(200, {}))
        if draw < 0.35:
            return self._answer(Response.json(500, {"error": "flaky"}))
        if POISON in ids:
            return self._answer(Response.json(422, {"error": "cannot take it"}))
        assert request.headers["idempotency-key"] == f"{ids[0].rsplit('/', 1)[0]}/" + (
            f"{batch['first_offset']}-{batch['last_offset']}"
        )
        self.taken.update(ids)
        self.keys.append(request.headers["idempotency-key"])
        return self._answer(Response.json(200, {"ok": len(ids)}))

    def _answer(self, response: Response) -> Response:
        self.answers[response.status] += 1
        return response


async def test_a_flaky_receiver_gets_every_record_and_the_poison_one_is_dead_lettered() -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, receiver, "127.0.0.1", 0)
        pipeline = Pipeline.build(relay_topology(f"http://127.0.0.1:{server.port}/hook"), REGISTRY)
        with trio.fail_after(120):
            await pipeline.run()
        nursery.cancel_scope.cancel()
    assert receiver.answers[500] > 0
    assert receiver.answers[422] > 0
    every = {
        f"events/{p.index}/{o}"
        for p in pipeline.topics["events"].partitions
        for o in range(p.end_offset)
    }
    assert len(every) == 2000
    assert set(receiver.taken) == every - {POISON}, "a record was not delivered"
    assert sum(pipeline.processors["relay"].totals().values()) == 1999
    letters: list[DeadLetter] = [
        v
        for p in pipeline.topics["events-dlq"].partitions
        for b in p.snapshot().batches
        for v in b.values
    ]
    assert [(d.topic, d.partition, d.offset) for d in letters] == [("events", 0, 100)]
    [letter] = letters
    assert "answered 422" in letter.error
    event = msgspec.msgpack.decode(letter.value, type=VideoEvent)
    assert letter.key == event.video_id  # the record's key, and its value whole
    assert pipeline.deliveries["relay"].dead_lettered == 1
    assert pipeline.deliveries["relay"].statistics.retries > 0
    whole = build_report(pipeline, status="completed")
    assert Report.from_dict(whole.to_dict()) == whole  # read back as written
    report = whole.to_dict()["deliveries"]["relay"]
    assert report["dead_lettered"] == 1
    assert report["retries"] == pipeline.deliveries["relay"].statistics.retries > 0
    assert report["breaker"] in ("closed", "open", "half-open")


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://example.com/x", "not an http:// or https:// URL"),
        ("http://127.0.0.1:99999/x", "port 99999 is not between 1 and 65535"),
        ("http://exa mple.com/x", "not an http:// or https:// URL"),
        ("http://127.0.0.1:abc/x", "is not a URL"),
    ],
)
def test_a_webhook_needs_an_http_url(url: str, said: str) -> None:
    with pytest.raises(TopologyError) as refused:
        Pipeline.build(relay_topology(url), REGISTRY)
    assert any(said in p for p in refused.value.problems), refused.value.problems


def test_the_relay_example_is_valid_and_dead_letters_into_events_dlq() -> None:
    topology = load_topology(EXAMPLES / "relay.yaml")
    relay = topology.consumers["relay"]
    assert (relay.processor, relay.dead_letter) == ("webhook", "events-dlq")
    assert relay.params["url"].startswith("http://")
    pipeline = Pipeline.build(topology, REGISTRY)
    assert pipeline.value_types["events-dlq"] == (DeadLetter,)


async def test_a_webhook_whose_token_variable_is_unset_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RINGFLOW_TEST_NO_TOKEN", raising=False)
    sink = WebhookSink(WebhookParams("http://127.0.0.1:9/x", token_env="RINGFLOW_TEST_NO_TOKEN"))
    context = SinkContext("relay", {}, None)
    with pytest.raises(RelayError, match=r"RINGFLOW_TEST_NO_TOKEN .* is unset or empty"):
        async with sink.opened(context):
            pass
