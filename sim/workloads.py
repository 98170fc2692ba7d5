"""Workloads: the event generators a topology's producers name."""

from __future__ import annotations

import bisect
import functools
import itertools
import random
from typing import Annotated, Any, ClassVar, Literal

import attrs
import msgspec

from topology import (
    MAX_CATALOGUE,
    MAX_CATALOGUE_WHY,
    MAX_IDS,
    MAX_IDS_WHY,
    Checked,
    FieldError,
    State,
    WorkloadType,
    limit_problem,
)

# Event payloads are msgspec structs rather than attrs classes: measured here, building one
# costs ~120 ns against ~770 ns for a frozen attrs class, and gc=False keeps tens of millions of
# them out of the cyclic garbage collector. Records around them are still attrs classes.

MAX_WATCH_SECONDS = 86_400
"""The longest video of the video site, in seconds."""

TABLE_SIZE = 65_536
"""Slots in the lookup tables used to sample skewed distributions quickly."""

# Constraints checked when events are decoded (from a gateway, a checkpoint): an event from a
# bad client that would break a processor is refused at the door. Building one checks nothing,
# so they cost the generators nothing.
Count = Annotated[int, msgspec.Meta(ge=0)]
EventTime = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
VideoKind = Literal["view", "like", "dislike", "comment", "watch"]


def _sampling_table(weights: list[float], size: int = TABLE_SIZE) -> list[int]:
    """Return a table whose slot j holds the index whose CDF interval contains (j + 0.5)/size.

    Indexing it with ``int(random() * size)`` samples the distribution to within 1/size.
    """
    total = sum(weights)
    cumulative = list(itertools.accumulate(w / total for w in weights))
    cumulative[-1] = 1.0
    return [bisect.bisect_right(cumulative, (j + 0.5) / size) for j in range(size)]


def _check_mix(name: str, mix: dict[str, float], kinds: tuple[str, ...]) -> list[FieldError]:
    unknown = set(mix) - set(kinds)
    if unknown:
        return [FieldError(name, f"unknown kinds {sorted(unknown)}; kinds are {', '.join(kinds)}")]
    if any(not w >= 0 for w in mix.values()) or not sum(mix.values()) > 0:
        return [FieldError(name, "weights must be >= 0 and not all zero")]
    return []


def _check_counts(params: Any, fields: tuple[str, ...], limits: dict[str, int]) -> list[FieldError]:
    errors = []
    for field in fields:
        value = getattr(params, field)
        if value < 1:
            errors.append(FieldError(field, f"must be >= 1, got {value}"))
            continue
        why = MAX_IDS_WHY if field == "users" else MAX_CATALOGUE_WHY
        problem = limit_problem(value, limits[field], field, why)
        if problem is not None:
            errors.append(FieldError(field, problem))
    return errors


# -- the video site -------------------------------------------------------------------------


class VideoEvent(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="video"):
    """One action of a user on a video."""

    kind: VideoKind
    """``view``, ``like``, ``dislike``, ``comment`` or ``watch``."""
    user_id: Count
    video_id: Count
    blogger_id: Count
    """The owner of the video."""
    timestamp: EventTime
    """Event time, in seconds of the run's clock."""
    watch_ms: Count
    """For ``watch``: milliseconds watched; 0 otherwise."""
    source: Count
    """The producer instance that generated it."""
    seq: Count
    """Its position in that instance's sequence."""


VIDEO_KINDS: tuple[VideoKind, ...] = ("view", "like", "dislike", "comment", "watch")


def _default_video_mix() -> dict[str, float]:
    return {"view": 0.6, "watch": 0.25, "like": 0.08, "dislike": 0.02, "comment": 0.05}


