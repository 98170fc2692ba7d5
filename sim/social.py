"""The social network of seed 003, as a workload: users who follow one another, a few
celebrities among them, users coming online and going, and posts.

Follower counts follow a power law: the user of popularity rank ``r`` (0 the most followed)
has ``max_followers / (r + 1) ** zipf`` followers, at least ``min_followers``. Who follows
whom is never stored: an author's followers are drawn when asked for, from a generator seeded
with the run's seed and the author alone (:meth:`SocialGraph.followers`), so every process of a
run, and every run with the same seed, finds the same ones. Who is online at the start is
likewise a function of the user; ``presence`` events then bring users online and take them
away. Posts come from authors drawn by activity (uniformly by default).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import attrs
import msgspec
import numpy as np
import numpy.typing as npt

from actors import Table
from topology import MAX_IDS, MAX_IDS_WHY, Checked, FieldError, WorkloadType, limit_problem

from .workloads import (
    BLOCK,
    WORKLOADS,
    Count,
    EventTime,
    GeneratorPosition,
    Sequenced,
    _Blocks,
    _cdf,
    _entropy,
    _generator,
    _sample,
)

SOCIAL_KINDS = ("post", "presence")
"""The streams of the ``social`` workload."""


class Post(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="post"):
    """A post written by ``author_id``: delivered to every follower online."""

    kind: ClassVar[str] = "post"
    author_id: Count
    post_id: Count
    """Unique in the run: the producer instance's number and its own count of posts."""
    timestamp: EventTime
    source: Count
    seq: Count


class Presence(msgspec.Struct, frozen=True, gc=False, array_like=True, tag="presence"):
    """``user_id`` came online (``online`` 1) or went away (0)."""

    kind: ClassVar[str] = "presence"
    user_id: Count
    online: Count
    timestamp: EventTime
    source: Count
    seq: Count


@attrs.frozen
class SocialParams(Checked):
    """Settings of the ``social`` workload."""

    users: int = 100_000
    """Users (ids 0 to users - 1)."""
    max_followers: int = 50_000
    """Followers of the most followed user."""
    min_followers: int = 5
    """Followers of every user at least (fewer only when there are fewer other users)."""
    zipf: float = 1.0
    """How fast follower counts fall with popularity rank."""
    online: float = 0.05
    """The fraction of users online at the start."""
    presence: float = 0.2
    """The fraction of events that are a user coming online or going away (the rest are
    posts)."""

    def problems(self) -> list[FieldError]:
        """Every setting out of range, all at once."""
        errors = []
        if self.users < 2:
            errors.append(FieldError("users", f"must be >= 2, got {self.users}"))
        problem = limit_problem(self.users, MAX_IDS, "users", MAX_IDS_WHY)
        if problem is not None:
            errors.append(FieldError("users", problem))
        for name in ("max_followers", "min_followers"):
            value = getattr(self, name)
            if not 0 <= value < self.users:
                errors.append(
                    FieldError(name, f"must be between 0 and users - 1 ({self.users - 1:,})")
                )
        if self.min_followers > self.max_followers:
            errors.append(FieldError("min_followers", "must be at most max_followers"))
        if not self.zipf >= 0:
            errors.append(FieldError("zipf", f"must be >= 0, got {self.zipf}"))
        for name in ("online", "presence"):
            if not 0 <= getattr(self, name) <= 1:
                errors.append(FieldError(name, "must be a fraction between 0 and 1"))
        return errors


