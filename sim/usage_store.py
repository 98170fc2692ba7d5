"""The central database of the file pipeline (seed 004): each user's total, increased by
the partial sums the parsers send, exactly once.

Partial sums arrive as records of a topic. A batch of them is applied in one transaction
that also records, per (topic, partition), the offset just past the last record applied:
a batch sent again after a crash (its records are behind that offset) is skipped, so a
crash between the database's commit and ringflow's next epoch never adds a sum twice.
The records a store reads are ones an epoch holds (see ``reads_durable``), so an offset
names the same record after any restart.

Two databases: PostgreSQL (embedded, or any server by URL), where the batch is copied into
a staging table and merged with one ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO
UPDATE``, the totals ``NUMERIC`` (exact whatever their size); and SQLite, the light
alternative, whose totals are 64-bit integers (a total beyond 2**63-1 stops the run with
a clear error rather than being rounded).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol

import attrs
import msgspec
import numpy as np
import numpy.typing as npt
import psycopg
import trio

from actors import PermanentError, RecordBatch, Table, TransientError
from topology import SinkContext, State

from .postgres_server import EmbeddedPostgres
from .sinks import folder_lineage
from .usage import Sums

SQLITE_MAX = 2**63 - 1
"""The largest integer SQLite stores."""

TOTALS = "usage_totals"
APPLIED = "ringflow_applied"
LOADS = "usage_loads"


class Totals(Protocol):
    """A database of per-user totals (see the module)."""

    def applied(self, topic: str) -> dict[int, int]:
        """Per partition of ``topic``, the offset just past the last record applied."""
        ...

    def knows(self, lineage: str) -> bool:
        """Whether records of the run ``lineage`` were applied here (topics ``LINEAGE/...``)."""
        ...

    def apply(
        self,
        topic: str,
        partition: int,
        base_offset: int,
        users: npt.NDArray[np.int64],
        amounts: npt.NDArray[np.uint64],
    ) -> int:
        """Add the records at ``base_offset``, ``base_offset + 1``... (a user and an amount
        each) to the totals, skipping those applied already; return how many were new.

        Raises:
            PermanentError: The records do not follow what was applied (a gap), or a total
                would not fit.
            TransientError: The database could not be reached; trying again may work.
        """
        ...

    def totals(self, user: int | None = None) -> Iterator[tuple[int, int]]:
        """``(user, total)`` pairs, by user ascending (only ``user``'s when given).

        Raises:
            TransientError: The database could not be read (unreachable, damaged).
        """
        ...

    def close(self) -> None:
        """Disconnect."""
        ...


def _check_follows(topic: str, partition: int, stored: int | None, base_offset: int) -> None:
    if stored is not None and base_offset > stored:
        raise PermanentError(
            f"{topic}[{partition}]: records from offset {base_offset} on, but the database "
            f"applied them only up to {stored}: the records between were never applied "
            "(was the database restored from an older backup, or the state folder changed?)"
        )


def _new_sums(
    stored: int | None,
    base_offset: int,
    users: npt.NDArray[np.int64],
    amounts: npt.NDArray[np.uint64],
) -> tuple[int, Sums]:
    skip = 0 if stored is None else min(max(stored - base_offset, 0), len(users))
    return len(users) - skip, Sums.of(users[skip:], amounts[skip:])


def _rows(sums: Sums) -> list[tuple[int, int]]:
    return [
        (user, (high << 32) + low)
        for user, high, low in zip(
            sums.users.tolist(), sums.high.tolist(), sums.low.tolist(), strict=True
        )
    ]


@attrs.define(eq=False)
class SqliteTotals:
    """Totals in a SQLite file (see :func:`open_totals`)."""

    path: Path
    _db: sqlite3.Connection
    raw: bool = False

    @classmethod
    def open(cls, path: Path, *, raw: bool = False) -> SqliteTotals:
        """Open (creating the file and tables when missing).

        Raises:
            TransientError: The file cannot be opened.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {TOTALS} "
                "(user_id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)"
            )
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {APPLIED} (topic TEXT NOT NULL, "
                "partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, "
                "PRIMARY KEY (topic, partition))"
            )
            if raw:
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {LOADS} (user_id INTEGER NOT NULL, "
                    "amount INTEGER NOT NULL, loaded_at REAL NOT NULL)"
                )
        except sqlite3.Error as exc:
            raise TransientError(f"cannot open the SQLite database {path}: {exc}") from None
        return cls(path, db, raw)

    def applied(self, topic: str) -> dict[int, int]:
        rows = self._db.execute(
            f"SELECT partition, next_offset FROM {APPLIED} WHERE topic = ?", (topic,)
        )
        return dict(rows.fetchall())

    def knows(self, lineage: str) -> bool:
        row = self._db.execute(
            f"SELECT 1 FROM {APPLIED} WHERE topic LIKE ? LIMIT 1", (f"{lineage}/%",)
        ).fetchone()
        return row is not None

    def apply(
        self,
        topic: str,
        partition: int,
        base_offset: int,
        users: npt.NDArray[np.int64],
        amounts: npt.NDArray[np.uint64],
    ) -> int:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    f"SELECT next_offset FROM {APPLIED} WHERE topic = ? AND partition = ?",
                    (topic, partition),
                ).fetchone()
                stored = None if row is None else int(row[0])
                _check_follows(topic, partition, stored, base_offset)
                count, sums = _new_sums(stored, base_offset, users, amounts)
                rows = _rows(sums)
                self._merge(db, rows, f"{topic}[{partition}] from offset {base_offset}")
                if self.raw:
                    now = time.time()
                    db.executemany(
                        f"INSERT INTO {LOADS} (user_id, amount, loaded_at) VALUES (?, ?, ?)",
                        [(user, amount, now) for user, amount in rows],
                    )
                db.execute(
                    f"INSERT INTO {APPLIED} (topic, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = "
                    "max(next_offset, excluded.next_offset)",
                    (topic, partition, base_offset + len(users)),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O: may pass
            raise TransientError(f"SQLite {self.path}: {exc}") from None
        return count

    @staticmethod
    def _merge(db: sqlite3.Connection, rows: list[tuple[int, int]], where: str) -> None:
        # Through a temporary table, checked first: SQLite turns an integer sum that
        # overflows into a float, silently.
        db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS usage_batch "
            "(user_id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)"
        )
        db.execute("DELETE FROM usage_batch")
        try:
            db.executemany("INSERT INTO usage_batch (user_id, amount) VALUES (?, ?)", rows)
        except OverflowError:
            too_large = None
        else:
            too_large = db.execute(
                f"SELECT b.user_id FROM usage_batch b JOIN {TOTALS} t USING (user_id) "
                f"WHERE t.amount > {SQLITE_MAX} - b.amount LIMIT 1"
            ).fetchone()
            if too_large is None:
                db.execute(
                    f"INSERT INTO {TOTALS} (user_id, amount) SELECT user_id, amount "
                    "FROM usage_batch WHERE true ON CONFLICT (user_id) DO UPDATE SET "
                    "amount = amount + excluded.amount"
                )
                return
        raise PermanentError(
            f"{where}: a total does not fit in SQLite's 64-bit integers"
            + ("" if too_large is None else f" (user {too_large[0]})")
            + "; use PostgreSQL, whose totals have no limit"
        )

    def totals(self, user: int | None = None) -> Iterator[tuple[int, int]]:
        try:
            if user is None:
                cursor = self._db.execute(f"SELECT user_id, amount FROM {TOTALS} ORDER BY user_id")
            else:
                cursor = self._db.execute(
                    f"SELECT user_id, amount FROM {TOTALS} WHERE user_id = ?", (user,)
                )
            for found, amount in cursor:
                yield int(found), int(amount)
        except sqlite3.Error as exc:
            raise TransientError(f"cannot read the totals of {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()


@attrs.define(eq=False)
class PostgresTotals:
    """Totals in PostgreSQL (see :func:`open_totals`)."""

    url: str
    _conn: psycopg.Connection[tuple[object, ...]]
    raw: bool = False

    @classmethod
    def open(cls, url: str, *, raw: bool = False) -> PostgresTotals:
        """Connect (creating the tables when missing).

        Raises:
            TransientError: The server cannot be reached.
        """
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TOTALS} "
                "(user_id BIGINT PRIMARY KEY, amount NUMERIC NOT NULL)"
            )
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {APPLIED} (topic TEXT NOT NULL, "
                "partition INTEGER NOT NULL, next_offset BIGINT NOT NULL, "
                "PRIMARY KEY (topic, partition))"
            )
            if raw:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {LOADS} (user_id BIGINT NOT NULL, "
                    "amount NUMERIC NOT NULL, loaded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
        except psycopg.Error as exc:
            raise TransientError(f"cannot reach PostgreSQL at {_safe(url)}: {exc}") from None
        return cls(url, conn, raw)

    def applied(self, topic: str) -> dict[int, int]:
        rows = self._conn.execute(
            f"SELECT partition, next_offset FROM {APPLIED} WHERE topic = %s", (topic,)
        )
        return {int(p): int(o) for p, o in rows.fetchall()}  # type: ignore[call-overload]

    def knows(self, lineage: str) -> bool:
        row = self._conn.execute(
            f"SELECT 1 FROM {APPLIED} WHERE topic LIKE %s LIMIT 1", (f"{lineage}/%",)
        ).fetchone()
        return row is not None

    def apply(
        self,
        topic: str,
        partition: int,
        base_offset: int,
        users: npt.NDArray[np.int64],
        amounts: npt.NDArray[np.uint64],
    ) -> int:
        conn = self._conn
        try:
            with conn.transaction():
                row = conn.execute(
                    f"SELECT next_offset FROM {APPLIED} WHERE topic = %s AND partition = %s "
                    "FOR UPDATE",
                    (topic, partition),
                ).fetchone()
                stored = None if row is None else int(row[0])  # type: ignore[call-overload]
                _check_follows(topic, partition, stored, base_offset)
                count, sums = _new_sums(stored, base_offset, users, amounts)
                # The seed's merge through a temporary table: the sums copied in, then
                # added to the totals in one statement, users in order (no lock cycles
                # between two clients merging at once).
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS usage_staging "
                    "(user_id BIGINT NOT NULL, amount NUMERIC NOT NULL) ON COMMIT DELETE ROWS"
                )
                text = "".join(f"{user}\t{amount}\n" for user, amount in _rows(sums))
                with conn.cursor().copy("COPY usage_staging (user_id, amount) FROM STDIN") as copy:
                    copy.write(text)
                conn.execute(
                    f"INSERT INTO {TOTALS} (user_id, amount) SELECT user_id, sum(amount) "
                    "FROM usage_staging GROUP BY user_id ORDER BY user_id "
                    f"ON CONFLICT (user_id) DO UPDATE SET amount = {TOTALS}.amount + "
                    "EXCLUDED.amount"
                )
                if self.raw:
                    conn.execute(
                        f"INSERT INTO {LOADS} (user_id, amount) SELECT user_id, amount "
                        "FROM usage_staging"
                    )
                conn.execute(
                    f"INSERT INTO {APPLIED} (topic, partition, next_offset) VALUES (%s, %s, %s) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = "
                    f"greatest({APPLIED}.next_offset, EXCLUDED.next_offset)",
                    (topic, partition, base_offset + len(users)),
                )
        except psycopg.OperationalError as exc:  # the connection or the server: may pass
            self._reconnect()
            raise TransientError(f"PostgreSQL at {_safe(self.url)}: {exc}") from None
        except psycopg.Error as exc:
            raise PermanentError(f"PostgreSQL refused {topic}[{partition}]: {exc}") from None
        return count

    def _reconnect(self) -> None:
        try:
            self._conn.close()
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error:
            pass  # the next attempt tries again

    def totals(self, user: int | None = None) -> Iterator[tuple[int, int]]:
        try:
            if user is None:
                cursor = self._conn.execute(
                    f"SELECT user_id, amount FROM {TOTALS} ORDER BY user_id"
                )
            else:
                cursor = self._conn.execute(
                    f"SELECT user_id, amount FROM {TOTALS} WHERE user_id = %s", (user,)
                )
            for found, amount in cursor:
                yield int(found), int(amount)  # type: ignore[call-overload]
        except psycopg.Error as exc:
            raise TransientError(
                f"cannot read the totals at {_safe(self.url)}: {exc}".rstrip()
            ) from None

    def close(self) -> None:
        self._conn.close()


