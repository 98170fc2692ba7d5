"""Plans: what each producer instance makes, what identifies a run, and where it runs."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from typing import Any, Union

import attrs

from actors import TCP, Network

from .convert import converter
from .delivering import DeadLetter
from .registry import Registry
from .schema import Topology
from .sections import RedisSpec, parse_address


@attrs.frozen
class ProducerPlan:
    """One producer instance: how many events it makes, how fast."""

    producer: str
    instance: int
    source: int
    """A number unique over all producer instances; events carry it."""
    events: int
    rate: float | None


def split_evenly(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` whole shares, the first ones one larger."""
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def split_proportionally(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders get the rest)."""
    whole = sum(weights)
    if whole == 0:
        return split_evenly(total, len(weights))
    exact = [total * w / whole for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def make_plans(topology: Topology, events: int | None = None) -> list[ProducerPlan]:
    """One plan per producer instance, numbered in the file's order.

    Args:
        topology: A validated topology.
        events: Replaces the total number of events, split over producers in proportion to
            what the file gives them.
    """
    names = list(topology.producers)
    totals = [topology.producers[n].total_events for n in names]
    if events is not None:  # shared among the workloads (a folder's files are not planned)
        made = [n for n in names if topology.producers[n].files is None]
        weights = [totals[names.index(n)] for n in made]
        shares = dict(zip(made, split_proportionally(events, weights), strict=True)) if made else {}
        totals = [shares.get(n, 0) for n in names]
    plans = []
    source = 0
    for name, total in zip(names, totals, strict=True):
        spec = topology.producers[name]
        rate = None if spec.rate is None else spec.rate / spec.instances
        for instance, count in enumerate(split_evenly(total, spec.instances)):
            plans.append(ProducerPlan(name, instance, source, count, rate))
            source += 1
    return plans


def producer_id(plan: ProducerPlan) -> str:
    """How a producer instance is known to the gateways of a split topology."""
    return f"{plan.producer}-{plan.instance}"


def api_nodes(topology: Topology) -> list[str]:
    """The nodes that serve the HTTP API, in the file's order: their intakes are sources
    numbered after every producer instance's (one intake in all when the topology runs
    whole)."""
    if topology.http is None:
        return []
    if not topology.nodes:
        return [""]
    return [name for name, spec in topology.nodes.items() if spec.api]


def topics_of(topology: Topology, producer: str) -> set[str]:
    """The topics ``producer`` writes to."""
    spec = topology.producers[producer]
    return {spec.topic} if spec.topic else set(spec.topics.values())


def event_types(topology: Topology, registry: Registry) -> dict[str, tuple[type, ...]]:
    """Per topic, the event classes its producers' workloads (and the HTTP API) write to it."""
    types: dict[str, tuple[type, ...]] = {name: () for name in topology.topics}
    for topic, writers in registry.writers(topology).items():
        for _, written in writers:
            types[topic] += tuple(t for t in written if t not in types[topic])
    for consumer in topology.consumers.values():
        if consumer.dead_letter is not None:
            types[consumer.dead_letter] = (DeadLetter,)
    return types


def value_type(types: tuple[type, ...]) -> Any:
    """The type record values decode to: a union of ``types``, or anything when none."""
    return Any if not types else (types[0] if len(types) == 1 else Union[types])  # noqa: UP007


