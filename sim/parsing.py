"""The parser of the file pipeline (seed 004): processor ``usage_parser``.

Its consumer reads the announcements of a ``files`` producer; each instance claims a file
by reading its announcement, reads the file in chunks of whole lines, parses each chunk
into arrays in one call (:func:`sim.usage.parse_lines`), and keeps the sums per user in a
table that it writes to its consumer's ``output`` topic (as ``UserSum`` records, keyed by
user) when it holds ``max_keys`` users and at the end of the file. Each write records, in
the same step, how far into the file the sums written go (the byte just past the last
line counted, and the lines and bad lines before it): a parser restarted from an epoch
goes on from there. The last write of a file also adds the file to the ledger of
processed files (by identity) and commits its announcement; then the file is moved,
deleted or kept, as its producer says. A file announced again (copied back, renamed) is
found in the ledger and not read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, BinaryIO, ClassVar, Literal

import attrs
import msgspec
import numpy as np
import numpy.typing as npt
import trio

from actors import Columns, RecordBatch, Table
from topology import (
    DeadLetter,
    FileAnnounced,
    State,
    TopicSummary,
    TopicTally,
    TopicTallyPart,
    UndeliveredError,
    Write,
    identify,
    settle,
)

from .usage import LONG_LINE, Parsed, Sums, explain, parse_lines

MAX_PIECE = 2**63 - 1
"""The largest amount one ``UserSum`` carries (a sum beyond it is split over records)."""

REPORTED_PER_CHUNK = 20
"""Bad lines of one chunk reported one by one (the rest are counted)."""

LETTERS_PER_WRITE = 10_000
"""Dead letters (bad lines) gathered before they are written, with the sums so far."""

LETTER_TEXT = 4096
"""The characters of a bad line a dead letter keeps."""


class UserSum(msgspec.Struct, frozen=True, gc=False, tag="sum"):
    """A user's amounts summed over part of a file."""

    seq: int
    source: int
    timestamp: float
    user_id: int
    amount: Annotated[int, msgspec.Meta(ge=0)]
    kind: ClassVar[str] = "sum"


class BadLine(msgspec.Struct, frozen=True):
    """A bad line, as its dead letter keeps it (the letter's ``value``)."""

    file: str
    line: int
    """Its number in the file (1: the first line)."""
    text: str
    """Its first :data:`LETTER_TEXT` characters (bytes that are not UTF-8 replaced)."""


_LETTER = msgspec.msgpack.Encoder()


class ParseError(UndeliveredError):
    """A bad line in a file, with ``on_bad_line: fail``: the run fails at once, as for a
    record a sink cannot take (rolling back to an epoch would only meet it again)."""


@attrs.frozen
class UsageParserParams:
    """Settings of ``usage_parser``."""

    max_keys: int = 100_000
    """Users in the table of sums before it is written out (bounds memory)."""
    chunk_bytes: int = 2 << 20
    """Bytes read and parsed at once."""
    on_bad_line: Literal["skip", "dead_letter", "fail"] = "skip"
    """A bad line is counted and reported (``skip``), also kept as a dead letter in the
    consumer's ``dead_letter`` topic (``dead_letter``), or stops the run (``fail``)."""

    def __attrs_post_init__(self) -> None:
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {self.max_keys}")
        if not 4096 <= self.chunk_bytes <= 256 << 20:
            raise ValueError(
                f"chunk_bytes must be between 4096 and {256 << 20} (256 MiB), got "
                f"{self.chunk_bytes}"
            )


class FilePosition(msgspec.Struct, frozen=True, array_like=True):
    """How far into a file the sums written go."""

    offset: int
    """The byte just past the last line counted."""
    lines: int
    """Lines before it."""
    bad_lines: int
    """Bad lines among them."""


class UsageParserState(State, frozen=True, tag=1):
    """The state of ``usage_parser``."""

    processed: dict[str, str]
    """The ledger: by file identity, where the file was when processed."""
    positions: dict[str, FilePosition]
    """By identity, the files part-way processed."""
    files: int
    duplicates: int
    missing: int
    lines: int
    bad_lines: int
    records: int
    seq_sums: dict[int, int]
    """Per producer instance, the sum of the sequence numbers of the sums written."""
    unsettled: list[FileAnnounced]
    """Files processed but not yet moved or deleted (that waits for an epoch holding them
    as processed: else a crash in between would find them gone, and unread)."""
    dead_lettered: int = 0
    not_settled: int = 0


