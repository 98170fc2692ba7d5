"""Sinks under chaos: the other system a sink writes to, simulated, and the faults that
make it fail for a while (``sink_down``) or now and then (``sink_flaky``).

A schedule runs on a virtual clock, so a sink's real system (a webhook receiver, ClickHouse)
is replaced by a :class:`SimSystem` that outlives every process of the schedule, as the real
one would: it keeps each record it took once, by topic, partition and offset, as a receiver
deduplicating by record id does. The consumer's sink in the pipeline is a
:class:`ChaosSink`, which writes there through the same delivery engine as any sink.
"""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from actors import RecordBatch, Table, TransientError
from topology import ProcessorType, Registry, SinkContext, State, Topology

from .inject import FaultBox

FLAKY_FAILURES = 0.30
"""The share of attempts a ``sink_flaky`` system answers with an error it may recover from."""

FLAKY_TIMEOUTS = 0.05
"""The share of attempts it does not answer in time (the attempt's timeout fires)."""

ATTEMPT_TIMEOUT = 10.0
"""Seconds an attempt may take under chaos when its consumer's file sets no limit."""

SILENCE = 3600.0
"""Simulated seconds an attempt the system does not answer waits (its timeout ends it)."""


class ChaosSinkState(State, frozen=True, tag=1):
    """What a :class:`ChaosSink` keeps in an epoch: records delivered per kind."""

    kinds: dict[str, int]


@attrs.define(eq=False)
class SimSystem:
    """The other system of every sink of a schedule: what each took, by consumer."""

    taken: dict[str, dict[tuple[str, int, int], str]] = attrs.field(factory=dict)
    """By sink kind, the kind of each record it took, by (topic, partition, offset)."""
    again: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """By sink kind, records it was sent again after taking them (dropped as duplicates)."""
    rng: random.Random = attrs.field(factory=lambda: random.Random(0))
    """Draws which attempts a ``sink_flaky`` system fails (seeded by the schedule)."""

    def take(self, sink: str, batches: Sequence[RecordBatch]) -> None:
        """Keep every record of ``batches`` not kept already."""
        kept = self.taken.setdefault(sink, {})
        for batch in batches:
            values: Sequence[Any] = batch.values
            if isinstance(values, Table):
                values = values.rows()
            for index, value in enumerate(values):
                key = (batch.topic, int(batch.partition), int(batch.base_offset) + index)
                if key in kept:
                    self.again[sink] += 1
                else:
                    kept[key] = value.kind


@attrs.define(eq=False)
class ChaosSink:
    """A sink writing to :class:`SimSystem`, failing while a fault on ``sink:KIND`` holds."""

    name: str
    """The sink's kind (``webhook``...), as faults name it."""
    box: FaultBox
    system: SimSystem
    _kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)

    @property
    def linger(self) -> float:
        """Writes as soon as a batch is ready."""
        return 0.0

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        """Nothing to connect to."""
        yield

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        """Hand ``batches`` to the system, unless a fault makes this attempt fail."""
        target = f"sink:{self.name}"
        await trio.lowlevel.checkpoint()
        if self.box.lasting("sink_down", target):
            raise TransientError(f"{self.name}: injected outage (503)")
        if self.box.lasting("sink_flaky", target):
            draw = self.system.rng.random()
            if draw < FLAKY_TIMEOUTS:
                await trio.sleep(SILENCE)  # the attempt's timeout ends the wait
            elif draw < FLAKY_TIMEOUTS + FLAKY_FAILURES:
                raise TransientError(f"{self.name}: injected failure (500)")
        self.system.take(self.name, batches)
        for batch in batches:
            values: Sequence[Any] = batch.values
            if isinstance(values, Table):
                values = values.rows()
            self._kinds.update(value.kind for value in values)

    def process(self, events: Sequence[Any]) -> None:
        """Not used: a sink's consumer calls :meth:`write`."""
        raise TypeError("a sink is written, not folded")

    def result(self) -> dict[str, Any]:
        """Records delivered per kind."""
        return {"delivered": dict(sorted(self._kinds.items()))}

    def totals(self) -> dict[str, int]:
        """Records delivered per kind."""
        return dict(self._kinds)

    def snapshot(self) -> ChaosSinkState:
        """Records delivered per kind."""
        return ChaosSinkState(kinds=dict(self._kinds))

    def restore(self, state: ChaosSinkState) -> None:
        """Take back the counts of an epoch."""
        self._kinds = collections.Counter(state.kinds)

    def live(self) -> list[tuple[str, str]]:
        """Records delivered per kind so far."""
        return [(kind, f"{count:,}") for kind, count in sorted(self._kinds.items())]


def sink_kinds(topology: Topology, registry: Registry) -> dict[str, str]:
    """By consumer whose processor is a sink, the sink's kind."""
    return {
        name: topology.consumers[name].processor
        for name in sorted(registry.sink_consumers(topology))
    }


def with_chaos_sinks(
    registry: Registry, sinks: Iterable[str], box: FaultBox, system: SimSystem
) -> Registry:
    """``registry`` with the processor kinds ``sinks`` writing to ``system`` instead."""

    def simulated(kind: ProcessorType) -> ProcessorType:
        def make(params: Any) -> ChaosSink:
            return ChaosSink(kind.name, box, system)

        return attrs.evolve(kind, make=make, state_type=ChaosSinkState)

    chosen = set(sinks)
    return Registry(
        workloads=dict(registry.workloads),
        processors={
            name: simulated(kind) if name in chosen else kind
            for name, kind in registry.processors.items()
        },
    )


def retrying_for_ever(topology: Topology, sinks: Iterable[str]) -> Topology:
    """``topology`` with the consumers ``sinks`` retrying until their system is back (the
    faults chaos injects pass; a record given up on would be the policy's choice, not a
    loss), each attempt timed."""
    consumers = dict(topology.consumers)
    for name in sinks:
        spec = consumers[name]
        retry = attrs.evolve(
            spec.retry,
            max_attempts=None,
            max_elapsed=None,
            attempt_timeout=spec.retry.attempt_timeout or ATTEMPT_TIMEOUT,
        )
        consumers[name] = attrs.evolve(spec, retry=retry)
    return attrs.evolve(topology, consumers=consumers)


def recovery_time(topology: Topology, sinks: Iterable[str]) -> float:
    """The longest a sink's consumer may still wait once its system is back: a retry's
    longest wait, the breaker's cool-down and an attempt's timeout."""
    return max(
        (
            topology.consumers[name].retry.maximum
            + topology.consumers[name].breaker.cool_down
            + (topology.consumers[name].retry.attempt_timeout or ATTEMPT_TIMEOUT)
            for name in sinks
        ),
        default=0.0,
    )