def _safe(url: str) -> str:
    # The URL without its password, for messages.
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


@contextmanager
def open_totals(url: str | None, state: Path | None, *, raw: bool = False) -> Iterator[Totals]:
    """Open the totals database ``url`` names: ``postgresql://...`` (any server),
    ``sqlite:///PATH`` (a file; relative to the working folder), or None for a PostgreSQL
    server embedded in ``state/postgres`` (started here, stopped on leaving; call this from
    the main thread, so the server also stops if this process is killed).

    Raises:
        TransientError: The database cannot be reached or opened.
        PostgresUnavailable: The embedded server cannot be started.
        ValueError: ``url`` is neither kind.
    """
    server: EmbeddedPostgres | None = None
    if url is None:
        server = EmbeddedPostgres.start((state or Path("state")) / "postgres")
        url = server.url
    try:
        if url.startswith("sqlite:///"):
            store: Totals = SqliteTotals.open(Path(url.removeprefix("sqlite:///")), raw=raw)
        elif url.startswith(("postgresql://", "postgres://")):
            store = PostgresTotals.open(url, raw=raw)
        else:
            raise ValueError(f"store url {url!r}: expected postgresql://... or sqlite:///PATH")
        try:
            yield store
        finally:
            store.close()
    finally:
        if server is not None:
            server.stop()


