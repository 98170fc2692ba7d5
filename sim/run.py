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
from topology import (
    CheckpointError,
    CheckpointSettings,
    CheckpointSpec,
    CheckpointStore,
    Pipeline,
    Registry,
    Topology,
    TopologyError,
)

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


MAX_ROLLBACKS = 5
"""How many times one ``ringflow run`` rolls back to its last checkpoint before giving up."""


def open_checkpoints(
    pipeline: Pipeline, state: Path | None
) -> tuple[CheckpointSettings | None, Pipeline]:
    """Set up checkpoints for ``pipeline`` and resume from its newest epoch if there is one.

    Checkpoints are on when the topology has a ``checkpoint`` section or ``state`` is given.
    The folder is the section's ``path``, else ``state``, else ``state/NAME``.

    Returns:
        The settings (None when checkpoints are off) and the pipeline to run: a new one
        restored from the newest epoch, or the one given.

    Raises:
        CheckpointError: The folder cannot be used (another topology, a newer schema, a
            damaged database, no permission); nothing in it was changed.
    """
    spec = pipeline.topology.checkpoint
    if spec is None and state is None:
        return None, pipeline
    spec = spec or CheckpointSpec()
    folder = Path(spec.path) if spec.path else state or Path("state") / pipeline.topology.name
    store = CheckpointStore.open(
        folder, pipeline.fingerprint, keep=spec.keep, name=pipeline.topology.name
    )
    settings = CheckpointSettings(
        store,
        every=spec.every,
        every_records=spec.every_records,
        in_thread=pipeline.topology.clock == "real",
    )
    loaded = store.load()
    if loaded is not None:
        pipeline = _rebuild(pipeline, loaded)
    return settings, pipeline


def _rebuild(pipeline: Pipeline, loaded: Any) -> Pipeline:
    return Pipeline.build(
        pipeline.topology,
        pipeline.registry,
        seed=pipeline.seed,
        events=pipeline.events_override,
        restore=loaded,
    )


def run_pipeline(
    pipeline: Pipeline,
    *,
    checkpoints: CheckpointSettings | None = None,
    on_refresh: Callable[[Pipeline, float], None] | None = None,
    refresh_every: float = 0.25,
    handle_sigint: bool = False,
) -> RunResult:
    """Run a built pipeline to completion and return its report.

    With checkpoints, an actor that crashes rolls the whole topology back to the newest
    epoch (at most :data:`MAX_ROLLBACKS` times), and the run ends with a final epoch.

    Args:
        pipeline: What to run (possibly restored from a checkpoint).
        checkpoints: Where and when to write epochs; None for no checkpoints.
        on_refresh: Called about every ``refresh_every`` real seconds with the pipeline and the
            run's clock, for a live view.
        refresh_every: Real seconds between refreshes and timeline samples.
        handle_sigint: Stop cleanly on Ctrl-C (after a final epoch, with checkpoints) with a
            partial report (status ``interrupted``).
    """
    samples: list[list[float]] = []
    state: dict[str, Any] = {"next": 0.0, "pipeline": pipeline, "rollbacks": []}

    def sample() -> None:
        current: Pipeline = state["pipeline"]
        now = trio.current_time()
        samples.append(
            [
                round(now - (current.started_at or 0.0), 6),
                round(time.perf_counter() - (current.wall_started or time.perf_counter()), 6),
                current.events_produced,
                current.events_consumed,
                current.total_lag(),
            ]
        )
        if on_refresh is not None:
            on_refresh(current, now)

    def monitor() -> None:
        wall = time.perf_counter()
        if wall >= state["next"]:
            state["next"] = wall + refresh_every
            sample()

    async def main() -> dict[str, Any]:
        status, error = "completed", None
        interrupted = trio.Event()
        wall_started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            if handle_sigint:
                nursery.start_soon(
                    _stop_on_sigint, nursery.cancel_scope, interrupted, state, checkpoints
                )
            while True:
                current: Pipeline = state["pipeline"]
                try:
                    await current.run(monitor, checkpoints)
                    break
                except (SupervisionError, CheckpointError) as exc:
                    if checkpoints is None or len(state["rollbacks"]) >= MAX_ROLLBACKS:
                        status, error = "failed", str(exc)
                        break
                    loaded = checkpoints.store.load()
                    state["rollbacks"].append(
                        {
                            "error": str(exc),
                            "to_epoch": loaded[0].epoch if loaded else None,
                            "at": trio.current_time(),
                        }
                    )
                    rebuilt = _rebuild(current, loaded) if loaded else _rebuild(current, None)
                    rebuilt.epochs = current.epochs
                    state["pipeline"] = rebuilt
            nursery.cancel_scope.cancel()  # the run is over: stop listening for Ctrl-C
        if interrupted.is_set():
            status = "interrupted"
        final: Pipeline = state["pipeline"]
        final.wall_started = wall_started
        sample()
        report = build_report(final, status=status, error=error, samples=samples)
        report["checkpoints"] = _checkpoint_report(final, checkpoints, state["rollbacks"])
        return report

    clock = None
    if pipeline.topology.clock == "virtual":
        clock = trio.testing.MockClock(autojump_threshold=0)
        if pipeline.restored_from is not None:
            clock.jump(pipeline.restored_from.sim_time)
    try:
        with relaxed_gc():
            report = trio.run(main, clock=clock)
    finally:
        if checkpoints is not None:
            checkpoints.store.close()
    return RunResult(report, state["pipeline"])


def _checkpoint_report(
    pipeline: Pipeline, checkpoints: CheckpointSettings | None, rollbacks: list[Any]
) -> dict[str, Any] | None:
    if checkpoints is None:
        return None
    last = pipeline.epochs[-1] if pipeline.epochs else None
    return {
        "database": str(checkpoints.store.path),
        "resumed_from_epoch": None
        if pipeline.restored_from is None
        else pipeline.restored_from.epoch,
        "epochs_written": len(pipeline.epochs),
        "last_epoch": None if last is None else last.epoch,
        "write_seconds_total": round(sum(e.write_seconds for e in pipeline.epochs), 6),
        "rollbacks": rollbacks,
    }


async def _stop_on_sigint(
    scope: trio.CancelScope,
    interrupted: trio.Event,
    state: dict[str, Any],
    checkpoints: CheckpointSettings | None,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            interrupted.set()
            if checkpoints is not None:
                # A final epoch first, so running the same command again carries on from here.
                with trio.move_on_after(checkpoints.final_timeout):
                    await state["pipeline"].checkpoint(
                        checkpoints.store, final=True, in_thread=checkpoints.in_thread
                    )
            scope.cancel()
            return
