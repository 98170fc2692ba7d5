"""Segments of a run: each process that worked on it, fresh or resumed from an epoch."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs


@attrs.frozen
class Segment:
    """One process's share of a run: from its start, fresh or resumed from an epoch, to an
    epoch it wrote (or, in a report, to its end)."""

    number: int
    """1 for the process that started the run, 2 for the first that resumed it, and so on."""
    resumed_from_epoch: int | None
    """The epoch this segment started from; None for the first."""
    started_at: float
    """Wall-clock time (Unix seconds) the segment started."""
    wall_seconds: float
    """Real time from the segment's start to its epoch (or its end)."""
    events_from: int
    """Events produced when the segment started."""
    events_to: int
    """Events produced at its epoch (or its end)."""
    sim_from: float
    """The run's simulated time when the segment started."""
    sim_to: float
    """The run's simulated time at its epoch (or its end)."""

    @property
    def events(self) -> int:
        """Events produced during the segment."""
        return self.events_to - self.events_from

    @property
    def events_per_second(self) -> float | None:
        """Events produced during the segment per real second; None if it took no time."""
        return self.events / self.wall_seconds if self.wall_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The segment as plain data (the database and the report store it so)."""
        return {
            "segment": self.number,
            "resumed_from_epoch": self.resumed_from_epoch,
            "started_at": self.started_at,
            "wall_seconds": self.wall_seconds,
            "events_from": self.events_from,
            "events_to": self.events_to,
            "sim_from": self.sim_from,
            "sim_to": self.sim_to,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        """The segment that :meth:`to_dict` gave."""
        return cls(
            number=int(data["segment"]),
            resumed_from_epoch=data["resumed_from_epoch"],
            started_at=float(data["started_at"]),
            wall_seconds=float(data["wall_seconds"]),
            events_from=int(data["events_from"]),
            events_to=int(data["events_to"]),
            sim_from=float(data["sim_from"]),
            sim_to=float(data["sim_to"]),
        )


@attrs.define(eq=False)
class SegmentLog:
    """The segments of a run as this process sees it: those before it, and its own, which
    grows from the process's start to each epoch it writes."""

    earlier: tuple[Segment, ...] = ()
    """The segments of the processes before this one."""
    current: Segment | None = None
    """This process's segment, as it began; None until it begins."""
    started: float = 0.0
    """``time.perf_counter()`` when it began."""

    @classmethod
    def fresh(cls) -> SegmentLog:
        """The first segment of a run, beginning now."""
        return cls.after((), None, 0, 0.0)

    @classmethod
    def after(
        cls, earlier: tuple[Segment, ...], epoch: int | None, events: int, sim_time: float
    ) -> SegmentLog:
        """A segment beginning now, resumed from ``epoch`` (with ``events`` produced at
        ``sim_time``), after the segments ``earlier`` that led to it."""
        current = Segment(
            number=len(earlier) + 1,
            resumed_from_epoch=epoch,
            started_at=time.time(),
            wall_seconds=0.0,
            events_from=events,
            events_to=events,
            sim_from=sim_time,
            sim_to=sim_time,
        )
        return cls(earlier, current, time.perf_counter())

    def up_to(self, events: int, sim_time: float) -> tuple[Segment, ...]:
        """Every segment, this one ending now with ``events`` produced at ``sim_time``."""
        if self.current is None:
            return self.earlier
        current = attrs.evolve(
            self.current,
            wall_seconds=time.perf_counter() - self.started,
            events_to=events,
            sim_to=sim_time,
        )
        return (*self.earlier, current)


def encode_segments(segments: Sequence[Segment]) -> str:
    """Segments as the compact JSON text an epoch stores."""
    return json.dumps([s.to_dict() for s in segments], sort_keys=True, separators=(",", ":"))


def decode_segments(text: str) -> tuple[Segment, ...]:
    """The segments :func:`encode_segments` gave; none for text that is not theirs (damage
    shows in the epoch's checksum; listing epochs must not fail on it)."""
    try:
        return tuple(Segment.from_dict(s) for s in json.loads(text))
    except (ValueError, TypeError, KeyError):
        return ()