@attrs.define(eq=False)
class SocialGraph:
    """Who follows whom, and who is online at the start, for one run's seed (see the
    module): the same in every process of the run."""

    params: SocialParams
    seed: int
    _order: npt.NDArray[np.int64] = attrs.field(init=False)
    """The users by popularity rank, most followed first."""
    _rank: npt.NDArray[np.int64] = attrs.field(init=False)
    """Each user's popularity rank."""

    def __attrs_post_init__(self) -> None:
        users = self.params.users
        self._order = _generator(_entropy(f"{self.seed}/social-ranks")).permutation(users)
        self._rank = np.empty(users, dtype=np.int64)
        self._rank[self._order] = np.arange(users, dtype=np.int64)

    def follower_counts(self, users: Any) -> npt.NDArray[np.int64]:
        """How many followers each of ``users`` has."""
        p = self.params
        rank = self._rank[np.asarray(users, dtype=np.int64)]
        counts = p.max_followers / (rank + 1.0) ** p.zipf
        return np.maximum(counts.astype(np.int64), p.min_followers)

    def celebrities(self, threshold: int) -> npt.NDArray[np.int64]:
        """The users with more followers than ``threshold``, most followed first."""
        counts = self.follower_counts(self._order)  # falling with rank: a prefix is above
        return self._order[: int(np.count_nonzero(counts > threshold))]

    @functools.lru_cache(maxsize=256)  # noqa: B019 - a graph lives as long as its run
    def followers(self, author: int) -> npt.NDArray[np.int64]:
        """The followers of ``author``, ascending (never the author)."""
        count = int(self.follower_counts([author])[0])
        rng = _generator(_entropy(f"{self.seed}/social-followers"), author)
        others = self.params.users - 1
        drawn = rng.choice(others, size=min(count, others), replace=False)
        drawn = drawn + (drawn >= author)  # skip the author
        drawn.sort()
        return drawn.astype(np.int64)

    def online_at_start(self, users: Any) -> npt.NDArray[np.bool_]:
        """Whether each of ``users`` is online when the run starts (each with probability
        ``online``, independently)."""
        salt = np.uint64(_entropy(f"{self.seed}/social-online") & (2**64 - 1))
        mixed = _mix(np.asarray(users, dtype=np.int64).astype(np.uint64) ^ salt)
        uniform = (mixed >> np.uint64(11)).astype(np.float64) / 2.0**53
        return uniform < self.params.online


def _mix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # SplitMix64's finaliser: every bit of the input reaches every bit of the output.
    with np.errstate(over="ignore"):
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


class Social(Sequenced):
    """Posts and presence changes of one producer instance, a stream each (see the module).

    Events are made as tables, a block of :data:`~sim.workloads.BLOCK` at a time."""

    def __init__(
        self, params: SocialParams, seed: int, name: str, instance: int, source: int | None = None
    ) -> None:
        self.params = params
        self.source = instance if source is None else source
        self._kinds = _cdf([1 - params.presence, params.presence])
        self._blocks = _Blocks(_entropy(f"{seed}/{name}/{instance}"), self._draw)
        self._seq = 0
        self._counts = dict.fromkeys(SOCIAL_KINDS, 0)

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        users = self.params.users
        return {
            "kind": _sample(self._kinds, rng.random(BLOCK)),
            "user": rng.integers(0, users, BLOCK),
            "online": rng.integers(0, 2, BLOCK),
        }

    def generate(self, count: int, start: float, interval: float) -> dict[str, Table]:
        """Return the next ``count`` events, grouped by kind."""
        seq = self._seq
        drawn = self._blocks.take(seq, count)
        stamps = start + np.arange(count, dtype=np.float64) * interval
        seqs = np.arange(seq, seq + count, dtype=np.int64)
        sources = np.full(count, self.source, dtype=np.int64)
        posts = np.flatnonzero(drawn["kind"] == 0)
        moves = np.flatnonzero(drawn["kind"] == 1)
        first_post = self._counts["post"]
        streams = {
            "post": Table(
                Post,
                {
                    "author_id": drawn["user"][posts],
                    # Unique over the run's producer instances: (source, count) as one number.
                    "post_id": self.source * (1 << 40)
                    + np.arange(first_post, first_post + len(posts), dtype=np.int64),
                    "timestamp": stamps[posts],
                    "source": sources[posts],
                    "seq": seqs[posts],
                },
            ),
            "presence": Table(
                Presence,
                {
                    "user_id": drawn["user"][moves],
                    "online": drawn["online"][moves],
                    "timestamp": stamps[moves],
                    "source": sources[moves],
                    "seq": seqs[moves],
                },
            ),
        }
        self._counts["post"] += len(posts)
        self._counts["presence"] += len(moves)
        self._seq = seq + count
        return streams


SOCIAL = WorkloadType(
    name="social",
    description="posts of users who follow one another (a few celebrities), and users "
    "coming online and going, a stream each",
    params=SocialParams,
    streams=SOCIAL_KINDS,
    make=Social,
    event_types={"post": (Post,), "presence": (Presence,)},
    state_type=GeneratorPosition,
)
"""The ``social`` workload."""

ALL_WORKLOADS: dict[str, WorkloadType] = {**WORKLOADS, SOCIAL.name: SOCIAL}
"""Every workload ringflow ships, by name."""
