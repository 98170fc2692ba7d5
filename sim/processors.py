"""Processors: the aggregations a topology's consumers name.

Every aggregate is a sum of integers or a ranking with ties broken by key, so the result does
not depend on the order in which partitions are served: the same seed gives the same digest
whatever the number of partitions or consumer instances.

Each folds a table of events (``process_columns``) with a few numpy calls: counts kept in
arrays indexed by id are added to with ``np.add.at``, grouped sums come from ``np.unique`` and
``np.bincount``. ``process(events)`` takes a list of events the same way. Their aggregates are
exactly those of the per-event loops of :mod:`sim.reference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import attrs
import msgspec
import numpy as np
import numpy.typing as npt

from actors import Table
from topology import Checked, FieldError, ProcessorType, State

from .reference import ReferenceUgcCounters
from .workloads import Click, CustomEvent, PageView, VideoEvent, WatchProgress

Array = npt.NDArray[Any]

DENSE_IDS = 1 << 21
"""Ids below this are counted in arrays indexed by id; larger ones (only from events sent by
clients outside the topology) one event at a time."""
SMALL_TABLE = 24
"""Tables shorter than this are folded event by event: below it, numpy's cost per call
outweighs what it saves per event."""


def _grown(array: Array, size: int) -> Array:
    # ``array`` with at least ``size`` rows (doubling), new rows zero.
    if size <= len(array):
        return array
    grown = np.zeros((max(size, 2 * len(array), 64), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _first_rows(ids: Array, rows: Array) -> tuple[Array, Array]:
    """The distinct ``ids`` and the first row of each (a column's first value per id)."""
    distinct, first = np.unique(ids, return_index=True)
    return distinct, rows[first]


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
    """Per video: views, likes, dislikes, comments, watches and seconds watched.

    Counts are kept in arrays indexed by video id: a row per id up to the largest seen.
    """

    def __init__(self, _params: NoParams) -> None:
        self._counts = np.zeros((0, 6), dtype=np.int64)
        """Per video id: views, likes, dislikes, comments, watches, milliseconds watched."""
        self._blogger = np.zeros(0, dtype=np.int64)
        self._seen = np.zeros(0, dtype=bool)
        self._far: dict[int, list[int]] = {}
        """Videos of ids from :data:`DENSE_IDS` on: counts as above, then the blogger."""

    def process(self, events: Sequence[Any]) -> None:
        """Count each event against its video."""
        self.process_columns(Table.from_events(VideoEvent, events))

    def process_columns(self, table: Table) -> None:
        """Count a table of events against their videos."""
        video = table.columns["video_id"]
        if not len(video):
            return
        kind, watch = table.columns["kind"], table.columns["watch_ms"]
        blogger = table.columns["blogger_id"]
        high = int(video.max())
        if high >= DENSE_IDS:
            far = video >= DENSE_IDS
            self._count_far(table.take(np.flatnonzero(far)))
            near = np.flatnonzero(~far)
            video, kind, watch, blogger = video[near], kind[near], watch[near], blogger[near]
            if not len(video):
                return
            high = int(video.max())
        if high >= len(self._seen):
            self._counts = _grown(self._counts, high + 1)
            self._blogger = _grown(self._blogger, high + 1)
            self._seen = _grown(self._seen, high + 1)
        np.add.at(self._counts, (video, kind), 1)
        np.add.at(self._counts[:, _WATCH_MS], video, watch)
        fresh = ~self._seen[video]
        if fresh.any():  # a video's blogger is that of its first event
            ids, owners = _first_rows(video[fresh], blogger[fresh])
            self._blogger[ids] = owners
            self._seen[ids] = True

    def _count_far(self, table: Table) -> None:
        for event in table:
            stats = self._far.get(event.video_id)
            if stats is None:
                stats = self._far[event.video_id] = [0, 0, 0, 0, 0, 0, event.blogger_id]
            stats[_VIDEO_SLOT[event.kind]] += 1
            stats[_WATCH_MS] += event.watch_ms

    def _rows(self) -> list[tuple[int, list[int]]]:
        # Every video seen, by id: its counts, then its blogger.
        ids = np.flatnonzero(self._seen)
        counts = self._counts[ids].tolist()
        owners = self._blogger[ids].tolist()
        rows = [(v, [*c, b]) for v, c, b in zip(ids.tolist(), counts, owners, strict=True)]
        return rows + sorted(self._far.items())

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
                for video, s in self._rows()
            }
        }

    def totals(self) -> dict[str, int]:
        """Events accounted for, per kind, summed over videos."""
        sums = self._counts.sum(axis=0).tolist()
        return {
            kind: sums[slot] + sum(s[slot] for s in self._far.values())
            for kind, slot in _VIDEO_SLOT.items()
        }

    def snapshot(self) -> VideoStatsState:
        """The state: every video's counts."""
        rows = self._rows()
        columns = list(zip(*(stats for _, stats in rows), strict=True)) or [()] * 7
        return VideoStatsState(
            video=[video for video, _ in rows],
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
        self.__init__(NoParams())  # type: ignore[misc]
        video = np.array(state.video, dtype=np.int64)
        counts = (
            np.array(
                [
                    state.views,
                    state.likes,
                    state.dislikes,
                    state.comments,
                    state.watches,
                    state.watch_ms,
                ],
                dtype=np.int64,
            )
            .reshape(6, -1)
            .T
        )
        blogger = np.array(state.blogger, dtype=np.int64)
        near = video < DENSE_IDS
        size = int(video[near].max()) + 1 if near.any() else 0
        self._counts = np.zeros((size, 6), dtype=np.int64)
        self._blogger = np.zeros(size, dtype=np.int64)
        self._seen = np.zeros(size, dtype=bool)
        self._counts[video[near]] = counts[near]
        self._blogger[video[near]] = blogger[near]
        self._seen[video[near]] = True
        for i in np.flatnonzero(~near).tolist():
            self._far[int(video[i])] = [*counts[i].tolist(), int(blogger[i])]

    def live(self) -> list[tuple[str, str]]:
        """The most viewed videos so far, for the live view."""
        top = sorted(self._rows(), key=lambda item: (-item[1][_VIEW], item[0]))[:5]
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


class BloggerAnalyticsState(State, frozen=True, tag=2):
    """The state of ``blogger_analytics``: a table of (blogger, window) pairs, a column per
    field (row i of the table is index i of every column), the latest window, and a table of
    views per (row, video)."""

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
    view_row: Sequence[Annotated[int, msgspec.Meta(ge=0)]]
    """The row (of the table above) of each (row, video) pair with views."""
    view_video: Sequence[int]
    view_count: Sequence[int]
    """Views of that video in that row's window."""

    def __post_init__(self) -> None:
        _same_lengths(
            self,
            "blogger",
            "window",
            "views",
            "likes",
            "dislikes",
            "comments",
            "watches",
            "watch_ms",
        )
        _same_lengths(self, "view_row", "view_video", "view_count")
        if self.view_row and max(self.view_row) >= len(self.blogger):
            raise ValueError("views of a row the table does not have")


PENDING_VIEWS = 1 << 20
"""Views noted before they are merged into the counts per (row, video)."""


class BloggerAnalytics:
    """Per blogger, tumbling windows in event time: views, likes, watch time, top videos.

    Windows are keyed by event time (``timestamp // window``), never by arrival, so a window's
    figures are the same however late its events arrive; the live view shows the windows being
    filled now. Each (blogger, window) pair is a row of an array of counts. Views per video
    are noted as (row, video) numbers and merged into sorted arrays now and then, so a batch
    costs a few numpy calls whatever the number of videos.
    """

    def __init__(self, params: BloggerAnalyticsParams) -> None:
        self.params = params
        self._row_of: dict[tuple[int, int], int] = {}
        """(blogger, window index) -> its row."""
        self._keys: list[tuple[int, int]] = []
        self._counts = np.zeros((0, 6), dtype=np.int64)
        """Per row: views, likes, dislikes, comments, watches, milliseconds watched."""
        self._pairs = np.zeros(0, dtype=np.int64)
        """(row << 32) | video of every pair with views, sorted; its views in ``_views``."""
        self._views = np.zeros(0, dtype=np.int64)
        self._pending: list[Array] = []
        self._pending_size = 0
        self._far: dict[tuple[int, int], int] = {}
        """Views of videos whose ids do not fit in 32 bits, per (row, video)."""
        self._latest = 0

    def process(self, events: Sequence[Any]) -> None:
        """Fold each event into its blogger's window."""
        self.process_columns(Table.from_events(VideoEvent, events))

    def _row(self, pair: tuple[int, int]) -> int:
        row = self._row_of.get(pair)
        if row is None:
            row = self._row_of[pair] = len(self._keys)
            self._keys.append(pair)
        return row

    def _groups(self, blogger: Array, index: Array) -> tuple[Array, Array]:
        """The rows of the (blogger, window) pairs present, and each event's group: its
        pair's position among them."""
        low, high, most = int(index.min()), int(index.max()), int(blogger.max())
        span = (high - low + 1) * (most + 1)
        if low >= 0 and span <= 1 << 16:
            # Few windows and bloggers (the usual case): group by a small dense code.
            code = (index - low) * (most + 1) + blogger
            present = np.flatnonzero(np.bincount(code, minlength=span))
            position = np.empty(span, dtype=np.int64)
            position[present] = np.arange(len(present))
            group = position[code]
            windows, bloggers = np.divmod(present, most + 1)
            pairs = zip(bloggers.tolist(), (windows + low).tolist(), strict=True)
        else:
            stacked = np.stack([blogger, index], axis=1)
            unique, group = np.unique(stacked, axis=0, return_inverse=True)
            group = group.reshape(-1)
            pairs = zip(unique[:, 0].tolist(), unique[:, 1].tolist(), strict=True)
        rows = np.array([self._row(pair) for pair in pairs], dtype=np.int64)
        self._counts = _grown(self._counts, len(self._keys))
        return rows, group

    def process_columns(self, table: Table) -> None:
        """Fold a table of events into their bloggers' windows."""
        if not len(table):
            return
        columns = table.columns
        index = np.floor_divide(columns["timestamp"], self.params.window).astype(np.int64)
        kind = columns["kind"]
        rows, group = self._groups(columns["blogger_id"], index)
        size = len(rows)
        counts = np.bincount(group * 5 + kind, minlength=size * 5).reshape(size, 5)
        watched = kind == _WATCH
        spent = np.zeros(size, dtype=np.int64)
        np.add.at(spent, group[watched], columns["watch_ms"][watched])
        self._counts[rows, :5] += counts
        self._counts[rows, _WATCH_MS] += spent
        viewed = kind == _VIEW
        if viewed.any():
            self._note_views(rows[group[viewed]], columns["video_id"][viewed])
        self._latest = max(self._latest, int(index.max()))

    def _note_views(self, row: Array, video: Array) -> None:
        if int(video.max()) >= 1 << 32 or len(self._keys) >= 1 << 31:
            far = self._far
            for r, v in zip(row.tolist(), video.tolist(), strict=True):
                far[r, v] = far.get((r, v), 0) + 1
            return
        self._pending.append((row << 32) | video)
        self._pending_size += len(row)
        if self._pending_size >= PENDING_VIEWS:
            self._merge()

    def _merge(self) -> None:
        # Fold the noted views into the sorted pairs (exact: counts stay below 2^53).
        if not self._pending:
            return
        keys = np.concatenate([self._pairs, *self._pending])
        weights = np.concatenate([self._views, np.ones(self._pending_size, dtype=np.int64)])
        self._pairs, where = np.unique(keys, return_inverse=True)
        self._views = np.bincount(where, weights=weights).astype(np.int64)
        self._pending, self._pending_size = [], 0

    def _video_views(self) -> list[dict[int, int]]:
        # Per row, views per video.
        self._merge()
        per_row: list[dict[int, int]] = [{} for _ in self._keys]
        rows, videos = (self._pairs >> 32).tolist(), (self._pairs & 0xFFFFFFFF).tolist()
        for r, v, n in zip(rows, videos, self._views.tolist(), strict=True):
            per_row[r][v] = n
        for (r, v), n in self._far.items():
            per_row[r][v] = per_row[r].get(v, 0) + n
        return per_row

    def _windows(self) -> list[tuple[tuple[int, int], list[Any]]]:
        # Every (blogger, window) in order, with its counts and then its views per video.
        counts = self._counts[: len(self._keys)].tolist()
        rows = zip(self._keys, counts, self._video_views(), strict=True)
        return sorted(((key, [*c, views]) for key, c, views in rows), key=lambda row: row[0])

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
        for (blogger, index), state in self._windows():
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
        sums = self._counts.sum(axis=0).tolist()
        return {kind: sums[slot] for kind, slot in _VIDEO_SLOT.items()}

    def snapshot(self) -> BloggerAnalyticsState:
        """The state: every window of every blogger, and the views per video of each."""
        self._merge()
        counts = self._counts[: len(self._keys)].T.tolist() if self._keys else [[]] * 6
        keys = list(zip(*self._keys, strict=True)) or [(), ()]
        far = sorted(self._far.items())
        return BloggerAnalyticsState(
            latest=self._latest,
            blogger=list(keys[0]),
            window=list(keys[1]),
            views=counts[_VIEW],
            likes=counts[_LIKE],
            dislikes=counts[_DISLIKE],
            comments=counts[_COMMENT],
            watches=counts[_WATCH],
            watch_ms=counts[_WATCH_MS],
            view_row=(self._pairs >> 32).tolist() + [r for (r, _), _ in far],
            view_video=(self._pairs & 0xFFFFFFFF).tolist() + [v for (_, v), _ in far],
            view_count=self._views.tolist() + [n for _, n in far],
        )

    def restore(self, state: BloggerAnalyticsState) -> None:
        """Replace the state with a snapshot."""
        self.__init__(self.params)  # type: ignore[misc]
        self._latest = state.latest
        self._keys = list(zip(state.blogger, state.window, strict=True))
        self._row_of = {key: row for row, key in enumerate(self._keys)}
        self._counts = (
            np.array(
                [
                    state.views,
                    state.likes,
                    state.dislikes,
                    state.comments,
                    state.watches,
                    state.watch_ms,
                ],
                dtype=np.int64,
            )
            .reshape(6, -1)
            .T.copy()
        )
        row = np.array(state.view_row, dtype=np.int64)
        video = np.array(state.view_video, dtype=np.int64)
        count = np.array(state.view_count, dtype=np.int64)
        near = (video >= 0) & (video < 1 << 32)
        self._pending = [(row[near] << 32) | video[near]]
        self._pending_size = int(near.sum())
        self._merge()
        self._views = np.zeros(len(self._pairs), dtype=np.int64)
        self._views[np.searchsorted(self._pairs, (row[near] << 32) | video[near])] = count[near]
        for i in np.flatnonzero(~near).tolist():
            self._far[int(row[i]), int(video[i])] = int(count[i])

    def live(self) -> list[tuple[str, str]]:
        """Each blogger's current window: views and top video."""
        rows = []
        for (blogger, index), state in self._windows():
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


class UgcCounters(ReferenceUgcCounters):
    """Counts per event kind and per page; custom events per name; film completion.

    Counters are dicts by page, name and film: a table is grouped by them with numpy, and
    only each group (a few hundred pages or films at most) takes a Python step.
    """

    def process_columns(self, table: Table) -> None:
        """Count a table of events of one kind."""
        if len(table) < SMALL_TABLE:
            self.process(table.rows())
            return
        kind = table.schema.kind
        assert kind is not None, "UGC events have one kind per type"
        self._kinds[kind] = self._kinds.get(kind, 0) + len(table)
        columns = table.columns
        if kind == "click":
            pages, counts = np.unique(columns["page"], return_counts=True)
            for page, n in zip(pages.tolist(), counts.tolist(), strict=True):
                self._pages.setdefault(page, [0, 0, 0])[0] += n
        elif kind == "page_view":
            pages, where = np.unique(columns["page"], return_inverse=True)
            counts = np.bincount(where).tolist()
            spent = _group_sums(where, columns["duration_ms"], len(pages))
            for page, n, ms in zip(pages.tolist(), counts, spent, strict=True):
                stats = self._pages.setdefault(page, [0, 0, 0])
                stats[1] += n
                stats[2] += ms
        elif kind == "custom":
            names, counts = np.unique(columns["name"], return_counts=True)
            for name, n in zip(names.tolist(), counts.tolist(), strict=True):
                self._custom[name] = self._custom.get(name, 0) + n
        else:
            movies, where = np.unique(columns["movie_id"], return_inverse=True)
            counts = np.bincount(where).tolist()
            done = columns["position_s"] * 10 >= columns["duration_s"] * 9
            completed = np.bincount(where[done], minlength=len(movies)).tolist()
            for movie, n, finished in zip(movies.tolist(), counts, completed, strict=True):
                stats = self._movies.setdefault(movie, [0, 0])
                stats[0] += n
                stats[1] += finished

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


def _group_sums(groups: Array, values: Array, size: int) -> list[int]:
    """The sum of ``values`` per group (exact integers, whatever their size)."""
    if len(values) and int(np.abs(values).max()) * len(values) < 1 << 53:
        return [int(x) for x in np.bincount(groups, weights=values, minlength=size).tolist()]
    sums = [0] * size
    for group, value in zip(groups.tolist(), values.tolist(), strict=True):
        sums[group] += value
    return sums


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