# -- the sink ------------------------------------------------------------------------------


@attrs.frozen
class UsageTotalsParams:
    """Settings of ``usage_totals``."""

    url: str | None = None
    """The database: ``postgresql://...`` (any server), ``sqlite:///PATH``, or none for a
    PostgreSQL server embedded in the run's state folder (``STATE/postgres``)."""
    raw: bool = False
    """Also keep every partial sum applied, with its load time (``usage_loads``), for
    statistics by period."""
    linger: float = 0.2
    """Seconds between the starts of two merges at least: sums gather meanwhile."""

    def __attrs_post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(
            ("postgresql://", "postgres://", "sqlite:///")
        ):
            raise ValueError(f"url {self.url!r}: expected postgresql://... or sqlite:///PATH")
        if not 0 <= self.linger < 3600:
            raise ValueError(f"linger must be between 0 and 3600 seconds, got {self.linger}")


class UsageTotalsState(State, frozen=True, tag=1):
    """The state of ``usage_totals``: what it was handed, and what of it was new."""

    kinds: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    """Records handed to it, by kind."""
    applied: Annotated[int, msgspec.Meta(ge=0)]
    lineage: str
    """The run's lineage: the offsets it applied are recorded under it."""


@attrs.define(eq=False)
class UsageTotalsSink:
    """Processor ``usage_totals``: adds the ``UserSum`` records it reads to each user's total
    in the central database, each batch once (see the module)."""

    params: UsageTotalsParams = attrs.field(factory=UsageTotalsParams)
    records: int = 0
    """Records handed to it (applied, or found applied already)."""
    applied: int = 0
    """Records the database had not applied yet."""
    _store: Totals | None = None
    _lineage: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    _restored: bool = False
    _one: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    @property
    def linger(self) -> float:
        """Seconds between the starts of two merges at least."""
        return self.params.linger

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        """Open the database (starting the embedded server, here in the main thread, so that
        it dies with this process however it ends)."""
        if not self._restored:  # the state folder's, so that a run restarted finds its own
            self._lineage = folder_lineage(context, self._lineage)
        with open_totals(self.params.url, context.state, raw=self.params.raw) as store:
            if self._restored and self.applied and not store.knows(self._lineage):
                where = self.params.url or "the embedded PostgreSQL"
                raise PermanentError(
                    f"usage_totals: this run's epochs say {self.applied:,} sums were applied "
                    f"to its database, but {_safe(where)} holds none of this run's: was params.url "
                    "changed, or the database replaced? Give the url the run used (its totals "
                    "would be split, or counted twice, over two databases), or start afresh "
                    "with another state folder"
                )
            self._store = store
            try:
                yield
            finally:
                self._store = None

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        """Apply each batch in its own transaction (see :meth:`Totals.apply`)."""
        store = self._store
        assert store is not None, "the sink is not open"
        records = applied = 0
        for batch in batches:
            users, amounts = _columns(batch.values)
            applied += await trio.to_thread.run_sync(
                store.apply,
                f"{self._lineage}/{batch.topic}",
                batch.partition,
                batch.base_offset,
                users,
                amounts,
                limiter=self._one,
            )
            records += len(users)
        # Counted once all are in, in the step the consumer commits them: a write that fails
        # part way is tried again whole, and counts then (what it applied before, as found
        # applied already).
        self.records += records
        self.applied += applied

    def process(self, events: Sequence[Any]) -> None:
        """Not called: its consumer awaits :meth:`write`."""
        raise NotImplementedError("usage_totals is a sink; its consumer calls write()")

    def result(self) -> dict[str, Any]:
        """Partial sums applied, and those found applied already (sent again after a
        crash)."""
        return {"sums_applied": self.applied, "sums_skipped": self.records - self.applied}

    def totals(self) -> dict[str, int]:
        """Records handed to it."""
        return {"sum": self.records}

    def snapshot(self) -> UsageTotalsState:
        """The counts, for an epoch."""
        return UsageTotalsState(
            kinds={"sum": self.records}, applied=self.applied, lineage=self._lineage
        )

    def restore(self, state: UsageTotalsState) -> None:
        """Take an epoch's counts back."""
        self.records, self.applied = sum(state.kinds.values()), state.applied
        self._lineage, self._restored = state.lineage, True

    def live(self) -> list[tuple[str, str]]:
        """Progress for the live view."""
        return [("sums applied", f"{self.applied:,}")]


def _columns(values: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
    # A batch's users and amounts as arrays (a table's columns, or read from events).
    if isinstance(values, Table):
        return values.columns["user_id"], values.columns["amount"].astype(np.uint64)
    users = np.fromiter((v.user_id for v in values), dtype=np.int64, count=len(values))
    amounts = np.fromiter((v.amount for v in values), dtype=np.uint64, count=len(values))
    return users, amounts
