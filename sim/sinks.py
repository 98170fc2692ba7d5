"""Sinks: processors that write what they consume to another system.

``clickhouse`` stores every event it consumes in a ClickHouse table per topic, and reads
them back for the HTTP API (``GET /events``, ``GET /stats``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Container, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import attrs
import msgspec
import numpy as np

from actors import ClickHouse, RecordBatch, Table, open_clickhouse, quote
from topology import CheckpointError, IntakeError, SinkContext, State, read_store

LAG_WINDOW = 100_000
"""How many of the latest events the lag quantiles are taken over."""

MAX_PAGE = 10_000
"""The most events ``GET /events`` returns at once."""

DEFAULT_PAGE = 100

_STAMP_COLUMN = "received_at"
"""An event's ``timestamp`` (when the API accepted it, in Unix seconds) is stored as this."""


@attrs.frozen
class ClickHouseParams:
    """Settings of ``clickhouse``."""

    database: str = "ringflow"
    """The database its tables are in."""
    path: str | None = None
    """The embedded engine's folder; by default ``clickhouse`` in the run's state folder
    (``state/clickhouse`` without one)."""
    dedup_window: int = 10_000
    """Recent inserts per table whose tokens ClickHouse remembers to drop a repeated one."""
    linger: float = 0.2
    """Seconds between the starts of two inserts at least: records gather meanwhile, so
    each insert makes one part of many rows (ClickHouse merges parts in the background, and
    many small ones cost it more than the rows). The lag to storage grows by about this."""

    def __attrs_post_init__(self) -> None:
        if not self.database.isidentifier():
            raise ValueError(f"database {self.database!r} is not a plain identifier")
        if self.dedup_window < 1:
            raise ValueError(f"dedup_window must be >= 1, got {self.dedup_window}")
        if not 0 <= self.linger <= 60:
            raise ValueError(f"linger must be between 0 and 60 seconds, got {self.linger}")


class ClickHouseState(State, frozen=True, tag=1):
    """The state of ``clickhouse``: events written per kind."""

    kinds: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    """Events stored per kind (including those found stored already)."""
    already_stored: Annotated[int, msgspec.Meta(ge=0)]
    """Events found stored already when consumed again after a crash, and not written
    again."""
    lineage: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    """The run the rows it wrote belong to (``_lineage``): a run started afresh writes
    offsets from 0 again, and must neither skip nor remove another run's rows."""


@attrs.define(eq=False)
class _TopicTable:
    """A topic's table: its name, its columns and how each event type fills them."""

    topic: str
    name: str
    columns: dict[str, str]
    """Column name to ClickHouse type, in order."""
    layouts: dict[type, list[str]]
    """Per event type, the columns its rows fill, in its encoding's order (an array-like
    struct encodes as ``[tag, field, field...]``), then where the row came from."""
    has_user: bool


def folder_lineage(context: SinkContext, fresh: str) -> str:
    """The lineage of a sink that starts with no epoch to resume: one derived from the state
    folder's checkpoint database (made when the database was), so that a run that died
    before its first epoch and starts again finds what it wrote as its own; ``fresh`` when
    there is no such database (a run without checkpoints, or a database moved away: a run
    started afresh leaves what earlier runs wrote alone)."""
    if context.state is None:
        return fresh
    try:
        meta, store = read_store(context.state)
    except CheckpointError:
        return fresh
    store.close()
    made = meta.get("created_at")
    if not made:
        return fresh
    return hashlib.sha256(f"{made}/{context.consumer}".encode()).hexdigest()[:32]


def _clickhouse_type(kind: msgspec.inspect.Type) -> str:
    if isinstance(kind, msgspec.inspect.IntType):
        return "Int64"
    if isinstance(kind, msgspec.inspect.FloatType):
        return "Float64"
    if isinstance(kind, msgspec.inspect.BoolType):
        return "Bool"
    if isinstance(kind, msgspec.inspect.LiteralType):
        return "LowCardinality(String)"
    return "String"  # text, and anything else as its JSON text


