"""ClickHouse as a store: an embedded engine (chdb) in a folder, called from worker threads.

chdb runs ClickHouse's own engine inside this process. Its calls block, so each runs in a
worker thread, one at a time per store (a thread cannot be cancelled: a call is bounded by
the work given to it, never abandoned half way). One process holds at most one embedded
engine folder open at a time; opening the same folder again shares it.

chdb is an optional part (``pip install 'ringflow[clickhouse]'``); importing this module does
not need it, opening a store does.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import msgspec
import trio

from .errors import RingflowError

INSTALL_HINT = "install it with: pip install 'ringflow[clickhouse]' (or pip install chdb)"


class StoreError(RingflowError):
    """ClickHouse refused a statement, or cannot be opened."""


@attrs.frozen
class StoreStatistics:
    """A snapshot of a :class:`ClickHouse` store."""

    inserts: int
    """Inserts done."""
    rows_inserted: int
    """Rows sent in those inserts (a deduplicated insert counts too)."""
    queries: int
    """Queries and statements run."""
    busy_seconds: float
    """Seconds spent in the engine's calls, in total."""


@attrs.define(eq=False)
class _Engine:
    path: Path
    session: Any
    users: int = 0


_ENGINE: _Engine | None = None
"""The embedded engine this process has open, if any."""


@attrs.define(eq=False)
class ClickHouse:
    """An open store. Open one with :func:`open_clickhouse`."""

    _engine: _Engine
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    _inserts: int = 0
    _rows: int = 0
    _queries: int = 0
    _busy: float = 0.0

    @property
    def path(self) -> Path:
        """The engine's folder."""
        return self._engine.path

    async def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (``CREATE``, ``ALTER``...).

        Raises:
            StoreError: ClickHouse refused it.
        """
        await self._call(sql, "CSV")
        self._queries += 1

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        """Run a query; return its rows as dicts of JSON values.

        Raises:
            StoreError: ClickHouse refused it.
        """
        data = await self._call(
            sql + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONEachRow"
        )
        self._queries += 1
        return [msgspec.json.decode(line) for line in data.splitlines() if line]

    async def insert(self, table: str, columns: list[str], rows: bytes, token: str) -> None:
        """Insert rows given as ``JSONCompactEachRow`` (a JSON array per line, values in the
        order of ``columns``), all in one insert.

        The insert carries ``token`` as its deduplication token: an insert with a token the
        table has seen among its recent inserts is dropped whole by ClickHouse.

        Raises:
            StoreError: ClickHouse refused it.
        """
        quoted = ", ".join(f"`{c}`" for c in columns)
        sql = (
            f"INSERT INTO {table} ({quoted}) SETTINGS insert_deduplication_token = "
            f"{quote(token)} FORMAT JSONCompactEachRow\n"
        )
        await self._call(sql + rows.decode(), "CSV")
        self._inserts += 1
        self._rows += rows.count(b"\n") + (not rows.endswith(b"\n") and bool(rows))

    async def _call(self, sql: str, output: str) -> bytes:
        session = self._engine.session

        def call() -> tuple[bytes, float]:
            began = time.perf_counter()
            result = session.query(sql, output)
            return bytes(result.bytes()), time.perf_counter() - began

        try:
            data, seconds = await trio.to_thread.run_sync(call, limiter=self._limiter)
        except RuntimeError as exc:
            raise StoreError(f"ClickHouse refused a statement: {_first_line(exc)}") from None
        self._busy += seconds
        return data

    def statistics(self) -> StoreStatistics:
        """Return a snapshot of what the store did."""
        return StoreStatistics(
            inserts=self._inserts,
            rows_inserted=self._rows,
            queries=self._queries,
            busy_seconds=round(self._busy, 6),
        )


@asynccontextmanager
async def open_clickhouse(path: Path) -> AsyncIterator[ClickHouse]:
    """Open the embedded ClickHouse engine keeping its data in ``path`` (made if missing).

    Raises:
        StoreError: chdb is not installed, the folder cannot be used, or this process has
            another folder open.
    """
    global _ENGINE
    path = Path(await trio.Path(path).resolve())
    if _ENGINE is not None and _ENGINE.path != path:
        raise StoreError(
            f"this process already has the ClickHouse folder {_ENGINE.path} open; one process "
            f"opens one folder at a time, so {path} cannot be opened beside it"
        )
    if _ENGINE is None:
        try:
            from chdb import session as chdb_session
        except ImportError:
            raise StoreError(
                f"the embedded ClickHouse (chdb) is not installed; {INSTALL_HINT}"
            ) from None

        def make() -> Any:
            path.mkdir(parents=True, exist_ok=True)
            _check_not_in_use(path)
            return chdb_session.Session(str(path))  # type: ignore[no-untyped-call]

        try:
            made = await trio.to_thread.run_sync(make)
        except (OSError, RuntimeError) as exc:
            raise StoreError(f"cannot open ClickHouse in {path}: {_first_line(exc)}") from None
        _ENGINE = _Engine(path, made)
    engine = _ENGINE
    engine.users += 1
    try:
        yield ClickHouse(engine)
    finally:
        engine.users -= 1
        if engine.users == 0:
            _ENGINE = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(engine.session.close)


def _check_not_in_use(path: Path) -> None:
    # ClickHouse holds a lock on the folder's ``status`` file while it has the folder open;
    # opening it meanwhile fails with a message that names no cause.
    status = path / "status"
    if not status.exists():
        return
    with status.open("rb") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"the ClickHouse folder {path} is in use by another process: is another "
                "'ringflow serve' running with this state folder?"
            ) from None
        fcntl.flock(held, fcntl.LOCK_UN)


def quote(text: str) -> str:
    """``text`` as a ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
