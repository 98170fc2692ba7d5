"""Running a topology file: the engine behind ``ringflow run`` and ``ringflow node``.

:func:`run_pipeline` runs a built pipeline to its end in a :class:`Run`, which holds what
the run learns on the way (samples, rollbacks, the signal that stopped it) and makes the
report of it.
"""

from __future__ import annotations

import functools
import gc
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import redis.exceptions
import trio
import trio.testing
import trio_asyncio

from actors import (
    GatewayError,
    RedisLogger,
    SupervisionError,
    make_client,
    real_time_limit,
    redact,
)
from topology import (
    CheckpointError,
    CheckpointSettings,
    DamagedEpoch,
    EpochInfo,
    Pipeline,
    Registry,
    Segment,
    Topology,
    TopologyError,
    UndeliveredError,
)

from .events import EVENTS
from .processors import PROCESSORS
from .redis_logging import (
    LoggingUnavailable,
    LogSettings,
    attach_logger,
    describe_redis_error,
    gateway_event,
)
from .report import (
    CheckpointReport,
    DamagedEpochReport,
    LoggingOff,
    LoggingReport,
    Report,
    Rollback,
    Status,
    build_report,
)
from .resume import completes, let_go, rebuild
from .social import ALL_WORKLOADS
from .stall import watch_progress

REGISTRY = Registry(workloads=ALL_WORKLOADS, processors=PROCESSORS, events=EVENTS)
"""Every workload and processor ringflow ships."""

