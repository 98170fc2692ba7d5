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

from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from actors import Table
from topology import (
    FileAnnounced,
    ProcessorType,
    State,
    TopicRelay,
    TopicRelayParams,
    TopicRelayState,
)

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
    video_result,
)
from .events import EVENTS
from .parsing import UsageParser, UsageParserParams, UsageParserState, UserSum
from .reference import ReferenceUgcCounters
from .relays import (
    RedisStreamParams,
    RedisStreamSink,
    RedisStreamState,
    WebhookParams,
    WebhookSink,
    WebhookState,
)
from .sinks import ClickHouseParams, ClickHouseSink, ClickHouseState
from .usage_store import UsageTotalsParams, UsageTotalsSink, UsageTotalsState
from .windows import (
    BloggerAnalytics,
    BloggerAnalyticsParams,
    BloggerAnalyticsState,
)
from .workloads import Click, CustomEvent, PageView, VideoEvent, WatchProgress

DENSE_IDS = 1 << 21
"""Ids below this are counted in arrays indexed by id; larger ones (only from events sent by
clients outside the topology) one event at a time."""
SMALL_TABLE = 24
"""Tables shorter than this are folded event by event: below it, numpy's cost per call
outweighs what it saves per event."""


def _first_rows(ids: Array, rows: Array) -> tuple[Array, Array]:
    """The distinct ``ids`` and the first row of each (a column's first value per id)."""
    distinct, first = np.unique(ids, return_index=True)
    return distinct, rows[first]


@attrs.frozen
class NoParams:
    """A processor without settings."""


# -- video statistics ------------------------------------------------------------------------


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
        same_lengths(self, *self.__struct_fields__)


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
            self._counts = grown(self._counts, high + 1)
            self._blogger = grown(self._blogger, high + 1)
            self._seen = grown(self._seen, high + 1)
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
        return video_result(self._rows())

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
        counts = count_table(state)
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
        same_lengths(self, "page", "page_clicks", "page_views", "page_view_ms")
        same_lengths(self, "movie", "movie_updates", "movie_completed")


