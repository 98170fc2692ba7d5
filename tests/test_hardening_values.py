"""Event values from a bad client: refused at the gateway when they break their type, and
counted (never crashing a consumer) when they claim a producer that does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import ConsumerGroup, Gateway, RecordBatch, Topic
from actors.wire import MALFORMED
from sim.run import REGISTRY
from sim.workloads import VideoEvent
from tests.test_gateway import client, close_of, serving
from tests.test_hardening_gateway import batch, hello
from topology import Pipeline, Topology
from topology.snapshot import ConsumerTallyPart, decode, encode

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parent.parent / "topology" / "examples"


def event(kind: str = "view", timestamp: float = 1.0, user: int = 5, source: int = 0) -> VideoEvent:
    return VideoEvent(kind, user, 3, 1, timestamp, 0, source, 0)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param(event(kind="boom"), "Invalid enum value 'boom'", id="kind"),
        pytest.param(event(timestamp=float("inf")), "<= 1000000000000.0", id="timestamp"),
        pytest.param(event(user=-1), ">= 0", id="negative-id"),
    ],
)
async def test_an_event_that_breaks_its_type_is_refused_before_the_ring(
    bad: VideoEvent, reason: str
) -> None:
    topic = Topic("events", partitions=1, capacity=100)
    gateway = Gateway(
        {"events": topic},
        {("g", "events"): ConsumerGroup("g", topic)},
        value_types={"events": VideoEvent},
    )
    async with serving(gateway) as url, client(f"{url}/node") as ws:
        await ws.send_message(hello())
        await ws.get_message()  # welcome
        await ws.send_message(batch(values=[event(), bad, event()]))
        code, text = await close_of(ws)
    assert code == MALFORMED
    assert reason in text
    assert topic.partitions[0].end_offset == 0  # nothing of the batch was taken


def test_records_of_an_unknown_producer_fail_no_loss_instead_of_crashing() -> None:
    topology = Topology.from_yaml((EXAMPLES / "video-site.yaml").read_text())
    pipeline = Pipeline.build(topology, REGISTRY, events=1000)
    strangers = [event(source=len(pipeline.plans) + 7) for _ in range(3)]
    batch = RecordBatch("events", 0, 0, [3, 3, 3], strangers, [1.0, 1.0, 1.0])
    tally = pipeline.tallies["video-stats"]
    tally.observe("events", batch, 2.0)
    (no_loss,) = [e for e in pipeline.expectations() if e.name == "no_loss"]
    assert not no_loss.ok
    assert "video-stats processed 3 records of topic 'events' whose source is no producer" in (
        no_loss.detail
    )
    restored = type(tally)(tally.name, tally.topics, tally.sources, tally.check_order)
    part = decode("consumer", encode(tally.capture()))
    assert isinstance(part, ConsumerTallyPart)
    restored.restore(part)
    assert restored.strangers == {"events": 3}
