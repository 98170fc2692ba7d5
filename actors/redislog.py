"""Logging every event to Redis streams, by category, without ever slowing the data path."""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import hiredis
import redis.asyncio as aioredis
import redis.exceptions
import trio
import trio_asyncio

from .nursery import open_nursery
from .retry import Backoff

CATEGORIES: tuple[str, ...] = ("incoming", "outgoing", "errors", "meta")
"""The categories, as the broker's specification names them."""
DROP_ORDER: tuple[str, ...] = ("incoming", "outgoing", "meta", "errors")
"""When the buffer is full, the oldest entry of the first non-empty category here is dropped."""

Field = str | int | float


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for messages and reports."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL: hide whatever sits between a colon and an '@'
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)
    credentials, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def stream_key(run_id: str, category: str) -> str:
    """The Redis stream a run's entries of ``category`` go to."""
    return f"ringflow:run:{run_id}:{category}"


def counters_key(run_id: str) -> str:
    """The Redis hash of a run's counters."""
    return f"ringflow:run:{run_id}:counters"


def run_key(run_id: str) -> str:
    """The Redis hash describing a run."""
    return f"ringflow:run:{run_id}"


FIRST_BACKOFF = 0.05
"""Real seconds the logger waits after a first failed write; the pause doubles up to
``max_backoff`` while writes keep failing."""

RUNS_KEY = "ringflow:runs"
"""The sorted set of every run id, scored by start time (Unix seconds)."""


@attrs.frozen
class LoggerStatistics:
    """A snapshot of a logger, as :meth:`RedisLogger.statistics` returns it."""

    written: dict[str, int]
    """Entries written to Redis, per category."""
    records: dict[str, int]
    """Records those entries stand for, per category."""
    dropped: dict[str, int]
    """Entries dropped because Redis fell behind or was away, per category."""
    pending: int
    """Entries waiting to be written."""
    connected: bool
    """Whether the last write succeeded."""
    failures: int
    """Writes that failed (each retried after a pause)."""
    last_error: str | None
    """The most recent failure, if any."""


@attrs.define(eq=False)
class _Entry:
    stream_id: str
    fields: dict[str, Field]
    records: int
    sequence: int