class UgcCounters(ReferenceUgcCounters):
    """Counts per event kind and per page; custom events per name; film completion.

    Tables are counted into arrays: per page (a code per page, in order of first sight) and
    per film id, with ``np.bincount`` and ``np.add.at``, so no Python step is taken per page or
    film of a table. Events given one at a time go to the reference's dicts. The arrays are
    folded into the dicts whenever the counts are read (a snapshot, the result, the live view).
    """

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._page_code: dict[str, int] = {}
        self._page_counts = np.zeros((0, 3), dtype=np.int64)
        """Per page code: clicks, views, milliseconds viewed."""
        self._movie_counts = np.zeros((0, 2), dtype=np.int64)
        """Per film id below :data:`DENSE_IDS`: progress updates, and completed ones."""

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
            codes = self._page_codes(columns["page"])
            self._page_counts[:, 0] += np.bincount(codes, minlength=len(self._page_counts))
        elif kind == "page_view":
            codes = self._page_codes(columns["page"])
            self._page_counts[:, 1] += np.bincount(codes, minlength=len(self._page_counts))
            np.add.at(self._page_counts[:, 2], codes, columns["duration_ms"])
        elif kind == "custom":
            # Names are many and rarely repeated: a dict (one C loop) rather than codes.
            for name, n in Counter(columns["name"].tolist()).items():
                self._custom[name] = self._custom.get(name, 0) + n
        else:
            movie = columns["movie_id"]
            done = columns["position_s"] * 10 >= columns["duration_s"] * 9
            if int(movie.min()) < 0 or int(movie.max()) >= DENSE_IDS:
                self._count_movies(movie, done)
                return
            size = int(movie.max()) + 1
            self._movie_counts = grown(self._movie_counts, size)
            self._movie_counts[:size, 0] += np.bincount(movie, minlength=size)
            self._movie_counts[:size, 1] += np.bincount(movie[done], minlength=size)

    def _page_codes(self, pages: Array) -> Array:
        # Each page's code; new pages get the next codes, and their rows in the counts.
        listed, code = pages.tolist(), self._page_code
        try:
            codes = np.fromiter(map(code.__getitem__, listed), dtype=np.intp, count=len(listed))
        except KeyError:
            codes = np.array([code.setdefault(p, len(code)) for p in listed], dtype=np.intp)
            self._page_counts = grown(self._page_counts, len(code))[: len(code)]
        return codes

    def _count_movies(self, movie: Array, done: Array) -> None:
        # Film ids too large (or negative) for an array, from clients outside the topology.
        for movie_id, finished in zip(movie.tolist(), done.tolist(), strict=True):
            stats = self._movies.setdefault(movie_id, [0, 0])
            stats[0] += 1
            stats[1] += finished

    def _fold(self) -> None:
        # Move the arrays' counts into the reference's dicts, leaving the arrays at zero.
        for page, code in self._page_code.items():
            clicks, views, ms = self._page_counts[code].tolist()
            if clicks or views:
                stats = self._pages.setdefault(page, [0, 0, 0])
                stats[0] += clicks
                stats[1] += views
                stats[2] += ms
        self._page_counts[:] = 0
        ids = np.flatnonzero(self._movie_counts[:, 0])
        for movie_id, (updates, completed) in zip(
            ids.tolist(), self._movie_counts[ids].tolist(), strict=True
        ):
            stats = self._movies.setdefault(movie_id, [0, 0])
            stats[0] += updates
            stats[1] += completed
        self._movie_counts[:] = 0

    def result(self) -> dict[str, Any]:
        """All counters, keys sorted."""
        self._fold()
        return super().result()

    def totals(self) -> dict[str, int]:
        """Events accounted for, per kind (derived from the per-page and per-film counters)."""
        self._fold()
        return super().totals()

    def snapshot(self) -> UgcCountersState:
        """The state: all counters."""
        self._fold()
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
        self.__init__()  # type: ignore[misc]
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
    "clickhouse": ProcessorType(
        name="clickhouse",
        description="stores every event in ClickHouse, a table per topic, read back by the "
        "HTTP API",
        params=ClickHouseParams,
        make=ClickHouseSink,
        accepts=tuple(EVENTS.values()),
        state_type=ClickHouseState,
    ),
    "webhook": ProcessorType(
        name="webhook",
        description="POSTs every batch as JSON to params.url, with an idempotency key and "
        "an id per record",
        params=WebhookParams,
        make=WebhookSink,
        accepts=tuple(EVENTS.values()),
        state_type=WebhookState,
    ),
    "redis_stream": ProcessorType(
        name="redis_stream",
        description="appends every record to a Redis stream per partition (XADD), its "
        "offset as the entry id",
        params=RedisStreamParams,
        make=RedisStreamSink,
        accepts=tuple(EVENTS.values()),
        state_type=RedisStreamState,
    ),
    "topic": ProcessorType(
        name="topic",
        description="passes every record on to the consumer's output topic (here or on "
        "another node), committed in the same step",
        params=TopicRelayParams,
        make=TopicRelay,
        accepts=None,
        state_type=TopicRelayState,
        writes="input",
    ),
    "usage_parser": ProcessorType(
        name="usage_parser",
        description="reads each file a files producer announces, sums the amount of each "
        "user, and writes the sums to the consumer's output topic",
        params=UsageParserParams,
        make=UsageParser,
        accepts=(FileAnnounced,),
        state_type=UsageParserState,
        writes=(UserSum,),
        resumable=frozenset({"max_keys", "chunk_bytes", "on_bad_line"}),
    ),
    "usage_totals": ProcessorType(
        name="usage_totals",
        description="adds each user's sums to their total in PostgreSQL (embedded, or "
        "params.url) or SQLite, each batch once",
        params=UsageTotalsParams,
        make=UsageTotalsSink,
        accepts=(UserSum,),
        state_type=UsageTotalsState,
        reads_durable=True,
    ),
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
