"""Relays: sinks that pass what they consume on to another system.

``webhook`` POSTs each batch as JSON to a URL, with an ``Idempotency-Key`` naming the batch
(``topic/partition/first-last``) and an ``id`` per record (``topic/partition/offset``), so
a receiver drops what it has already had: a batch delivered again after a retry or a crash
carries the same key and ids. Answers 2xx deliver; 429 and 5xx (with ``Retry-After``
honoured) and connection errors are retried; any other answer refuses the batch for good.

``redis_stream`` appends each record to a Redis stream per partition with ``XADD`` under the
entry id ``OFFSET+1-0``: a record sent again after a retry or a crash has an id the stream
holds already, and Redis refuses it, so each record is stored once.

Values go out as JSON objects, field by field.
"""

from __future__ import annotations

import collections
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import attrs
import httpx
import msgspec
import redis
import trio

from actors import PermanentError, RecordBatch, RingflowError, TransientError, redact
from topology import SinkContext, State

from .sinks import folder_lineage

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""What an HTTP header name is made of (RFC 9110's token)."""

MAX_QUOTED = 200
"""The most characters of a receiver's answer quoted in an error."""

KEPT_BODIES = 256
"""Bodies of failed POSTs kept for their retries at most (the oldest go first)."""

SOCKET_TIMEOUT = 30.0
"""Seconds a Redis socket waits at most (attempts are timed by the delivery engine; this
ends a thread it gave up on)."""


@attrs.frozen
class WebhookParams:
    """Settings of ``webhook``."""

    url: str
    """Where batches are POSTed (``http://`` or ``https://``)."""
    token_env: str | None = None
    """An environment variable holding a bearer token sent with every request."""
    headers: dict[str, str] = attrs.field(factory=dict)
    """More headers sent with every request."""
    connections: int = 8
    """Connections kept open to the receiver at most."""
    max_records: int = 2000
    """The most records in one POST: consecutive batches of a partition go together up to
    it (a backlog goes in fewer requests)."""
    linger: float = 0.0
    """Seconds between two POSTs of a consumer instance at least: records gather meanwhile
    (fewer, larger requests, for that much more latency)."""

    def __attrs_post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {self.max_records}")
        if not 0 <= self.linger < math.inf:
            raise ValueError(f"linger must be a finite number >= 0, got {self.linger}")
        try:
            parts = httpx.URL(self.url) if "://" in self.url else None
        except httpx.InvalidURL as exc:
            raise ValueError(f"url {self.url!r} is not a URL: {exc}") from None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.host
            or any(c.isspace() for c in self.url)
        ):
            raise ValueError(f"url {self.url!r} is not an http:// or https:// URL")
        if parts.port is not None and not 0 < parts.port < 65536:
            raise ValueError(f"url {self.url!r}: port {parts.port} is not between 1 and 65535")
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")
        for name, value in self.headers.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"headers: {name!r} is not a header name")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"headers: the value of {name!r} has a line break or NUL")


class RelayError(RingflowError):
    """A relay cannot start (its settings, read when the run starts, are wrong)."""


class WebhookState(State, frozen=True, tag=1):
    """The state of ``webhook``: records delivered per kind, and batches."""

    kinds: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    batches: Annotated[int, msgspec.Meta(ge=0)]
    """Batches delivered (POSTs answered 2xx)."""


_ENCODER = msgspec.json.Encoder()


