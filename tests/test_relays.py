"""Relays: the ``webhook`` sink against a real HTTP receiver on 127.0.0.1 that fails, times
out and refuses; every record is delivered (at least once, once by its id) or dead-lettered."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import trio

from actors import RecordBatch, Request, Response, serve_http
from sim.relays import (
    RedisStreamParams,
    RedisStreamSink,
    RelayError,
    WebhookParams,
    WebhookSink,
)
from sim.report import Report, build_report
from sim.run import REGISTRY, load_topology
from sim.workloads import VideoEvent
from tests.examples import EXAMPLES
from topology import (
    CheckpointStore,
    DeadLetter,
    Pipeline,
    SinkContext,
    Topology,
    TopologyError,
)

POISON = "events/0/100"
"""The record the receiver refuses for good."""


def relay_data(url: str, events: int = 2000) -> dict[str, Any]:
    """A video site relayed to ``url`` on the real clock, dead letters into ``events-dlq``."""
    return {
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


def relay_topology(url: str, events: int = 2000) -> Topology:
    return Topology.from_dict(relay_data(url, events))


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
        assert all(r["value"]["video_id"] == r["key"] for r in batch["records"])
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


# -- redis_stream: XADD with offsets as entry ids, against a real redis-server -----------------


def stream_topology(url: str, events: int = 600) -> Topology:
    return Topology.from_dict(
        {
            "name": "stream-test",
            "clock": "real",
            "topics": {"events": {"partitions": 2, "capacity": 200, "key": "video_id"}},
            "producers": {
                "site": {
                    "workload": "video_site",
                    "topic": "events",
                    "events": events,
                    "max_batch": 50,
                    "params": {"videos": 50, "users": 1000},
                }
            },
            "consumers": {
                "relay": {"topic": "events", "processor": "redis_stream", "params": {"url": url}}
            },
            "redis": {"enabled": False},
        }
    )


async def test_redis_stream_appends_each_record_once_with_its_offset_as_id(
    redis_url: str,
) -> None:
    pipeline = Pipeline.build(stream_topology(redis_url), REGISTRY)
    await pipeline.run()
    client = redis.Redis.from_url(redis_url)
    for partition in pipeline.topics["events"].partitions:
        entries = client.xrange(f"ringflow:events:{partition.index}")
        assert [e[0] for e in entries] == [
            f"{o + 1}-0".encode() for o in range(partition.end_offset)
        ]
        first = entries[0][1]
        assert first[b"id"] == f"events/{partition.index}/0".encode()
        value = json.loads(first[b"value"])
        assert value["kind"] in ("view", "like", "dislike", "comment", "watch")
        assert json.loads(first[b"key"]) == value["video_id"]
    assert sum(pipeline.processors["relay"].totals().values()) == 600
    assert [e.ok for e in pipeline.expectations()] == [True, True, True]

    # The same records again (a retry after a timeout, a crash before the epoch): not stored
    # twice.
    sink = pipeline.processors["relay"]
    assert isinstance(sink, RedisStreamSink)
    batch = RecordBatch(
        "events", 0, 0, [1, 2], [VideoEvent("view", 1, 1, 0, 0.0, 0, 0, 0)] * 2, [0.0, 0.0]
    )
    context = SinkContext("relay", {}, None, {("events", 0): 10**9})
    async with sink.opened(context):
        await sink.write([batch])
    assert sink.sent_again == 2
    assert client.xlen("ringflow:events:0") == pipeline.topics["events"].partitions[0].end_offset

    # Another run (afresh) finds the streams another run's: refused, not silently dropped.
    again = Pipeline.build(stream_topology(redis_url), REGISTRY)
    with pytest.raises(RelayError, match="belongs to another run"):
        await again.run()
    client.close()


async def test_redis_stream_away_is_retried_and_a_bad_url_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a Redis URL"):
        RedisStreamParams("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="names only"):
        RedisStreamParams("redis://127.0.0.1:6379", stream="x:{nope}")
    sink = RedisStreamSink(RedisStreamParams(f"unix://{tmp_path}/nobody.sock"))
    with pytest.raises(RelayError, match="ConnectionError"):
        async with sink.opened(SinkContext("relay", {}, None, {("events", 0): 0})):
            pass


def batch(first: int, count: int) -> RecordBatch:
    """Views at offsets ``first`` onwards of partition 0 of ``events``."""
    values = [VideoEvent("view", 1, i, 0, 0.0, 0, 0, i) for i in range(first, first + count)]
    return RecordBatch("events", 0, first, [1] * count, values, [0.0] * count)


async def test_entries_past_the_newest_epoch_are_removed_as_a_resumed_run_opens(
    redis_url: str,
) -> None:
    sink = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))
    async with sink.opened(SinkContext("relay", {}, None, {("events", 0): 0})):
        await sink.write([batch(0, 10)])
        state = sink.snapshot()  # an epoch holds offsets 0..9
        await sink.write([batch(10, 10)])  # then the process dies
    resumed = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))
    resumed.restore(state)
    async with resumed.opened(SinkContext("relay", {}, None, {("events", 0): 10})):
        assert resumed.removed_past_epoch == 10
        await resumed.write([batch(10, 5)])  # offsets 10.. are other records now
    client = redis.Redis.from_url(redis_url)
    entries = client.xrange("s")
    client.close()
    assert [e[0] for e in entries] == [f"{o + 1}-0".encode() for o in range(15)]
    assert resumed.totals() == {"view": 15}


async def test_a_run_that_died_before_its_first_epoch_finds_its_streams_its_own(
    redis_url: str, tmp_path: Path
) -> None:
    values = [VideoEvent("view", 1, i, 0, 0.0, 0, 0, i) for i in range(10)]
    batch = RecordBatch("events", 0, 0, [1] * 10, values, [0.0] * 10)
    state = tmp_path / "state"
    CheckpointStore.open(state, "fingerprint").close()  # the run's database, no epoch yet
    first = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))
    async with first.opened(SinkContext("relay", {}, state, {("events", 0): 0})):
        await first.write([batch])  # then it dies: no epoch
    again = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))  # no state to restore
    async with again.opened(SinkContext("relay", {}, state, {("events", 0): 0})):
        assert again.removed_past_epoch == 10  # offsets from 0 are new again
        await again.write([batch])
    (state / "checkpoints.sqlite3").unlink()  # moved away: a run started afresh
    CheckpointStore.open(state, "fingerprint").close()
    other = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))
    with pytest.raises(RelayError, match="belongs to another run"):
        async with other.opened(SinkContext("relay", {}, state, {("events", 0): 0})):
            pass
    client = redis.Redis.from_url(redis_url)
    assert client.xlen("s") == 10
    client.close()


async def test_a_replayed_record_goes_at_the_end_once_and_later_offsets_still_go_in(
    redis_url: str,
) -> None:
    sink = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))
    async with sink.opened(SinkContext("relay", {}, None, {("events", 0): 0})):
        await sink.write([batch(0, 3)])
        await sink.write([batch(4, 6)])  # offset 3 was dead-lettered
        await sink.replay([batch(3, 1), batch(5, 1)])  # 5 is there: not added again
        await sink.replay([batch(3, 1)])  # a replay done again: not added again
        await sink.write([batch(10, 2)])  # the run goes on after the replay
    client = redis.Redis.from_url(redis_url)
    entries = client.xrange("s")
    client.close()
    ids = [(e[0].decode(), e[1][b"id"].decode()) for e in entries]
    assert ids == [
        *((f"{o + 1}-0", f"events/0/{o}") for o in (0, 1, 2, 4, 5, 6, 7, 8, 9)),
        ("10-1", "events/0/3"),
        ("11-0", "events/0/10"),
        ("12-0", "events/0/11"),
    ]


async def test_two_runs_starting_together_cannot_share_a_stream(redis_url: str) -> None:
    first = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))
    second = RedisStreamSink(RedisStreamParams(redis_url, stream="s"))
    async with first.opened(SinkContext("relay", {}, None, {("events", 0): 0})):
        # Nothing written yet, and still the stream is the first run's.
        with pytest.raises(RelayError, match="belongs to another run"):
            async with second.opened(SinkContext("relay", {}, None, {("events", 0): 0})):
                pass
