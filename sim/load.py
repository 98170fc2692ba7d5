"""A load generator for a served topology's HTTP API: open-loop arrivals at a fixed rate.

Request ``i`` is due at ``start + i / rps`` whatever happened to the ones before it, and its
latency counts from that moment, not from when a connection got round to sending it: a
server that stalls for a second shows a second of latency on every request due meanwhile
(the "coordinated omission" a closed-loop tester hides). Requests go over ``connections``
keep-alive connections; a request due while all are busy waits for one, and that wait is
part of its latency.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import httptools
import msgspec
import numpy as np
import trio

Mix = Literal["ugc", "ess"]

UGC_KINDS = ("click", "page_view", "custom", "watch_progress")
PAGES = tuple(f"/page/{n}" for n in range(50))
ELEMENTS = ("play", "pause", "like", "share", "search")
CUSTOM = ("quality_changed", "watched_to_end", "search_filter")
ACTIONS = ("start", "pause", "resume", "seek", "progress", "stop")
DEVICES = ("web", "android", "ios", "tv")

LAG_LINE = re.compile(r'^ringflow_storage_lag_seconds\{quantile="([0-9.]+)"\} ([0-9.eE+-]+)$', re.M)


class LoadError(Exception):
    """The target cannot be load-tested (a bad URL, nothing listening)."""


@attrs.frozen
class LoadSettings:
    """What to send, how fast and for how long."""

    url: str
    """The API's base URL (``http://HOST:PORT``)."""
    rps: float = 1000.0
    """Requests a second."""
    duration: float = 10.0
    """Seconds to send for."""
    connections: int = 256
    """Keep-alive connections."""
    batch: int = 1
    """Events per request (1: a single event object; more: a JSON array)."""
    mix: Mix = "ugc"
    """``ugc``: clicks, page views, custom events and watch progress, each to its typed
    route (``POST /events/KIND``), or as a mixed array to ``POST /events``; ``ess``:
    playback events to ``POST /events``."""
    seed: int = 0
    token: str | None = None
    """A bearer token to send."""
    timeout: float = 30.0
    """Seconds a request may take before it counts as an error."""


@attrs.frozen
class LoadResult:
    """What a load test measured."""

    requests: int
    """Requests due in the test."""
    answered: int
    """Requests that got an answer (any status)."""
    duration_s: float
    """Seconds from the first request due to the last answer."""
    achieved_rps: float
    """Requests answered ``202`` per second of the test."""
    events_accepted: int
    latency_ms: dict[str, float]
    """p50, p75, p95, p99 and max of the requests answered, from the moment each was due."""
    statuses: dict[str, int]
    """Answers by status."""
    errors: dict[str, int]
    """Requests that failed: by status (not 202), or by what went wrong on the connection."""
    storage_lag_s: dict[str, float] | None
    """From the API's ``/metrics`` at the end: seconds from acceptance to storage, by
    quantile (p50, p95, p99); None if it does not report them."""

    @property
    def error_rate(self) -> float:
        """Failed requests over requests due."""
        return sum(self.errors.values()) / self.requests if self.requests else 0.0


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an ``http://`` URL.

    Raises:
        LoadError: It is not one.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadError(f"{url!r} is not an http://HOST:PORT URL")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise LoadError(f"{url!r}: {exc}") from None
    return parts.hostname, port, parts.path.rstrip("/")


class _Answer:
    # httptools' callbacks for one response at a time.

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.whole = False
        self.keep_alive = True

    def on_message_begin(self) -> None:
        self.headers, self.body, self.whole = {}, bytearray(), False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.whole, self.keep_alive = True, self.parser.should_keep_alive()