@attrs.define(eq=False)
class RedisLogger:
    """Writes log entries to one Redis stream per category, pipelined, off the data path.

    :meth:`emit` never blocks: entries wait in a bounded buffer, and :meth:`run` (the actor)
    writes them in pipelined batches. When the buffer is full, the oldest entry of the lowest
    value category goes (``incoming`` first, then ``outgoing``, then ``meta``; ``errors`` only
    when nothing else is left), and the drop is counted. When Redis is away, writes are retried
    after a pause that grows to ``max_backoff`` real seconds; the pipeline never notices.

    Writes are idempotent: every entry has its own stream id, and counters are written as
    totals in the same transaction, so a batch whose answer was lost is simply written again.

    Args:
        client: A redis-py asyncio client (created with ``socket_timeout=None``).
        run_id: The run's id; it names the keys (see :func:`stream_key`).
        maxlen: Approximate length each stream is trimmed to.
        capacity: The most entries waiting at once.
        batch: The most entries written in one pipeline.
        linger: Real seconds to gather entries before writing fewer than ``batch``: each write
            crosses into asyncio (about 165 µs here), so writing entry by entry would cost the
            pipeline a fifth of its speed.
        execute: Runs a pipeline of the client (redis-py's cross into asyncio through
            trio-asyncio; a simulated Redis runs on Trio).
        sleep: Waits between writes and after failures: real time, whatever clock the run
            uses, unless Redis is simulated on the run's clock too.
    """

    client: Any
    run_id: str
    url: str = ""
    maxlen: int = 100_000
    capacity: int = 50_000
    batch: int = 2000
    linger: float = 0.05
    max_backoff: float = 2.0
    execute: Callable[..., Awaitable[Any]] = attrs.field(
        default=attrs.Factory(lambda: execute_in_asyncio)
    )
    sleep: Callable[[float], Awaitable[None]] = attrs.field(
        default=attrs.Factory(lambda: sleep_real)
    )
    _buffers: dict[str, deque[_Entry]] = attrs.field(init=False)
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)
    _sequence: int = attrs.field(init=False, default=0)
    _last_ms: int = attrs.field(init=False, default=0)
    _written: dict[str, int] = attrs.field(init=False)
    _records: dict[str, int] = attrs.field(init=False)
    _dropped: dict[str, int] = attrs.field(init=False)
    _failures: int = attrs.field(init=False, default=0)
    _connected: bool = attrs.field(init=False, default=True)
    _last_error: str | None = attrs.field(init=False, default=None)
    _writing: trio.Lock = attrs.field(init=False, factory=trio.Lock)
    _registration: dict[str, Field] | None = attrs.field(init=False, default=None)
    _backoff: Backoff = attrs.field(init=False)
    _started_at: float = attrs.field(init=False, default=0.0)

    @_backoff.default
    def _default_backoff(self) -> Backoff:
        # Real time: Redis is away for real seconds, whatever clock the run uses.
        return Backoff(first=FIRST_BACKOFF, most=self.max_backoff, sleep=self.sleep)

    def __attrs_post_init__(self) -> None:
        self._buffers = {category: deque() for category in CATEGORIES}
        self._written = dict.fromkeys(CATEGORIES, 0)
        self._records = dict.fromkeys(CATEGORIES, 0)
        self._dropped = dict.fromkeys(CATEGORIES, 0)

    def emit(self, category: str, records: int = 0, **fields: Field) -> None:
        """Queue an entry; returns at once, dropping an older entry if the buffer is full.

        Args:
            category: One of :data:`CATEGORIES`.
            records: How many records the entry stands for (0 for events about the run).
            fields: The entry's fields: strings and numbers.
        """
        now_ms = max(int(time.time() * 1000), self._last_ms)
        self._last_ms = now_ms
        self._sequence += 1
        fields["records"] = records
        entry = _Entry(f"{now_ms}-{self._sequence}", fields, records, self._sequence)
        if sum(len(b) for b in self._buffers.values()) >= self.capacity:
            self._drop_one()
        self._buffers[category].append(entry)
        self._wake.set()

    def _drop_one(self) -> None:
        for category in DROP_ORDER:
            if self._buffers[category]:
                self._buffers[category].popleft()
                self._dropped[category] += 1
                return

    @property
    def emitted(self) -> int:
        """How many entries were emitted so far: a mark for :meth:`written_through`."""
        return self._sequence

    async def written_through(self, mark: int, limit: float) -> bool:
        """Write now (without lingering) every entry emitted up to ``mark`` (an
        :attr:`emitted`), for at most ``limit`` seconds of the logger's time (real time unless
        Redis is simulated). An epoch waits for this, so that no record it holds can have log
        entries that a crash would still lose. While Redis is away it returns at once: logging
        never holds the pipeline back.

        Returns:
            Whether every such entry was written (or dropped for room, and counted).
        """
        async with real_time_limit(limit, self.sleep):
            while self._connected and self._oldest_pending() <= mark:
                try:
                    await self.write_some()
                except (redis.exceptions.RedisError, OSError) as exc:
                    self._failed(exc)
        return self._oldest_pending() > mark

    def _oldest_pending(self) -> float:
        return min(
            (buffer[0].sequence for buffer in self._buffers.values() if buffer), default=math.inf
        )

    @property
    def pending(self) -> int:
        """Entries waiting to be written."""
        return sum(len(buffer) for buffer in self._buffers.values())

    def statistics(self) -> LoggerStatistics:
        """Return a snapshot of the logger's counters."""
        return LoggerStatistics(
            written=dict(self._written),
            records=dict(self._records),
            dropped=dict(self._dropped),
            pending=self.pending,
            connected=self._connected,
            failures=self._failures,
            last_error=self._last_error,
        )

    async def run(self) -> None:
        """Write entries as they come, until cancelled. Failures are retried, never raised."""
        self._backoff.reset()
        while True:
            if not self.pending:
                self._wake = trio.Event()
                await self._wake.wait()
            if self.pending < self.batch:
                await self.sleep(self.linger)
            await self._attempt(self.write_some)

    async def flush(self, **final: Field) -> None:
        """Write every entry left, then ``final`` (the run's status, digest...) into the run's
        hash; failures are counted and retried after a pause that grows to ``max_backoff``.

        It returns only when everything is written: bound it with :func:`real_time_limit`
        (``pending`` then says how many entries were not written).
        """
        self._backoff.reset()
        while self.pending:
            await self._attempt(self.write_some)
        while not await self._attempt(partial(self._finish, final)):
            pass

    async def _attempt(self, write: Callable[[], Awaitable[None]]) -> bool:
        # One write: a failure is counted and followed by the backoff's pause of real time,
        # which doubles up to max_backoff; a success resets the pause.
        try:
            await write()
        except (redis.exceptions.RedisError, OSError) as exc:
            self._failed(exc)
            await self._backoff.failed()
            return False
        self._connected = True
        self._backoff.reset()
        return True

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._connected = False
        self._last_error = f"{type(exc).__name__}: {exc}"

    async def _finish(self, final: dict[str, Field]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._register(pipe)
        pipe.hset(run_key(self.run_id), mapping=final)
        await self.execute(pipe)

    async def write_some(self) -> None:
        """Write up to ``batch`` entries (most important first) in one pipeline.

        Raises:
            redis.exceptions.RedisError: Redis refused or went away; the entries are queued
                again, in front, to be written by the next attempt.
        """
        async with self._writing:
            taken: list[tuple[str, _Entry]] = []
            for category in ("errors", "meta", "outgoing", "incoming"):
                buffer = self._buffers[category]
                while buffer and len(taken) < self.batch:
                    taken.append((category, buffer.popleft()))
            if not taken:
                return
            try:
                await self._write(taken)
            except BaseException:
                for category, entry in reversed(taken):
                    self._buffers[category].appendleft(entry)
                raise

    async def _write(self, taken: list[tuple[str, _Entry]]) -> None:
        written = dict(self._written)
        records = dict(self._records)
        for category, entry in taken:
            written[category] += 1
            records[category] += entry.records
        # One transaction: the entries and the counters that count them land together or not
        # at all (a pipeline cut off as Redis went away could land in part, and a process
        # that then stopped would leave entries its counters never counted).
        pipe = self.client.pipeline(transaction=True)
        self._register(pipe)
        for category, entry in taken:
            pipe.xadd(
                stream_key(self.run_id, category),
                entry.fields,
                id=entry.stream_id,
                maxlen=self.maxlen,
                approximate=True,
            )
        counters: dict[str, int] = {}
        for category in CATEGORIES:
            counters[f"{category}:entries"] = written[category]
            counters[f"{category}:records"] = records[category]
            counters[f"{category}:dropped"] = self._dropped[category]
        pipe.hset(counters_key(self.run_id), mapping=counters)
        results = await self.execute(pipe, raise_on_error=False)
        for result in results:
            # An id already there means that entry landed before a failed attempt: fine.
            if isinstance(result, redis.exceptions.ResponseError) and (
                "equal or smaller" not in str(result)
            ):
                raise result
        self._written, self._records = written, records

    def _register(self, pipe: Any) -> None:
        # Every write registers the run again, so a Redis that restarted empty lists it.
        if self._registration is not None:
            pipe.zadd(RUNS_KEY, {self.run_id: self._started_at}, nx=True)
            pipe.hset(run_key(self.run_id), mapping=self._registration)

    async def describe_run(self, **fields: Field) -> int:
        """Register the run in :data:`RUNS_KEY` and store what describes it.

        A run already there (a run resumed from a checkpoint logs on under the same id) is
        continued: its start time is kept, its counters go on from their totals, and its
        ``segments`` count goes up by one.

        Returns:
            The segment this process logs: 1 for a new run.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(run_key(self.run_id))
        pipe.hgetall(counters_key(self.run_id))
        for category in CATEGORIES:
            pipe.xrevrange(stream_key(self.run_id, category), count=1)
        described, counters, *lasts = await self.execute(pipe)
        described = {_text(k): _text(v) for k, v in described.items()}
        counters = {_text(k): int(v) for k, v in counters.items()}
        for category in CATEGORIES:
            self._written[category] = counters.get(f"{category}:entries", 0)
            self._records[category] = counters.get(f"{category}:records", 0)
            self._dropped[category] = counters.get(f"{category}:dropped", 0)
        for last in lasts:
            if last:  # new entries get later ids than the ones already there
                self._last_ms = max(self._last_ms, int(_text(last[0][0]).split("-")[0]) + 1)
        segment = int(described.get("segments", 0)) + 1
        self._started_at = float(described.get("started_at", fields.get("started_at", time.time())))
        self._registration = {**fields, "started_at": self._started_at, "segments": segment}
        if segment > 1:
            self._registration["resumed_at"] = time.time()
        pipe = self.client.pipeline(transaction=False)
        self._register(pipe)
        await self.execute(pipe)
        return segment


async def execute_in_asyncio(pipe: Any, **options: Any) -> Any:
    """Run a redis-py asyncio pipeline from Trio (one crossing into asyncio)."""
    return await trio_asyncio.aio_as_trio(pipe.execute)(**options)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def sleep_real(seconds: float) -> None:
    """Sleep ``seconds`` of real time, whatever clock the run uses (a virtual clock would
    jump over an ordinary sleep while Redis is away)."""
    await trio.to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)


@asynccontextmanager
async def real_time_limit(
    seconds: float, sleep: Callable[[float], Awaitable[None]] = sleep_real
) -> AsyncIterator[trio.CancelScope]:
    """Cancel the block after ``seconds`` of real time (``trio.move_on_after`` uses the run's
    clock, which under autojump fires at once while the block waits on Redis); ``sleep``
    measures them (a simulated Redis's logger measures on the run's clock)."""
    async with open_nursery() as nursery:
        with trio.CancelScope() as scope:

            async def expire() -> None:
                await sleep(seconds)
                scope.cancel()

            nursery.start_soon(expire)
            yield scope
        nursery.cancel_scope.cancel()


def make_client(url: str) -> Any:
    """Return a redis-py asyncio client for ``url`` with settings that suit trio-asyncio.

    ``socket_timeout=None``: redis-py's default of 5 s slows pipelined writes under
    trio-asyncio and can time a large reply out; deadlines are ringflow's business.

    Raises:
        ValueError: ``url`` is not a Redis URL (the message does not show a password).
    """
    try:
        client = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5)
    except ValueError as exc:
        raise ValueError(f"{redact(url)} is not a Redis URL: {exc}") from None
    pool = client.connection_pool
    pool.connection_class = _packing_quickly(pool.connection_class)
    return client


_PLAIN = (bytes, str, int)


def _packing_quickly(connection: Any) -> Any:
    """``connection`` packing a command of bytes, strings and ints in one call to hiredis.

    redis-py encodes each argument in Python before packing: a log entry has some twenty,
    and that was about half of the logger's own time in a run. hiredis encodes a string as
    UTF-8 and an int as its decimal digits, as redis-py does; any other argument (a float)
    takes redis-py's own path.
    """

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        if all(type(arg) in _PLAIN for arg in args):
            return [hiredis.pack_command(args)]
        packed: list[bytes] = connection.pack_command(self, *args)
        return packed

    return type(connection.__name__, (connection,), {"pack_command": pack_command})
