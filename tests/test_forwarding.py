"""The ``topic`` relay: consumers that write what they read into another topic, on this node
or on another one, committed in the same step, so that nothing is lost or written twice."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from sim.chaos.campaign import run_campaign, targets_of
from sim.chaos.harness import Chaos
from sim.report import build_report
from sim.run import REGISTRY, run_pipeline
from topology import Pipeline, Topology, TopologyError

from .examples import EXAMPLES
from .test_split import free_ports, run_nodes

RELAY_TOPIC = EXAMPLES / "relay-topic.yaml"


def relay_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RELAY_TOPIC.read_text())
    return data


def run(topology: Topology, events: int, pace: Any = None) -> Pipeline:
    pipeline = Pipeline.build(topology, REGISTRY, events=events)
    pipeline.pace = pace

    async def main() -> None:
        await pipeline.run()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return pipeline


def problems_of(data: dict[str, Any]) -> list[str]:
    """What the file's checks and then the registry's say of ``data``."""
    try:
        topology = Topology.from_dict(data)
    except TopologyError as error:
        return error.problems
    return REGISTRY.check(topology)


# -- on one node --------------------------------------------------------------------------------


def test_records_relayed_into_a_topic_are_read_there_once_each_in_their_partition() -> None:
    pipeline = run(Topology.from_dict(relay_data()), 20_000)
    report = build_report(pipeline, status="completed").to_dict()
    assert report["expect_ok"], report["expect"]
    assert pipeline.processors["copy-stats"].result() == pipeline.processors["stats"].result()
    assert pipeline.processors["forward"].result()["relayed"] == 20_000
    assert pipeline.produced["events-copy"].records == 20_000
    assert pipeline.produced["events-copy"].seq_sums == pipeline.produced["events"].seq_sums
    assert pipeline.events_produced == 20_000  # the relayed copies are no new events
    read = [p.statistics().end_offset for p in pipeline.topics["events"].partitions]
    copied = [p.statistics().end_offset for p in pipeline.topics["events-copy"].partitions]
    assert copied == read  # each record kept its partition number
    assert all(p.closed for p in pipeline.topics["events-copy"].partitions)


def test_an_output_with_other_partitions_places_records_by_key_and_chains_on() -> None:
    data = relay_data()
    data["topics"]["events-copy"]["partitions"] = 3
    data["topics"]["again"] = {"partitions": 2, "capacity": 1000, "key": "video_id"}
    data["consumers"]["twice"] = {"topic": "events-copy", "processor": "topic", "output": "again"}
    data["consumers"]["again-stats"] = {"topic": "again", "processor": "video_stats"}
    data["expect"] = {"per_key_order": False}
    pipeline = run(Topology.from_dict(data), 12_000)
    assert all(e.ok for e in pipeline.expectations())
    expected = pipeline.processors["stats"].result()
    assert pipeline.processors["copy-stats"].result() == expected
    assert pipeline.processors["again-stats"].result() == expected
    assert sum(p.statistics().end_offset for p in pipeline.topics["again"].partitions) == 12_000


def test_a_full_output_holds_the_relay_and_its_producers_back_and_loses_nothing() -> None:
    data = relay_data()
    data["topics"]["events"]["capacity"] = 300
    data["topics"]["events-copy"]["capacity"] = 40  # smaller than a batch: written in parts

    async def slow(member: str, records: int) -> None:
        if member.startswith("copy-stats"):
            await trio.sleep(records * 0.001)

    pipeline = run(Topology.from_dict(data), 8_000, pace=slow)
    assert all(e.ok for e in pipeline.expectations())
    assert pipeline.processors["copy-stats"].result() == pipeline.processors["stats"].result()
    copies = [p.statistics() for p in pipeline.topics["events-copy"].partitions]
    assert max(s.peak_depth for s in copies) <= 40
    held = [p.statistics() for p in pipeline.topics["events"].partitions]
    assert sum(s.blocked_seconds for s in held) > 0  # the producers were held back


# -- the file ----------------------------------------------------------------------------------


def _with(change: Any) -> dict[str, Any]:
    data = relay_data()
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: (d["consumers"]["forward"].pop("output"), d["consumers"].pop("copy-stats")),
            "$.consumers.forward.output: processor 'topic' writes records to a topic; name it here",
        ),
        (
            lambda d: d["consumers"]["stats"].update(output="events-copy"),
            "$.consumers.stats.output: processor 'video_stats' writes no records",
        ),
        (
            lambda d: d["consumers"]["forward"].update(output="nowhere"),
            "$.consumers.forward.output: no topic named 'nowhere'",
        ),
        (
            lambda d: d["consumers"]["forward"].update(output="events"),
            "records written to 'events' come back to 'events', which this consumer reads",
        ),
        (
            lambda d: d["consumers"].update(
                back={"topic": "events-copy", "processor": "topic", "output": "events"}
            ),
            "$.consumers.forward.output: records written to 'events-copy' come back to "
            "'events', which this consumer reads (through events-copy -> events)",
        ),
        (
            lambda d: (
                d["topics"].update(dlq={"partitions": 1, "capacity": 100}),
                d["consumers"].update(
                    hook={
                        "topic": "events",
                        "processor": "webhook",
                        "params": {"url": "http://127.0.0.1:9/x"},
                        "dead_letter": "dlq",
                    }
                ),
                d["consumers"]["forward"].update(output="dlq"),
                d.update(clock="real"),
            ),
            "$.consumers.forward.output: 'dlq' is a dead-letter topic",
        ),
        (
            lambda d: d["topics"]["events-copy"].update(partitions=3),
            "$.consumers.forward.output: topic 'events-copy' has 3 partitions and 'events' 4",
        ),
        (
            lambda d: d["consumers"].update(
                again={"topic": "events", "processor": "topic", "output": "events-copy"}
            ),
            "$.consumers.again.output: topic 'events-copy' has other writers too (consumer "
            "forward): their records interleave",
        ),
        (
            lambda d: d["consumers"]["forward"].pop("output"),
            "no producer writes to topic 'events-copy', nor is it any consumer's output",
        ),
        (
            lambda d: d["consumers"]["forward"].update(retry={"max_attempts": 3}),
            "$.consumers.forward.retry: processor 'topic' writes to no other system",
        ),
        (
            lambda d: d["consumers"]["stats"].update(breaker={"threshold": 2}),
            "$.consumers.stats.breaker: processor 'video_stats' writes to no other system",
        ),
        (
            lambda d: d["consumers"]["forward"].update(params={"url": "x"}),
            "$.consumers.forward.params: unknown field url; it takes none",
        ),
    ],
)
def test_outputs_that_cannot_work_are_refused_naming_the_field(change: Any, message: str) -> None:
    problems = problems_of(_with(change))
    assert any(message in p for p in problems), problems


def test_a_relay_blocked_by_an_output_nothing_reads_ends_as_stalled() -> None:
    data = relay_data()
    del data["consumers"]["copy-stats"]
    data["topics"]["events-copy"].update(capacity=500, allow_unconsumed=True)
    pipeline = Pipeline.build(Topology.from_dict(data), REGISTRY, events=20_000)
    result = run_pipeline(pipeline)
    assert result.report.status == "failed"
    assert "producers wait to send to events-copy[" in str(result.report.error)
    assert "no consumer group reads topic 'events-copy'" in str(result.report.error)


def test_a_relay_with_a_dead_letter_topic_is_told_its_output_never_refuses() -> None:
    data = relay_data()
    data["topics"]["dlq"] = {"partitions": 1, "capacity": 100}
    data["consumers"]["forward"]["dead_letter"] = "dlq"
    problems = problems_of(data)
    assert any(
        "$.consumers.forward.dead_letter: processor 'topic' writes to topic 'events-copy', "
        "which holds it back while full and never refuses a record" in p
        for p in problems
    ), problems


def test_a_topic_fed_only_by_a_relay_needs_no_producer_and_carries_what_it_reads() -> None:
    topology = Topology.from_dict(relay_data())
    assert REGISTRY.check(topology) == []
    writers = REGISTRY.writers(topology)
    assert [w for w, _ in writers["events-copy"]] == ["consumer 'forward'"]
    assert writers["events-copy"][0][1] == writers["events"][0][1]
    unread = copy.deepcopy(relay_data())
    del unread["consumers"]["copy-stats"]
    with pytest.raises(TopologyError) as caught:
        Topology.from_dict(unread)
    assert any(
        "$.topics.events-copy: no consumer reads this topic, so its producers "
        "(consumer forward)" in p
        for p in caught.value.problems
    ), caught.value.problems


# -- across nodes and faults -----------------------------------------------------------------


def split_relay() -> Topology:
    data = relay_data()
    ports = free_ports(4)
    data["producers"]["site"].update(instances=2, max_batch=1000, linger=0.05)
    data["nodes"] = {
        "producers": {"listen": f"127.0.0.1:{ports[0]}", "producers": ["site"]},
        "broker": {"listen": f"127.0.0.1:{ports[1]}", "topics": ["events"]},
        "relay": {"listen": f"127.0.0.1:{ports[2]}", "consumers": ["forward", "stats"]},
        "copies": {
            "listen": f"127.0.0.1:{ports[3]}",
            "topics": ["events-copy"],
            "consumers": ["copy-stats"],
        },
    }
    return Topology.from_dict(data)


@pytest.mark.timeout(120)
async def test_a_relay_into_a_topic_on_another_node_gives_what_one_process_gives() -> None:
    topology = split_relay()
    reports = await run_nodes(topology, 20_000)
    copies, relay = reports["copies"], reports["relay"]
    assert copies["expect_ok"], copies["expect"]
    assert relay["expect_ok"], relay["expect"]
    assert copies["aggregates"]["copy-stats"] == relay["aggregates"]["stats"]
    assert copies["events_consumed"] == 20_000
    assert sum(p["records"] for p in copies["partitions"]) == 20_000


def test_a_relay_member_that_lost_its_partitions_while_waiting_writes_nothing_twice() -> None:
    # The output holds 5 records a partition: the relay's members wait for room longer than
    # the session timeout of the group on the other node, which gives their partitions to
    # other members of the same consumer meanwhile. A member that then gets room writes
    # only what no member wrote since (it used to write its whole batch again).
    data = relay_data()
    data["topics"]["events"]["capacity"] = 5000
    data["topics"]["events-copy"] = {"partitions": 4, "capacity": 5, "key": "video_id"}
    data["producers"]["site"].update(rate=10000, max_batch=2000, linger=0.05)
    data["consumers"]["forward"]["instances"] = 3
    data["checkpoint"] = {"every": 0.2}
    data["expect"] = {"per_key_order": False}
    ports = free_ports(3)
    data["nodes"] = {
        "src": {"listen": f"127.0.0.1:{ports[0]}", "topics": ["events"], "producers": ["site"]},
        "relay": {"listen": f"127.0.0.1:{ports[1]}", "consumers": ["forward"]},
        "dst": {
            "listen": f"127.0.0.1:{ports[2]}",
            "topics": ["events-copy"],
            "consumers": ["stats", "copy-stats"],
        },
    }
    chaos = Chaos.of(Topology.from_dict(data), 4_000)
    campaign = run_campaign(chaos, seed=0, schedules=1, kinds=("actor_crash",))
    assert campaign.violations == []


def test_a_relay_into_another_node_with_other_partitions_is_refused() -> None:
    # Records of several partitions interleaved into one as they happened to be read: a
    # relay node restarted from its newest epoch sent them again in another order, under
    # the numbers the other node had kept the first ones by (6 of 60 chaos schedules lost
    # and doubled records, 3 of 60 with one instance).
    data = relay_data()
    data["topics"]["events-copy"]["partitions"] = 3
    data["expect"] = {"per_key_order": False}
    ports = free_ports(2)
    data["nodes"] = {
        "a": {"listen": f"127.0.0.1:{ports[0]}", "topics": ["events"], "producers": ["site"]},
        "b": {"listen": f"127.0.0.1:{ports[1]}", "topics": ["events-copy"]},
    }
    data["nodes"]["a"]["consumers"] = ["stats", "forward"]
    data["nodes"]["b"]["consumers"] = ["copy-stats"]
    problems = problems_of(data)
    assert any(
        "$.consumers.forward.output: topic 'events-copy' is on node 'b', the consumer on node "
        "'a', and has 3 partitions where 'events' has 4" in p
        for p in problems
    ), problems
    data["nodes"]["a"]["topics"].append("events-copy")  # on the relay's node: fine
    data["nodes"]["b"]["topics"] = []
    assert problems_of(data) == []


@pytest.mark.timeout(300)
def test_relayed_records_survive_node_crashes_and_a_flaky_network_once() -> None:
    chaos = Chaos.of(split_relay(), 6_000)
    assert ("copies", "relay") in targets_of(chaos).links  # the relay writes there
    kinds = ("node_crash", "net_drop", "net_partition")
    campaign = run_campaign(chaos, seed=12, schedules=12, kinds=kinds, keep_going=True)
    assert campaign.violations == []
    assert set(kinds) <= set(campaign.faults)


def test_seed_111983752700610_a_relay_node_restored_after_its_group_ended_finishes() -> None:
    """The relay's node crashed after its members had had every record and left the group,
    and was restored from an epoch taken in between: its members joined again, and the
    broker, which had finished meanwhile, was not there. An epoch now says that the group
    had every record, and members restored from it do not join again."""
    chaos = Chaos.of(split_relay(), 6_000)
    kinds = ("node_crash", "net_drop", "net_partition")
    campaign = run_campaign(chaos, seed=12, schedules=1, kinds=kinds, replay=111983752700610)
    (schedule,) = campaign.schedules
    assert [(f.fault.kind, f.fault.target) for f in schedule.outcome.trace] == [
        ("node_crash", "node:relay")
    ]
    assert campaign.violations == []
