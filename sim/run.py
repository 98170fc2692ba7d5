"""Running a topology file: the engine behind ``ringflow run``."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import redis
import redis.exceptions
import trio
import trio.testing
import trio_asyncio

from actors import (
    GatewayError,
    RedisLogger,
    RingflowError,
    SupervisionError,
    make_client,
    real_time_limit,
    redact,
)
from topology import (
    CheckpointError,
    CheckpointSettings,
    CheckpointSpec,
    CheckpointStore,
    DamagedEpoch,
    EpochInfo,
    Pipeline,
    Registry,
    Topology,
    TopologyError,
)

from .processors import PROCESSORS
from .report import build_report
from .stall import watch_progress
from .workloads import WORKLOADS

REGISTRY = Registry(workloads=WORKLOADS, processors=PROCESSORS)


class LoggingUnavailable(RingflowError):
    """Redis could not be reached at start and the topology says to fail then."""


def describe_redis_error(exc: BaseException) -> str:
    """Turn a Redis error into advice (never showing a password)."""
    text = str(exc)
    password_problem = ("WRONGPASS", "NOAUTH", "username-password", "invalid password")
    if isinstance(exc, redis.exceptions.AuthenticationError) or any(
        p in text for p in password_problem
    ):
        return "authentication failed: check the user and password in the URL"
    if isinstance(exc, redis.exceptions.ReadOnlyError) or "READONLY" in text:
        return "it is a read-only replica: point redis.url at the primary"
    if isinstance(exc, redis.exceptions.ConnectionError | OSError):
        return f"cannot connect ({text.split(' connecting to ')[0]}); is it running?"
    return f"{type(exc).__name__}: {text}"


"""Every workload and processor ringflow ships."""


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
    refused: GatewayError | None = None
    """When a peer node refused this one for good (wrong token, version, disagreement)."""


@attrs.frozen
class LogSettings:
    """Where a run logs: a Redis URL, the run's id, and the streams' length."""

    url: str
    run_id: str
    maxlen: int = 100_000
    fail_if_unavailable: bool = False
    flush_timeout: float = 5.0
    """Real seconds the end of a run may spend writing what is left (Redis away: retrying)."""
    unavailable: str | None = None
    """Why Redis is not used, when a check before the run found it unavailable: the run then
    logs nothing and its report gives this reason."""


def probe_redis(url: str, *, timeout: float = 5.0) -> str | None:
    """Check, before a run, that the Redis at ``url`` answers and takes writes.

    Returns:
        None when it does, else one line saying what is wrong (never showing a password).
    """
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:
        return f"Redis at {redact(url)} is unavailable: {redact(url)} is not a Redis URL: {exc}"
    try:
        with client:
            client.ping()
            # A write that changes nothing: a read-only replica refuses it.
            client.delete("ringflow:probe")
    except (redis.exceptions.RedisError, OSError, ValueError) as exc:
        return f"Redis at {redact(url)} is unavailable: {describe_redis_error(exc)}"
    return None


def new_run_id(name: str) -> str:
    """Return a fresh id for a run of topology ``name``: its name, the UTC time, a random tag."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{name}-{stamp}-{os.urandom(2).hex()}"


RUN_ID_FILE = "run-id"
"""The file in a state folder naming the run whose log the folder's segments share."""


def run_id_for(folder: Path, name: str, *, resumed: bool) -> str:
    """Return the run id to log under: a run resumed from a checkpoint of ``folder`` logs on
    under the id its earlier segments used (kept in ``folder/run-id``); any other run gets a
    new one, which is kept there for its own resumed segments."""
    path = folder / RUN_ID_FILE
    if resumed:
        try:
            known = path.read_text().strip()
        except OSError:
            known = ""
        if known.startswith(f"{name}-"):
            return known
    run_id = new_run_id(name)
    if folder.is_dir():
        with contextlib.suppress(OSError):
            path.write_text(run_id + "\n")
    return run_id


