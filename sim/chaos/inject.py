"""Injecting a plan's faults into the real actors: wrapped processors and workloads, and a
checkpoint store that fails when told to.

The wrappers consult one :class:`FaultBox` that outlives every rebuild of the pipeline (a
rollback or a restarted process builds new processors and workloads through the same
registry, so they are wrapped again). Each fault fires once, at the first chance on or after
its time, and is written into the box's trace as it fires.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from topology import CheckpointStore, Pipeline, Registry, Snapshot
from topology import Event as EventType

from .faults import Fault

SLOW_RECORD_SECONDS = 0.0002
"""Simulated seconds a slowed consumer member takes over each record: 5,000 records a second,
a fraction of what the examples' producers make (the video site's 50,000 a second over two
members, the UGC site's 1,000 over one topic each)."""


class InjectedFault(RuntimeError):
    """The exception an injected ``actor_crash`` raises inside an actor."""


@attrs.frozen
class Fired:
    """A fault as it struck: when, on the run's simulated clock, and which fault."""

    at: float
    fault: Fault

    def describe(self) -> str:
        """The line of the trace."""
        lasting = f" for {self.fault.lasts:.3f} s" if self.fault.lasts else ""
        return f"t={self.at:.3f} s  {self.fault.kind:<12} {self.fault.target}{lasting}"


@attrs.define(eq=False)
class FaultBox:
    """The faults of one schedule still to strike, and the trace of those that struck."""

    pending: list[Fault]
    trace: list[Fired] = attrs.field(factory=list)
    _until: dict[tuple[str, str], float] = attrs.field(factory=dict)
    """When each fault that lasts, by (kind, target), is over."""

    def due(self, kind: str, target: str) -> Fault | None:
        """Take the first pending fault of ``kind`` on ``target`` whose time has come."""
        now = trio.current_time()
        for fault in self.pending:
            if fault.kind == kind and fault.target == target and fault.at <= now:
                self.pending.remove(fault)
                self.trace.append(Fired(round(now, 6), fault))
                return fault
        return None

    def attach(self, pipeline: Pipeline) -> None:
        """Strike ``pipeline``'s consumer members (every pipeline a run runs is given)."""
        pipeline.pace = self.pace

    def next_of(self, kind: str) -> Fault | None:
        """The earliest pending fault of ``kind``, without taking it."""
        return min(
            (fault for fault in self.pending if fault.kind == kind),
            key=lambda fault: fault.at,
            default=None,
        )

    def fire(self, fault: Fault) -> None:
        """Take ``fault`` (struck from outside the actors: a process crash)."""
        self.pending.remove(fault)
        self.trace.append(Fired(round(trio.current_time(), 6), fault))

    def lasting(self, kind: str, target: str) -> bool:
        """Whether a fault of ``kind`` on ``target`` that lasts (a full disk, a slow member)
        holds now; the first call on or after its moment starts it."""
        fault = self.due(kind, target)
        if fault is not None:
            self._until[kind, target] = fault.at + fault.lasts
        return trio.current_time() < self._until.get((kind, target), -math.inf)

    def until(self, kind: str, target: str) -> float:
        """When the fault of ``kind`` on ``target`` that holds now (see :meth:`lasting`)
        ends."""
        return self._until.get((kind, target), -math.inf)

    async def pace(self, member: str, records: int) -> None:
        """After each batch of ``member``: while a ``slow_consumer`` fault on it lasts, take
        :data:`SLOW_RECORD_SECONDS` of simulated time over each of its ``records``."""
        if self.lasting("slow_consumer", f"consumer:{member}"):
            await trio.sleep(records * SLOW_RECORD_SECONDS)


@attrs.define(eq=False)
class FaultyProcessor:
    """A processor that crashes when its fault is due, and otherwise is the real one."""

    inner: Any
    name: str
    box: FaultBox

    def process(self, events: Sequence[EventType]) -> None:
        """Process, unless an ``actor_crash`` is due on this processor."""
        if self.box.due("actor_crash", f"processor:{self.name}") is not None:
            raise InjectedFault(f"injected crash of processor {self.name}")
        self.inner.process(events)

    def process_columns(self, table: Any) -> None:
        """Process a table, unless an ``actor_crash`` is due on this processor."""
        if self.box.due("actor_crash", f"processor:{self.name}") is not None:
            raise InjectedFault(f"injected crash of processor {self.name}")
        columns = getattr(self.inner, "process_columns", None)
        if columns is None:
            self.inner.process(table)
        else:
            columns(table)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@attrs.define(eq=False)
class FaultyWorkload:
    """A workload whose producer instance crashes when its fault is due."""

    inner: Any
    name: str
    box: FaultBox

    def generate(self, count: int, start: float, interval: float) -> Any:
        """Generate, unless an ``actor_crash`` is due on this producer instance."""
        if self.box.due("actor_crash", f"producer:{self.name}") is not None:
            raise InjectedFault(f"injected crash of producer {self.name}")
        return self.inner.generate(count, start, interval)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def faulty_registry(registry: Registry, box: FaultBox) -> Registry:
    """``registry`` with every processor and workload wrapped to strike ``box``'s faults."""

    def processor_type(kind: Any) -> Any:
        def make(params: Any) -> Any:
            return FaultyProcessor(kind.make(params), kind.name, box)

        return attrs.evolve(kind, make=make)

    def workload_type(kind: Any) -> Any:
        def make(params: Any, seed: int, producer: str, instance: int, source: int) -> Any:
            inner = kind.make(params, seed, producer, instance, source)
            return FaultyWorkload(inner, f"{producer}-{instance}", box)

        return attrs.evolve(kind, make=make)

    return Registry(
        workloads={name: workload_type(kind) for name, kind in registry.workloads.items()},
        processors={name: processor_type(kind) for name, kind in registry.processors.items()},
    )


class FaultyStore(CheckpointStore):
    """A checkpoint store that fails as the plan says: a crash of the checkpoint actor as it
    writes, a write torn inside its transaction, or a full disk for a while."""

    box: FaultBox | None = None
    node: str | None = None
    """The node whose store this is (its faults name it); None when the topology runs whole."""

    def _target(self, what: str) -> str:
        return what if self.node is None else f"{what}:{self.node}"

    def write(self, snapshot: Snapshot, *, segments: Any = None) -> Any:
        """Write, unless the checkpoint actor is to crash as it does."""
        if self.box is not None and self.box.due("actor_crash", self._target("checkpointer")):
            raise InjectedFault("injected crash of the checkpoint actor")
        return super().write(snapshot, segments=segments)

    def _before_commit(self, db: sqlite3.Connection, epoch: int) -> None:
        # Inside the transaction, as SQLite fails: the write is rolled back whole.
        if self.box is None:
            return
        if self.box.lasting("disk_full", self._target("store")):
            raise sqlite3.OperationalError("database or disk is full")
        if self.box.due("torn_write", self._target("store")) is not None:
            raise sqlite3.OperationalError("injected: the write was torn before its commit")
