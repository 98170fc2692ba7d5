"""The processors of :mod:`sim.processors`, one Python step per event.

These are the plain per-event loops a user would write by hand: the plain loop of
``ringflow bench`` runs them (the baseline ringflow's columnar processors are measured
against), and the tests check that the columnar processors give exactly their aggregates on
the same events. ``ugc_counters`` folds small tables with the one here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .aggregates import _VIDEO_SLOT, _VIEW, _WATCH, _WATCH_MS, video_result, windows_result


class ReferenceVideoStats:
    """Per video, one event at a time: views, likes, dislikes, comments, watches and seconds
    watched."""

    def __init__(self, _params: Any = None) -> None:
        self._videos: dict[int, list[int]] = {}

    def process(self, events: Sequence[Any]) -> None:
        """Count each event against its video."""
        videos, slot = self._videos, _VIDEO_SLOT
        for event in events:
            stats = videos.get(event.video_id)
            if stats is None:
                stats = videos[event.video_id] = [0, 0, 0, 0, 0, 0, event.blogger_id]
            stats[slot[event.kind]] += 1
            stats[_WATCH_MS] += event.watch_ms

    def result(self) -> dict[str, Any]:
        """Every video seen, by id, with its counts."""
        return video_result(sorted(self._videos.items()))

    def totals(self) -> dict[str, int]:
        """Events accounted for, per kind, summed over videos."""
        return {
            kind: sum(s[slot] for s in self._videos.values()) for kind, slot in _VIDEO_SLOT.items()
        }


class ReferenceBloggerAnalytics:
    """One event at a time, per blogger, tumbling windows in event time: views, likes, watch
    time, top videos.

    Windows are keyed by event time (``timestamp // window``), never by arrival, so a window's
    figures are the same however late its events arrive; the live view shows the windows being
    filled now.
    """

    def __init__(self, params: Any) -> None:
        self.params = params
        # (blogger, window index) ->
        #     [views, likes, dislikes, comments, watches, watch_ms, {video: views}]
        self._windows: dict[tuple[int, int], list[Any]] = {}
        self._latest = 0

    def process(self, events: Sequence[Any]) -> None:
        """Fold each event into its blogger's window."""
        windows, width, slot = self._windows, self.params.window, _VIDEO_SLOT
        latest = self._latest
        for event in events:
            index = int(event.timestamp // width)
            key = (event.blogger_id, index)
            state = windows.get(key)
            if state is None:
                state = windows[key] = [0, 0, 0, 0, 0, 0, {}]
            kind = slot[event.kind]
            state[kind] += 1
            if kind == _VIEW:
                views = state[6]
                views[event.video_id] = views.get(event.video_id, 0) + 1
            elif kind == _WATCH:
                state[_WATCH_MS] += event.watch_ms
            if index > latest:
                latest = index
        self._latest = latest

    def result(self) -> dict[str, Any]:
        """Every blogger seen: totals and every window in time order."""
        return windows_result(sorted(self._windows.items()), self.params.window, self.params.top)

    def totals(self) -> dict[str, int]:
        """Events accounted for, per kind, summed over bloggers and windows."""
        return {
            kind: sum(state[slot] for state in self._windows.values())
            for kind, slot in _VIDEO_SLOT.items()
        }


class ReferenceUgcCounters:
    """One event at a time: counts per event kind and per page; custom events per name; film
    completion."""

    def __init__(self, _params: Any = None) -> None:
        self._kinds: dict[str, int] = {}
        self._pages: dict[str, list[int]] = {}  # page -> [clicks, views, view_ms]
        self._custom: dict[str, int] = {}
        self._movies: dict[int, list[int]] = {}  # movie -> [updates, completed]

    def process(self, events: Sequence[Any]) -> None:
        """Count each event by its kind."""
        kinds, pages = self._kinds, self._pages
        for event in events:
            kind = event.kind
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == "click":
                pages.setdefault(event.page, [0, 0, 0])[0] += 1
            elif kind == "page_view":
                page = pages.setdefault(event.page, [0, 0, 0])
                page[1] += 1
                page[2] += event.duration_ms
            elif kind == "custom":
                self._custom[event.name] = self._custom.get(event.name, 0) + 1
            else:
                movie = self._movies.setdefault(event.movie_id, [0, 0])
                movie[0] += 1
                if event.position_s * 10 >= event.duration_s * 9:
                    movie[1] += 1

    def result(self) -> dict[str, Any]:
        """All counters, keys sorted."""
        return {
            "kinds": dict(sorted(self._kinds.items())),
            "pages": {
                page: {"clicks": c, "views": v, "view_seconds": ms / 1000}
                for page, (c, v, ms) in sorted(self._pages.items())
            },
            "custom": dict(sorted(self._custom.items())),
            "movies": {
                str(movie): {"progress_updates": u, "completed": done}
                for movie, (u, done) in sorted(self._movies.items())
            },
        }

    def totals(self) -> dict[str, int]:
        """Events accounted for, per kind (derived from the per-page and per-film counters)."""
        pages = self._pages.values()
        return {
            "click": sum(p[0] for p in pages),
            "page_view": sum(p[1] for p in pages),
            "custom": sum(self._custom.values()),
            "watch_progress": sum(m[0] for m in self._movies.values()),
        }