def attach_logger(pipeline: Pipeline, logger: RedisLogger) -> None:
    """Send the pipeline's events to ``logger``: accepted batches (``incoming``), delivered
    batches (``outgoing``), rebalances and epochs (``meta``)."""
    for name, topic in pipeline.topics.items():
        for partition in topic.partitions:
            partition.on_append = functools.partial(_incoming, logger, name)
    for topic_name, group in pipeline.local_groups():
        group.on_deliver = functools.partial(_outgoing, logger, group.name, topic_name)
        group.on_rebalance = functools.partial(_rebalanced, logger, group.name, topic_name)

    def epoch(info: EpochInfo) -> None:
        logger.emit(
            "meta",
            event="checkpoint",
            epoch=info.epoch,
            sim_time=info.sim_time,
            ring_records=info.ring_records,
            bytes=info.bytes,
            final=int(info.final),
        )

    pipeline.on_epoch = epoch


def _gateway_event(
    logger: RedisLogger | None,
    on_error: Callable[[str], None] | None,
    category: str,
    message: str,
) -> None:
    if logger is not None:
        logger.emit(category, event="gateway", message=message)
    if category == "errors" and on_error is not None:
        on_error(message)


def _incoming(logger: RedisLogger, topic: str, batch: Any) -> None:
    logger.emit(
        "incoming",
        len(batch.values),
        topic=topic,
        partition=batch.partition,
        offset=batch.base_offset,
    )


def _outgoing(logger: RedisLogger, group: str, topic: str, member: str, batch: Any) -> None:
    logger.emit(
        "outgoing",
        len(batch.values),
        group=group,
        member=member,
        topic=topic,
        partition=batch.partition,
        offset=batch.base_offset,
    )


def _rebalanced(logger: RedisLogger, group: str, topic: str, reason: str, stats: Any) -> None:
    logger.emit(
        "meta",
        event="rebalance",
        group=group,
        topic=topic,
        reason=reason,
        generation=stats.generation,
        assignment=json.dumps({m: list(p) for m, p in stats.assignment.items()}),
    )


MAX_ROLLBACKS = 5
"""How many times one ``ringflow run`` rolls back to its last checkpoint before giving up."""


def open_checkpoints(
    pipeline: Pipeline, state: Path | None
) -> tuple[CheckpointSettings | None, Pipeline]:
    """Set up checkpoints for ``pipeline`` and resume from its newest epoch if there is one.

    Checkpoints are on when the topology has a ``checkpoint`` section or ``state`` is given.
    The folder is the section's ``path``, else ``state``, else ``state/NAME``.

    An epoch that is damaged (a part that does not match its checksum or does not decode)
    is passed over for the next older one; ``settings.store.damaged`` lists those.

    Returns:
        The settings (None when checkpoints are off) and the pipeline to run: a new one
        restored from the newest intact epoch, or the one given.

    Raises:
        CheckpointError: The folder cannot be used (another topology, another schema, a
            damaged database, epochs none of which is intact, no permission); nothing in it
            was changed.
    """
    spec = pipeline.topology.checkpoint
    if spec is None and state is None:
        return None, pipeline
    spec = spec or CheckpointSpec()
    name = pipeline.topology.name
    node = None if pipeline.placement is None else pipeline.placement.node
    if node is None:
        folder = Path(spec.path) if spec.path else state or Path("state") / name
    else:  # each node of a split topology keeps its own part
        folder = state or (
            Path(spec.path) / node if spec.path else Path("state") / f"{name}-{node}"
        )
    store = CheckpointStore.open(
        folder, pipeline.fingerprint, keep=spec.keep, name=pipeline.topology.name
    )
    settings = CheckpointSettings(
        store,
        every=spec.every,
        every_records=spec.every_records,
        in_thread=pipeline.topology.clock == "real" or node is not None,
    )
    try:
        restored = store.load_intact(functools.partial(_rebuild, pipeline))
    except CheckpointError:
        store.close()
        raise
    return settings, restored or pipeline


