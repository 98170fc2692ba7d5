"""Processors: the aggregations a topology's consumers name.

Every aggregate is a sum of integers or a ranking with ties broken by key, so the result does
not depend on the order in which partitions are served: the same seed gives the same digest
whatever the number of partitions or consumer instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from topology import Checked, FieldError, ProcessorType, State

from .workloads import Click, CustomEvent, PageView, VideoEvent, WatchProgress


@attrs.frozen
class NoParams:
    """A processor without settings."""


def _same_lengths(state: State, *names: str) -> None:
    # Columns of one table: a row is the same index in each, so they must be as long.
    lengths = {name: len(getattr(state, name)) for name in names}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            "columns of different lengths: "
            + ", ".join(f"{name} {length}" for name, length in lengths.items())
        )


# -- video statistics ------------------------------------------------------------------------

_VIEW, _LIKE, _DISLIKE, _COMMENT, _WATCH, _WATCH_MS = range(6)
_VIDEO_SLOT = {
    "view": _VIEW,
    "like": _LIKE,
    "dislike": _DISLIKE,
    "comment": _COMMENT,
    "watch": _WATCH,
}


class VideoStatsState(State, frozen=True, tag=1):
    """The state of ``video_stats``: a table of videos, a column per field (row i of the
    table is index i of every column; columns keep it small and quick to encode)."""

    video: Sequence[int]
    blogger: Sequence[int]
    """The owner of each video."""
    views: Sequence[int]
    likes: Sequence[int]
    dislikes: Sequence[int]
    comments: Sequence[int]
    watches: Sequence[int]
    watch_ms: Sequence[int]
    """Milliseconds watched."""

    def __post_init__(self) -> None:
        _same_lengths(self, *self.__struct_fields__)


class VideoStats:
    """Per video: views, likes, dislikes, comments, watches and seconds watched."""

    def __init__(self, _params: NoParams) -> None:
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
        return {
            "videos": {
                str(video): {
                    "blogger": s[6],
                    "views": s[_VIEW],
                    "likes": s[_LIKE],
                    "dislikes": s[_DISLIKE],
                    "comments": s[_COMMENT],
                    "watches": s[_WATCH],
                    "watch_seconds": s[_WATCH_MS] / 1000,
                }
                for video, s in sorted(self._videos.items())
            }
        }

    def totals(self) -> dict[str, int]:
        """Events accounted for, per kind, summed over videos."""
        return {
            kind: sum(s[slot] for s in self._videos.values()) for kind, slot in _VIDEO_SLOT.items()
        }

    def snapshot(self) -> VideoStatsState:
        """The state: every video's counts."""
        videos = self._videos
        columns = list(zip(*videos.values(), strict=True)) or [()] * 7
        return VideoStatsState(
            video=list(videos),
            blogger=columns[6],
            views=columns[_VIEW],
            likes=columns[_LIKE],
            dislikes=columns[_DISLIKE],
            comments=columns[_COMMENT],
            watches=columns[_WATCH],
            watch_ms=columns[_WATCH_MS],
        )

    def restore(self, state: VideoStatsState) -> None:
        """Replace the state with a snapshot."""
        # In the order of _VIDEO_SLOT, then the owner.
        self._videos = {
            video: [views, likes, dislikes, comments, watches, watch_ms, blogger]
            for video, blogger, views, likes, dislikes, comments, watches, watch_ms in zip(
                state.video,
                state.blogger,
                state.views,
                state.likes,
                state.dislikes,
                state.comments,
                state.watches,
                state.watch_ms,
                strict=True,
            )
        }

    def live(self) -> list[tuple[str, str]]:
        """The most viewed videos so far, for the live view."""
        top = sorted(self._videos.items(), key=lambda item: (-item[1][_VIEW], item[0]))[:5]
        return [(f"video {video}", f"{s[_VIEW]:,} views") for video, s in top]


# -- blogger analytics -----------------------------------------------------------------------


MIN_WINDOW = 0.01
"""The shortest window of ``blogger_analytics``, in seconds of event time."""
MAX_TOP = 1000
"""The most videos listed per window."""


