"""Checking a chaos schedule: its outcome against the invariants and the fault-free run."""

from __future__ import annotations

from ..report import Report
from .faults import Fault
from .harness import LIVENESS_SLACK, WHOLE, Outcome, Violation


def liveness_bound(reference: Outcome, plan: tuple[Fault, ...], slack: float) -> float:
    """When a schedule with ``plan`` must have ended, on its simulated clock: ``slack``
    seconds (see :attr:`Chaos.slack`) after the fault-free run's length has passed again
    since the last fault healed."""
    healed = max((f.at + f.lasts for f in plan), default=0.0)
    return healed + reference.sim_seconds + slack


def check(
    outcome: Outcome,
    reports: dict[str, Report],
    reference: Outcome,
    plan: tuple[Fault, ...],
    slack: float = LIVENESS_SLACK,
) -> tuple[Violation, ...]:
    """Check a schedule's run against the invariants; return what it broke."""
    seed = outcome.seed
    found = []
    bound = liveness_bound(reference, plan, slack)
    for node in reference.digests:
        report = reports.get(node)
        who = "the run" if node == WHOLE else f"node {node}"
        if report is None:
            error = outcome.errors.get(node)
            message = (
                f"{who} had not finished by t={bound:.3f} s"
                if error is None
                else f"{who} stopped with an error: {error}"
            )
            found.append(Violation(seed, "liveness", message))
            continue
        if report.status != "completed":
            found.append(Violation(seed, "liveness", f"{who} {report.status}: {report.error}"))
            continue
        if outcome.digests.get(node) != reference.digests[node]:
            found.append(
                Violation(
                    seed,
                    "digest",
                    f"{'' if node == WHOLE else f'node {node}: '}aggregates digest "
                    f"{outcome.digests.get(node)} differs from the fault-free run's "
                    f"{reference.digests[node]}",
                )
            )
        for name, result in report.expect.items():
            if not result.ok:
                prefix = "" if node == WHOLE else f"node {node}: "
                found.append(Violation(seed, name, prefix + result.detail))
    if len(reports) == len(reference.digests) and outcome.sim_seconds > bound:
        healed = max((f.at + f.lasts for f in plan), default=0.0)
        found.append(
            Violation(
                seed,
                "liveness",
                f"the run ended at t={outcome.sim_seconds:.3f} s, later than "
                f"{bound:.3f} s (the last fault healed at {healed:.3f} s)",
            )
        )
    for report in reports.values():
        for partition in report.partitions:
            if partition.capacity is not None and partition.peak_depth > partition.capacity:
                found.append(
                    Violation(
                        seed,
                        "ring_depth",
                        f"{partition.topic}[{partition.partition}] held "
                        f"{partition.peak_depth:,} records, more than its capacity "
                        f"{partition.capacity:,}",
                    )
                )
    for logged in outcome.logs:
        who = "the process" if logged.node == WHOLE else f"node {logged.node}"
        if logged.stored != logged.counted:
            found.append(
                Violation(
                    seed,
                    "logging",
                    f"{who}'s Redis log holds {logged.stored} entries by category, but its "
                    f"counters say {logged.counted}",
                )
            )
        if logged.unlogged:
            found.append(
                Violation(
                    seed,
                    "logging",
                    f"{who} ended with {logged.unlogged:,} log entries unwritten after Redis "
                    "was back",
                )
            )
    for sink, count in reference.delivered.items():
        got = outcome.delivered.get(sink, 0)
        if len(reports) == len(reference.digests) and got != count:
            found.append(
                Violation(
                    seed,
                    "delivery",
                    f"the {sink} sink's system took {got:,} records, the fault-free run's "
                    f"{count:,}",
                )
            )
    for memory in outcome.memory:
        if memory.bound is not None and memory.peak > memory.bound:
            found.append(
                Violation(
                    seed,
                    "memory",
                    f"{'the process' if memory.node == WHOLE else f'node {memory.node}'} held "
                    f"{memory.peak:,} records at once, more than its topics' capacities "
                    f"allow ({memory.bound:,})",
                )
            )
    return tuple(found)
