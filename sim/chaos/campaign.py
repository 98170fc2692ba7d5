"""A chaos campaign: many schedules of one topology, each drawn from its own seed and checked.

The fault-free run comes first: its digest is what every schedule must reproduce, and its
length in simulated time is the horizon faults are drawn within.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

import attrs

from topology import topics_of

from .checks import check, liveness_bound
from .faults import Fault, Targets, draw_plan, schedule_seeds
from .harness import Chaos, Outcome, Violation
from .network import pair_of
from .sinks import sink_kinds

PACING_ROUNDS = 2
"""Fault-free runs after the first, each paced by the length of the one before."""

REFERENCE_DEADLINE = 3600.0
"""Simulated seconds the fault-free run may take before it counts as stuck."""


@attrs.frozen
class Schedule:
    """One schedule, run and checked."""

    outcome: Outcome
    plan: tuple[Fault, ...]


@attrs.frozen
class Campaign:
    """What a chaos campaign found."""

    reference: Outcome
    """The fault-free run."""
    schedules: tuple[Schedule, ...]
    """Every schedule run, in order."""
    wall_seconds: float

    @property
    def violations(self) -> list[Violation]:
        """Every violation, schedule by schedule."""
        return [v for schedule in self.schedules for v in schedule.outcome.violations]

    @property
    def faults(self) -> dict[str, int]:
        """Faults that struck, by kind."""
        counts = Counter(
            fired.fault.kind for schedule in self.schedules for fired in schedule.outcome.trace
        )
        return dict(sorted(counts.items()))

    @property
    def sim_seconds(self) -> float:
        """Simulated seconds over every schedule."""
        return sum(schedule.outcome.sim_seconds for schedule in self.schedules)


def targets_of(chaos: Chaos) -> Targets:
    """The producer instances and processors of ``chaos``'s topology."""
    topology = chaos.topology
    producers = tuple(
        f"{name}-{instance}"
        for name, spec in topology.producers.items()
        for instance in range(spec.instances)
    )
    processors = tuple(sorted({spec.processor for spec in topology.consumers.values()}))
    consumers = tuple(
        f"{name}-{instance}"
        for name, spec in topology.consumers.items()
        for instance in range(spec.instances)
    )
    links = set()
    for node, spec in topology.nodes.items():
        used = [t for producer in spec.producers for t in topics_of(topology, producer)]
        for consumer in spec.consumers:
            read = topology.consumers[consumer]
            used += [read.topic] if read.topic else read.topics
            used += [read.output] if read.output else []
        for topic in used:
            holder = topology.node_of("topics", topic)
            if holder != node:
                links.add(pair_of(node, holder))
    return Targets(
        producers,
        processors,
        consumers,
        sinks=tuple(sorted(set(sink_kinds(topology, chaos.registry).values()))),
        nodes=tuple(topology.nodes),
        links=tuple(sorted(links)),
        session_timeout=topology.gateway.session_timeout,
        connect_timeout=topology.gateway.connect_timeout,
    )


def run_schedule(chaos: Chaos, seed: int, kinds: Sequence[str], reference: Outcome) -> Schedule:
    """Draw the plan of ``seed``, run it and check it."""
    plan = draw_plan(seed, kinds, reference.sim_seconds, targets_of(chaos))
    bound = liveness_bound(reference, plan, chaos.slack)
    outcome, reports = chaos.run(seed, plan, bound + chaos.slack)
    violations = check(outcome, reports, reference, plan, chaos.slack)
    return Schedule(attrs.evolve(outcome, violations=violations), plan)


def run_campaign(
    chaos: Chaos,
    *,
    seed: int,
    schedules: int,
    kinds: Sequence[str],
    keep_going: bool = False,
    replay: int | None = None,
    on_schedule: Callable[[Schedule], None] | None = None,
    check: Callable[[], None] = lambda: None,
) -> Campaign:
    """Run the fault-free reference, then ``schedules`` schedules drawn from ``seed`` (or the
    one schedule ``replay``), stopping at the first violation unless ``keep_going``;
    ``check`` is called after each run of the reference (it may raise to stop)."""
    started = time.perf_counter()
    reference, _ = chaos.run(0, (), REFERENCE_DEADLINE)
    check()
    # Paced, the run may be shorter (nodes show each other only what an epoch holds): the
    # horizon is the length of the fault-free run paced as the schedules are.
    for _ in range(PACING_ROUNDS):
        paced = chaos.paced(reference.sim_seconds)
        reference, _ = paced.run(0, (), REFERENCE_DEADLINE)
        check()
    chaos = paced
    seeds = [replay] if replay is not None else schedule_seeds(seed, schedules, chaos.fingerprint)
    done = []
    for schedule_seed in seeds:
        schedule = run_schedule(chaos, schedule_seed, kinds, reference)
        done.append(schedule)
        if on_schedule is not None:
            on_schedule(schedule)
        if schedule.outcome.violations and not keep_going:
            break
    return Campaign(reference, tuple(done), time.perf_counter() - started)
