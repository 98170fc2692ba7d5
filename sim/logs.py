"""``ringflow logs``: print what a run logged to Redis."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from actors.redislog import CATEGORIES, RUNS_KEY, counters_key, redact, run_key, stream_key

from .console import make_console
from .redis_server import EmbeddedRedis, RedisUnavailable


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
            url, server = EmbeddedRedis.attach_or_start(folder)
        except RedisUnavailable as exc:
            err.print(escape(str(exc)))
            return 2
    try:
        client = redis.Redis.from_url(url, socket_timeout=10, decode_responses=True)
        return _print(client, args, err, url)
    except ValueError as exc:
        err.print(escape(f"{redact(url)} is not a Redis URL: {exc}"))
        return 2
    except redis.RedisError as exc:
        err.print(escape(f"cannot read the log at {redact(url)}: {exc}"))
        return 2
    finally:
        if server is not None:
            server.stop()


def _print(client: Any, args: argparse.Namespace, err: Console, url: str) -> int:
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
    if args.follow:
        streams: dict[Any, Any] = {stream_key(run_id, c): last[c] for c in categories}
        try:
            while True:
                for key, entries in client.xread(streams, block=1000) or []:
                    category = key.rsplit(":", 1)[1]
                    for entry_id, fields in entries:
                        _emit(run_id, category, entry_id, fields)
                        streams[key] = entry_id
        except KeyboardInterrupt:
            _counters(client, run_id, err)
    return 0


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