def _rebuild(pipeline: Pipeline, loaded: Any) -> Pipeline:
    return Pipeline.build(
        pipeline.topology,
        pipeline.registry,
        seed=pipeline.seed,
        events=pipeline.events_override,
        restore=loaded,
        placement=pipeline.placement,
    )


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
    """
    samples: list[list[float]] = []
    state: dict[str, Any] = {"next": 0.0, "pipeline": pipeline, "rollbacks": []}
    resumed = pipeline.restored_from
    earlier = () if resumed is None else resumed.segments
    # Resumed from the final epoch of a completed run: nothing is left to do, and nothing
    # new is written. This holds for a node too: it completes only once no other node needs
    # it (a broker when every group has read everything, producers when their finish is
    # durable on the broker, consumers when they have had the end).
    complete = resumed is not None and resumed.completed
    wall_before = sum(s.wall_seconds for s in earlier)
    damaged = [] if checkpoints is None else list(checkpoints.store.damaged)

    def sample() -> None:
        current: Pipeline = state["pipeline"]
        now = trio.current_time()
        samples.append(
            [
                round(now - current.origin, 6),
                round(
                    wall_before
                    + time.perf_counter()
                    - (current.wall_started or time.perf_counter()),
                    6,
                ),
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
        if logging is None:
            return await run_and_report(None)
        async with trio_asyncio.open_loop():
            result = await run_logged(logging)
        if isinstance(result, LoggingUnavailable):
            raise result  # raised out here, not as an exception group from the loop's nursery
        return result

    async def run_logged(settings: LogSettings) -> dict[str, Any] | LoggingUnavailable:
        if settings.unavailable is not None:
            state["logging"] = {"enabled": False, "reason": settings.unavailable}
            return await run_and_report(None)
        try:
            client = make_client(settings.url)
        except ValueError as exc:
            message = f"Redis at {redact(settings.url)} is unavailable: {exc}"
            if settings.fail_if_unavailable:
                return LoggingUnavailable(message)
            state["logging"] = {"enabled": False, "reason": message}
            return await run_and_report(None)
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
            state["logging"] = {"enabled": False, "reason": message}
            return await run_and_report(None)
        state["logging"] = {
            "enabled": True,
            "url": redact(settings.url),
            "run_id": settings.run_id,
            "segment": segment,
        }
        attach_logger(pipeline, logger)
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
        if on_logger is not None:
            on_logger(logger)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(logger.run)
            report = await run_and_report(logger)
            nursery.cancel_scope.cancel()  # the final flush below is the only writer now
            if clock is not None:
                # Nothing runs on the virtual clock now; an autojumping clock would spin a core
                # while the flush waits on Redis in real time.
                clock.autojump_threshold = math.inf
            logger.emit(
                "meta",
                event="run_ended",
                status=report["status"],
                events_produced=report["events_produced"],
                events_consumed=report["events_consumed"],
                digest=report["digest"] or "",
            )
            with trio.CancelScope(shield=True):
                async with real_time_limit(settings.flush_timeout):
                    await logger.flush(
                        status=report["status"], ended_at=time.time(), digest=report["digest"] or ""
                    )
            nursery.cancel_scope.cancel()
        await trio_asyncio.aio_as_trio(client.aclose)()
        stats = logger.statistics()
        report["logging"] = {
            **state["logging"],
            "written": stats.written,
            "records": stats.records,
            "dropped": stats.dropped,
            "unwritten": stats.pending,
            "failures": stats.failures,
            "last_error": stats.last_error,
        }
        return report

    async def run_and_report(logger: RedisLogger | None) -> dict[str, Any]:
        status, error = "completed", None
        interrupted = trio.Event()
        wall_started = time.perf_counter()
        writing = None if complete else checkpoints
        if writing is not None:
            writing.store.begin_segment(resumed)
        async with trio.open_nursery() as nursery:
            if handle_sigint:
                nursery.start_soon(
                    _stop_on_sigint, nursery.cancel_scope, interrupted, state, writing
                )
            if pipeline.placement is None:  # a node may wait for its peers as long as needed
                nursery.start_soon(
                    watch_progress,
                    lambda: state["pipeline"],
                    functools.partial(_stalled, nursery.cancel_scope, state),
                )
            while True:
                current: Pipeline = state["pipeline"]
                if complete and current.placement is not None:
                    break  # its gateway would wait for peers that have all finished
                if current.gateway is not None:
                    current.gateway.on_event = functools.partial(
                        _gateway_event, logger, on_gateway_error
                    )
                try:
                    await current.run(monitor, writing)
                    break
                except (SupervisionError, CheckpointError) as exc:
                    if logger is not None:
                        logger.emit("errors", event="crash", error=str(exc)[:2000])
                    refused = _refusal(exc)
                    if refused is not None:  # retrying from a checkpoint cannot fix it
                        state["refused"] = refused
                        status, error = "failed", str(refused)  # the rest is the supervisor's
                        break
                    if writing is None or len(state["rollbacks"]) >= MAX_ROLLBACKS:
                        status, error = "failed", str(exc)
                        break
                    try:
                        rebuilt = writing.store.load_intact(
                            functools.partial(_rebuild, current)
                        ) or _rebuild(current, None)
                    except CheckpointError as lost:
                        status, error = "failed", f"{exc}; then {lost}"
                        break
                    back = rebuilt.restored_from
                    to_epoch = None if back is None else back.epoch
                    state["rollbacks"].append(
                        {
                            "error": str(exc),
                            "to_epoch": to_epoch,
                            "at": trio.current_time() - current.origin,
                            "damaged_epochs": [str(d) for d in writing.store.damaged],
                        }
                    )
                    rebuilt.epochs = current.epochs
                    state["pipeline"] = rebuilt
                    if logger is not None:
                        attach_logger(rebuilt, logger)
                        logger.emit(
                            "meta",
                            event="rollback",
                            to_epoch=-1 if to_epoch is None else to_epoch,
                        )
            nursery.cancel_scope.cancel()  # the run is over: stop listening for Ctrl-C
        if interrupted.is_set():
            status = "interrupted"
        elif "stalled" in state:
            status, error = "failed", state["stalled"]
        final: Pipeline = state["pipeline"]
        final.wall_started = wall_started
        last = final.epochs[-1] if final.epochs else None
        if status == "completed" and writing is not None and last is not None and last.final:
            try:
                writing.store.mark_completed(last.epoch)
            except CheckpointError as exc:
                if logger is not None:
                    logger.emit("errors", event="checkpoint", error=str(exc)[:2000])
        sample()
        report = build_report(
            final,
            status=status,
            error=error,
            samples=samples,
            earlier=earlier,
            resumed=resumed,
            already_complete=complete,
        )
        report["stopped_by"] = state.get("stopped_by")
        report["checkpoints"] = _checkpoint_report(final, checkpoints, state["rollbacks"], damaged)
        report["logging"] = state.get("logging")
        return report

    clock = None
    if pipeline.topology.clock == "virtual" and pipeline.placement is None:  # nodes: real time
        clock = trio.testing.MockClock(autojump_threshold=0)
        if pipeline.restored_from is not None:
            clock.jump(pipeline.restored_from.sim_time)
    try:
        with relaxed_gc():
            report = trio.run(main, clock=clock)
    finally:
        if checkpoints is not None:
            checkpoints.store.close()
    return RunResult(report, state["pipeline"], state.get("refused"))


def _refusal(exc: BaseException) -> GatewayError | None:
    # The refusal by a peer node behind a crash, if that is what it was.
    cause = exc.__cause__
    if isinstance(cause, GatewayError) and cause.code is not None:
        return cause
    return None


def _checkpoint_report(
    pipeline: Pipeline,
    checkpoints: CheckpointSettings | None,
    rollbacks: list[Any],
    damaged: list[DamagedEpoch],
) -> dict[str, Any] | None:
    if checkpoints is None:
        return None
    last = pipeline.epochs[-1] if pipeline.epochs else None
    return {
        "database": str(checkpoints.store.path),
        "resumed_from_epoch": None
        if pipeline.restored_from is None
        else pipeline.restored_from.epoch,
        "damaged_epochs": [
            {"epoch": d.epoch, "part": d.part, "problem": d.problem} for d in damaged
        ],
        "epochs_written": len(pipeline.epochs),
        "last_epoch": None if last is None else last.epoch,
        "write_seconds_total": round(sum(e.write_seconds for e in pipeline.epochs), 6),
        "rollbacks": rollbacks,
    }


def _stalled(scope: trio.CancelScope, state: dict[str, Any], reason: str) -> None:
    state["stalled"] = reason
    scope.cancel()


async def _stop_on_sigint(
    scope: trio.CancelScope,
    interrupted: trio.Event,
    state: dict[str, Any],
    checkpoints: CheckpointSettings | None,
) -> None:
    # SIGTERM (what docker stop and process managers send) stops the run as Ctrl-C does.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            state["stopped_by"] = signal.Signals(signum).name
            interrupted.set()
            if checkpoints is not None:
                # A final epoch first, so running the same command again carries on from here.
                with trio.move_on_after(checkpoints.final_timeout):
                    await state["pipeline"].checkpoint(
                        checkpoints.store, final=True, in_thread=checkpoints.in_thread
                    )
            scope.cancel()
            return
