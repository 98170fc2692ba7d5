"""The checkpoint store: consistent epochs of a pipeline's state in one SQLite file."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path

import attrs

from .errors import CheckpointError

SCHEMA_VERSION = 1
"""The layout of the database; a newer one is refused, never rewritten."""

FILE_NAME = "checkpoints.sqlite3"
"""The database's name inside a state folder."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    sim_time REAL NOT NULL,
    events_produced INTEGER NOT NULL,
    ring_records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    write_seconds REAL NOT NULL,
    final INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    epoch INTEGER NOT NULL REFERENCES epochs(epoch) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (epoch, kind, name)
);
"""


@attrs.frozen
class EpochInfo:
    """One epoch as ``ringflow checkpoints`` lists it."""

    epoch: int
    """The epoch's number; numbers only grow."""
    created_at: float
    """Wall-clock time (Unix seconds) the epoch was written."""
    sim_time: float
    """The run's clock at the snapshot."""
    events_produced: int
    """Events accepted into topics by then."""
    ring_records: int
    """Records held in rings (not yet committed by every group) and saved with the epoch."""
    bytes: int
    """Size of the saved state."""
    write_seconds: float
    """How long the write took."""
    final: bool
    """Whether it was written as the run ended (completed or stopped)."""


@attrs.frozen
class Snapshot:
    """A consistent cut of a pipeline, ready to write: encoded parts by (kind, name)."""

    sim_time: float
    events_produced: int
    ring_records: int
    parts: Mapping[tuple[str, str], bytes]
    final: bool = False


