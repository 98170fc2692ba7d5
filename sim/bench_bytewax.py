# mypy: disallow-subclassing-any=False, untyped-calls-exclude=bytewax
# (Where bytewax is missing from the mypy environment, its classes are Any and subclassing them
# is all that the strict mode would flag; the imports' ignores cover the rest.)
"""Benchmark of Bytewax counting the events of ringflow's video site.

Standalone on purpose: it imports nothing from ringflow, only the standard library, numpy and
bytewax, so that ``ringflow bench`` can run it as a subprocess with whichever interpreter has
Bytewax installed, and compare its events/s with ringflow's own pipeline.

What it measures: one Bytewax 0.21 dataflow, run in-process on one worker (``run_main``) with
recovery off unless ``--recovery DIR`` is given, that

1. reads the events from a custom input source (one partition, ``FixedPartitionedSource``) that
   generates them batch by batch, vectorised with numpy, and emits one item per event: the tuple
   ``(video_id, kind, watch_ms, user_id, blogger_id, timestamp)``;
2. keys them by video id (``op.key_on``; Bytewax keys are strings);
3. folds each video's events into a dict of counts per kind and the sum of ``watch_ms``
   (``op.fold_final``, which emits each video's aggregate once the input is exhausted);
4. writes the aggregates to a ``TestingSink`` that collects them into a list.

The events are those of ringflow's ``video_site`` workload: ``--videos`` videos whose popularity
follows Zipf(``--zipf``) (the video of rank r is chosen with weight 1/r**zipf, ranks given to the
video ids by a seeded random permutation), each owned by one of ``--bloggers`` bloggers (each
blogger owns at least one), lasting 30,000..600,000 ms; per event a kind by the mix
view/watch/like/dislike/comment = 0.6/0.25/0.08/0.02/0.05, a user chosen uniformly among
``--users``, for a watch the milliseconds watched (up to the video's length, else 0), and event i
at i / 50,000 s. Everything derives from ``--seed``: the catalogue from one numpy Generator, each
batch from its own (seeded with the seed and the batch's index), so that a resumed run makes the
same events. Generation runs inside the timed dataflow, as a real source's reading would; measured
apart, it took some 0.35 us of the 1.9 us that an event cost in all on a 2-core machine.

The wall time is ``time.perf_counter`` around ``run_main`` alone (building the flow and the
catalogue are outside). The script prints exactly one JSON object on stdout::

    {"events": N, "seconds": S, "events_per_second": N / S, "videos": V,
     "total_counted": N, "bytewax": "0.21.1"}

and exits 0; 1 if the counts do not add up to the events, 2 on bad arguments, and 3, printing
``{"error": "bytewax is not installed"}``, where bytewax (or numpy) cannot be imported.

Bytewax goes into an environment of its own, apart from ringflow's::

    python -m venv /tmp/bytewax-env && /tmp/bytewax-env/bin/pip install bytewax==0.21.1 numpy
    /tmp/bytewax-env/bin/python sim/bench_bytewax.py --events 2000000 --seed 1

``--recovery DIR`` turns Bytewax's recovery on: DIR (absent or empty) is initialised with one
recovery partition (as ``python -m bytewax.recovery DIR 1`` would) and the run snapshots the
source's position and every changed video's aggregate at the end of each epoch
(``--epoch-interval`` seconds, Bytewax's default 10 when not given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

MISSING: list[str] = []
"""The packages that the benchmark needs and this interpreter lacks; ``main`` reports them."""
try:
    import bytewax.operators as op  # type: ignore[import-not-found, unused-ignore]
    from bytewax.dataflow import Dataflow  # type: ignore[import-not-found, unused-ignore]
    from bytewax.inputs import (  # type: ignore[import-not-found, unused-ignore]
        FixedPartitionedSource,
        StatefulSourcePartition,
    )
    from bytewax.recovery import (  # type: ignore[import-not-found, unused-ignore]
        RecoveryConfig,
        init_db_dir,
    )
    from bytewax.testing import (  # type: ignore[import-not-found, unused-ignore]
        TestingSink,
        run_main,
    )
except ImportError:
    MISSING.append("bytewax")
try:
    import numpy as np
    import numpy.typing as npt
except ImportError:
    MISSING.append("numpy")

KINDS: tuple[str, ...] = ("view", "watch", "like", "dislike", "comment")
"""The event kinds, in the order of ``MIX``."""
MIX: tuple[float, ...] = (0.6, 0.25, 0.08, 0.02, 0.05)
"""Relative weight of each kind."""
EVENT_RATE = 50_000
"""Events per second of event time: event i happens at i / EVENT_RATE seconds."""
MIN_LENGTH_MS = 30_000
MAX_LENGTH_MS = 600_000

Event = tuple[int, str, int, int, int, float]
"""``(video_id, kind, watch_ms, user_id, blogger_id, timestamp)``."""
Aggregate = dict[str, int]
"""One video's count per kind, and ``watch_ms``: the sum of its watches' milliseconds."""


class Catalog:
    """The videos: owner, length and popularity, derived from the seed alone."""

    def __init__(self, videos: int, bloggers: int, zipf: float, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        # Every blogger owns at least one video; which ones is shuffled.
        self.owner: npt.NDArray[np.int64] = rng.permutation(np.arange(videos) % bloggers)
        self.length_ms: npt.NDArray[np.int64] = rng.integers(
            MIN_LENGTH_MS, MAX_LENGTH_MS, size=videos, endpoint=True
        )
        # by_rank[r] is the video of popularity rank r + 1, chosen with weight 1 / (r + 1)**zipf.
        self.by_rank: npt.NDArray[np.int64] = rng.permutation(videos)
        weights = 1.0 / np.arange(1, videos + 1, dtype=np.float64) ** zipf
        self.rank_cdf: npt.NDArray[np.float64] = np.cumsum(weights) / weights.sum()
        kind_weights = np.asarray(MIX, dtype=np.float64)
        self.kind_cdf: npt.NDArray[np.float64] = np.cumsum(kind_weights) / kind_weights.sum()
        self.kind_names: npt.NDArray[np.object_] = np.asarray(KINDS, dtype=object)
        self.watch = KINDS.index("watch")


def generate(
    catalog: Catalog, users: int, seed: int, start: int, count: int, batch: int
) -> list[Event]:
    """Events ``start .. start + count - 1``, drawn by the Generator of batch ``start // batch``."""
    rng = np.random.default_rng([seed, 1, start // batch])
    videos = len(catalog.by_rank)
    ranks = np.minimum(
        np.searchsorted(catalog.rank_cdf, rng.random(count), side="right"), videos - 1
    )
    video = catalog.by_rank[ranks]
    kind = np.minimum(
        np.searchsorted(catalog.kind_cdf, rng.random(count), side="right"), len(KINDS) - 1
    )
    user = rng.integers(0, users, size=count)
    watched = (rng.random(count) * catalog.length_ms[video]).astype(np.int64)
    watch_ms = np.where(kind == catalog.watch, watched, 0)
    timestamp = np.arange(start, start + count, dtype=np.float64) / EVENT_RATE
    return list(
        zip(
            video.tolist(),
            catalog.kind_names[kind].tolist(),
            watch_ms.tolist(),
            user.tolist(),
            catalog.owner[video].tolist(),
            timestamp.tolist(),
            strict=True,
        )
    )


def video_site_source(
    events: int, catalog: Catalog, users: int, seed: int, batch: int
) -> FixedPartitionedSource[Event, int]:
    """A source of ``events`` video-site events, generated in batches of ``batch`` within the
    dataflow, from one partition so that they come out in order.

    Its classes are made here rather than at the top level, so that this module imports (and
    reports the missing package) where bytewax is not installed.
    """

    class VideoSitePartition(StatefulSourcePartition[Event, int]):
        """The one partition; its state is the index of the next event to emit."""

        def __init__(self, resume_state: int | None) -> None:
            self._next = 0 if resume_state is None else resume_state

        def next_batch(self) -> list[Event]:
            """Generate the next batch of events; raise ``StopIteration`` once all are out."""
            if self._next >= events:
                raise StopIteration
            count = min(batch, events - self._next)
            generated = generate(catalog, users, seed, self._next, count, batch)
            self._next += count
            return generated

        def snapshot(self) -> int:
            """The index of the next event to emit."""
            return self._next

    class VideoSiteSource(FixedPartitionedSource[Event, int]):
        def list_parts(self) -> list[str]:
            """The one partition."""
            return ["video-site"]

        def build_part(
            self, step_id: str, for_part: str, resume_state: int | None
        ) -> VideoSitePartition:
            """Start at the first event, or where the snapshot says on a resume."""
            return VideoSitePartition(resume_state)

    return VideoSiteSource()


def video_key(event: Event) -> str:
    """The key of an event: its video id (Bytewax keys are strings)."""
    return str(event[0])


def new_aggregate() -> Aggregate:
    """A video's aggregate before its first event."""
    return {"view": 0, "watch": 0, "like": 0, "dislike": 0, "comment": 0, "watch_ms": 0}


def add_event(aggregate: Aggregate, event: Event) -> Aggregate:
    """Count one event into its video's aggregate."""
    aggregate[event[1]] += 1
    aggregate["watch_ms"] += event[2]
    return aggregate


def build_flow(
    source: FixedPartitionedSource[Event, int], results: list[tuple[str, Aggregate]]
) -> Dataflow:
    """The dataflow: count per video and kind, sum ``watch_ms``, collect into ``results``."""
    flow = Dataflow("video_counts")
    events = op.input("events", flow, source)
    keyed = op.key_on("by_video", events, video_key)
    totals = op.fold_final("count", keyed, new_aggregate, add_event)
    op.output("collect", totals, TestingSink(results))
    return flow


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; every count must be positive."""
    parser = argparse.ArgumentParser(description="Bytewax counting video-site events.")
    parser.add_argument("--events", type=int, required=True, help="events to count")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--videos", type=int, default=1000, help="videos in the catalogue")
    parser.add_argument("--bloggers", type=int, default=10, help="bloggers owning them")
    parser.add_argument("--users", type=int, default=1_000_000, help="users acting on them")
    parser.add_argument("--zipf", type=float, default=1.1, help="skew of video popularity")
    parser.add_argument("--batch", type=int, default=1000, help="events per input batch")
    parser.add_argument(
        "--recovery",
        type=Path,
        metavar="DIR",
        help="turn recovery on, with its database in DIR (absent or empty)",
    )
    parser.add_argument(
        "--epoch-interval",
        type=float,
        metavar="SECONDS",
        help="length of an epoch (Bytewax's default: 10); with recovery, of a snapshot interval",
    )
    args = parser.parse_args(argv)
    for name in ("events", "videos", "bloggers", "users", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.bloggers > args.videos:
        parser.error("--bloggers cannot exceed --videos")
    if not args.zipf >= 0:
        parser.error("--zipf must be >= 0")
    if args.epoch_interval is not None and not args.epoch_interval > 0:
        parser.error("--epoch-interval must be > 0")
    recovery = args.recovery
    if (
        recovery is not None
        and recovery.exists()
        and (not recovery.is_dir() or any(recovery.iterdir()))
    ):
        parser.error(f"--recovery {args.recovery} must be absent or an empty directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its JSON result, and return the exit code."""
    if MISSING:
        print(json.dumps({"error": f"{MISSING[0]} is not installed"}))
        return 3
    args = parse_args(argv)
    catalog = Catalog(args.videos, args.bloggers, args.zipf, args.seed)
    source = video_site_source(args.events, catalog, args.users, args.seed, args.batch)
    results: list[tuple[str, Aggregate]] = []
    flow = build_flow(source, results)
    recovery = None
    if args.recovery is not None:
        args.recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(args.recovery, 1)
        recovery = RecoveryConfig(args.recovery)
    epoch = None if args.epoch_interval is None else timedelta(seconds=args.epoch_interval)

    started = time.perf_counter()
    run_main(flow, epoch_interval=epoch, recovery_config=recovery)
    seconds = time.perf_counter() - started

    counted = sum(aggregate[kind] for _, aggregate in results for kind in KINDS)
    print(
        json.dumps(
            {
                "events": args.events,
                "seconds": seconds,
                "events_per_second": args.events / seconds,
                "videos": len(results),
                "total_counted": counted,
                "bytewax": version("bytewax"),
            }
        )
    )
    return 0 if counted == args.events else 1


if __name__ == "__main__":
    sys.exit(main())
