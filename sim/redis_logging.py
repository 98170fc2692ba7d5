"""Logging a run to Redis: where it logs, the check of Redis before a run, run ids, and the
hooks that send a pipeline's events to a logger."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import redis
import redis.exceptions
import trio
import trio.testing

from actors import RedisLogger, RingflowError, redact
from topology import EpochInfo, Pipeline


class LoggingUnavailable(RingflowError):
    """Redis could not be reached at start and the topology says to fail then."""


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


def attach_logger(
    pipeline: Pipeline, logger: RedisLogger, clock: trio.testing.MockClock | None = None
) -> None:
    """Send the pipeline's events to ``logger``: accepted batches (``incoming``), delivered
    batches (``outgoing``), rebalances and epochs (``meta``). Epochs are written once the log
    holds every entry emitted before them; ``clock``, the run's virtual clock if it has one,
    stands still meanwhile (the wait is real time, which must not move simulated time)."""
    for name, topic in pipeline.topics.items():
        for partition in topic.partitions:
            partition.on_append = functools.partial(_incoming, logger, name)
    for topic_name, group in pipeline.local_groups():
        group.on_deliver = functools.partial(_outgoing, logger, group.name, topic_name)
        group.on_rebalance = functools.partial(_rebalanced, logger, group.name, topic_name)
    pipeline.on_epoch = functools.partial(_epoch, logger)
    pipeline.on_epoch_skipped = functools.partial(_skipped, logger)
    pipeline.before_epoch_write = functools.partial(_log_mark, logger, clock)


LOG_WAIT = 1.0
"""Seconds (the logger's time) an epoch waits at most for the log to be written up to its
capture (a Redis that answers slowly); with Redis away it does not wait, and the entries stay
queued."""


def _log_mark(
    logger: RedisLogger, clock: trio.testing.MockClock | None
) -> Callable[[], Awaitable[None]]:
    # An epoch must not hold records whose log entries a crash could still lose: the run
    # resumed from it would never log them again. So it is written once the log is written
    # up to its capture.
    mark = logger.emitted

    async def written() -> None:
        if clock is None:
            await logger.written_through(mark, LOG_WAIT)
            return
        # Autojump would move simulated time on while this waits for Redis (real time), and
        # the run's simulated length would then depend on the machine.
        threshold, clock.autojump_threshold = clock.autojump_threshold, math.inf
        try:
            await logger.written_through(mark, LOG_WAIT)
        finally:
            clock.autojump_threshold = threshold

    return written


def gateway_event(
    logger: RedisLogger | None,
    on_error: Callable[[str], None] | None,
    category: str,
    message: str,
) -> None:
    """Log what a node's gateway met (with ``logger``), and show its errors (``on_error``)."""
    if logger is not None:
        logger.emit(category, event="gateway", message=message)
    if category == "errors" and on_error is not None:
        on_error(message)


def _skipped(logger: RedisLogger, error: Exception) -> None:
    logger.emit("errors", event="checkpoint_skipped", error=str(error)[:2000])


def _epoch(logger: RedisLogger, info: EpochInfo) -> None:
    logger.emit(
        "meta",
        event="checkpoint",
        epoch=info.epoch,
        sim_time=info.sim_time,
        ring_records=info.ring_records,
        bytes=info.bytes,
        final=int(info.final),
    )


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