@attrs.frozen
class VideoSiteParams(Checked):
    """Settings of the ``video_site`` workload."""

    videos: int = 1000
    """Videos in the catalogue."""
    bloggers: int = 10
    """Bloggers owning them."""
    users: int = 1_000_000
    """Users acting on them (chosen uniformly)."""
    zipf: float = 1.1
    """Skew of video popularity: the video of rank r is chosen with weight 1/r**zipf."""
    mix: dict[str, float] = attrs.field(factory=_default_video_mix)
    """Relative weight of each event kind."""
    max_watch_seconds: int = 600
    """Videos last between 30 seconds and this; a watch lasts up to the video's length."""

    def problems(self) -> list[FieldError]:
        """Every setting out of range, all at once."""
        errors = _check_counts(
            self,
            ("videos", "bloggers", "users"),
            {"videos": MAX_CATALOGUE, "bloggers": MAX_CATALOGUE, "users": MAX_IDS},
        )
        if self.bloggers > self.videos >= 1:
            errors.append(FieldError("bloggers", f"cannot exceed videos ({self.videos})"))
        if not self.zipf >= 0:
            errors.append(FieldError("zipf", f"must be >= 0, got {self.zipf}"))
        if self.max_watch_seconds < 30:
            errors.append(
                FieldError("max_watch_seconds", f"must be >= 30, got {self.max_watch_seconds}")
            )
        elif self.max_watch_seconds > MAX_WATCH_SECONDS:
            errors.append(
                FieldError(
                    "max_watch_seconds",
                    f"at most {MAX_WATCH_SECONDS:,} (a day), got {self.max_watch_seconds:,}",
                )
            )
        errors.extend(_check_mix("mix", self.mix, VIDEO_KINDS))
        return errors


@attrs.frozen
class VideoCatalog:
    """The videos: who owns each, how long it is, how popular. The same for every producer."""

    owner: list[int]
    length_ms: list[int]
    popularity: list[int]
    """Sampling table of video ids by Zipf popularity."""

    @classmethod
    def build(cls, params: VideoSiteParams, seed: int) -> VideoCatalog:
        """Derive the catalogue from the run's seed alone."""
        rng = random.Random(f"{seed}/video-catalog")
        # Every blogger owns at least one video; the rest are spread at random.
        owner = [v % params.bloggers for v in range(params.videos)]
        rng.shuffle(owner)
        length_ms = [
            rng.randrange(30_000, params.max_watch_seconds * 1000 + 1) for _ in range(params.videos)
        ]
        ranked = list(range(params.videos))
        rng.shuffle(ranked)  # ranked[r] is the video of popularity rank r + 1
        weights = [1 / (rank + 1) ** params.zipf for rank in range(params.videos)]
        popularity = [ranked[slot] for slot in _sampling_table(weights)]
        return cls(owner, length_ms, popularity)


@functools.lru_cache(maxsize=8)
def _shared_catalog(
    videos: int, bloggers: int, zipf: float, max_watch_seconds: int, seed: int
) -> VideoCatalog:
    # The instances of a producer share one catalogue (it derives from these alone): with many
    # instances and a large catalogue, one copy each would multiply the memory.
    params = VideoSiteParams(
        videos=videos, bloggers=bloggers, zipf=zipf, max_watch_seconds=max_watch_seconds
    )
    return VideoCatalog.build(params, seed)


class VideoSite:
    """The video site of one producer instance.

    Per event: a video by Zipf popularity, a kind by the mix, a user uniformly, and for a
    watch, a duration up to the video's length.
    """

    def __init__(
        self,
        params: VideoSiteParams,
        seed: int,
        name: str,
        instance: int,
        source: int | None = None,
    ) -> None:
        self.params = params
        self.catalog = _shared_catalog(
            params.videos, params.bloggers, params.zipf, params.max_watch_seconds, seed
        )
        self.source = instance if source is None else source
        self._rng = random.Random(f"{seed}/{name}/{instance}")
        self._random = self._rng.random
        weights = [params.mix.get(kind, 0.0) for kind in VIDEO_KINDS]
        self._kinds = [VIDEO_KINDS[i] for i in _sampling_table(weights, 1024)]
        self._seq = 0
        self._counts: dict[str, int] = dict.fromkeys(VIDEO_KINDS, 0)

    def generate(self, count: int, start: float, interval: float) -> dict[str, list[Any]]:
        """Return the next ``count`` events, all in the ``events`` stream."""
        rnd = self._random
        popularity, kinds = self.catalog.popularity, self._kinds
        owner, length_ms = self.catalog.owner, self.catalog.length_ms
        users, source, seq, counts = self.params.users, self.source, self._seq, self._counts
        events: list[VideoEvent] = []
        append = events.append
        for i in range(count):
            video = popularity[int(rnd() * TABLE_SIZE)]
            kind = kinds[int(rnd() * 1024)]
            user = int(rnd() * users)
            watch_ms = int(rnd() * length_ms[video]) if kind == "watch" else 0
            counts[kind] += 1
            append(
                VideoEvent(
                    kind, user, video, owner[video], start + i * interval, watch_ms, source, seq + i
                )
            )
        self._seq = seq + count
        return {"events": events}

    def counts(self) -> dict[str, int]:
        """Events generated so far, per kind."""
        return dict(self._counts)

    def position(self) -> GeneratorPosition:
        """Where the workload is in its sequence: enough to carry on exactly from here."""
        return GeneratorPosition.of(self._rng, self._seq, self._counts)

    def restore(self, position: GeneratorPosition) -> None:
        """Carry on from a :meth:`position`."""
        self._seq, self._counts = position.restore(self._rng)