@attrs.define(eq=False)
class HttpConnection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    host: str
    port: int
    _stream: trio.SocketStream | None = None
    _answer: _Answer | None = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request and return its status, headers and body.

        Raises:
            OSError: The connection failed or broke, or the server's answer was not HTTP.
        """
        if self._stream is None or self._answer is None:
            await self.close()
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._answer = _Answer()
        stream, answer = self._stream, self._answer
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        data = (
            f"{method} {target} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"content-length: {len(body)}\r\n{head}\r\n"
        ).encode("latin-1") + body
        try:
            sent: trio.BrokenResourceError | None = None
            try:
                await stream.send_all(data)
            except trio.BrokenResourceError as exc:
                sent = exc  # the server may have answered first (413 before the body): read it
            while True:
                try:
                    received = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    if sent is None:
                        raise
                    received = b""
                if not received:
                    if sent is not None:
                        raise sent
                    raise OSError("the server closed the connection")
                try:
                    answer.parser.feed_data(received)
                except httptools.HttpParserError as exc:
                    raise OSError(f"the server's answer is not HTTP: {exc}") from None
                if answer.whole:
                    break
        except trio.BrokenResourceError as exc:
            await self.close()
            raise OSError(f"the connection broke: {exc.__cause__ or exc}") from None
        except BaseException:
            await self.close()
            raise
        if not answer.keep_alive:
            await self.close()
        return answer.parser.get_status_code(), answer.headers, bytes(answer.body)

    async def close(self) -> None:
        """Close the connection, if open."""
        self._answer = None
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()


MIX_KINDS: dict[str, tuple[str, ...]] = {"ugc": UGC_KINDS, "ess": ("playback",)}
"""The kinds of event each mix sends."""


def _check_kinds(settings: LoadSettings, status: int, body: bytes) -> None:
    # The API's /health names the kinds it takes: a mix it does not take would measure
    # nothing but 404s and 422s.
    if status == 503:
        raise LoadError(f"the API at {settings.url} is stopping: it takes no events")
    if not 200 <= status < 300:
        raise LoadError(
            f"{settings.url}/health answered {status}: is this the API of 'ringflow serve' "
            "(http://HOST:PORT, with no path)?"
        )
    try:
        taken = msgspec.json.decode(body).get("kinds")
    except (msgspec.DecodeError, AttributeError):
        taken = None
    if not isinstance(taken, list):
        return  # not a ringflow API that says: nothing to check
    missing = [kind for kind in MIX_KINDS[settings.mix] if kind not in taken]
    if missing:
        raise LoadError(
            f"the API at {settings.url} takes {', '.join(map(str, taken)) or 'no kinds'}; "
            f"--mix {settings.mix} sends {', '.join(missing)} as well: choose the mix of "
            "its topology"
        )


def make_request(mix: Mix, batch: int, rng: random.Random, prefix: str) -> tuple[str, bytes]:
    """The target and body of one request of ``mix`` with ``batch`` events."""
    events = [_event(mix, rng) for _ in range(batch)]
    if mix == "ugc" and batch == 1:
        kind = events[0].pop("type")
        return f"{prefix}/events/{kind}", msgspec.json.encode(events[0])
    return f"{prefix}/events", msgspec.json.encode(events[0] if batch == 1 else events)


def _event(mix: Mix, rng: random.Random) -> dict[str, Any]:
    user = rng.randrange(100_000)
    if mix == "ess":
        return {
            "type": "playback",
            "user_id": user,
            "movie_id": rng.randrange(5_000),
            "action": rng.choice(ACTIONS),
            "position_s": rng.randrange(7_200),
            "device": rng.choice(DEVICES),
        }
    kind = rng.choice(UGC_KINDS)
    if kind == "click":
        return {
            "type": kind,
            "user_id": user,
            "page": rng.choice(PAGES),
            "element": rng.choice(ELEMENTS),
        }
    if kind == "page_view":
        return {
            "type": kind,
            "user_id": user,
            "page": rng.choice(PAGES),
            "duration_ms": rng.randrange(600_000),
        }
    if kind == "custom":
        return {"type": kind, "user_id": user, "name": rng.choice(CUSTOM)}
    duration = rng.randrange(600, 10_800)
    return {
        "type": kind,
        "user_id": user,
        "movie_id": rng.randrange(5_000),
        "position_s": rng.randrange(duration),
        "duration_s": duration,
    }


async def run_load(
    settings: LoadSettings, progress: Callable[[int, int], None] = lambda done, total: None
) -> LoadResult:
    """Run a load test; ``progress(answered, due)`` is called about four times a second.

    Raises:
        LoadError: The URL is not usable, or nothing answers there.
    """
    host, port, prefix = parse_url(settings.url)
    try:
        probe = HttpConnection(host, port)
        status, _, body = await probe.request("GET", f"{prefix}/health")
        await probe.close()
    except OSError as exc:
        raise LoadError(f"nothing answers at {settings.url}: {exc.strerror or exc}") from None
    _check_kinds(settings, status, body)
    total = max(1, math.floor(settings.rps * settings.duration))
    rng = random.Random(settings.seed)
    bodies = [
        make_request(settings.mix, settings.batch, rng, prefix) for _ in range(min(total, 10_000))
    ]
    headers = [("content-type", "application/json")]
    if settings.token:
        headers.append(("authorization", f"Bearer {settings.token}"))
    latencies = np.full(total, np.nan)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    accepted = 0
    answered = 0
    send, receive = trio.open_memory_channel[tuple[int, float]](math.inf)
    start = trio.current_time() + 0.05
    finished = start

    async def schedule() -> None:
        async with send:
            for number in range(total):
                due = start + number / settings.rps
                await trio.sleep_until(due)
                send.send_nowait((number, due))

    async def work(receiving: trio.MemoryReceiveChannel[tuple[int, float]]) -> None:
        nonlocal accepted, answered, finished
        connection = HttpConnection(host, port)
        async with receiving:
            async for number, due in receiving:
                target, body = bodies[number % len(bodies)]
                try:
                    with trio.fail_after(settings.timeout):
                        status, _, _ = await connection.request("POST", target, body, headers)
                except trio.TooSlowError:
                    errors["timeout"] += 1
                    await connection.close()
                    continue
                except OSError as exc:
                    # The server closed or broke the connection.
                    said = exc.strerror if isinstance(exc, OSError) else None
                    errors[f"connection: {said or exc}"[:80]] += 1
                    continue
                finally:  # the rate is over the whole run, failures included
                    finished = max(finished, trio.current_time())
                now = trio.current_time()
                latencies[number] = now - due
                answered += 1
                statuses[str(status)] += 1
                if status == 202:
                    accepted += settings.batch
                else:
                    errors[str(status)] += 1
        await connection.close()

    async def report() -> None:
        while True:
            progress(answered, total)
            await trio.sleep(0.25)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        async with trio.open_nursery() as senders:
            senders.start_soon(schedule)
            async with receive:
                for _ in range(settings.connections):
                    senders.start_soon(work, receive.clone())
        progress(answered, total)
        nursery.cancel_scope.cancel()
    lag = await _storage_lag(host, port, prefix, headers)
    done = latencies[~np.isnan(latencies)] * 1000
    quantiles = {"p50": 50, "p75": 75, "p95": 95, "p99": 99}
    latency = (
        {name: round(float(np.percentile(done, q)), 3) for name, q in quantiles.items()}
        if len(done)
        else {}
    )
    if len(done):
        latency["max"] = round(float(done.max()), 3)
    seconds = max(finished - start, 1e-9)
    return LoadResult(
        requests=total,
        answered=answered,
        duration_s=round(seconds, 3),
        achieved_rps=round(statuses.get("202", 0) / seconds, 1),
        events_accepted=accepted,
        latency_ms=latency,
        statuses=dict(sorted(statuses.items())),
        errors=dict(sorted(errors.items())),
        storage_lag_s=lag,
    )


async def _storage_lag(
    host: str, port: int, prefix: str, headers: list[tuple[str, str]]
) -> dict[str, float] | None:
    connection = HttpConnection(host, port)
    try:
        with trio.move_on_after(10):
            status, _, body = await connection.request("GET", f"{prefix}/metrics", b"", headers[1:])
            if status == 200:
                found = {
                    f"p{round(float(q) * 100)}": float(v)
                    for q, v in LAG_LINE.findall(body.decode("utf-8", "replace"))
                }
                return found or None
    except OSError:
        pass
    finally:
        await connection.close()
    return None