MAX_ROLLBACKS = 5
"""How many times one ``ringflow run`` rolls back to its last checkpoint before giving up."""


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        TopologyError: The file cannot be read, or it has problems (every one is listed).
    """
    topology = Topology.from_file(path)
    problems = REGISTRY.check(topology)
    if problems:
        raise TopologyError(problems, str(path))
    return topology


def refuse_served(topology: Topology, path: Path, command: str) -> None:
    """Refuse to ``command`` a topology that takes events over HTTP.

    Raises:
        TopologyError: It has an ``http`` section.
    """
    if topology.http is not None:
        raise TopologyError(
            [
                f"$.http: this topology takes its events from clients over HTTP, which "
                f"'ringflow {command}' cannot simulate; serve it with 'ringflow serve {path}'"
            ],
            str(path),
        )


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

    report: Report
    pipeline: Pipeline
    refused: GatewayError | None = None
    """When a peer node refused this one for good (wrong token, version, disagreement)."""


def run_pipeline(
    pipeline: Pipeline,
    *,
    checkpoints: CheckpointSettings | None = None,
    logging: LogSettings | None = None,
    on_refresh: Callable[[Pipeline, float], None] | None = None,
    refresh_every: float = 0.25,
    handle_sigint: bool = False,
    on_logger: Callable[[RedisLogger], None] | None = None,
    on_gateway_error: Callable[[str], None] | None = None,
) -> RunResult:
    """Run a built pipeline to completion and return its report.

    With checkpoints, an actor that crashes rolls the whole topology back to the newest
    epoch (at most :data:`MAX_ROLLBACKS` times), and the run ends with a final epoch.

    Args:
        pipeline: What to run (possibly restored from a checkpoint).
        checkpoints: Where and when to write epochs; None for no checkpoints.
        logging: Where to log every event; None for no logging.
        on_refresh: Called about every ``refresh_every`` real seconds with the pipeline and the
            run's clock, for a live view.
        refresh_every: Real seconds between refreshes and timeline samples.
        handle_sigint: Stop cleanly on Ctrl-C or SIGTERM (after a final epoch, with
            checkpoints) with a partial report (status ``interrupted``, ``stopped_by`` naming
            the signal).
        on_logger: Called with the run's logger once logging has started, for a view of its
            :meth:`~actors.redislog.RedisLogger.statistics`.
        on_gateway_error: Called with each problem the node's gateway meets (a connection
            refused, a peer's frame that broke the protocol), with or without logging, so that
            the operator sees it.

    Raises:
        LoggingUnavailable: Redis cannot be reached at start and the topology says to fail.
    """
    run = Run(
        pipeline,
        checkpoints=checkpoints,
        logging=logging,
        on_refresh=on_refresh,
        refresh_every=refresh_every,
        handle_sigint=handle_sigint,
        on_logger=on_logger,
        on_gateway_error=on_gateway_error,
    )
    try:
        with relaxed_gc():
            report = trio.run(run.main, clock=run.clock)
    finally:
        if checkpoints is not None:
            checkpoints.store.close()
            let_go(checkpoints.store.path.parent)
    return RunResult(report, run.pipeline, run.refused)


@attrs.define(eq=False)
class Run:
    """One process's run of a pipeline, from its start (fresh or resumed) to its report.

    Use :func:`run_pipeline`; this holds what the run learns on the way. The pipeline
    running now is replaced by a rebuilt one on every rollback.
    """

    _pipeline: Pipeline
    _checkpoints: CheckpointSettings | None = None
    _logging: LogSettings | None = None
    _on_refresh: Callable[[Pipeline, float], None] | None = None
    _refresh_every: float = 0.25
    _handle_sigint: bool = False
    _on_logger: Callable[[RedisLogger], None] | None = None
    _on_gateway_error: Callable[[str], None] | None = None
    _on_pipeline: Callable[[Pipeline], None] | None = None
    """Called with every pipeline the run is about to run: the first, and each rebuilt one."""
    _first: Pipeline = attrs.field(init=False)
    """The pipeline the run started with (the one given, not a rebuilt one)."""
    _resumed: EpochInfo | None = attrs.field(init=False)
    """The epoch the run resumed from, if it did."""
    _complete: bool = attrs.field(init=False)
    """Resumed from the final epoch of a completed run: nothing is left to do, and nothing
    new is written. This holds for a node too: it completes only once no other node needs it
    (a broker when every group has read everything, producers when their finish is durable
    on the broker, consumers when they have had the end)."""
    _earlier: tuple[Segment, ...] = attrs.field(init=False)
    """The segments of the run before this process, from the epoch it resumed from."""
    _wall_before: float = attrs.field(init=False)
    """Real seconds the earlier segments took."""
    _damaged: list[DamagedEpoch] = attrs.field(init=False)
    """The damaged epochs passed over to resume."""
    _clock: trio.testing.MockClock | None = attrs.field(init=False)
    """The virtual clock the run goes on; None on the real clock."""
    _samples: list[list[int | float]] = attrs.field(init=False, factory=list)
    _next_sample: float = attrs.field(init=False, default=0.0)
    _rollbacks: list[Rollback] = attrs.field(init=False, factory=list)
    _logging_report: LoggingReport | LoggingOff | None = attrs.field(init=False, default=None)
    _refused: GatewayError | None = attrs.field(init=False, default=None)
    _stalled: str | None = attrs.field(init=False, default=None)
    _stopped_by: str | None = attrs.field(init=False, default=None)
    _stop_serving: bool = attrs.field(init=False, default=False)
    """A served topology was asked to stop: a pipeline rebuilt after that stops too."""

    def __attrs_post_init__(self) -> None:
        self._first = self._pipeline
        self._resumed = self._pipeline.restored_from
        self._complete = (
            self._resumed is not None and self._resumed.completed and completes(self._pipeline)
        )
        self._earlier = () if self._resumed is None else tuple(self._resumed.segments)
        self._wall_before = sum(s.wall_seconds for s in self._earlier)
        self._damaged = [] if self._checkpoints is None else list(self._checkpoints.store.damaged)
        self._clock = None
        topology = self._pipeline.topology
        if topology.clock == "virtual" and self._pipeline.placement is None:  # nodes: real time
            self._clock = trio.testing.MockClock(autojump_threshold=0)
            if self._resumed is not None:
                self._clock.jump(self._resumed.sim_time)

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline running now (or that ran last)."""
        return self._pipeline

    @property
    def clock(self) -> trio.testing.MockClock | None:
        """The clock to run on: a virtual one, or None for the real clock."""
        return self._clock

    @property
    def refused(self) -> GatewayError | None:
        """The refusal by a peer node that ended the run, if one did."""
        return self._refused

    async def main(self) -> Report:
        """Run to the end inside ``trio.run``; return the report.

        Raises:
            LoggingUnavailable: Redis cannot be reached and the topology says to fail then.
        """
        if self._logging is None:
            return await self._run_and_report(None)
        async with trio_asyncio.open_loop():
            result = await self._run_logged(self._logging)
        if isinstance(result, LoggingUnavailable):
            raise result  # raised out here, not as an exception group from the loop's nursery
        return result

    def _sample(self) -> None:
        current = self._pipeline
        now = trio.current_time()
        self._samples.append(
            [
                round(now - current.origin, 6),
                round(
                    self._wall_before
                    + time.perf_counter()
                    - (current.wall_started or time.perf_counter()),
                    6,
                ),
                current.events_produced,
                current.events_consumed,
                current.total_lag(),
            ]
        )
        if self._on_refresh is not None:
            self._on_refresh(current, now)

    def _monitor(self) -> None:
        wall = time.perf_counter()
        if wall >= self._next_sample:
            self._next_sample = wall + self._refresh_every
            self._sample()

    async def _run_logged(self, settings: LogSettings) -> Report | LoggingUnavailable:
        pipeline = self._first
        if settings.unavailable is not None:
            self._logging_report = LoggingOff(reason=settings.unavailable)
            return await self._run_and_report(None)
        try:
            client = make_client(settings.url)
        except ValueError as exc:
            message = f"Redis at {redact(settings.url)} is unavailable: {exc}"
            if settings.fail_if_unavailable:
                return LoggingUnavailable(message)
            self._logging_report = LoggingOff(reason=message)
            return await self._run_and_report(None)
        logger = RedisLogger(
            client, settings.run_id, url=redact(settings.url), maxlen=settings.maxlen
        )
        problem, segment = None, 1
        try:
            async with real_time_limit(5) as limit:
                segment = await logger.describe_run(
                    topology=pipeline.topology.name,
                    seed=pipeline.seed,
                    status="running",
                    started_at=time.time(),
                    events_planned=pipeline.events_planned,
                )
            if limit.cancelled_caught:
                problem = "no answer within 5 s"
        except (redis.exceptions.RedisError, OSError) as exc:
            problem = describe_redis_error(exc)
        if problem is not None:
            message = f"Redis at {redact(settings.url)} is unavailable: {problem}"
            await trio_asyncio.aio_as_trio(client.aclose)()
            if settings.fail_if_unavailable:
                return LoggingUnavailable(message)
            self._logging_report = LoggingOff(reason=message)
            return await self._run_and_report(None)
        attach_logger(pipeline, logger, self._clock)
        logger.emit(
            "meta",
            event="run_started",
            topology=pipeline.topology.name,
            seed=pipeline.seed,
            events_planned=pipeline.events_planned,
            resumed_from_epoch=-1
            if pipeline.restored_from is None
            else pipeline.restored_from.epoch,
            segment=segment,
        )
        if self._on_logger is not None:
            self._on_logger(logger)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(logger.run)
            report = await self._run_and_report(logger)
            nursery.cancel_scope.cancel()  # the final flush below is the only writer now
            if self._clock is not None:
                # Nothing runs on the virtual clock now; an autojumping clock would spin a core
                # while the flush waits on Redis in real time.
                self._clock.autojump_threshold = math.inf
            logger.emit(
                "meta",
                event="run_ended",
                status=report.status,
                events_produced=report.events_produced,
                events_consumed=report.events_consumed,
                digest=report.digest or "",
            )
            with trio.CancelScope(shield=True):
                async with real_time_limit(settings.flush_timeout):
                    await logger.flush(
                        status=report.status, ended_at=time.time(), digest=report.digest or ""
                    )
            nursery.cancel_scope.cancel()
        await trio_asyncio.aio_as_trio(client.aclose)()
        stats = logger.statistics()
        logged = LoggingReport(
            url=redact(settings.url),
            run_id=settings.run_id,
            segment=segment,
            written=stats.written,
            records=stats.records,
            dropped=stats.dropped,
            unwritten=stats.pending,
            failures=stats.failures,
            last_error=stats.last_error,
        )
        return attrs.evolve(report, logging=logged)

    async def _run_and_report(self, logger: RedisLogger | None) -> Report:
        status: Status = "completed"
        error: str | None = None
        interrupted = trio.Event()
        wall_started = time.perf_counter()
        writing = None if self._complete else self._checkpoints
        if writing is not None:
            writing.store.begin_segment(self._resumed)
        async with trio.open_nursery() as nursery:
            if self._handle_sigint:
                nursery.start_soon(self._stop_on_sigint, nursery.cancel_scope, interrupted, writing)
            # A node may wait for its peers as long as needed, and a served topology for its
            # clients (it answers them 503 while its rings are full).
            if self._first.placement is None and self._first.intake is None:
                nursery.start_soon(
                    watch_progress,
                    lambda: self._pipeline,
                    functools.partial(self._on_stall, nursery.cancel_scope),
                )
            while True:
                current = self._pipeline
                if self._complete and current.placement is not None:
                    break  # its gateway would wait for peers that have all finished
                if current.gateway is not None:
                    current.gateway.on_event = functools.partial(
                        gateway_event, logger, self._on_gateway_error
                    )
                for delivery in current.deliveries.values():
                    delivery.now = current.event_time  # dead letters' times
                    if logger is not None:
                        delivery.on_retry = functools.partial(_log_retry, logger)
                for part in (*current.sources.values(), *current.processors.values()):
                    if hasattr(part, "now"):
                        part.now = current.event_time  # dead letters' times
                    if logger is not None and hasattr(part, "on_problem"):
                        part.on_problem = functools.partial(_log_problem, logger)
                if self._on_pipeline is not None:
                    self._on_pipeline(current)
                if self._stop_serving:
                    current.stop()
                try:
                    await current.run(self._monitor, writing)
                    break
                except (SupervisionError, CheckpointError) as exc:
                    if logger is not None:
                        logger.emit("errors", event="crash", error=str(exc)[:2000])
                    refused = _refusal(exc)
                    if refused is not None:  # retrying from a checkpoint cannot fix it
                        self._refused = refused
                        status, error = "failed", str(refused)  # the rest is the supervisor's
                        break
                    if isinstance(exc.__cause__, UndeliveredError):  # fail fast, as asked
                        status, error = "failed", str(exc.__cause__)
                        break
                    if writing is None or len(self._rollbacks) >= MAX_ROLLBACKS:
                        status, error = "failed", str(exc)
                        break
                    try:
                        self._roll_back(current, writing, exc, logger)
                    except CheckpointError as lost:
                        status, error = "failed", f"{exc}; then {lost}"
                        break
            nursery.cancel_scope.cancel()  # the run is over: stop listening for Ctrl-C
        if interrupted.is_set():
            status = "interrupted"
        elif self._stalled is not None:
            status, error = "failed", self._stalled
        final = self._pipeline
        final.wall_started = wall_started
        last = final.epochs[-1] if final.epochs else None
        if (
            status == "completed"
            and writing is not None
            and last is not None
            and last.final
            and final.intake is None
        ):
            try:
                writing.store.mark_completed(last.epoch)
            except CheckpointError as exc:
                if logger is not None:
                    logger.emit("errors", event="checkpoint", error=str(exc)[:2000])
        self._sample()
        return build_report(
            final,
            status=status,
            error=error,
            samples=self._samples,
            earlier=self._earlier,
            resumed=self._resumed,
            already_complete=self._complete,
            stopped_by=self._stopped_by,
            checkpoints=self._checkpoint_report(final),
            logging=self._logging_report,
        )

    def _roll_back(
        self,
        current: Pipeline,
        writing: CheckpointSettings,
        exc: BaseException,
        logger: RedisLogger | None,
    ) -> None:
        """Replace the crashed pipeline by one rebuilt from the newest intact epoch (or from
        the start, when none was written).

        Raises:
            CheckpointError: No epoch can be loaded.
        """
        rebuilt = writing.store.load_intact(functools.partial(rebuild, current)) or rebuild(
            current, None
        )
        back = rebuilt.restored_from
        to_epoch = None if back is None else back.epoch
        self._rollbacks.append(
            Rollback(
                error=str(exc),
                to_epoch=to_epoch,
                at=trio.current_time() - current.origin,
                damaged_epochs=[str(d) for d in writing.store.damaged],
            )
        )
        rebuilt.epochs = current.epochs
        self._pipeline = rebuilt
        if logger is not None:
            attach_logger(rebuilt, logger, self._clock)
            logger.emit("meta", event="rollback", to_epoch=-1 if to_epoch is None else to_epoch)

    def _checkpoint_report(self, pipeline: Pipeline) -> CheckpointReport | None:
        if self._checkpoints is None:
            return None
        statistics = pipeline.statistics()
        return CheckpointReport(
            database=str(self._checkpoints.store.path),
            resumed_from_epoch=statistics.restored_from,
            damaged_epochs=[DamagedEpochReport.of(d) for d in self._damaged],
            epochs_written=statistics.epochs_written,
            last_epoch=statistics.last_epoch,
            write_seconds_total=round(statistics.write_seconds, 6),
            rollbacks=self._rollbacks,
            final_epoch=statistics.final_epoch,
        )

    def _on_stall(self, scope: trio.CancelScope, reason: str) -> None:
        self._stalled = reason
        scope.cancel()

    async def _stop_on_sigint(
        self,
        scope: trio.CancelScope,
        interrupted: trio.Event,
        checkpoints: CheckpointSettings | None,
    ) -> None:
        # SIGTERM (what docker stop and process managers send) stops the run as Ctrl-C does.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self._stopped_by = signal.Signals(signum).name
                current = self._pipeline
                producers = current.topology.producers.values()
                watching = any(p.files and p.files.idle is None for p in producers)
                if (
                    current.intake is not None
                    and not current.intake.stopping
                    and (current.node is None or not current.topics)
                ) or (watching and not self._stop_serving):
                    # A served topology stops taking events (or watching its folders) and
                    # ends as a run whose producers are done: its rings drained, a final
                    # epoch (a node with an API and no topics: once the topics' nodes hold
                    # what it sent). A second signal stops it at once. A node holding topics
                    # that APIs write to stops as any node does: a final epoch keeps them.
                    self._stop_serving = True
                    self._pipeline.stop()
                    continue
                interrupted.set()
                if checkpoints is not None:
                    # A final epoch first, so running the same command again carries on from
                    # here.
                    with trio.move_on_after(checkpoints.final_timeout):
                        await self._pipeline.checkpoint(
                            checkpoints.store,
                            final=True,
                            in_thread=checkpoints.in_thread,
                            last=True,
                        )
                scope.cancel()
                return


def _log_retry(logger: RedisLogger, message: str) -> None:
    # A sink's failed attempt that will be retried, in the errors stream.
    logger.emit("errors", event="delivery_retry", error=message[:2000])


def _log_problem(logger: RedisLogger, entry: dict[str, Any]) -> None:
    # A bad line or a file that could not be read, in the errors stream.
    logger.emit("errors", **entry)


def _refusal(exc: BaseException) -> GatewayError | None:
    # The refusal by a peer node behind a crash, if that is what it was.
    cause = exc.__cause__
    if isinstance(cause, GatewayError) and cause.code is not None:
        return cause
    return None
