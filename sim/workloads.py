"""Workloads: the event generators a topology's producers name."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import attrs
import msgspec
import numpy as np
import numpy.typing as npt

from actors import Table
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
# costs ~120 ns against ~770 ns for a frozen attrs class, and gc=False keeps them out of the
# cyclic garbage collector. The workloads make them as tables (a numpy array per field), and
# an event object is built only when something reads events one by one.

MAX_WATCH_SECONDS = 86_400
"""The longest video of the video site, in seconds."""

BLOCK = 16_384
"""Events drawn at once: block b holds the events numbered b x BLOCK onwards, drawn from a
generator seeded with the workload's seed and b alone, so an event depends only on its
number, never on how many events each call asks for."""

Array = npt.NDArray[Any]

# Constraints checked when events are decoded (from a gateway, a checkpoint): an event from a
# bad client that would break a processor is refused at the door. Building one checks nothing,
# so they cost the generators nothing.
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_IDS)]
"""An id or a count: at most 2^53, so a table holds it in int64 and sums of a batch of them
cannot overflow."""
Milliseconds = Annotated[int, msgspec.Meta(ge=0, le=MAX_WATCH_SECONDS * 1000)]
"""Time watched or spent on a page: at most a day."""
EventTime = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
VideoKind = Literal["view", "like", "dislike", "comment", "watch"]


def _entropy(text: str) -> int:
    """A 128-bit number derived from ``text``: what a numpy generator is seeded with."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "big")


def _generator(entropy: int, *more: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([entropy, *more])))


def _cdf(weights: Any) -> Array:
    """The cumulative distribution of ``weights``, ending at exactly 1."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _sample(cdf: Array, uniform: Array) -> Array:
    """Indexes drawn from ``cdf`` for uniform variates in [0, 1)."""
    return np.minimum(np.searchsorted(cdf, uniform, side="right"), len(cdf) - 1)


class _Blocks:
    """The draws of one producer instance, made a block of :data:`BLOCK` events at a time.

    ``draw(generator)`` returns one array per field for a whole block; :meth:`take` returns
    the fields of events ``start`` to ``start + count``, drawing blocks as needed and keeping
    the last one for the next call.
    """

    def __init__(self, entropy: int, draw: Callable[[np.random.Generator], dict[str, Array]]):
        self._entropy = entropy
        self._draw = draw
        self._cached: tuple[int, dict[str, Array]] | None = None

    def _block(self, number: int) -> dict[str, Array]:
        if self._cached is None or self._cached[0] != number:
            self._cached = number, self._draw(_generator(self._entropy, number))
        return self._cached[1]

    def take(self, start: int, count: int) -> dict[str, Array]:
        parts: list[dict[str, Array]] = []
        at, end = start, start + count
        while at < end:
            number, offset = divmod(at, BLOCK)
            block = self._block(number)
            stop = min(BLOCK, offset + end - at)
            parts.append({name: column[offset:stop] for name, column in block.items()})
            at += stop - offset
        if not parts:
            return {name: column[:0] for name, column in self._block(start // BLOCK).items()}
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


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
    watch_ms: Milliseconds
    """For ``watch``: milliseconds watched; 0 otherwise."""
    source: Count
    """The producer instance that generated it."""
    seq: Count
    """Its position in that instance's sequence."""


VIDEO_KINDS: tuple[VideoKind, ...] = ("view", "like", "dislike", "comment", "watch")
"""The kinds, in the order of :data:`VideoKind` (a table holds a kind as its index here)."""
_WATCH_CODE = VIDEO_KINDS.index("watch")


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

    owner: Array
    length_ms: Array
    ranked: Array
    """The video of each popularity rank (``ranked[0]`` is the most popular)."""
    popularity: Array
    """The cumulative distribution of ranks (Zipf)."""

    @classmethod
    def build(cls, params: VideoSiteParams, seed: int) -> VideoCatalog:
        """Derive the catalogue from the run's seed alone."""
        rng = _generator(_entropy(f"{seed}/video-catalog"))
        # Every blogger owns at least one video; the rest are spread at random.
        owner = rng.permutation(np.arange(params.videos, dtype=np.int64) % params.bloggers)
        length_ms = rng.integers(30_000, params.max_watch_seconds * 1000 + 1, params.videos)
        ranked = rng.permutation(params.videos).astype(np.int64)
        weights = 1 / np.arange(1, params.videos + 1, dtype=np.float64) ** params.zipf
        return cls(owner, length_ms, ranked, _cdf(weights))


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


class Sequenced:
    """What a workload that numbers its events keeps: the next event's number and the events
    made so far per kind, which are its position in checkpoints."""

    _seq: int
    _counts: dict[str, int]

    def counts(self) -> dict[str, int]:
        """Events generated so far, per kind."""
        return dict(self._counts)

    def position(self) -> GeneratorPosition:
        """Where the workload is in its sequence: enough to carry on exactly from here."""
        return GeneratorPosition(seq=self._seq, counts=dict(self._counts))

    def restore(self, position: GeneratorPosition) -> None:
        """Carry on from a :meth:`position`."""
        self._seq, self._counts = position.seq, dict(position.counts)


