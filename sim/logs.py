"""``ringflow logs``: print what a run logged to Redis."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from actors import CATEGORIES, RUNS_KEY, counters_key, redact, run_key, stream_key

from .console import make_console
from .redis_server import EmbeddedRedis, RedisUnavailable, ping


def _decode(value: Any) -> Any:
    text = value
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text


def _state_folder(args: argparse.Namespace) -> Path | None:
    if args.state is not None:
        return Path(args.state)
    candidates = sorted(Path("state").glob("*/redis.rdb"), key=lambda p: p.stat().st_mtime)
    return candidates[-1].parent if candidates else None


def show_logs(args: argparse.Namespace) -> int:
    """Run ``ringflow logs``; return the exit code."""
    err = make_console(stderr=True)
    server = None
    url = args.redis
    folder = None
    if url is None:
        folder = _state_folder(args)
        if folder is None or (
            not (folder / "redis.rdb").exists() and not (folder / "redis.sock").exists()
        ):
            err.print(
                f"no Redis log found in {escape(str(folder or 'state/'))}: give --state "
                "DIR (the folder of a run) or --redis URL"
            )
            return 2
        try:
            url, server = EmbeddedRedis.open_for_reading(folder)
        except RedisUnavailable as exc:
            err.print(escape(str(exc)))
            return 2
    try:
        client = redis.Redis.from_url(url, socket_timeout=10, decode_responses=True)
        return _print(client, args, err, url, None if args.redis else folder, server)
    except ValueError as exc:
        err.print(escape(f"{redact(url)} is not a Redis URL: {exc}"))
        return 2
    except redis.RedisError as exc:
        err.print(escape(f"cannot read the log at {redact(url)}: {exc}"))
        return 2
    finally:
        if server is not None:
            server.stop()


def _print(
    client: Any,
    args: argparse.Namespace,
    err: Console,
    url: str,
    folder: Path | None,
    copy: EmbeddedRedis | None,
) -> int:
    run_id = args.run
    if run_id is None:
        newest = client.zrevrange(RUNS_KEY, 0, 0)
        if not newest:
            err.print(f"no runs logged at {escape(redact(url))}")
            return 2
        run_id = newest[0]
    elif not client.exists(run_key(run_id)):
        known = ", ".join(client.zrevrange(RUNS_KEY, 0, 4))
        err.print(f"no run {run_id!r} at {escape(redact(url))}; newest: {known or 'none'}")
        return 2
    categories = args.category or list(CATEGORIES)
    last = dict.fromkeys(categories, "-")
    for category in categories:
        key = stream_key(run_id, category)
        entries = client.xrange(key, count=args.limit) if args.limit else client.xrange(key)
        for entry_id, fields in entries:
            _emit(run_id, category, entry_id, fields)
            last[category] = entry_id
    _counters(client, run_id, err)
    if not args.follow:
        return 0
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
                    return 1
                client, server = _reopen(folder, server)
                if client is None:
                    err.print(f"the embedded Redis of {escape(str(folder))} did not stop")
                    return 1
                continue  # the folder's Redis now: a resumed run's, or one on the saved log
            _counters(client, run_id, err)
            if ended:
                return 0
            err.print(
                f"run {run_id} stopped before it ended (its status is still 'running'): "
                "run the same command again to resume it"
            )
            return 1
    except KeyboardInterrupt:
        _counters(client, run_id, err)
        return 0
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
    line.update({k: _decode(v) for k, v in fields.items()})
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
