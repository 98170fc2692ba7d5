"""Fault plans: which faults a chaos schedule injects, where and when, drawn from its seed."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import attrs

FAULT_KINDS: tuple[str, ...] = (
    "actor_crash",
    "node_crash",
    "torn_write",
    "disk_full",
    "net_drop",
    "net_delay",
    "net_partition",
    "redis_down",
    "slow_consumer",
    "sink_down",
    "sink_flaky",
)
"""Every kind of fault chaos knows of."""

WHOLE_KINDS: tuple[str, ...] = (
    "actor_crash",
    "node_crash",
    "torn_write",
    "disk_full",
    "slow_consumer",
    "redis_down",
)
"""The kinds a topology run whole, in one process, is tested with."""

NETWORK_KINDS: tuple[str, ...] = ("net_drop", "net_delay", "net_partition")
"""The kinds only a topology with ``nodes`` is tested with: faults of the network between them."""

SPLIT_KINDS: tuple[str, ...] = WHOLE_KINDS + NETWORK_KINDS
"""The kinds a topology with ``nodes`` is tested with, every node in one process."""

SINK_KINDS: tuple[str, ...] = ("sink_down", "sink_flaky")
"""The kinds only a topology with sinks is tested with: faults of the systems they write to."""

WEIGHTS: dict[str, int] = {
    "actor_crash": 4,
    "node_crash": 3,
    "torn_write": 2,
    "disk_full": 2,
    "slow_consumer": 2,
    "net_drop": 3,
    "net_delay": 2,
    "net_partition": 2,
    "redis_down": 2,
    "sink_down": 3,
    "sink_flaky": 3,
}
"""How often each kind is drawn, relative to the others (see docs/chaos.md)."""

NET_DELAY_MAX = 0.2
"""The longest a ``net_delay`` holds each chunk, in seconds."""

MAX_FAULTS = 4
"""The most faults one schedule injects (fewer than a run's rollbacks allow)."""

SEED_BITS = 48
"""Bits of a schedule's seed: 32 of its own, 16 naming the topology it was drawn for."""


@attrs.frozen
class Fault:
    """One fault of a plan."""

    at: float
    """When it strikes: seconds on the run's simulated clock."""
    kind: str
    """One of :data:`FAULT_KINDS`."""
    target: str
    """What it strikes: ``producer:NAME-INSTANCE``, ``processor:NAME``, ``checkpointer``,
    ``consumer:NAME-INSTANCE``, ``store``, ``process`` or ``redis``; with nodes,
    ``checkpointer:NODE``, ``store:NODE``, ``node:NODE``, and ``nodes:A|B`` for the network
    between two nodes; ``sink:KIND`` for the system a sink writes to."""
    lasts: float = 0.0
    """For faults that heal: how long they last (a full disk, a restart's delay)."""
    delay: float = 0.0
    """For ``net_delay``: seconds each chunk sent takes to arrive while it lasts."""


@attrs.frozen
class Targets:
    """What a topology offers to strike."""

    producers: tuple[str, ...]
    """``NAME-INSTANCE`` of every producer instance."""
    processors: tuple[str, ...]
    """The processor kinds its consumers use."""
    consumers: tuple[str, ...] = ()
    """``NAME-INSTANCE`` of every consumer instance."""
    nodes: tuple[str, ...] = ()
    """The nodes of a split topology; empty when it runs whole."""
    links: tuple[tuple[str, str], ...] = ()
    """Pairs of nodes that talk to each other (one uses a topic the other holds)."""
    session_timeout: float = 10.0
    """The gateways' ``session_timeout``: a longer partition costs a member its partitions."""
    connect_timeout: float = 30.0
    """The gateways' ``connect_timeout``: how long a node tries to reach another."""
    sinks: tuple[str, ...] = ()
    """The kinds of sink its consumers write to (``webhook``...)."""


def topology_tag(fingerprint: str) -> int:
    """The 16 bits of a schedule's seed that name the topology (and settings) it is for."""
    return int(hashlib.sha256(fingerprint.encode()).hexdigest()[:4], 16)


def schedule_seeds(seed: int, count: int, fingerprint: str) -> list[int]:
    """The seeds of ``count`` schedules drawn from ``seed`` for the run of ``fingerprint``."""
    rng = random.Random(f"chaos/{seed}")
    tag = topology_tag(fingerprint)
    return [(rng.getrandbits(SEED_BITS - 16) << 16) | tag for _ in range(count)]


def seed_fits(schedule_seed: int, fingerprint: str) -> bool:
    """Whether ``schedule_seed`` was drawn for the run of ``fingerprint``."""
    return 0 <= schedule_seed < 1 << SEED_BITS and schedule_seed & 0xFFFF == topology_tag(
        fingerprint
    )


def draw_plan(
    schedule_seed: int, kinds: Sequence[str], horizon: float, targets: Targets
) -> tuple[Fault, ...]:
    """Draw the faults of one schedule, in time order.

    Args:
        schedule_seed: The schedule's seed: the same seed always gives the same plan.
        kinds: The kinds to draw from (a subset of :data:`WHOLE_KINDS`, or of
            :data:`SPLIT_KINDS` when ``targets`` has nodes; :data:`SINK_KINDS` when it has
            sinks).
        horizon: Simulated seconds the fault-free run takes: faults strike within it.
        targets: What there is to strike.
    """
    rng = random.Random(f"plan/{schedule_seed}")
    nodes = targets.nodes
    weighted = [kind for kind in kinds for _ in range(WEIGHTS.get(kind, 1))]
    faults = []
    for _ in range(rng.randint(1, MAX_FAULTS)):
        kind = rng.choice(weighted)
        at = round(rng.uniform(0.0, horizon), 6)
        lasts = delay = 0.0
        if kind == "actor_crash":
            choices = [f"producer:{p}" for p in targets.producers]
            choices += [f"processor:{p}" for p in targets.processors]
            choices += [f"checkpointer:{n}" for n in nodes] if nodes else ["checkpointer"]
            target = rng.choice(choices)
        elif kind == "node_crash":
            target = f"node:{rng.choice(nodes)}" if nodes else "process"
            lasts = round(rng.uniform(0.0, horizon / 4), 6)
        elif kind == "torn_write":
            target = f"store:{rng.choice(nodes)}" if nodes else "store"
        elif kind == "slow_consumer":
            target = f"consumer:{rng.choice(targets.consumers)}"
            lasts = round(rng.uniform(horizon / 20, horizon / 2), 6)
        elif kind == "redis_down":
            target, lasts = "redis", round(rng.uniform(horizon / 20, horizon / 2), 6)
        elif kind in SINK_KINDS:
            target = f"sink:{rng.choice(targets.sinks)}"
            lasts = round(rng.uniform(horizon / 20, horizon / 2), 6)
        elif kind == "disk_full":
            target = f"store:{rng.choice(nodes)}" if nodes else "store"
            lasts = round(rng.uniform(horizon / 20, horizon / 2), 6)
        else:  # the network between two nodes
            target = "nodes:{}|{}".format(*rng.choice(targets.links))
            if kind == "net_delay":
                lasts = round(rng.uniform(horizon / 20, horizon / 2), 6)
                delay = round(rng.uniform(0.001, NET_DELAY_MAX), 6)
            elif kind == "net_partition":
                # Half of them short; half longer than a member's session lasts (it loses
                # its partitions), yet shorter than a node tries to reach another.
                short = rng.random() < 0.5
                low = 0.0 if short else targets.session_timeout
                high = horizon / 2 if short else targets.connect_timeout * 0.8
                lasts = round(rng.uniform(low, max(low, high)), 6)
        faults.append(Fault(at, kind, target, lasts, delay))
    return tuple(sorted(faults, key=lambda fault: (fault.at, fault.kind, fault.target)))