class GeneratorPosition(State, frozen=True, tag=1):
    """Where a workload is in its sequence (the ``state_type`` of both workloads here)."""

    random_version: int
    """The version of the random generator's state (``random.getstate()[0]``)."""
    random_internal: list[Annotated[int, msgspec.Meta(ge=0, lt=2**32)]]
    """The generator's internal state: the Mersenne Twister's words and its index."""
    random_gauss: float | None
    """The spare normal variate the generator keeps, if any."""
    seq: int
    """The sequence number of the next event."""
    counts: dict[str, int]
    """Events generated so far, per kind."""

    def __post_init__(self) -> None:
        # Refused when decoded, not later when the workload is made: a state of the wrong size
        # or with a word out of range raises ValueError or TypeError here.
        _SCRATCH.setstate(self._random_state())

    def _random_state(self) -> tuple[Any, ...]:
        return self.random_version, tuple(self.random_internal), self.random_gauss

    @classmethod
    def of(cls, rng: random.Random, seq: int, counts: dict[str, int]) -> GeneratorPosition:
        """The position of a workload drawing from ``rng``, at ``seq``, having made ``counts``."""
        version, internal, gauss = rng.getstate()
        return cls(
            random_version=version,
            random_internal=list(internal),
            random_gauss=gauss,
            seq=seq,
            counts=dict(counts),
        )

    def restore(self, rng: random.Random) -> tuple[int, dict[str, int]]:
        """Put ``rng`` back where it was; return the sequence number and a copy of the counts."""
        rng.setstate(self._random_state())
        return self.seq, dict(self.counts)


_SCRATCH = random.Random(0)
"""Checks that a position's generator state is one ``random`` takes."""


# -- UGC events -----------------------------------------------------------------------------


class Click(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="click"):
    """A click on an element of a page."""

    kind: ClassVar[str] = "click"
    user_id: Count
    page: str
    element: str
    timestamp: EventTime
    source: Count
    seq: Count


class PageView(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="page_view"):
    """A page seen, with the time spent on it."""

    kind: ClassVar[str] = "page_view"
    user_id: Count
    page: str
    duration_ms: Count
    timestamp: EventTime
    source: Count
    seq: Count


class CustomEvent(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="custom"):
    """A named custom event: a quality change, a video watched to the end, a search filter."""

    kind: ClassVar[str] = "custom"
    user_id: Count
    name: str
    timestamp: EventTime
    source: Count
    seq: Count


class WatchProgress(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="watch_progress"):
    """How far a user has watched a film."""

    kind: ClassVar[str] = "watch_progress"
    user_id: Count
    movie_id: Count
    position_s: Count
    duration_s: Count
    timestamp: EventTime
    source: Count
    seq: Count


UGC_KINDS = ("click", "page_view", "custom", "watch_progress")
ELEMENTS = ("play", "pause", "like", "share", "subscribe", "search", "menu", "banner")


def _default_ugc_mix() -> dict[str, float]:
    return {"click": 0.4, "page_view": 0.3, "custom": 0.1, "watch_progress": 0.2}


def _default_custom_names() -> list[str]:
    return ["quality_change", "watched_to_end", "search_filter"]