def _described(
    topology: Topology,
    sinks: Collection[str] = (),
    resumable: Mapping[str, Collection[str]] | None = None,
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    # The topology as plain data without what does not change what a run computes (how often
    # epochs are written, Redis, gateway settings, where ``sinks`` write to), and apart from
    # it what runs on each node (not where the nodes listen).
    described = converter.unstructure(attrs.evolve(topology, checkpoint=None, redis=RedisSpec()))
    described.pop("gateway")
    if described.get("http") is None:  # as files written before the section existed
        described.pop("http", None)
    for producer in described["producers"].values():
        if producer.get("files") is None:  # as files written before the field existed
            producer.pop("files", None)
        else:  # how often a folder is looked at, and for how long, changes no sum
            producer["files"].pop("poll", None)
            producer["files"].pop("idle", None)
    for name, consumer in described["consumers"].items():
        # How deliveries are retried changes no result; no dead-letter topic is as before.
        # A sink's params say where it writes (a URL fixed after records were refused).
        if name in sinks:
            consumer.pop("params", None)
        elif isinstance(consumer.get("params"), dict):  # and what says only how it works
            for param in (resumable or {}).get(name, ()):
                consumer["params"].pop(param, None)
        consumer.pop("retry", None)
        consumer.pop("breaker", None)
        if consumer.get("output") is None:  # as files written before the field existed
            consumer.pop("output", None)
        if consumer.get("dead_letter") is None:
            consumer.pop("dead_letter", None)
        else:  # its room only says when a run stops for want of it: made larger, resumed
            described["topics"][consumer["dead_letter"]].pop("capacity", None)
    nodes = described.pop("nodes")
    layout = {name: [n["topics"], n["producers"], n["consumers"]] for name, n in nodes.items()}
    return described, layout


def _sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(
    topology: Topology,
    seed: int,
    plans: list[ProducerPlan],
    node: str | None = None,
    sinks: Collection[str] = (),
    resumable: Mapping[str, Collection[str]] | None = None,
) -> str:
    """Return what identifies a run's state: the topology, the seed and the producers' plans,
    and for a node of a split topology, the nodes and which one it is.

    Checkpoints of one run may only be resumed by a run with the same fingerprint: a run may
    be resumed with other checkpoint, Redis, gateway or delivery settings, with other params
    for the consumers ``sinks`` (where they write), and with other ``resumable`` params (by
    consumer), which do not change what the state means.
    """
    described, layout = _described(topology, sinks, resumable)
    data: dict[str, Any] = {
        "topology": described,
        "seed": seed,
        "plans": [attrs.astuple(plan) for plan in plans],
    }
    if node is not None:
        data["node"] = [node, layout]
    return _sha256(data)


def agreement(
    topology: Topology, seed: int, plans: list[ProducerPlan], node: str
) -> dict[str, str]:
    """Return what every node of a split topology must agree on, as the gateways compare it.

    ``seed`` and ``events`` (the total) as they are, so that a difference is named with both
    values; ``plans`` (the events of every producer instance) and ``topology`` (the file
    without the settings that may differ per node: listen addresses, gateway, checkpoints,
    Redis, clock, expectations) as short hashes; ``node`` names the side and is not compared.
    """
    described, layout = _described(topology)
    for setting in ("seed", "clock", "expect"):
        described.pop(setting)
    for producer in described["producers"].values():
        producer.pop("events")
        producer.pop("duration")
    described["nodes"] = layout
    return {
        "node": node,
        "seed": str(seed),
        "events": str(sum(plan.events for plan in plans)),
        "plans": _sha256([[plan.producer, plan.instance, plan.events] for plan in plans])[:12],
        "topology": _sha256(described)[:12],
    }


@attrs.frozen
class Placement:
    """Which node of a split topology a pipeline runs as, and how it reaches the others."""

    node: str
    listen: str | None = None
    """``HOST:PORT`` to listen on instead of the node's ``listen`` in the file."""
    peers: dict[str, str] = attrs.field(factory=dict)
    """``HOST:PORT`` to reach other nodes at, by node name, instead of their ``listen``."""
    token: str | None = None
    """The shared token (read from ``gateway.token_env`` by the caller)."""
    network: Network = TCP
    """What the node's gateway and its links to the others go over (TCP, unless a
    simulation hands it a network of its own)."""


def check_placement(topology: Topology, placement: Placement) -> list[str]:
    """Return every problem with running ``topology`` as ``placement``; empty when fine."""
    if not topology.nodes:
        return ["$.nodes: the topology has no nodes, so no part of it runs as a node; run it whole"]
    problems = []
    if placement.node not in topology.nodes:
        problems.append(
            f"no node named {placement.node!r}; nodes are: {', '.join(sorted(topology.nodes))}"
        )
    for node in placement.peers:
        if node not in topology.nodes:
            problems.append(
                f"peers.{node}: no node named {node!r}; nodes are: "
                f"{', '.join(sorted(topology.nodes))}"
            )
    places = [("listen", placement.listen)]
    places += [(f"peers.{node}", where) for node, where in placement.peers.items()]
    for setting, where in places:
        if where is not None:
            try:
                parse_address(where)
            except ValueError as exc:
                problems.append(f"{setting}: {exc}")
    return problems