@attrs.define(eq=False)
class UsageParser:
    """Processor ``usage_parser`` (see the module)."""

    params: UsageParserParams = attrs.field(factory=UsageParserParams)
    processed: dict[str, str] = attrs.field(factory=dict)
    positions: dict[str, FilePosition] = attrs.field(factory=dict)
    files: int = 0
    """Files read to the end."""
    duplicates: int = 0
    """Announcements of files already processed."""
    missing: int = 0
    """Announcements of files gone or changed before they could be read."""
    lines: int = 0
    bad_lines: int = 0
    records: int = 0
    """``UserSum`` records written."""
    dead_lettered: int = 0
    """Bad lines kept as dead letters."""
    not_settled: int = 0
    """Files processed that could not be moved or deleted as ``after`` says (each is
    reported; left where it is, it is not read again)."""
    unsettled: list[FileAnnounced] = attrs.field(factory=list)
    """Files processed, to move or delete once an epoch holds them as processed."""
    sent: TopicTally = attrs.field(factory=TopicTally)
    """What was written, as a producer's tally counts it."""
    on_problem: Callable[[dict[str, Any]], None] | None = None
    """Told of each bad line (file, line number, text) and missing file (for the log)."""
    now: Callable[[], float] = trio.current_time
    """The run's clock, as dead letters are stamped with it (the pipeline's event time)."""
    _active: dict[str, trio.Event] = attrs.field(factory=dict)
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(2))

    # -- the processor -----------------------------------------------------------------

    def process(self, events: Sequence[Any]) -> None:
        """Not called: its consumer awaits :meth:`work`."""
        raise NotImplementedError("usage_parser works on files; its consumer calls work()")

    def result(self) -> dict[str, Any]:
        """What was read: files, lines, bad lines, records written."""
        result = {
            "files": self.files,
            "duplicates": self.duplicates,
            "missing": self.missing,
            "lines": self.lines,
            "bad_lines": self.bad_lines,
            "sums_written": self.records,
        }
        if self.params.on_bad_line == "dead_letter":
            result["dead_lettered"] = self.dead_lettered
        if self.not_settled:
            result["not_settled"] = self.not_settled
        return result

    def totals(self) -> dict[str, int]:
        """Announcements handled (read, or skipped as duplicates or missing)."""
        return {"file": self.files + self.duplicates + self.missing}

    def live(self) -> list[tuple[str, str]]:
        """Progress for the live view."""
        return [
            ("files", f"{self.files:,}"),
            ("lines", f"{self.lines:,}"),
            ("bad lines", f"{self.bad_lines:,}"),
        ] + ([("not moved", f"{self.not_settled:,}")] if self.not_settled else [])

    def snapshot(self) -> UsageParserState:
        """The ledger, the positions and the counts, for an epoch."""
        return UsageParserState(
            processed=dict(self.processed),
            positions=dict(self.positions),
            files=self.files,
            duplicates=self.duplicates,
            missing=self.missing,
            lines=self.lines,
            bad_lines=self.bad_lines,
            records=self.records,
            dead_lettered=self.dead_lettered,
            not_settled=self.not_settled,
            seq_sums=dict(self.sent.seq_sums),
            unsettled=list(self.unsettled),
        )

    def restore(self, state: UsageParserState) -> None:
        """Take an epoch's ledger, positions and counts back."""
        self.processed = dict(state.processed)
        self.positions = dict(state.positions)
        self.files, self.duplicates, self.missing = state.files, state.duplicates, state.missing
        self.lines, self.bad_lines, self.records = state.lines, state.bad_lines, state.records
        self.dead_lettered, self.not_settled = state.dead_lettered, state.not_settled
        self.unsettled = list(state.unsettled)
        self.sent.restore(
            TopicTallyPart(
                records=state.records, seq_sums=state.seq_sums, kinds={"sum": state.records}
            )
        )

    def captured(self) -> Callable[[], None] | None:
        """Called as an epoch is captured: what to do once it is written (move or delete
        the files it holds as processed)."""
        if not self.unsettled:
            return None
        pending = list(self.unsettled)

        def settle_all() -> None:
            for event in pending:
                self._settle_now(event)
            done = {id(event) for event in pending}
            self.unsettled = [e for e in self.unsettled if id(e) not in done]

        return settle_all

    def summary(self) -> TopicSummary:
        """What was written, as a producer says what it sent."""
        return self.sent.summary()

    # -- the work ----------------------------------------------------------------------

    async def work(self, batch: RecordBatch, write: Write, commit: Callable[[int], None]) -> None:
        """Read every file ``batch`` announces, one after another."""
        for index, event in enumerate(batch.values):
            done = functools.partial(commit, batch.base_offset + index + 1)
            key = event.key
            while key in self._active:  # announced twice, claimed by another member here
                await self._active[key].wait()
            if key in self.processed:
                self.duplicates += 1
                done()
                await self._settle(event)
                continue
            self._active[key] = trio.Event()
            try:
                where = (batch.topic, int(batch.partition), batch.base_offset + index)
                await self._read(event, write, done, where)
            finally:
                self._active.pop(key).set()

    async def _read(
        self,
        event: FileAnnounced,
        write: Write,
        done: Callable[[], None],
        where: tuple[str, int, int],
    ) -> None:
        path, key = Path(event.path), event.key
        position = self.positions.get(key, FilePosition(0, 0, 0))
        try:
            handle = await trio.to_thread.run_sync(_open_same, path, key, limiter=self._limiter)
        except OSError as exc:
            self.missing += 1
            done()
            self._problem(event="file_missing", file=str(path), error=str(exc))
            return
        try:
            await self._parse(event, handle, position, write, done, where)
        finally:
            handle.close()

    async def _parse(
        self,
        event: FileAnnounced,
        handle: BinaryIO,
        position: FilePosition,
        write: Write,
        done: Callable[[], None],
        where: tuple[str, int, int],
    ) -> None:
        params = self.params
        offset, lines, bad = position.offset, position.lines, position.bad_lines
        written_lines, written_bad = lines, bad
        sums: Sums | None = None
        letters: list[DeadLetter] = []
        while True:
            data, taken, end = await trio.to_thread.run_sync(
                read_lines, handle, offset, params.chunk_bytes, limiter=self._limiter
            )
            parsed, merged = await trio.to_thread.run_sync(
                _parse, data, sums, limiter=self._limiter
            )
            sums = merged
            if len(parsed.bad):
                letters += self._bad(event, where, data, parsed, lines)
            offset += taken
            lines += parsed.lines
            bad += len(parsed.bad)
            if not end and len(merged) < params.max_keys and len(letters) < LETTERS_PER_WRITE:
                continue
            made = _records(merged, event)
            at = None if end else FilePosition(offset, lines, bad)
            settled = functools.partial(
                self._settled,
                event,
                done,
                made,
                lines - written_lines,
                bad - written_bad,
                at,
                len(letters),
            )
            await write(made, settled, letters)
            written_lines, written_bad, sums, letters = lines, bad, None, []
            if end:
                return

    def _settled(
        self,
        event: FileAnnounced,
        done: Callable[[], None],
        made: Columns,
        lines: int,
        bad_lines: int,
        at: FilePosition | None,
        letters: int,
    ) -> None:
        # In the step sums enter the output: how far the file is read, and at its end, the
        # file processed and its announcement committed.
        table: Table = made.values  # type: ignore[assignment]
        seq = table.columns["seq"]  # numbered in the order of the writes
        seq[:] = np.arange(self.records, self.records + len(seq), dtype=np.int64)
        self.records += len(seq)
        self.sent.count_all(table)
        self.lines += lines
        self.bad_lines += bad_lines
        self.dead_lettered += letters
        if at is None:
            self.positions.pop(event.key, None)
            self.processed[event.key] = event.path
            self.unsettled.append(event)
            self.files += 1
            done()
        else:
            self.positions[event.key] = at

    def _bad(
        self,
        event: FileAnnounced,
        where: tuple[str, int, int],
        data: bytes,
        parsed: Parsed,
        before: int,
    ) -> list[DeadLetter]:
        # Report a chunk's bad lines (and with on_bad_line: dead_letter, make their letters).
        lines = data.split(b"\n")
        first = int(parsed.bad[0])
        if self.params.on_bad_line == "fail":
            raise ParseError(
                f"{event.path}: line {before + first + 1}: {explain(lines[first])}: "
                f"{lines[first][:80]!r} (on_bad_line: fail). To go on past it, run again with "
                "the same state and on_bad_line: skip: the run resumes from its newest epoch "
                "(if one was written) and counts each line once (leave the file as it is: an "
                "edited file is another file)"
            )
        for index in parsed.bad[:REPORTED_PER_CHUNK].tolist():
            self._problem(
                event="bad_line",
                file=event.path,
                line=before + index + 1,
                error=explain(lines[index]),
                text=lines[index][:200].decode(errors="replace"),
            )
        if self.params.on_bad_line != "dead_letter":
            return []
        now = self.now()
        return [
            DeadLetter(
                consumer="",  # filled in as they are written
                topic=where[0],
                partition=where[1],
                offset=where[2],
                key=event.path,
                value=_LETTER.encode(
                    BadLine(
                        event.path,
                        before + index + 1,
                        lines[index][:LETTER_TEXT].decode(errors="replace"),
                    )
                ),
                error=f"bad line: {explain(lines[index])}",
                attempts=1,
                retryable=False,
                first_failed=now,
                last_failed=now,
            )
            for index in parsed.bad.tolist()
        ]

    def _problem(self, **entry: Any) -> None:
        if self.on_problem is not None:
            self.on_problem(entry)

    async def _settle(self, event: FileAnnounced) -> None:
        await trio.to_thread.run_sync(self._settle_now, event)

    def _settle_now(self, event: FileAnnounced) -> None:
        # Moved or deleted, if it is still there and still the file processed.
        path = Path(event.path)
        done_folder = Path(event.done) if event.done else path.parent / "done"
        try:
            if identify(path).key != event.key:
                return  # another file took its name since
            settle(path, event.after, done_folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.not_settled += 1
            self._problem(event="file_not_settled", file=event.path, error=str(exc))


def _open_same(path: Path, key: str) -> BinaryIO:
    # The file, if it is still the one announced.
    if identify(path).key != key:
        raise OSError(f"{path} changed after it was announced")
    return path.open("rb")


def read_lines(handle: BinaryIO, offset: int, size: int) -> tuple[bytes, int, bool]:
    """Whole lines from ``offset``: about ``size`` bytes, up to the last newline in them, or
    everything left when the file ends first; with the bytes they take in the file, and
    whether it ended. A line longer than ``size`` (bad: a valid one is at most 131 bytes) is
    skipped in bounded memory, and stands as one bad line (:data:`LONG_LINE`)."""
    handle.seek(offset)
    data = handle.read(size)
    if len(data) < size:
        return data, len(data), True
    cut = data.rfind(b"\n")
    if cut >= 0:
        return data[: cut + 1], cut + 1, False
    taken = len(data)
    while True:
        more = handle.read(size)
        if not more:  # the file ends with the long line, without a final newline
            return LONG_LINE, taken, True
        found = more.find(b"\n")
        if found < 0:
            taken += len(more)
            continue
        taken += found + 1
        # Lines after it in what was read are read again from ``taken``: the file has ended
        # only if nothing follows its newline.
        ended = found + 1 == len(more) and (len(more) < size or handle.read(1) == b"")
        return LONG_LINE, taken, ended


def _parse(data: bytes, sums: Sums | None) -> tuple[Parsed, Sums]:
    # The chunk's lines, and the sums so far with its own added.
    parsed = parse_lines(data)
    more = Sums.of(parsed.users, parsed.amounts)
    return parsed, more if sums is None else sums + more


def _records(sums: Sums, event: FileAnnounced) -> Columns:
    # The sums as UserSum records keyed by user: one per user, more for a sum beyond
    # MAX_PIECE (split in pieces). Their sequence numbers are stamped as they are written.
    users, high, low = sums.users, sums.high, sums.low
    small = (high < np.uint64(1 << 30)) & (low < np.uint64(1 << 62))
    amounts = ((high << np.uint64(32)) + low).astype(np.int64)
    if not small.all():
        users, amounts = _pieces(users, high, low, small, amounts)
    count = len(users)
    table = Table(
        UserSum,
        {
            "seq": np.zeros(count, dtype=np.int64),
            "source": np.full(count, event.source, dtype=np.int64),
            "timestamp": np.full(count, event.timestamp, dtype=np.float64),
            "user_id": users,
            "amount": amounts,
        },
    )
    return Columns(users, table, table.columns["timestamp"])


def _pieces(
    users: npt.NDArray[np.int64],
    high: npt.NDArray[np.uint64],
    low: npt.NDArray[np.uint64],
    small: npt.NDArray[np.bool_],
    amounts: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    big_users, big_amounts = [], []
    for where in np.flatnonzero(~small).tolist():
        total = (int(high[where]) << 32) + int(low[where])
        while total:
            piece = min(total, MAX_PIECE)
            big_users.append(int(users[where]))
            big_amounts.append(piece)
            total -= piece
    return (
        np.concatenate([users[small], np.array(big_users, dtype=np.int64)]),
        np.concatenate([amounts[small], np.array(big_amounts, dtype=np.int64)]),
    )