def _table_of(topic: str, database: str, types: Sequence[type]) -> _TopicTable:
    columns: dict[str, str] = {"type": "LowCardinality(String)"}
    layouts = {}
    for event_type in types:
        info = msgspec.inspect.type_info(event_type)
        assert isinstance(info, msgspec.inspect.StructType)
        order = ["type"]
        for field in info.fields:
            name = _STAMP_COLUMN if field.name == "timestamp" else field.name
            if name == _STAMP_COLUMN:
                columns.setdefault(name, "DateTime64(6, 'UTC')")
            else:
                columns.setdefault(name, _clickhouse_type(field.type))
            order.append(name)
        layouts[event_type] = [*order, "_lineage", "_partition", "_offset"]
    columns.update(
        {
            "stored_at": "DateTime64(6, 'UTC') DEFAULT now64(6)",
            "_lineage": "LowCardinality(String)",
            "_partition": "UInt32",
            "_offset": "UInt64",
        }
    )
    columns.setdefault(_STAMP_COLUMN, "DateTime64(6, 'UTC')")
    name = f"{database}.`{topic}`"
    return _TopicTable(topic, name, columns, layouts, "user_id" in columns)


def _encode_cursor(row: Mapping[str, Any], topic: str) -> str:
    data = msgspec.json.encode([row["_stored"], topic, row["partition"], row["offset"]])
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[int, str, int, int]:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at, topic, partition, offset = msgspec.json.decode(data, type=tuple[int, str, int, int])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise IntakeError(
            400, "cursor: not a cursor this API gave; use next_cursor as given"
        ) from None
    return at, topic, partition, offset