@attrs.frozen
class BloggerAnalyticsParams(Checked):
    """Settings of ``blogger_analytics``."""

    window: float = 60.0
    """Length of the tumbling windows, in seconds of event time."""
    top: int = 3
    """How many top videos each window lists."""

    def problems(self) -> list[FieldError]:
        """Every setting out of range, all at once."""
        errors = []
        if not self.window >= MIN_WINDOW:
            errors.append(
                FieldError(
                    "window",
                    f"must be >= {MIN_WINDOW:g} seconds, got {self.window}: every window is "
                    "kept until the run ends, so shorter ones would cost memory per event",
                )
                if self.window > 0
                else FieldError("window", f"must be > 0 seconds, got {self.window}")
            )
        if self.top < 1:
            errors.append(FieldError("top", f"must be >= 1, got {self.top}"))
        elif self.top > MAX_TOP:
            errors.append(FieldError("top", f"at most {MAX_TOP}, got {self.top:,}"))
        return errors


class BloggerAnalyticsState(State, frozen=True, tag=1):
    """The state of ``blogger_analytics``: a table of (blogger, window) pairs, a column per
    field (row i of the table is index i of every column), and the latest window."""

    latest: int
    """The latest window index seen."""
    blogger: Sequence[int]
    window: Sequence[int]
    """The window's index: it starts at ``window x params.window`` seconds of event time."""
    views: Sequence[int]
    likes: Sequence[int]
    dislikes: Sequence[int]
    comments: Sequence[int]
    watches: Sequence[int]
    watch_ms: Sequence[int]
    """Milliseconds watched."""
    video_views: Sequence[dict[int, int]]
    """Views per video."""

    def __post_init__(self) -> None:
        _same_lengths(self, *(name for name in self.__struct_fields__ if name != "latest"))


class BloggerAnalytics:
    """Per blogger, tumbling windows in event time: views, likes, watch time, top videos.

    Windows are keyed by event time (``timestamp // window``), never by arrival, so a window's
    figures are the same however late its events arrive; the live view shows the windows being
    filled now.
    """

    def __init__(self, params: BloggerAnalyticsParams) -> None:
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

    def _window_summary(self, index: int, state: list[Any]) -> dict[str, Any]:
        top = sorted(state[6].items(), key=lambda item: (-item[1], item[0]))[: self.params.top]
        return {
            "start": index * self.params.window,
            "views": state[_VIEW],
            "likes": state[_LIKE],
            "dislikes": state[_DISLIKE],
            "comments": state[_COMMENT],
            "watch_seconds": state[_WATCH_MS] / 1000,
            "top_videos": [[video, views] for video, views in top],
        }

    def result(self) -> dict[str, Any]:
        """Every blogger seen: totals and every window in time order."""
        bloggers: dict[str, Any] = {}
        for (blogger, index), state in sorted(self._windows.items()):
            entry = bloggers.setdefault(
                str(blogger),
                {
                    "totals": dict.fromkeys(
                        ("views", "likes", "dislikes", "comments", "watches", "watch_seconds"), 0
                    ),
                    "windows": [],
                },
            )
            totals = entry["totals"]
            for name, slot in (
                ("views", _VIEW),
                ("likes", _LIKE),
                ("dislikes", _DISLIKE),
                ("comments", _COMMENT),
                ("watches", _WATCH),
            ):
                totals[name] += state[slot]
            totals["watch_seconds"] = round(totals["watch_seconds"] + state[_WATCH_MS] / 1000, 3)
            entry["windows"].append(self._window_summary(index, state))
        return {"window_seconds": self.params.window, "bloggers": bloggers}

    def totals(self) -> dict[str, int]:
        """Events accounted for, per kind, summed over bloggers and windows."""
        return {
            kind: sum(state[slot] for state in self._windows.values())
            for kind, slot in _VIDEO_SLOT.items()
        }

    def snapshot(self) -> BloggerAnalyticsState:
        """The state: every window of every blogger."""
        windows = self._windows
        keys = list(zip(*windows, strict=True)) or [(), ()]
        columns = list(zip(*windows.values(), strict=True)) or [()] * 7
        return BloggerAnalyticsState(
            latest=self._latest,
            blogger=keys[0],
            window=keys[1],
            views=columns[_VIEW],
            likes=columns[_LIKE],
            dislikes=columns[_DISLIKE],
            comments=columns[_COMMENT],
            watches=columns[_WATCH],
            watch_ms=columns[_WATCH_MS],
            video_views=[views.copy() for views in columns[6]],
        )

    def restore(self, state: BloggerAnalyticsState) -> None:
        """Replace the state with a snapshot."""
        self._latest = state.latest
        # In the order of _VIDEO_SLOT, then the views per video.
        self._windows = {
            (blogger, index): [views, likes, dislikes, comments, watches, watch_ms, dict(videos)]
            for (
                blogger,
                index,
                views,
                likes,
                dislikes,
                comments,
                watches,
                watch_ms,
                videos,
            ) in zip(
                state.blogger,
                state.window,
                state.views,
                state.likes,
                state.dislikes,
                state.comments,
                state.watches,
                state.watch_ms,
                state.video_views,
                strict=True,
            )
        }

    def live(self) -> list[tuple[str, str]]:
        """Each blogger's current window: views and top video."""
        rows = []
        for (blogger, index), state in sorted(self._windows.items()):
            if index == self._latest:
                top = sorted(state[6].items(), key=lambda item: (-item[1], item[0]))[:1]
                best = f", top video {top[0][0]}" if top else ""
                rows.append(
                    (
                        f"blogger {blogger} @ {index * self.params.window:g}s",
                        f"{state[_VIEW]:,} views{best}",
                    )
                )
        return rows


