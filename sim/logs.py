"""Reading what a run logged to Redis (``ringflow logs``): its entries as JSON lines, and its
counters."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import attrs
import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from actors import CATEGORIES, RUNS_KEY, counters_key, redact, run_key, stream_key

from .console import make_console
from .exitcode import ExitCode
from .redis_server import EmbeddedRedis, RedisUnavailable, ping


def field_value(value: Any) -> Any:
    """A field of a logged entry as it was logged: a number as a number, any other text (a
    bad line "007", "nan") as it was."""
    text = value
    for kind in (int, float):
        try:
            number = kind(text)
        except (TypeError, ValueError):
            continue
        if repr(number) == text and math.isfinite(number):
            return number
    return text


@attrs.frozen
class LogQuery:
    """What to print of a run's log."""

    run: str | None = None
    """The run's id; None for the newest run."""
    categories: tuple[str, ...] = CATEGORIES
    """The categories to print, in order."""
    limit: int | None = None
    """At most this many entries per category."""
    follow: bool = False
    """Keep printing new entries until the run ends."""


def _state_folder(state: Path | None) -> Path | None:
    if state is not None:
        return state
    candidates = sorted(Path("state").glob("*/redis.rdb"), key=lambda p: p.stat().st_mtime)
    return candidates[-1].parent if candidates else None


def show_logs(query: LogQuery, *, redis_url: str | None, state: Path | None) -> ExitCode:
    """Print the log of a run (standard output) and its counters (standard error).

    Args:
        query: What to print.
        redis_url: The Redis to read; None for the embedded Redis of ``state``.
        state: A run's state folder; None for the newest under ``./state``.

    Returns:
        The exit code of ``ringflow logs``.
    """
    err = make_console(stderr=True)
    server = None
    url = redis_url
    folder = None
    if url is None:
        folder = _state_folder(state)
        if folder is None or (
            not (folder / "redis.rdb").exists() and not (folder / "redis.sock").exists()
        ):
            err.print(
                f"no Redis log found in {escape(str(folder or 'state/'))}: give --state "
                "DIR (the folder of a run) or --redis URL"
            )
            return ExitCode.USAGE
        try:
            url, server = EmbeddedRedis.open_for_reading(folder)
        except RedisUnavailable as exc:
            err.print(escape(str(exc)))
            return ExitCode.USAGE
    try:
        client = redis.Redis.from_url(url, socket_timeout=10, decode_responses=True)
        return _print(client, query, err, url, None if redis_url else folder, server)
    except ValueError as exc:
        err.print(escape(f"{redact(url)} is not a Redis URL: {exc}"))
        return ExitCode.USAGE
    except redis.RedisError as exc:
        err.print(escape(f"cannot read the log at {redact(url)}: {exc}"))
        return ExitCode.USAGE
    finally:
        if server is not None:
            server.stop()