@attrs.define(eq=False)
class WebhookSink:
    """POSTs the batches it consumes to ``params.url`` (see the module)."""

    params: WebhookParams
    _client: httpx.AsyncClient | None = None
    _kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _batches: int = 0
    _headers: dict[str, str] = attrs.field(factory=dict)
    _bodies: dict[str, bytes] = attrs.field(factory=dict)
    """Bodies of POSTs being retried, by idempotency key."""

    one_batch_per_write = True
    """Each batch is its own attempt (a POST), retried on its own."""

    @property
    def max_records(self) -> int:
        """The most records in one POST (consecutive batches of a partition are joined)."""
        return self.params.max_records

    @property
    def linger(self) -> float:
        """Seconds between two POSTs of an instance at least (``params.linger``)."""
        return self.params.linger

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        """Keep connections to the receiver for the run."""
        headers = {"content-type": "application/json", **self.params.headers}
        if self.params.token_env is not None:
            token = os.environ.get(self.params.token_env)
            if not token:
                raise RelayError(
                    f"webhook of consumer {context.consumer}: the environment variable "
                    f"{self.params.token_env} (params.token_env) is unset or empty; set it to "
                    "the token the receiver expects"
                )
            headers["authorization"] = f"Bearer {token}"
        self._headers = headers
        limits = httpx.Limits(max_connections=self.params.connections)
        # Attempts are timed by the delivery engine (retry.attempt_timeout).
        async with httpx.AsyncClient(limits=limits, timeout=None) as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        """POST each batch; count its records once every batch is delivered.

        Raises:
            TransientError: The receiver could not be reached, or answered 429 or 5xx.
            PermanentError: It answered another 4xx (or 3xx): the batch is refused.
        """
        client = self._client
        assert client is not None, "the sink is not open"
        for batch in batches:
            await self._post(client, batch)
        for batch in batches:
            self._kinds.update(getattr(v, "kind", type(v).__name__) for v in batch.values)
        self._batches += len(batches)

    async def _post(self, client: httpx.AsyncClient, batch: RecordBatch) -> None:
        last = batch.base_offset + len(batch.values) - 1
        where = f"{batch.topic}/{batch.partition}"
        key = f"{where}/{batch.base_offset}-{last}"
        body = self._bodies.get(key)  # a retry sends what the first attempt did
        if body is None:
            body = self._bodies[key] = self._body(batch, where, last)
            if len(self._bodies) > KEPT_BODIES:  # given up on, or its run rolled back
                del self._bodies[next(iter(self._bodies))]
        headers = {**self._headers, "idempotency-key": key}
        try:
            answer = await client.post(self.params.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientError(f"{self.params.url}: {type(exc).__name__}: {exc}") from None
        status = answer.status_code
        if 200 <= status < 300:
            del self._bodies[key]
            return
        said = f"{self.params.url} answered {status}: {answer.text[:MAX_QUOTED]}"
        if status == 429 or status >= 500:
            raise TransientError(said, retry_after=_retry_after(answer.headers.get("retry-after")))
        del self._bodies[key]
        raise PermanentError(said)

    def _body(self, batch: RecordBatch, where: str, last: int) -> bytes:
        return _ENCODER.encode(
            {
                "topic": batch.topic,
                "partition": batch.partition,
                "first_offset": batch.base_offset,
                "last_offset": last,
                "records": [
                    {
                        "id": f"{where}/{batch.base_offset + i}",
                        "key": _plain(key),
                        "timestamp": float(stamp),
                        "value": as_object(value),
                    }
                    for i, (key, stamp, value) in enumerate(
                        zip(batch.keys, batch.timestamps, list(batch.values), strict=True)
                    )
                ],
            }
        )

    # -- the processor's duties ------------------------------------------------------------

    def process(self, events: Sequence[Any]) -> None:
        """Not used: a sink's consumer calls :meth:`write`."""
        raise TypeError("the webhook relay delivers batches with write(), not process()")

    def result(self) -> dict[str, Any]:
        """Records delivered per kind, and where (what the digest covers: no figure that
        depends on timing, as how many POSTs carried them)."""
        return {"delivered": dict(sorted(self._kinds.items())), "url": self.params.url}

    def totals(self) -> dict[str, int]:
        """Records delivered per kind."""
        return dict(self._kinds)

    def snapshot(self) -> WebhookState:
        """Records delivered per kind."""
        return WebhookState(kinds=dict(self._kinds), batches=self._batches)

    def restore(self, state: WebhookState) -> None:
        """Take back the counts of an epoch."""
        self._kinds = collections.Counter(state.kinds)
        self._batches = state.batches

    def live(self) -> list[tuple[str, str]]:
        """Records delivered per kind so far."""
        return [(kind, f"{count:,}") for kind, count in sorted(self._kinds.items())]


@attrs.frozen
class RedisStreamParams:
    """Settings of ``redis_stream``."""

    url: str
    """The Redis to write to: ``redis://HOST:PORT/DB``, ``rediss://...`` or
    ``unix:///PATH``."""
    stream: str = "ringflow:{topic}:{partition}"
    """The stream of each partition; ``{topic}`` and ``{partition}`` are filled in (with more
    than one partition, ``{partition}`` is needed: entry ids are offsets)."""
    maxlen: int | None = None
    """Trim each stream to about this many entries (``MAXLEN ~``); None keeps them all."""

    def __attrs_post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"url {self.url!r} is not a Redis URL (redis://, rediss:// or unix://)"
            )
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"url {self.url!r}: its port is not between 1 and 65535") from None
        if port == 0:
            raise ValueError(f"url {self.url!r}: port 0 is no Redis's")
        database = parts.path.strip("/")
        if not self.url.startswith("unix://") and database and not database.isdigit():
            raise ValueError(
                f"url {self.url!r}: {database!r} is not a database number (redis://HOST:PORT/0)"
            )
        try:
            self.stream.format(topic="t", partition=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"stream {self.stream!r} names only {{topic}} and {{partition}}: {exc}"
            ) from None
        if self.maxlen is not None and self.maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {self.maxlen}")