# -- UGC counters ----------------------------------------------------------------------------


class UgcCountersState(State, frozen=True, tag=1):
    """The state of ``ugc_counters``: counts by name, and tables of pages and of films, a
    column per field (row i of a table is index i of each of its columns)."""

    kinds: dict[str, int]
    """Events per kind."""
    custom: dict[str, int]
    """Custom events per name."""
    page: Sequence[str]
    page_clicks: Sequence[int]
    page_views: Sequence[int]
    page_view_ms: Sequence[int]
    """Milliseconds spent on the page."""
    movie: Sequence[int]
    movie_updates: Sequence[int]
    """Progress updates of the film."""
    movie_completed: Sequence[int]
    """Updates that said 90% or more of the film was watched."""

    def __post_init__(self) -> None:
        _same_lengths(self, "page", "page_clicks", "page_views", "page_view_ms")
        _same_lengths(self, "movie", "movie_updates", "movie_completed")


class UgcCounters:
    """Counts per event kind and per page; custom events per name; film completion."""

    def __init__(self, _params: NoParams) -> None:
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

    def snapshot(self) -> UgcCountersState:
        """The state: all counters."""
        pages = list(zip(*self._pages.values(), strict=True)) or [()] * 3
        movies = list(zip(*self._movies.values(), strict=True)) or [()] * 2
        return UgcCountersState(
            kinds=dict(self._kinds),
            custom=dict(self._custom),
            page=list(self._pages),
            page_clicks=pages[0],
            page_views=pages[1],
            page_view_ms=pages[2],
            movie=list(self._movies),
            movie_updates=movies[0],
            movie_completed=movies[1],
        )

    def restore(self, state: UgcCountersState) -> None:
        """Replace the state with a snapshot."""
        self._kinds = dict(state.kinds)
        self._custom = dict(state.custom)
        self._pages = {
            page: [clicks, views, ms]
            for page, clicks, views, ms in zip(
                state.page, state.page_clicks, state.page_views, state.page_view_ms, strict=True
            )
        }
        self._movies = {
            movie: [updates, completed]
            for movie, updates, completed in zip(
                state.movie, state.movie_updates, state.movie_completed, strict=True
            )
        }

    def live(self) -> list[tuple[str, str]]:
        """Counts per kind so far."""
        return [(kind, f"{count:,}") for kind, count in sorted(self._kinds.items())]


PROCESSORS: dict[str, ProcessorType] = {
    "video_stats": ProcessorType(
        name="video_stats",
        description="per video: views, likes, dislikes, comments, watches, seconds watched",
        params=NoParams,
        make=VideoStats,
        accepts=(VideoEvent,),
        state_type=VideoStatsState,
    ),
    "blogger_analytics": ProcessorType(
        name="blogger_analytics",
        description="per blogger, tumbling event-time windows: views, likes, watch time, "
        "top videos",
        params=BloggerAnalyticsParams,
        make=BloggerAnalytics,
        accepts=(VideoEvent,),
        state_type=BloggerAnalyticsState,
    ),
    "ugc_counters": ProcessorType(
        name="ugc_counters",
        description="counts per UGC event kind, per page, per custom event and per film",
        params=NoParams,
        make=UgcCounters,
        accepts=(Click, PageView, CustomEvent, WatchProgress),
        state_type=UgcCountersState,
    ),
}
"""Processors by name."""