def _print(
    client: Any,
    query: LogQuery,
    err: Console,
    url: str,
    folder: Path | None,
    copy: EmbeddedRedis | None,
) -> ExitCode:
    run_id = query.run
    if run_id is None:
        newest = client.zrevrange(RUNS_KEY, 0, 0)
        if not newest:
            err.print(f"no runs logged at {escape(redact(url))}")
            return ExitCode.USAGE
        run_id = newest[0]
    elif not client.exists(run_key(run_id)):
        known = ", ".join(client.zrevrange(RUNS_KEY, 0, 4))
        err.print(f"no run {run_id!r} at {escape(redact(url))}; newest: {known or 'none'}")
        return ExitCode.USAGE
    categories = query.categories
    last = dict.fromkeys(categories, "-")
    for category in categories:
        key = stream_key(run_id, category)
        entries = client.xrange(key, count=query.limit) if query.limit else client.xrange(key)
        for entry_id, fields in entries:
            _emit(run_id, category, entry_id, fields)
            last[category] = entry_id
    _counters(client, run_id, err)
    if not query.follow:
        return ExitCode.OK
    streams: dict[Any, Any] = {stream_key(run_id, c): last[c] for c in categories}
    server = None  # a server on a saved log started below (the caller stops ``copy``)
    try:
        while True:
            try:
                # A saved log gets no new entries: waiting for them would be forever.
                ended = _follow(client, run_id, streams, wait=server is None and copy is None)
            except redis.ConnectionError as exc:
                if folder is None:
                    err.print(escape(f"lost the connection to Redis at {redact(url)}: {exc}"))
                    return ExitCode.FAILED
                client, server = _reopen(folder, server)
                if client is None:
                    err.print(f"the embedded Redis of {escape(str(folder))} did not stop")
                    return ExitCode.FAILED
                continue  # the folder's Redis now: a resumed run's, or one on the saved log
            _counters(client, run_id, err)
            if ended:
                return ExitCode.OK
            err.print(
                f"run {run_id} stopped before it ended (its status is still 'running'): "
                "run the same command again to resume it"
            )
            return ExitCode.FAILED
    except KeyboardInterrupt:
        _counters(client, run_id, err)
        return ExitCode.OK
    finally:
        if server is not None:
            server.stop()


ENDED_POLL_MS = 500
"""How long one read waits for new entries before the run's status is looked at again."""


def _follow(client: Any, run_id: str, streams: dict[Any, Any], *, wait: bool) -> bool:
    """Print new entries until the run's status says it ended; return whether it did. With
    ``wait`` false (a log nobody writes to any more), print what is there and return."""
    while True:
        # The status is set after the run's last entry is written: read it first, and what
        # the streams hold then is complete.
        ended = client.hget(run_key(run_id), "status") not in (None, "running")
        if ended or not wait:
            while _read(client, run_id, streams, block=None):
                pass
            return ended
        _read(client, run_id, streams, block=ENDED_POLL_MS)


def _read(client: Any, run_id: str, streams: dict[Any, Any], *, block: int | None) -> int:
    count = 0
    for key, entries in client.xread(streams, block=block) or []:
        category = key.rsplit(":", 1)[1]
        for entry_id, fields in entries:
            _emit(run_id, category, entry_id, fields)
            streams[key] = entry_id
            count += 1
    return count


def _reopen(folder: Path, server: EmbeddedRedis | None) -> tuple[Any, EmbeddedRedis | None]:
    """After the folder's Redis went away: wait until it has saved and gone (its socket is
    removed then), and connect to whatever serves the folder now, or to a server started on
    the saved log. Returns no client if it does not go within 30 s."""
    if server is not None:
        server.stop()
    socket_path = folder / "redis.sock"
    deadline = time.monotonic() + 30
    while socket_path.exists() and not ping(socket_path):
        if time.monotonic() > deadline:
            return None, None
        time.sleep(0.05)
    url, server = EmbeddedRedis.open_for_reading(folder)
    return redis.Redis.from_url(url, socket_timeout=10, decode_responses=True), server


def _emit(run_id: str, category: str, entry_id: str, fields: dict[str, str]) -> None:
    line: dict[str, Any] = {"run": run_id, "category": category, "id": entry_id}
    line.update({k: field_value(v) for k, v in fields.items()})
    print(json.dumps(line), flush=True)


def _counters(client: Any, run_id: str, err: Console) -> None:
    counters = {k: int(v) for k, v in client.hgetall(counters_key(run_id)).items()}
    info = client.hgetall(run_key(run_id))
    table = Table(title=f"run {run_id}: {info.get('status', '?')}", title_justify="left")
    table.add_column("category")
    for column in ("entries", "records", "dropped"):
        table.add_column(column, justify="right")
    for category in CATEGORIES:
        table.add_row(
            category,
            *(f"{counters.get(f'{category}:{c}', 0):,}" for c in ("entries", "records", "dropped")),
        )
    err.print(table)