class RedisStreamState(State, frozen=True, tag=1):
    """The state of ``redis_stream``: records delivered per kind, and the run's lineage."""

    kinds: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    lineage: str
    """Written in every entry: a stream holding another run's entries is refused."""


REPLAY = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local ms, seq = '0', 0
if #last > 0 then
  local dash = string.find(last[1][1], '-', 1, true)
  ms = string.sub(last[1][1], 1, dash - 1)
  seq = tonumber(string.sub(last[1][1], dash + 1))
end
for i = 2, #ARGV, 5 do
  local here = redis.call('XRANGE', KEYS[1], ARGV[i + 4], ARGV[i + 4])
  if #here == 0 and redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    seq = seq + 1
    local fields = {'id', ARGV[i], 'key', ARGV[i + 1], 'value', ARGV[i + 2],
                    'lineage', ARGV[i + 3]}
    if ARGV[1] == '' then
      redis.call('XADD', KEYS[1], ms .. '-' .. seq, unpack(fields))
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ms .. '-' .. seq, unpack(fields))
    end
  end
end
return seq
"""
"""Appends replayed records (see :meth:`RedisStreamSink.replay`), all or none."""

TAKEN_ALREADY = "equal or smaller than the target stream top item"
"""What Redis says of an ``XADD`` whose id the stream has passed: the record is there."""


@attrs.define(eq=False)
class RedisStreamSink:
    """Appends the records it consumes to Redis streams (see the module)."""

    params: RedisStreamParams
    _client: Any = None
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    _kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _lineage: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    _restored: bool = False
    """Whether its state came from an epoch (else its lineage is the state folder's)."""
    _again: int = 0
    """Records sent again that the stream held already."""
    _removed: int = 0
    """Entries of this run past its newest epoch, removed as the sink opened."""
    _consumer: str = ""

    @property
    def linger(self) -> float:
        """Records go as soon as they are ready."""
        return 0.0

    def _stream(self, topic: str, partition: int) -> str:
        return self.params.stream.format(topic=topic, partition=partition)

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        """Connect, and check each stream: one holding another run's entries is refused;
        entries of this run past where its partition now ends (written after the newest
        epoch, before a crash) are removed, as their offsets go to other records.

        Raises:
            RelayError: Redis cannot be reached, or a stream is another run's.
        """
        self._consumer = context.consumer
        if not self._restored:
            self._lineage = folder_lineage(context, self._lineage)
        if "{partition}" not in self.params.stream and any(p for _, p in context.ends):
            raise RelayError(
                f"redis_stream of consumer {context.consumer}: params.stream "
                f"{self.params.stream!r} has no {{partition}}, and its topics have several "
                "partitions (entry ids are offsets, one stream per partition)"
            )
        client = redis.Redis.from_url(
            self.params.url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
        )
        try:
            await self._in_thread(self._check, client, dict(context.ends))
        except redis.RedisError as exc:
            client.close()
            raise RelayError(
                f"redis_stream of consumer {context.consumer}: {redact(self.params.url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        except RelayError:
            client.close()
            raise
        self._client = client
        try:
            yield
        finally:
            self._client = None
            client.close()

    async def _in_thread(self, work: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(
            work, *args, limiter=self._limiter, abandon_on_cancel=True
        )

    def _check(self, client: Any, ends: dict[tuple[str, int], int]) -> None:
        for (topic, partition), end in sorted(ends.items()):
            stream = self._stream(topic, partition)
            owner = f"{stream}:run"  # taken at once: two runs starting together cannot share
            client.set(owner, self._lineage, nx=True)
            last = client.xrevrange(stream, count=1)
            mine = client.get(owner) == self._lineage.encode()
            if not mine or (last and last[0][1].get(b"lineage") != self._lineage.encode()):
                raise RelayError(
                    f"redis_stream of consumer {self._consumer}: stream {stream!r} belongs "
                    f"to another run ({owner!r} names it); name another stream "
                    f"(params.stream), or delete both keys"
                )
            if not last:
                continue
            past = client.xrange(stream, min=f"{end + 1}-0", max="+")
            if past:
                client.xdel(stream, *[entry for entry, _ in past])
                # The stream's last id stays where it was: lower it, or the records now
                # at those offsets would be taken for ones it has.
                client.execute_command("XSETID", stream, f"{end}-0")
                self._removed += len(past)

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        """Append every record of ``batches``; count them once all are in.

        Raises:
            TransientError: Redis could not be reached or did not answer in time.
            PermanentError: Redis refused an entry (a key of another type...).
        """
        client = self._client
        assert client is not None, "the sink is not open"
        entries = []
        for batch in batches:
            stream = self._stream(batch.topic, batch.partition)
            where = f"{batch.topic}/{batch.partition}"
            for i, (key, value) in enumerate(zip(batch.keys, list(batch.values), strict=True)):
                offset = batch.base_offset + i
                fields = {
                    "id": f"{where}/{offset}",
                    "key": _ENCODER.encode(_plain(key)),
                    "value": _ENCODER.encode(as_object(value)),
                    "lineage": self._lineage,
                }
                entries.append((stream, f"{offset + 1}-0", fields))
        self._again += await self._call(batches, self._append, client, entries)

    async def replay(self, batches: Sequence[RecordBatch]) -> None:
        """Append dead letters sent back (``ringflow dlq replay``): their offsets are behind
        the stream's last id, so each goes at the end under that id's next sequence number
        (``LAST-1``, ``LAST-2``...: below the id of the partition's next offset), once: the
        set ``STREAM:replayed`` keeps the record ids replayed, and a record whose own entry
        the stream holds is not added.

        Raises:
            TransientError, PermanentError: As :meth:`write`.
        """
        client = self._client
        assert client is not None, "the sink is not open"
        by_stream: dict[str, list[str]] = {}
        for batch in batches:
            stream = self._stream(batch.topic, batch.partition)
            where = f"{batch.topic}/{batch.partition}"
            for i, (key, value) in enumerate(zip(batch.keys, list(batch.values), strict=True)):
                offset = batch.base_offset + i
                by_stream.setdefault(stream, []).extend(
                    (
                        f"{where}/{offset}",
                        _ENCODER.encode(_plain(key)).decode(),
                        _ENCODER.encode(as_object(value)).decode(),
                        self._lineage,
                        f"{offset + 1}-0",
                    )
                )
        maxlen = "" if self.params.maxlen is None else str(self.params.maxlen)

        def append() -> None:
            for stream, args in by_stream.items():
                client.eval(REPLAY, 2, stream, f"{stream}:replayed", maxlen, *args)

        await self._call(batches, append)

    async def _call(self, batches: Sequence[RecordBatch], call: Any, *args: Any) -> Any:
        # ``call(*args)`` in the worker thread, Redis's errors as the engine's; then
        # ``batches`` are counted as delivered.
        try:
            result = await self._in_thread(call, *args)
        except redis.ResponseError as exc:
            raise PermanentError(f"{redact(self.params.url)}: {exc}") from None
        except redis.RedisError as exc:
            raise TransientError(
                f"{redact(self.params.url)}: {type(exc).__name__}: {exc}"
            ) from None
        for batch in batches:
            self._kinds.update(getattr(v, "kind", type(v).__name__) for v in batch.values)
        return result

    def _append(self, client: Any, entries: list[tuple[str, str, dict[str, Any]]]) -> int:
        pipe = client.pipeline(transaction=False)
        for stream, entry, fields in entries:
            if self.params.maxlen is None:
                pipe.xadd(stream, fields, id=entry)
            else:
                pipe.xadd(stream, fields, id=entry, maxlen=self.params.maxlen, approximate=True)
        again = 0
        for answer in pipe.execute(raise_on_error=False):
            if isinstance(answer, redis.ResponseError):
                if TAKEN_ALREADY not in str(answer):
                    raise answer
                again += 1
            elif isinstance(answer, Exception):
                raise answer
        return again

    # -- the processor's duties ------------------------------------------------------------

    def process(self, events: Sequence[Any]) -> None:
        """Not used: a sink's consumer calls :meth:`write`."""
        raise TypeError("the redis_stream relay appends batches with write(), not process()")

    def result(self) -> dict[str, Any]:
        """Records delivered per kind, and where (what the digest covers: no figure that
        depends on timing, as how many were sent again)."""
        return {"delivered": dict(sorted(self._kinds.items())), "stream": self.params.stream}

    @property
    def sent_again(self) -> int:
        """Records sent again that their stream held already (this process)."""
        return self._again

    @property
    def removed_past_epoch(self) -> int:
        """Entries past the newest epoch removed as the sink opened (this process)."""
        return self._removed

    def totals(self) -> dict[str, int]:
        """Records delivered per kind."""
        return dict(self._kinds)

    def snapshot(self) -> RedisStreamState:
        """Records delivered per kind, and the lineage."""
        return RedisStreamState(kinds=dict(self._kinds), lineage=self._lineage)

    def restore(self, state: RedisStreamState) -> None:
        """Take back the counts and the lineage of an epoch."""
        self._kinds = collections.Counter(state.kinds)
        self._lineage = state.lineage
        self._restored = True

    def live(self) -> list[tuple[str, str]]:
        """Records delivered per kind so far."""
        return [(kind, f"{count:,}") for kind, count in sorted(self._kinds.items())]


def _retry_after(value: str | None) -> float | None:
    # Seconds, or an HTTP date; anything else is ignored.
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 3600.0)


def _plain(key: Any) -> Any:
    if key is None or isinstance(key, str | int):
        return key
    try:
        return int(key)
    except (TypeError, ValueError):
        return str(key)


def as_object(value: Any) -> Any:
    """An event as a JSON-ready mapping of its fields (``kind`` included), whatever its
    layout on the wire (events travel as arrays)."""
    if not isinstance(value, msgspec.Struct):
        return value
    fields = msgspec.structs.asdict(value)
    kind = getattr(value, "kind", None)
    return fields if kind is None or "kind" in fields else {"kind": kind, **fields}
