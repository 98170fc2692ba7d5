"""``blogger_analytics``: per blogger, tumbling windows of event time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import attrs
import msgspec
import numpy as np

from actors import Table
from topology import Checked, FieldError, State

from .aggregates import (
    _COMMENT,
    _DISLIKE,
    _LIKE,
    _VIDEO_SLOT,
    _VIEW,
    _WATCH,
    _WATCH_MS,
    Array,
    count_table,
    grown,
    same_lengths,
    windows_result,
)
from .workloads import VideoEvent

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
        same_lengths(
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
        same_lengths(self, "view_row", "view_video", "view_count")
        if self.view_row and max(self.view_row) >= len(self.blogger):
            raise ValueError("views of a row the table does not have")


DENSE_BLOGGERS = 1024
"""Bloggers below this find their row of a window in a table (of at most this many entries
per window); others through a sort."""
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
        self._window_rows: dict[int, Array] = {}
        """Per window index, the row of each blogger (-1: none yet), for bloggers below
        :data:`DENSE_BLOGGERS`."""

    def process(self, events: Sequence[Any]) -> None:
        """Fold each event into its blogger's window."""
        self.process_columns(Table.from_events(VideoEvent, events))

    def _row(self, pair: tuple[int, int]) -> int:
        row = self._row_of.get(pair)
        if row is None:
            row = self._row_of[pair] = len(self._keys)
            self._keys.append(pair)
        return row

    def _rows_in(self, window: int, blogger: Array, most: int) -> Array:
        """The row of each event of one window: looked up by blogger in the window's table
        (-1 where a blogger has no row yet in it)."""
        table = self._window_rows.get(window)
        if table is None or most >= len(table):
            grown_table = np.full(max(most + 1, 16), -1, dtype=np.int64)  # most < 1,024
            if table is not None:
                grown_table[: len(table)] = table
            table = self._window_rows[window] = grown_table
        rows = table[blogger]
        missing = rows < 0
        if missing.any():
            for who in np.unique(blogger[missing]).tolist():
                table[who] = self._row((who, window))
            self._counts = grown(self._counts, len(self._keys))
            rows = table[blogger]
        return rows

    def _rows_of(self, blogger: Array, index: Array) -> Array:
        """The row of each event's (blogger, window) pair, made for pairs not seen before."""
        low, high, most = int(index.min()), int(index.max()), int(blogger.max())
        if low >= 0 and most < DENSE_BLOGGERS and high - low < 4:
            # The usual case: a window or two, bloggers by table.
            if low == high:
                return self._rows_in(low, blogger, most)
            rows: Array = np.empty(len(blogger), dtype=np.int64)
            for window in range(low, high + 1):
                here = index == window
                if here.any():
                    rows[here] = self._rows_in(window, blogger[here], most)
            return rows
        stacked = np.stack([blogger, index], axis=1)
        unique, group = np.unique(stacked, axis=0, return_inverse=True)
        pairs = zip(unique[:, 0].tolist(), unique[:, 1].tolist(), strict=True)
        found = np.array([self._row(pair) for pair in pairs], dtype=np.int64)
        self._counts = grown(self._counts, len(self._keys))
        each: Array = found[group.reshape(-1)]
        return each

    def process_columns(self, table: Table) -> None:
        """Fold a table of events into their bloggers' windows."""
        if not len(table):
            return
        columns = table.columns
        index = np.floor_divide(columns["timestamp"], self.params.window).astype(np.int64)
        kind = columns["kind"]
        rows = self._rows_of(columns["blogger_id"], index)
        # Rows of one batch are few and close together: count them in a slice of the table.
        first = int(rows.min())
        local = rows - first
        span = int(local.max()) + 1
        counts = np.bincount(local * 5 + kind, minlength=span * 5).reshape(span, 5)
        spent = np.bincount(
            local, weights=np.where(kind == _WATCH, columns["watch_ms"], 0), minlength=span
        )
        block = self._counts[first : first + span]
        block[:, :5] += counts
        block[:, _WATCH_MS] += spent.astype(np.int64)  # exact: a batch sums below 2^53
        viewed = kind == _VIEW
        if viewed.any():
            self._note_views(rows[viewed], columns["video_id"][viewed])
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

    def result(self) -> dict[str, Any]:
        """Every blogger seen: totals and every window in time order."""
        return windows_result(self._windows(), self.params.window, self.params.top)

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
        self._counts = count_table(state)
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
