"""Running a topology file: the engine behind ``ringflow run``."""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from actors import SupervisionError
from topology import Pipeline, Registry, Topology, TopologyError

from .processors import PROCESSORS
from .report import build_report
from .workloads import WORKLOADS

REGISTRY = Registry(workloads=WORKLOADS, processors=PROCESSORS)
"""Every workload and processor ringflow ships."""


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        TopologyError: The file cannot be read, or it has problems (every one is listed).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError([f"cannot read the file: {exc.strerror}"], str(path)) from None
    topology = Topology.from_yaml(text, str(path))
    problems = REGISTRY.check(topology)
    if problems:
        raise TopologyError(problems, str(path))
    return topology


@contextmanager
def relaxed_gc() -> Iterator[None]:
    """Collect garbage rarely while a run is going, and restore the settings afterwards.

    A run keeps tens of thousands of records alive in its rings; with the default thresholds
    the cyclic collector scans them again every few hundred allocations, which measured here
    cost about a fifth of a run's time. Records hold no cycles, so rare collections lose
    nothing. Objects made before the run are frozen out of collections altogether.
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@attrs.define(eq=False)
class RunResult:
    """What :func:`run_pipeline` hands back."""

    report: dict[str, Any]
    pipeline: Pipeline


def run_pipeline(
    pipeline: Pipeline,
    *,
    on_refresh: Callable[[Pipeline, float], None] | None = None,
    refresh_every: float = 0.25,
    handle_sigint: bool = False,
) -> RunResult:
    """Run a built pipeline to completion and return its report.

    Args:
        pipeline: What to run.
        on_refresh: Called about every ``refresh_every`` real seconds with the pipeline and the
            run's clock, for a live view.
        refresh_every: Real seconds between refreshes and timeline samples.
        handle_sigint: Stop cleanly on Ctrl-C with a partial report (status ``interrupted``).
    """
    samples: list[list[float]] = []
    state = {"next": 0.0}

    def sample() -> None:
        now = trio.current_time()
        samples.append(
            [
                round(now - (pipeline.started_at or 0.0), 6),
                round(time.perf_counter() - (pipeline.wall_started or time.perf_counter()), 6),
                pipeline.events_produced,
                pipeline.events_consumed,
                pipeline.total_lag(),
            ]
        )
        if on_refresh is not None:
            on_refresh(pipeline, now)

    def monitor() -> None:
        wall = time.perf_counter()
        if wall >= state["next"]:
            state["next"] = wall + refresh_every
            sample()

    async def main() -> dict[str, Any]:
        status, error = "completed", None
        interrupted = trio.Event()
        async with trio.open_nursery() as nursery:
            if handle_sigint:
                nursery.start_soon(_stop_on_sigint, nursery.cancel_scope, interrupted)
            try:
                await pipeline.run(monitor)
            except SupervisionError as exc:
                status, error = "failed", str(exc)
            nursery.cancel_scope.cancel()  # the run is over: stop listening for Ctrl-C
        if interrupted.is_set():
            status = "interrupted"
        sample()
        return build_report(pipeline, status=status, error=error, samples=samples)

    clock = (
        trio.testing.MockClock(autojump_threshold=0)
        if (pipeline.topology.clock == "virtual")
        else None
    )
    with relaxed_gc():
        report = trio.run(main, clock=clock)
    return RunResult(report, pipeline)


async def _stop_on_sigint(scope: trio.CancelScope, interrupted: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            interrupted.set()
            scope.cancel()
            return