class VideoSite(Sequenced):
    """The video site of one producer instance.

    Per event: a video by Zipf popularity, a kind by the mix, a user uniformly, and for a
    watch, a duration up to the video's length. Events are made as a table, a block of
    :data:`BLOCK` at a time, with numpy.
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
        self._kinds = _cdf([params.mix.get(kind, 0.0) for kind in VIDEO_KINDS])
        self._blocks = _Blocks(_entropy(f"{seed}/{name}/{instance}"), self._draw)
        self._seq = 0
        self._counts: dict[str, int] = dict.fromkeys(VIDEO_KINDS, 0)

    def _draw(self, rng: np.random.Generator) -> dict[str, Array]:
        catalog = self.catalog
        video = catalog.ranked[_sample(catalog.popularity, rng.random(BLOCK))]
        kind = _sample(self._kinds, rng.random(BLOCK)).astype(np.uint8)
        user = rng.integers(0, self.params.users, BLOCK)
        watched = (rng.random(BLOCK) * catalog.length_ms[video]).astype(np.int64)
        watched[kind != _WATCH_CODE] = 0
        return {"video_id": video, "kind": kind, "user_id": user, "watch_ms": watched}

    def generate(self, count: int, start: float, interval: float) -> dict[str, Table]:
        """Return the next ``count`` events, all in the ``events`` stream."""
        seq = self._seq
        drawn = self._blocks.take(seq, count)
        kind = drawn["kind"]
        events = Table(
            VideoEvent,
            {
                "kind": kind,
                "user_id": drawn["user_id"],
                "video_id": drawn["video_id"],
                "blogger_id": self.catalog.owner[drawn["video_id"]],
                "timestamp": start + np.arange(count, dtype=np.float64) * interval,
                "watch_ms": drawn["watch_ms"],
                "source": np.full(count, self.source, dtype=np.int64),
                "seq": np.arange(seq, seq + count, dtype=np.int64),
            },
        )
        for name, n in zip(VIDEO_KINDS, np.bincount(kind, minlength=5).tolist(), strict=True):
            self._counts[name] += n
        self._seq = seq + count
        return {"events": events}


class GeneratorPosition(State, frozen=True, tag=2):
    """Where a workload is in its sequence (the ``state_type`` of both workloads here): its
    events depend only on their numbers, so the number of the next one is enough."""

    seq: Annotated[int, msgspec.Meta(ge=0)]
    """The sequence number of the next event."""
    counts: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    """Events generated so far, per kind."""


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
    duration_ms: Milliseconds
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


class Ugc(Sequenced):
    """User-generated-content events of one producer instance, one stream per kind.

    Events are made as tables (one per kind), a block of :data:`BLOCK` at a time, with numpy.
    """

    def __init__(
        self, params: UgcParams, seed: int, name: str, instance: int, source: int | None = None
    ) -> None:
        self.params = params
        self.source = instance if source is None else source
        catalog = _generator(_entropy(f"{seed}/ugc-catalog"))
        self._movie_length = catalog.integers(1800, 10_800, params.movies)
        pages = np.array([f"/page/{i}" for i in range(params.pages)], dtype=object)
        self._pages = pages[catalog.permutation(params.pages)]
        """The page of each popularity rank."""
        weights = 1 / np.arange(1, params.pages + 1, dtype=np.float64) ** params.zipf
        self._popularity = _cdf(weights)
        self._elements = np.array(ELEMENTS, dtype=object)
        self._names = np.array(params.custom_names, dtype=object)
        self._kinds = _cdf([params.mix.get(kind, 0.0) for kind in UGC_KINDS])
        self._blocks = _Blocks(_entropy(f"{seed}/{name}/{instance}"), self._draw)
        self._seq = 0
        self._counts = dict.fromkeys(UGC_KINDS, 0)

    def _draw(self, rng: np.random.Generator) -> dict[str, Array]:
        p = self.params
        movie = rng.integers(0, p.movies, BLOCK)
        length = self._movie_length[movie]
        return {
            "kind": _sample(self._kinds, rng.random(BLOCK)),
            "user_id": rng.integers(0, p.users, BLOCK),
            "page": _sample(self._popularity, rng.random(BLOCK)),
            "element": rng.integers(0, len(ELEMENTS), BLOCK),
            "duration_ms": rng.integers(0, 300_000, BLOCK),
            "name": rng.integers(0, len(p.custom_names), BLOCK),
            "movie_id": movie,
            "position_s": (rng.random(BLOCK) * (length + 1)).astype(np.int64),
            "duration_s": length,
        }

    def generate(self, count: int, start: float, interval: float) -> dict[str, Table]:
        """Return the next ``count`` events, grouped by kind."""
        seq = self._seq
        drawn = self._blocks.take(seq, count)
        drawn["timestamp"] = start + np.arange(count, dtype=np.float64) * interval
        drawn["source"] = np.full(count, self.source, dtype=np.int64)
        drawn["seq"] = np.arange(seq, seq + count, dtype=np.int64)
        drawn["page"] = self._pages[drawn["page"]]
        drawn["element"] = self._elements[drawn["element"]]
        drawn["name"] = self._names[drawn["name"]]
        streams: dict[str, Table] = {}
        kind = drawn.pop("kind")
        for code, (stream, event_type) in enumerate(_UGC_TYPES.items()):
            where = np.flatnonzero(kind == code)
            fields = event_type.__struct_fields__
            streams[stream] = Table(event_type, {f: drawn[f][where] for f in fields})
            self._counts[stream] += len(where)
        self._seq = seq + count
        return streams


_UGC_TYPES: dict[str, type[msgspec.Struct]] = {
    "click": Click,
    "page_view": PageView,
    "custom": CustomEvent,
    "watch_progress": WatchProgress,
}
"""The event type of each UGC stream, in the order of :data:`UGC_KINDS`."""


WORKLOADS: dict[str, WorkloadType] = {
    "video_site": WorkloadType(
        name="video_site",
        description="views, likes, dislikes, comments and watches on a video site",
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
