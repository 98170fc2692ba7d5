"""The checkpoint store: consistent epochs of a pipeline's state in one SQLite file."""

from __future__ import annotations

import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

import attrs
import msgspec

from .errors import CheckpointError
from .integrity import DamagedEpoch, epoch_checksum, part_checksum
from .segment import Segment, SegmentLog, decode_segments, encode_segments

SCHEMA_VERSION = 4
"""The layout of the database and its parts; another one is refused, never rewritten.
Version 2 added checksums, whether the epoch ended a completed run, and the run's segments;
version 3 stores each part as a versioned map (``snapshot.py``), not a list read by position;
version 4 stores records as columns (typed buffers and tables) and workloads' positions as a
sequence number (the events of the columnar generators)."""

CHECKSUMS_SINCE = 2
"""The first schema version whose parts and epochs carry checksums."""

FILE_NAME = "checkpoints.sqlite3"
"""The database's name inside a state folder."""

_SQLITE_HEADER = b"SQLite format 3\x00"

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
    final INTEGER NOT NULL,
    completed INTEGER NOT NULL,
    segments TEXT NOT NULL,
    checksum TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    epoch INTEGER NOT NULL REFERENCES epochs(epoch) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    checksum TEXT NOT NULL,
    PRIMARY KEY (epoch, kind, name)
);
"""

_T = TypeVar("_T")


@attrs.frozen
class EpochInfo:
    """One epoch as ``ringflow checkpoints`` lists it."""

    epoch: int
    """The epoch's number; numbers only grow."""
    created_at: float
    """Wall-clock time (Unix seconds) the epoch was written."""
    sim_time: float
    """The run's simulated time at the snapshot: seconds of the run's clock since the run
    began, continuous across resumes."""
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
    completed: bool = False
    """Whether the run had completed with it: nothing is left to do after it."""
    segments: tuple[Segment, ...] = ()
    """The segments of the run up to this epoch, the last one being the one that wrote it."""


@attrs.frozen
class Snapshot:
    """A consistent cut of a pipeline, ready to write: encoded parts by (kind, name)."""

    sim_time: float
    events_produced: int
    ring_records: int
    parts: Mapping[tuple[str, str], bytes]
    final: bool = False


@attrs.frozen
class CheckpointStoreStatistics:
    """A snapshot of a :class:`CheckpointStore`, as :meth:`CheckpointStore.statistics` gives it."""

    path: Path
    """The database file."""
    schema_version: int
    """The schema version of the database (this ringflow's, unless opened for inspection)."""
    keep: int
    """How many of the newest epochs the store keeps (``checkpoint.keep``)."""
    epochs_written: int
    """Epochs this store object has written."""
    last_epoch: int | None
    """The number of the newest epoch this store object wrote; None before its first."""
    damaged: int
    """Epochs the last :meth:`CheckpointStore.load_intact` passed over as damaged."""