class CheckpointStore:
    """Epochs of one topology's state in ``DIR/checkpoints.sqlite3``.

    Open with :meth:`open`, which checks what is already there and refuses (without changing
    anything) a database of another topology, of a newer schema, or one that is damaged.
    Every epoch is written in one transaction, so a crash while writing leaves the previous
    epochs intact. Only the newest ``keep`` epochs are kept.

    The store keeps one connection open; call :meth:`close` when done with it.
    """

    def __init__(self, path: Path, fingerprint: str, keep: int) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.keep = keep
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, folder: Path, fingerprint: str, *, keep: int = 3, name: str = ""
    ) -> CheckpointStore:
        """Open (creating if needed) the store in ``folder`` for a topology with ``fingerprint``.

        Raises:
            CheckpointError: The folder cannot be created or written, or the database belongs
                to another topology, has a newer schema, or is damaged.
        """
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the state folder {folder}: {exc.strerror}; "
                "choose a folder you can write with --state"
            ) from None
        path = folder / FILE_NAME
        store = cls(path, fingerprint, keep)
        existed = path.exists()
        try:
            with store._connect() as db:
                if existed:
                    store._check(db)
                else:
                    db.executescript(_SCHEMA)
                    db.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("fingerprint", fingerprint),
                            ("topology", name),
                            ("created_at", repr(time.time())),
                        ],
                    )
        except sqlite3.DatabaseError as exc:
            store.close()
            raise CheckpointError(
                f"{path} is not a usable checkpoint database ({exc}); it may be truncated or "
                "corrupt. Move it away to start afresh, or restore it from a backup"
            ) from None
        except CheckpointError:
            store.close()
            raise
        except OSError as exc:
            store.close()
            raise CheckpointError(f"cannot write {path}: {exc.strerror}") from None
        return store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection for the store's life: opening one per epoch cost more than writing
        # the epoch. Writes may come from a worker thread, so access is serialised here.
        with self._lock:
            if self._db is None:
                db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    # In WAL mode, NORMAL keeps every commit atomic and survives a killed
                    # process; only a power cut can lose the newest epoch (never older ones).
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.execute("PRAGMA foreign_keys=ON")
                except BaseException:
                    db.close()
                    raise
                self._db = db
            with self._db:
                yield self._db

    def close(self) -> None:
        """Close the database connection (the store opens it again when needed)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _check(self, db: sqlite3.Connection) -> None:
        problem = db.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {problem}")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            raise sqlite3.DatabaseError("it has no ringflow metadata") from None
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{self.path} has schema version {version}, newer than this ringflow's "
                f"{SCHEMA_VERSION}; run it with a newer ringflow, or use another --state folder"
            )
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.path} holds checkpoints of another topology or settings "
                f"({meta.get('topology') or 'unnamed'}, fingerprint "
                f"{meta.get('fingerprint', '?')[:12]}; this run's is {self.fingerprint[:12]}). "
                "Use another --state folder, or run the same file with the same --seed and "
                "--events"
            )

    def write(self, snapshot: Snapshot) -> EpochInfo:
        """Write ``snapshot`` as the next epoch, in one transaction; drop epochs beyond ``keep``.

        Raises:
            CheckpointError: The database could not be written; earlier epochs are intact.
        """
        started = time.perf_counter()
        size = sum(len(data) for data in snapshot.parts.values())
        try:
            with self._connect() as db:
                row = db.execute("SELECT COALESCE(MAX(epoch), 0) + 1 FROM epochs").fetchone()
                epoch = int(row[0])
                db.execute(
                    "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (
                        epoch,
                        time.time(),
                        snapshot.sim_time,
                        snapshot.events_produced,
                        snapshot.ring_records,
                        size,
                        int(snapshot.final),
                    ),
                )
                db.executemany(
                    "INSERT INTO parts VALUES (?, ?, ?, ?)",
                    [(epoch, kind, name, data) for (kind, name), data in snapshot.parts.items()],
                )
                self._before_commit(db, epoch)
                seconds = time.perf_counter() - started
                db.execute("UPDATE epochs SET write_seconds = ? WHERE epoch = ?", (seconds, epoch))
                db.execute("DELETE FROM epochs WHERE epoch <= ?", (epoch - self.keep,))
        except sqlite3.Error as exc:
            raise CheckpointError(f"writing a checkpoint to {self.path} failed: {exc}") from None
        return EpochInfo(
            epoch,
            time.time(),
            snapshot.sim_time,
            snapshot.events_produced,
            snapshot.ring_records,
            size,
            seconds,
            snapshot.final,
        )

    def _before_commit(self, db: sqlite3.Connection, epoch: int) -> None:
        """A hook for tests that crash a write half-way; does nothing."""

    def epochs(self) -> list[EpochInfo]:
        """Every epoch kept, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT epoch, created_at, sim_time, events_produced, ring_records, bytes, "
                "write_seconds, final FROM epochs ORDER BY epoch"
            ).fetchall()
        return [
            EpochInfo(
                epoch=row[0],
                created_at=row[1],
                sim_time=row[2],
                events_produced=row[3],
                ring_records=row[4],
                bytes=row[5],
                write_seconds=row[6],
                final=bool(row[7]),
            )
            for row in rows
        ]

    def load(
        self, epoch: int | None = None
    ) -> tuple[EpochInfo, dict[tuple[str, str], bytes]] | None:
        """Return an epoch (the newest when None) and its parts, or None if there is none."""
        epochs = self.epochs()
        if not epochs:
            return None
        chosen = (
            epochs[-1] if epoch is None else next((e for e in epochs if e.epoch == epoch), None)
        )
        if chosen is None:
            raise CheckpointError(
                f"{self.path} has no epoch {epoch}; it keeps "
                f"{', '.join(str(e.epoch) for e in epochs)}"
            )
        with self._connect() as db:
            rows = db.execute(
                "SELECT kind, name, data FROM parts WHERE epoch = ?", (chosen.epoch,)
            ).fetchall()
        return chosen, {(kind, name): bytes(data) for kind, name, data in rows}


def read_store(folder: Path) -> tuple[dict[str, str], CheckpointStore]:
    """Open an existing state folder read-only-ish for inspection, whatever its topology.

    Raises:
        CheckpointError: There is no checkpoint database there, or it is damaged.
    """
    path = folder / FILE_NAME if folder.is_dir() else folder
    if not path.exists():
        raise CheckpointError(f"no checkpoints in {folder}: {path} does not exist")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise CheckpointError(f"{path} is not a usable checkpoint database ({exc})") from None
    return meta, CheckpointStore(path, meta.get("fingerprint", ""), keep=0)