def _time_bound(name: str, text: str) -> int:
    # Unix seconds (a number) or an ISO 8601 time, from 1970 to 2262; as microseconds.
    problem = f"{name}: {text!r} is neither Unix seconds nor an ISO 8601 time"
    if _NUMBER.fullmatch(text):
        seconds = float(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise IntakeError(400, problem) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not 0 <= seconds < 9.2e9:
        raise IntakeError(400, f"{name}: {text!r} is not between 1970 and 2262")
    return round(seconds * 1_000_000)


def _whole(name: str, text: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise IntakeError(400, f"{name}: must be a whole number from {low} to {high:,}")
    return int(text)


_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_DIGITS = re.compile(r"[0-9]{1,16}")


@attrs.define(eq=False)
class ClickHouseSink:
    """Stores the events it consumes in ClickHouse, a MergeTree table per topic
    (``DATABASE.TOPIC``), partitioned by day and ordered by type, user and time.

    Every row holds the event's fields, ``received_at`` (when the API took it),
    ``stored_at`` (when ClickHouse stored it), and ``_partition`` and ``_offset`` (where it
    was in its topic). Exactly once: the first batch of a partition after the sink opens is
    checked against the offsets the table already holds from there (a crash may have come
    after an insert and before the epoch that commits it), so no record is stored twice;
    and each insert carries a deduplication token naming its partition and offsets.
    """

    params: ClickHouseParams = attrs.field(factory=ClickHouseParams)
    _store: ClickHouse | None = None
    _tables: dict[str, _TopicTable] = attrs.field(factory=dict)
    _next: dict[tuple[str, int], int] = attrs.field(factory=dict)
    """Per (topic, partition), the offset past the last record this sink stored."""
    _present: dict[tuple[str, int], set[int]] = attrs.field(factory=dict)
    """Per (topic, partition), the offsets the table held when the sink first saw it."""
    _kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _already_stored: int = 0
    _lineage: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    _restored: bool = False
    """Whether its state came from an epoch (else its lineage is the state folder's)."""
    _removed: int = 0
    """Rows of this lineage removed as the sink opened: written before a crash at offsets
    past the epoch the run resumed from, they belonged to no epoch."""
    _lags: collections.deque[np.ndarray] = attrs.field(factory=collections.deque)
    _lag_count: int = 0

    # -- the run ---------------------------------------------------------------------------

    @property
    def linger(self) -> float:
        """Seconds between the starts of two writes at least."""
        return self.params.linger

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        """Open the engine and create the tables that are missing."""
        folder = (
            Path(self.params.path)
            if self.params.path
            else (context.state or Path("state")) / "clickhouse"
        )
        if not self._restored:
            self._lineage = folder_lineage(context, self._lineage)
        async with open_clickhouse(folder) as store:
            database = self.params.database
            await store.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
            for topic, types in context.topics.items():
                table = _table_of(topic, database, types)
                order = "(type, user_id, received_at)" if table.has_user else "(type, received_at)"
                columns = ",\n  ".join(f"`{c}` {t}" for c, t in table.columns.items())
                await store.execute(
                    f"CREATE TABLE IF NOT EXISTS {table.name} (\n  {columns}\n)"
                    f" ENGINE = MergeTree PARTITION BY toDate(received_at) ORDER BY {order}"
                    f" SETTINGS non_replicated_deduplication_window = {self.params.dedup_window}"
                )
                self._tables[topic] = table
            await self._remove_past(store, context)
            self._store = store
            try:
                yield
            finally:
                self._store = None

    async def _remove_past(self, store: ClickHouse, context: SinkContext) -> None:
        # Rows this lineage wrote at or past where each partition's ring now ends: their
        # records were taken after the newest epoch and lost with the process (a client
        # waiting for a durable answer never had one, and sends them again), and their
        # offsets will be given to other records.
        lineage = quote(self._lineage)
        for (topic, partition), end in context.ends.items():
            table = self._tables.get(topic)
            if table is None:
                continue
            where = f"_lineage = {lineage} AND _partition = {partition} AND _offset >= {end}"
            [row] = await store.rows(f"SELECT count() AS n FROM {table.name} WHERE {where}")
            if int(row["n"]):
                await store.execute(
                    f"ALTER TABLE {table.name} DELETE WHERE {where} SETTINGS mutations_sync = 2"
                )
                self._removed += int(row["n"])

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        """Insert the records of ``batches`` (of one topic) that the table does not hold
        yet: one insert per event type, its token naming the partitions and offsets.

        What an epoch keeps of the sink (its counts) changes only after the last insert,
        in the same step as the consumer commits the batches: an epoch taken while an insert
        is under way holds neither."""
        store = self._store
        assert store is not None, "the sink is not open"
        table = self._tables[batches[0].topic]
        skips, found = [], 0
        for batch in batches:
            skip, already = await self._stored_already(store, table, batch)
            skips.append(skip)
            found += already
            where = (batch.topic, batch.partition)
            self._next[where] = max(self._next.get(where, 0), batch.next_offset)
        await self._insert(store, table, batches, skips)
        self._already_stored += found

    async def replay(self, batches: Sequence[RecordBatch]) -> None:
        """Insert dead letters sent back (``ringflow dlq replay``): records behind what the
        sink stored, each inserted unless the table holds its offset already (a replay cut
        short and done again)."""
        store = self._store
        assert store is not None, "the sink is not open"
        table = self._tables[batches[0].topic]
        skips: list[Container[int]] = []
        for batch in batches:
            rows = await store.rows(
                f"SELECT _offset FROM {table.name} WHERE _lineage = {quote(self._lineage)}"
                f" AND _partition = {batch.partition} AND _offset >= {batch.base_offset}"
                f" AND _offset < {batch.next_offset}"
            )
            skips.append({int(row["_offset"]) for row in rows})
        await self._insert(store, table, batches, skips)

    async def _insert(
        self,
        store: ClickHouse,
        table: _TopicTable,
        batches: Sequence[RecordBatch],
        skips: Sequence[Container[int]],
    ) -> None:
        by_type: dict[type, list[bytes]] = {}
        stamps = []
        kinds: collections.Counter[str] = collections.Counter()
        encode = msgspec.json.encode
        lineage = msgspec.json.encode(self._lineage)
        for batch, skip in zip(batches, skips, strict=True):
            values: Sequence[Any] = batch.values
            if isinstance(values, Table):
                values = values.rows()
            partition, first = batch.partition, batch.base_offset
            for index, event in enumerate(values):
                offset = first + index
                if offset in skip:
                    continue
                rows = by_type.get(type(event))
                if rows is None:
                    rows = by_type[type(event)] = []
                rows.append(b"%s,%s,%d,%d]" % (encode(event)[:-1], lineage, partition, offset))
            stamps.append(np.asarray(batch.timestamps, dtype=np.float64))
            kinds.update(event.kind for event in values)
        for event_type, rows_of in by_type.items():
            # The token is the rows' own digest: the same records at the same offsets give
            # the same token (an insert repeated is dropped), other records never do.
            payload = b"\n".join(rows_of)
            token = f"{table.topic}/{hashlib.sha256(payload).hexdigest()}"
            await store.insert(table.name, table.layouts[event_type], payload, token)
        self._kinds.update(kinds)  # no await from here to the consumer's commit
        lags = time.time() - np.concatenate(stamps)
        self._lags.append(lags)
        self._lag_count += len(lags)
        while self._lag_count - len(self._lags[0]) >= LAG_WINDOW:
            self._lag_count -= len(self._lags.popleft())

    async def _stored_already(
        self, store: ClickHouse, table: _TopicTable, batch: RecordBatch
    ) -> tuple[Container[int], int]:
        # Offsets of the batch not to write, and how many of them the table held already:
        # those below the mark of what this sink stored, and those the table held when the
        # sink first saw the partition (written before a crash, after the epoch the run
        # resumed from: any offset from there on).
        where = (batch.topic, batch.partition)
        present = self._present.get(where)
        if present is None:
            rows = await store.rows(
                f"SELECT _offset FROM {table.name} WHERE _lineage = {quote(self._lineage)}"
                f" AND _partition = {batch.partition} AND _offset >= {batch.base_offset}"
            )
            present = self._present[where] = {int(row["_offset"]) for row in rows}
        known = self._next.get(where, 0)
        found = present.intersection(range(max(known, batch.base_offset), batch.next_offset))
        if not found:
            return range(batch.base_offset, known), 0
        return found.union(range(batch.base_offset, known)), len(found)

    # -- reading back ----------------------------------------------------------------------

    async def events(self, query: Mapping[str, str]) -> dict[str, Any]:
        """A page of stored events in the order they were stored (see
        :class:`~topology.EventStore`).

        Pages follow the order of storage, not of acceptance: an event accepted earlier but
        stored later than the last one a client has seen comes on a later page, never
        behind its cursor. Queries and inserts take turns on the store, so no insert is
        half visible to a query."""
        store = self._store
        assert store is not None
        unknown = set(query) - {"type", "user_id", "from", "to", "limit", "cursor"}
        if unknown:
            raise IntakeError(
                400,
                f"unknown parameter {sorted(unknown)[0]!r}; "
                "use type, user_id, from, to, limit and cursor",
            )
        limit = DEFAULT_PAGE
        if "limit" in query:
            limit = _whole("limit", query["limit"], 1, MAX_PAGE)
        conditions = []
        if "type" in query:
            conditions.append(f"type = {quote(query['type'])}")
        if "user_id" in query:
            conditions.append(f"user_id = {_whole('user_id', query['user_id'], 0, 2**53)}")
        at = "toUnixTimestamp64Micro(received_at)"
        stored = "toUnixTimestamp64Micro(stored_at)"
        if "from" in query:
            conditions.append(f"{at} >= {_time_bound('from', query['from'])}")
        if "to" in query:
            conditions.append(f"{at} < {_time_bound('to', query['to'])}")
        cursor = _decode_cursor(query["cursor"]) if "cursor" in query else None
        found: list[tuple[tuple[int, str, int, int], dict[str, Any]]] = []
        for topic, table in sorted(self._tables.items()):
            if "user_id" in query and not table.has_user:
                continue
            where = list(conditions)
            if cursor is not None:
                where.append(
                    f"({stored}, {quote(topic)}, _partition, _offset) > "
                    f"({cursor[0]}, {quote(cursor[1])}, {cursor[2]}, {cursor[3]})"
                )
            rows = await store.rows(
                f"SELECT *, {at} AS _at, {stored} AS _stored FROM {table.name}"
                + (f" WHERE {' AND '.join(where)}" if where else "")
                + f" ORDER BY _stored, _partition, _offset LIMIT {limit + 1}"
            )
            for row in rows:
                key = (int(row["_stored"]), topic, row["_partition"], row["_offset"])
                found.append((key, row))
        found.sort(key=lambda item: item[0])
        page = found[:limit]
        events = [self._shown(sort_key[1], row) for sort_key, row in page]
        next_cursor = None
        if len(found) > limit:
            last = page[-1]
            next_cursor = _encode_cursor(
                {"_stored": last[0][0], "partition": last[0][2], "offset": last[0][3]}, last[0][1]
            )
        return {"events": events, "next_cursor": next_cursor}

    def _shown(self, topic: str, row: dict[str, Any]) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        at = int(row.pop("_at"))
        row.pop("stored_at")
        stored = int(row.pop("_stored")) / 1_000_000
        partition, offset = row.pop("_partition"), row.pop("_offset")
        row.pop(_STAMP_COLUMN)
        row.pop("_lineage")  # which run stored it: the sink's business, not the reader's
        shown.update(row)
        shown["received_at"] = at / 1_000_000
        shown["stored_at"] = stored
        shown.update(topic=topic, partition=partition, offset=offset)
        return shown

    async def stats(self) -> dict[str, Any]:
        """Counts of stored events per type and per day."""
        store = self._store
        assert store is not None
        by_type: collections.Counter[str] = collections.Counter()
        by_day: dict[str, collections.Counter[str]] = {}
        for table in self._tables.values():
            rows = await store.rows(
                f"SELECT type, toString(toDate(received_at)) AS day, count() AS n "
                f"FROM {table.name} GROUP BY type, day"
            )
            for row in rows:
                count = int(row["n"])
                by_type[row["type"]] += count
                by_day.setdefault(row["day"], collections.Counter())[row["type"]] += count
        return {
            "total": sum(by_type.values()),
            "by_type": dict(sorted(by_type.items())),
            "by_day": [
                {"day": day, "by_type": dict(sorted(counts.items())), "total": sum(counts.values())}
                for day, counts in sorted(by_day.items())
            ],
        }

    def lag(self) -> dict[float, float]:
        """Seconds from acceptance to storage by quantile, over the latest events."""
        if not self._lags:
            return {}
        lags = np.concatenate(list(self._lags))
        quantiles = (0.5, 0.95, 0.99)
        values = np.quantile(lags, quantiles)
        return {q: max(0.0, float(v)) for q, v in zip(quantiles, values, strict=True)}

    # -- the processor's duties ------------------------------------------------------------

    def process(self, events: Sequence[Any]) -> None:
        """Not used: a sink's consumer calls :meth:`write`."""
        raise TypeError("the clickhouse sink stores batches with write(), not process()")

    def result(self) -> dict[str, Any]:
        """Events written per kind, and where."""
        return {
            "stored": dict(sorted(self._kinds.items())),
            "already_stored": self._already_stored,
            "removed_past_epoch": self._removed,
            "tables": sorted(t.name.replace("`", "") for t in self._tables.values()),
        }

    def totals(self) -> dict[str, int]:
        """Events written per kind."""
        return dict(self._kinds)

    def snapshot(self) -> ClickHouseState:
        """Events written per kind."""
        return ClickHouseState(
            kinds=dict(self._kinds), already_stored=self._already_stored, lineage=self._lineage
        )

    def restore(self, state: ClickHouseState) -> None:
        """Take back the counts of an epoch."""
        self._kinds = collections.Counter(state.kinds)
        self._already_stored = state.already_stored
        self._lineage = state.lineage
        self._restored = True

    def live(self) -> list[tuple[str, str]]:
        """Events stored per kind so far."""
        return [(kind, f"{count:,}") for kind, count in sorted(self._kinds.items())]