def _check_file(path: Path) -> None:
    """Refuse, without opening it as a database (which would write to it), a file that is
    empty or not SQLite."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    if not head:
        problem = "it is empty: 0 bytes"
    elif head != _SQLITE_HEADER:
        problem = "it is not an SQLite file"
    else:
        return
    raise CheckpointError(
        f"{path} is not a usable checkpoint database ({problem}); it was left as it is. "
        "Move it away to start afresh, or restore it from a backup"
    )


def _read_only(path: Path) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=10)


class CheckpointStore:
    """Epochs of one topology's state in ``DIR/checkpoints.sqlite3``.

    Open with :meth:`open`, which checks what is already there and refuses (without changing
    anything) a database of another topology, of another schema, or one that is damaged.
    Every epoch is written in one transaction, so a crash while writing leaves the previous
    epochs intact. Every part carries a checksum, and every epoch a checksum over its parts:
    :meth:`load_intact` resumes from the newest epoch that is intact and says which were not.
    Only the newest ``keep`` epochs are kept.

    The store keeps one connection open; call :meth:`close` when done with it.
    """

    def __init__(self, path: Path, fingerprint: str, keep: int) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.keep = keep
        self.version = SCHEMA_VERSION
        self.damaged: list[DamagedEpoch] = []
        """The epochs :meth:`load_intact` passed over, newest first."""
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._segments = SegmentLog()
        self._written = 0
        self._last: int | None = None

    @classmethod
    def open(
        cls, folder: Path, fingerprint: str, *, keep: int = 3, name: str = ""
    ) -> CheckpointStore:
        """Open (creating if needed) the store in ``folder`` for a topology with ``fingerprint``.

        Raises:
            CheckpointError: The folder cannot be created or written, or the database belongs
                to another topology, has another schema, or is damaged (an empty file or one
                that is not SQLite included); it is left as it was.
        """
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the state folder {folder}: {exc.strerror}; "
                "choose a state folder you can write (checkpoint.path)"
            ) from None
        path = folder / FILE_NAME
        store = cls(path, fingerprint, keep)
        existed = path.exists()
        try:
            if existed:
                # Check before the writable connection, which would turn an empty file into a
                # database and switch the journal mode.
                _check_file(path)
                with closing(_read_only(path)) as db:
                    store._check(db)
            with store._connect() as db:
                if not existed:
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
            self._closing = False
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
            try:
                with self._db:
                    yield self._db
            finally:
                if self._closing:
                    self._close()

    def close(self) -> None:
        """Close the database connection (the store opens it again when needed).

        A write still in progress (in a worker thread its caller abandoned) is not waited
        for: the connection is closed when that write ends.
        """
        self._closing = True  # first: a write ending now then closes it, or the lock is free
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._close()
        finally:
            self._lock.release()

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _check(self, db: sqlite3.Connection) -> None:
        problem = str(db.execute("PRAGMA quick_check").fetchone()[0])
        if problem != "ok":
            lines = problem.splitlines() or [problem]  # the first of them says enough
            raise sqlite3.DatabaseError(f"integrity check: {lines[0]} ({len(lines)} found)")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            raise sqlite3.DatabaseError("it has no ringflow metadata") from None
        try:
            version = int(meta.get("schema_version", "0"))
        except (TypeError, ValueError):
            raise sqlite3.DatabaseError("its schema version is not a number") from None
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{self.path} has schema version {version}, newer than this ringflow's "
                f"{SCHEMA_VERSION}; run it with a newer ringflow, or use another state folder "
                "(checkpoint.path)"
            )
        if version < SCHEMA_VERSION:
            why = (
                "its epochs carry no checksums, so they cannot be verified and it is not resumed"
                if version < CHECKSUMS_SINCE
                else "its epochs are in an older layout that this ringflow does not read, so it "
                "is not resumed"
            )
            raise CheckpointError(
                f"{self.path} has schema version {version}, older than this ringflow's "
                f"{SCHEMA_VERSION}: {why} (it was left as it is). Finish the run with the "
                "ringflow that wrote it, or use another state folder (checkpoint.path) to start "
                "afresh"
            )
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.path} holds checkpoints of another topology or settings "
                f"({meta.get('topology') or 'unnamed'}, fingerprint "
                f"{meta.get('fingerprint', '?')[:12]}; this run's is {self.fingerprint[:12]}). "
                "Use another state folder (checkpoint.path), or run the same file with the same "
                "seed and events"
            )

    @property
    def checksummed(self) -> bool:
        """Whether the store's schema has checksums to verify (version 2 on)."""
        return self.version >= CHECKSUMS_SINCE

    def begin_segment(self, resumed: EpochInfo | None) -> None:
        """Count from now a new segment of the run, after the segments that led to
        ``resumed`` (the epoch it resumed from; None for a fresh run). Every epoch written
        from now on records them, with this one up to the epoch."""
        if resumed is None:
            self._segments = SegmentLog.fresh()
        else:
            self._segments = SegmentLog.after(
                resumed.segments, resumed.epoch, resumed.events_produced, resumed.sim_time
            )

    def write(
        self, snapshot: Snapshot, *, segments: tuple[Segment, ...] | None = None
    ) -> EpochInfo:
        """Write ``snapshot`` as the next epoch, in one transaction; drop epochs beyond ``keep``.

        ``segments``: the run's segments up to it when not this store's own (an epoch that
        ``ringflow dlq`` changed keeps those of the one it changed).

        Raises:
            CheckpointError: The database could not be written; earlier epochs are intact.
        """
        started = time.perf_counter()
        size = sum(len(data) for data in snapshot.parts.values())
        if segments is None:
            segments = self._segments.up_to(snapshot.events_produced, snapshot.sim_time)
        history = encode_segments(segments)
        parts = [
            (kind, name, data, part_checksum(kind, name, data))
            for (kind, name), data in snapshot.parts.items()
        ]
        try:
            with self._connect() as db:
                row = db.execute("SELECT COALESCE(MAX(epoch), 0) + 1 FROM epochs").fetchone()
                epoch = int(row[0])
                checksum = epoch_checksum(
                    (
                        epoch,
                        snapshot.sim_time,
                        snapshot.events_produced,
                        snapshot.ring_records,
                        snapshot.final,
                        False,
                        history,
                    ),
                    [(kind, name, sha) for kind, name, _, sha in parts],
                )
                db.execute(
                    "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, 0, ?, 0, ?, ?)",
                    (
                        epoch,
                        time.time(),
                        snapshot.sim_time,
                        snapshot.events_produced,
                        snapshot.ring_records,
                        size,
                        int(snapshot.final),
                        history,
                        checksum,
                    ),
                )
                db.executemany(
                    "INSERT INTO parts VALUES (?, ?, ?, ?, ?)",
                    [(epoch, kind, name, data, sha) for kind, name, data, sha in parts],
                )
                self._before_commit(db, epoch)
                seconds = time.perf_counter() - started
                db.execute("UPDATE epochs SET write_seconds = ? WHERE epoch = ?", (seconds, epoch))
                db.execute("DELETE FROM epochs WHERE epoch <= ?", (epoch - self.keep,))
        except sqlite3.Error as exc:
            raise CheckpointError(f"writing a checkpoint to {self.path} failed: {exc}") from None
        self._written, self._last = self._written + 1, epoch
        return EpochInfo(
            epoch=epoch,
            created_at=time.time(),
            sim_time=snapshot.sim_time,
            events_produced=snapshot.events_produced,
            ring_records=snapshot.ring_records,
            bytes=size,
            write_seconds=seconds,
            final=snapshot.final,
            segments=segments,
        )

    def statistics(self) -> CheckpointStoreStatistics:
        """Return a snapshot of the store's settings and of what this object wrote."""
        return CheckpointStoreStatistics(
            path=self.path,
            schema_version=self.version,
            keep=self.keep,
            epochs_written=self._written,
            last_epoch=self._last,
            damaged=len(self.damaged),
        )

    def _before_commit(self, db: sqlite3.Connection, epoch: int) -> None:
        """A hook for tests that crash a write half-way; does nothing."""

    def mark_completed(self, epoch: int) -> None:
        """Record that the run completed with ``epoch`` (its final epoch): a run resumed from
        it has nothing left to do.

        Raises:
            CheckpointError: The database could not be written.
        """
        try:
            with self._connect() as db:
                row = db.execute(
                    "SELECT epoch, sim_time, events_produced, ring_records, final, 1, segments "
                    "FROM epochs WHERE epoch = ?",
                    (epoch,),
                ).fetchone()
                if row is None:
                    return
                parts = db.execute(
                    "SELECT kind, name, checksum FROM parts WHERE epoch = ?", (epoch,)
                ).fetchall()
                db.execute(
                    "UPDATE epochs SET completed = 1, checksum = ? WHERE epoch = ?",
                    (epoch_checksum(row, parts), epoch),
                )
        except sqlite3.Error as exc:
            raise CheckpointError(f"writing a checkpoint to {self.path} failed: {exc}") from None

    def epochs(self) -> list[EpochInfo]:
        """Every epoch kept, oldest first.

        Raises:
            CheckpointError: The list of epochs cannot be read (the file is damaged).
        """
        extra = "completed, CAST(segments AS BLOB)" if self.checksummed else "0, '[]'"
        try:
            with self._connect() as db:
                rows = db.execute(
                    "SELECT epoch, created_at, sim_time, events_produced, ring_records, bytes, "
                    f"write_seconds, final, {extra} FROM epochs ORDER BY epoch"
                ).fetchall()
            return [
                EpochInfo(
                    epoch=int(row[0]),
                    created_at=float(row[1]),
                    sim_time=float(row[2]),
                    events_produced=int(row[3]),
                    ring_records=int(row[4]),
                    bytes=int(row[5]),
                    write_seconds=float(row[6]),
                    final=bool(row[7]),
                    completed=bool(row[8]),
                    segments=decode_segments(_text(row[9])),
                )
                for row in rows
            ]
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{self.path} is damaged: its list of epochs cannot be read ({exc}); it was "
                "left as it is. Move it away to start afresh, or restore it from a backup"
            ) from None

    def load(
        self, epoch: int | None = None, *, verify: bool = True
    ) -> tuple[EpochInfo, dict[tuple[str, str], bytes]] | None:
        """Return an epoch (the newest when None) and its parts, or None if there is none.

        Raises:
            DamagedEpoch: With ``verify``, a part or the epoch does not match its checksum.
            CheckpointError: There is no such epoch.
        """
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
        parts = self._parts(chosen.epoch, verify=verify)
        return chosen, {key: data for key, (data, _) in parts.items()}

    def _parts(self, epoch: int, *, verify: bool) -> dict[tuple[str, str], tuple[bytes, str]]:
        try:
            return self._read_parts(epoch, verify=verify)
        except (sqlite3.Error, ValueError, TypeError) as exc:  # not even readable as data
            raise DamagedEpoch(epoch, "parts", f"cannot be read ({exc})") from None

    def _read_parts(self, epoch: int, *, verify: bool) -> dict[tuple[str, str], tuple[bytes, str]]:
        checksum = "checksum" if self.checksummed else "''"
        with self._connect() as db:
            rows = db.execute(
                f"SELECT kind, name, data, {checksum} FROM parts WHERE epoch = ?", (epoch,)
            ).fetchall()
            if not verify:
                return {(kind, name): (bytes(data), sha) for kind, name, data, sha in rows}
            record = db.execute(
                "SELECT epoch, sim_time, events_produced, ring_records, final, completed, "
                "segments, checksum FROM epochs WHERE epoch = ?",
                (epoch,),
            ).fetchone()
        parts = {(kind, name): (bytes(data), sha) for kind, name, data, sha in rows}
        for (kind, name), (data, checksum) in sorted(parts.items()):
            if part_checksum(kind, name, data) != checksum:
                raise DamagedEpoch(epoch, f"{kind}/{name}", "does not match its checksum")
        listed = [(kind, name, checksum) for (kind, name), (_, checksum) in parts.items()]
        if record is None or epoch_checksum(record[:7], listed) != record[7]:
            raise DamagedEpoch(
                epoch, "epoch record", "(figures or list of parts) does not match its checksum"
            )
        return parts

    def verify(self, epoch: int) -> DamagedEpoch | None:
        """Check ``epoch`` without restoring it: its checksums, and that every part is
        MessagePack. Return the damage found, or None when it looks intact (a part can still
        fail to restore: :meth:`load_intact` finds that)."""
        try:
            parts = self._parts(epoch, verify=True)
        except DamagedEpoch as exc:
            return exc
        for (kind, name), (data, _) in sorted(parts.items()):
            try:
                msgspec.msgpack.decode(data)
            except msgspec.DecodeError as exc:
                return DamagedEpoch(epoch, f"{kind}/{name}", f"is not MessagePack ({exc})")
        return None

    def load_intact(
        self, restore: Callable[[tuple[EpochInfo, dict[tuple[str, str], bytes]]], _T]
    ) -> _T | None:
        """Restore from the newest intact epoch: ``restore`` gets the epoch and its parts, and
        raises :class:`DamagedEpoch` for a part that cannot be restored; the next older epoch is
        tried then. Epochs passed over are listed in :attr:`damaged`.

        Returns:
            What ``restore`` returned, or None when there is no epoch yet.

        Raises:
            CheckpointError: There are epochs but none is intact (the file is left as it is).
        """
        self.damaged = []
        epochs = self.epochs()
        for info in reversed(epochs):
            try:
                loaded = self.load(info.epoch)
                assert loaded is not None
                return restore(loaded)
            except DamagedEpoch as exc:
                self.damaged.append(exc.of_epoch(info.epoch))
        if epochs:
            found = "; ".join(f"{e.part} {e.problem} in epoch {e.epoch}" for e in self.damaged)
            raise CheckpointError(
                f"{self.path} has no intact epoch to resume from ({found}); it was left as it "
                "is. Move it away to start afresh, or restore it from a backup"
            )
        return None


def _text(value: object) -> str:
    # A text column read as bytes, so that text that is not UTF-8 is damage, not a crash.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def read_store(folder: Path) -> tuple[dict[str, str], CheckpointStore]:
    """Open an existing state folder read-only-ish for inspection, whatever its topology.

    Raises:
        CheckpointError: There is no checkpoint database there, or it is damaged.
    """
    path = folder / FILE_NAME if folder.is_dir() else folder
    if not path.exists():
        raise CheckpointError(f"no checkpoints in {folder}: {path} does not exist")
    _check_file(path)
    try:
        with closing(_read_only(path)) as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise CheckpointError(f"{path} is not a usable checkpoint database ({exc})") from None
    store = CheckpointStore(path, meta.get("fingerprint", ""), keep=0)
    try:
        store.version = int(meta.get("schema_version", "0"))
    except ValueError:
        store.version = 0
    return meta, store