@attrs.frozen
class UgcParams(Checked):
    """Settings of the ``ugc`` workload."""

    users: int = 100_000
    """Users (chosen uniformly)."""
    pages: int = 200
    """Pages of the site, visited with Zipf popularity."""
    movies: int = 500
    """Films whose watching progress is reported."""
    zipf: float = 1.0
    """Skew of page popularity."""
    mix: dict[str, float] = attrs.field(factory=_default_ugc_mix)
    """Relative weight of each event kind."""
    custom_names: list[str] = attrs.field(factory=_default_custom_names)
    """Names of custom events."""

    def problems(self) -> list[FieldError]:
        """Every setting out of range, all at once."""
        errors = _check_counts(
            self,
            ("users", "pages", "movies"),
            {"users": MAX_IDS, "pages": MAX_CATALOGUE, "movies": MAX_CATALOGUE},
        )
        if not self.zipf >= 0:
            errors.append(FieldError("zipf", f"must be >= 0, got {self.zipf}"))
        if not self.custom_names:
            errors.append(FieldError("custom_names", "needs at least one name"))
        errors.extend(_check_mix("mix", self.mix, UGC_KINDS))
        return errors


class Ugc:
    """User-generated-content events of one producer instance, one stream per kind."""

    def __init__(
        self, params: UgcParams, seed: int, name: str, instance: int, source: int | None = None
    ) -> None:
        self.params = params
        self.source = instance if source is None else source
        catalog = random.Random(f"{seed}/ugc-catalog")
        self._movie_length = [catalog.randrange(1800, 10_800) for _ in range(params.movies)]
        pages = [f"/page/{i}" for i in range(params.pages)]
        catalog.shuffle(pages)
        weights = [1 / (rank + 1) ** params.zipf for rank in range(params.pages)]
        self._pages = [pages[slot] for slot in _sampling_table(weights)]
        self._rng = random.Random(f"{seed}/{name}/{instance}")
        self._random = self._rng.random
        kind_weights = [params.mix.get(kind, 0.0) for kind in UGC_KINDS]
        self._kinds = [UGC_KINDS[i] for i in _sampling_table(kind_weights, 1024)]
        self._seq = 0
        self._counts = dict.fromkeys(UGC_KINDS, 0)

    def generate(self, count: int, start: float, interval: float) -> dict[str, list[Any]]:
        """Return the next ``count`` events, grouped by kind."""
        rnd, p = self._random, self.params
        streams: dict[str, list[Any]] = {kind: [] for kind in UGC_KINDS}
        source, seq = self.source, self._seq
        for i in range(count):
            kind = self._kinds[int(rnd() * 1024)]
            user = int(rnd() * p.users)
            at = start + i * interval
            event: Any
            if kind == "click":
                page = self._pages[int(rnd() * TABLE_SIZE)]
                event = Click(user, page, ELEMENTS[int(rnd() * len(ELEMENTS))], at, source, seq + i)
            elif kind == "page_view":
                page = self._pages[int(rnd() * TABLE_SIZE)]
                event = PageView(user, page, int(rnd() * 300_000), at, source, seq + i)
            elif kind == "custom":
                name = p.custom_names[int(rnd() * len(p.custom_names))]
                event = CustomEvent(user, name, at, source, seq + i)
            else:
                movie = int(rnd() * p.movies)
                length = self._movie_length[movie]
                event = WatchProgress(
                    user, movie, int(rnd() * (length + 1)), length, at, source, seq + i
                )
            self._counts[kind] += 1
            streams[kind].append(event)
        self._seq = seq + count
        return streams

    def counts(self) -> dict[str, int]:
        """Events generated so far, per kind."""
        return dict(self._counts)

    def position(self) -> GeneratorPosition:
        """Where the workload is in its sequence: enough to carry on exactly from here."""
        return GeneratorPosition.of(self._rng, self._seq, self._counts)

    def restore(self, position: GeneratorPosition) -> None:
        """Carry on from a :meth:`position`."""
        self._seq, self._counts = position.restore(self._rng)


WORKLOADS: dict[str, WorkloadType] = {
    "video_site": WorkloadType(
        name="video_site",
        description="views, likes, dislikes, comments and watches on a video site (seed 000)",
        params=VideoSiteParams,
        streams=("events",),
        make=VideoSite,
        event_types={"events": (VideoEvent,)},
        state_type=GeneratorPosition,
    ),
    "ugc": WorkloadType(
        name="ugc",
        description="clicks, page views, custom events and watch progress, a stream each",
        params=UgcParams,
        streams=UGC_KINDS,
        make=Ugc,
        event_types={
            "click": (Click,),
            "page_view": (PageView,),
            "custom": (CustomEvent,),
            "watch_progress": (WatchProgress,),
        },
        state_type=GeneratorPosition,
    ),
}
"""Workloads by name."""
