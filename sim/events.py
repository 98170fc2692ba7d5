"""The event types clients may send over HTTP, by kind: the UGC events (seed 002's click,
page_view, custom and watch_progress) and the playback events of the event statistics
service (seed 001)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from topology import kind_of

from .workloads import WORKLOADS, Count, EventTime

PlaybackAction = Literal["start", "pause", "resume", "seek", "progress", "stop"]
"""What a player reports: playback started, paused, resumed, sought, a periodic progress
report, or stopped."""

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Playback(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="playback"):
    """One report of a video player: what a user did with a film, and where in it."""

    kind: ClassVar[str] = "playback"
    user_id: Count
    movie_id: Count
    action: PlaybackAction
    position_s: Count
    """Seconds into the film."""
    device: Name
    """The player's device (``web``, ``android``, ``tv``...)."""
    timestamp: EventTime
    """When the API received it, in Unix seconds."""
    source: Count
    seq: Count


def _all_events() -> dict[str, type]:
    found: dict[str, type] = {}
    for workload in WORKLOADS.values():
        for types in workload.event_types.values():
            for event_type in types:
                found[kind_of(event_type)] = event_type
    found[kind_of(Playback)] = Playback
    return dict(sorted(found.items()))


EVENTS: dict[str, type] = _all_events()
"""Event types by kind (their msgspec tag): what ``http.routes`` may name."""
