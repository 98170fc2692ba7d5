"""The columnar path: tables of events end to end, and the same results as one event at a time.

Workloads make tables, producers split them with a vectorized partitioner, rings hold them,
processors fold them with numpy, tallies check them with array operations, checkpoints and
gateways carry them as typed buffers. Each is checked here against the per-event path on the
same events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import (
    Columns,
    Partitioner,
    Table,
    TableData,
    Topic,
    pack_array,
    pack_values,
    schema_of,
    stable_hash,
    stable_hash_array,
    unpack_array,
    unpack_values,
)
from sim.processors import PROCESSORS, NoParams, VideoStats
from sim.reference import ReferenceBloggerAnalytics, ReferenceUgcCounters, ReferenceVideoStats
from sim.report import digest
from sim.run import REGISTRY, load_topology, run_pipeline
from sim.windows import BloggerAnalytics, BloggerAnalyticsParams
from sim.workloads import (
    VIDEO_KINDS,
    WORKLOADS,
    Click,
    Ugc,
    UgcParams,
    VideoEvent,
    VideoSite,
    VideoSiteParams,
    WatchProgress,
)
from topology import DamagedEpoch, Pipeline, ProcessorType, Registry, Topology, WorkloadType
from topology.snapshot import (
    PartitionContents,
    PartitionPart,
    ProcessorPart,
    decode,
    encode,
    restoring,
)

EXAMPLES = Path(__file__).parent.parent / "topology" / "examples"


def video_events(count: int, seed: int = 42, instance: int = 0) -> Table:
    site = VideoSite(VideoSiteParams(videos=200, bloggers=7), seed, "site", instance)
    return site.generate(count, 0.0, 0.003)["events"]


# -- tables --------------------------------------------------------------------------------------


def test_a_table_is_a_sequence_of_its_events() -> None:
    table = video_events(50)
    rows = table.rows()
    assert len(table) == 50
    assert all(isinstance(event, VideoEvent) for event in rows)
    assert table[7] == rows[7]
    assert table[-1] == rows[-1]
    assert list(table) == rows
    assert table[10:20].rows() == rows[10:20]
    assert table.take(np.array([3, 1, 3])).rows() == [rows[3], rows[1], rows[3]]
    assert Table.concat([table[:20], table[20:]]) == table
    assert Table.from_events(VideoEvent, rows) == table
    assert table == rows
    with pytest.raises(IndexError):
        table[50]


def test_a_literal_field_is_coded_in_the_order_it_is_declared() -> None:
    schema = schema_of(VideoEvent)
    assert schema is not None
    assert schema.fields[0].categories == VIDEO_KINDS  # msgspec's inspection sorts them
    table = video_events(500)
    for code, kind in enumerate(VIDEO_KINDS):
        chosen = np.flatnonzero(table.columns["kind"] == code)
        assert {table[int(i)].kind for i in chosen} <= {kind}


def test_the_kinds_of_a_table_are_counted_by_field_or_by_type() -> None:
    table = video_events(300)
    expected: dict[str, int] = {}
    for event in table:
        expected[event.kind] = expected.get(event.kind, 0) + 1
    assert table.kind_counts() == expected
    clicks = Ugc(UgcParams(), 7, "f", 0).generate(200, 0.0, 0.01)["click"]
    assert clicks.kind_counts() == {"click": len(clicks)}


def test_types_that_cannot_be_tables_are_said_so() -> None:
    class Loose(msgspec.Struct):
        tags: list[str]

    assert schema_of(Loose) is None
    assert schema_of(dict) is None
    with pytest.raises(TypeError, match="cannot be a table"):
        Table(Loose, {"tags": np.array([])})
    with pytest.raises(ValueError, match="one column per field of equal length"):
        Table(Click, {"user_id": np.zeros(2, dtype=np.int64)})


# -- the encoded form ----------------------------------------------------------------------------


def packed(table: Table) -> TableData:
    data = pack_values(table)
    assert isinstance(data, TableData)
    return msgspec.msgpack.decode(msgspec.msgpack.encode(data), type=TableData)


@pytest.mark.parametrize("stream", ["click", "page_view", "custom", "watch_progress"])
def test_tables_of_every_event_type_survive_encoding(stream: str) -> None:
    table = Ugc(UgcParams(), 7, "f", 0).generate(300, 0.0, 0.01)[stream]
    types = WORKLOADS["ugc"].event_types[stream]
    assert unpack_values(packed(table), types) == table
    keys = table.columns["user_id"]
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(pack_array(keys)))
    assert np.array_equal(unpack_array(wire, "<i8"), keys)


def forged(table: Table, field: str, column: Any) -> TableData:
    data = packed(table)
    index = table.schema.names.index(field)
    columns = list(data.columns)
    columns[index] = column
    return TableData(data.type, data.length, columns)


BAD_TABLES = {
    "negative count": (
        lambda t: forged(t, "user_id", np.full(len(t), -1, dtype="<i8").tobytes()),
        "field user_id: values must be >= 0",
    ),
    "kind out of range": (
        lambda t: forged(t, "kind", np.full(len(t), 9, dtype="u1").tobytes()),
        "field kind: a code is not one of 5 values",
    ),
    "infinite time": (
        lambda t: forged(t, "timestamp", np.full(len(t), np.inf).tobytes()),
        "field timestamp: a value is not a finite number",
    ),
    "short column": (
        lambda t: forged(t, "seq", b"\x00" * 8),
        "field seq: 8 bytes for 10 values of 8 bytes",
    ),
    "strings for ints": (
        lambda t: forged(t, "seq", ["a"] * len(t)),
        "field seq: expected the bytes of an array",
    ),
    "another type": (
        lambda t: TableData("click", len(t), packed(t).columns),
        "values of type 'click' are not carried here",
    ),
    "too few columns": (
        lambda t: TableData("video", len(t), packed(t).columns[:3]),
        "a table of video needs 8 columns, got 3",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_a_forged_table_is_refused_with_the_field_named(case: str) -> None:
    make, message = BAD_TABLES[case]
    with pytest.raises(ValueError, match=message):
        unpack_values(make(video_events(10)), (VideoEvent,))


def test_a_checkpointed_ring_of_tables_restores_exactly_and_a_forged_one_is_damage() -> None:
    topic = Topic("events", partitions=1, capacity=1000)
    table = video_events(300)
    partition = topic.partitions[0]
    partition.send_nowait(Columns(table.columns["video_id"], table, table.columns["timestamp"]))
    part = PartitionPart.of(partition.snapshot())
    decoded = decode("partition", encode(part), VideoEvent)
    assert isinstance(decoded, PartitionPart)
    fresh = Topic("events", partitions=1, capacity=1000)
    PartitionContents(fresh.partitions[0], "events", VideoEvent).restore(decoded)
    batch = fresh.partitions[0].read(0, 1000)
    assert batch is not None
    assert batch.values == table
    assert np.array_equal(batch.keys, table.columns["video_id"])
    wrong = decode("partition", encode(part), Click)
    assert isinstance(wrong, PartitionPart)
    with pytest.raises(DamagedEpoch, match="not carried here"), restoring("partition", "events/0"):
        PartitionContents(Topic("events").partitions[0], "events", Click).restore(wrong)


# -- partitioning ----------------------------------------------------------------------------------


@given(
    keys=st.lists(st.integers(-(2**40), 2**40) | st.integers(0, 5000), min_size=1, max_size=300),
    partitions=st.integers(1, 9),
)
@settings(max_examples=60, deadline=None)
def test_an_array_of_keys_lands_where_each_key_would(keys: list[int], partitions: int) -> None:
    vectorized = Partitioner(partitions).partition_array(np.array(keys, dtype=np.int64))
    one_by_one = Partitioner(partitions)
    assert vectorized.tolist() == [one_by_one.partition_for(key) for key in keys]


def test_the_hash_of_an_array_is_the_hash_of_each_key() -> None:
    # Every length of decimal text a non-negative int64 can have, and its edges.
    keys = [0, 1, 9, 10, 99, 100, 4_194_303, 4_194_304, 2**63 - 1]
    keys += [10**n + d for n in range(1, 19) for d in (-1, 0, 1)]
    keys += np.random.default_rng(5).integers(0, 2**63 - 1, 500).tolist()
    hashed = stable_hash_array(np.array(keys, dtype=np.int64))
    assert hashed.tolist() == [stable_hash(key) for key in keys]


@given(count=st.integers(0, 400), partitions=st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_a_table_splits_as_its_events_would(count: int, partitions: int) -> None:
    table = video_events(count)
    topic = Topic("t", partitions=partitions)
    parts = topic.split(Columns(table.columns["video_id"], table, table.columns["timestamp"]))
    rows = table.rows()
    as_lists = topic.split(Columns([e.video_id for e in rows], rows, [e.timestamp for e in rows]))
    assert parts == as_lists


# -- workloads and processors -------------------------------------------------------------


@given(chunks=st.lists(st.integers(0, 3000), min_size=1, max_size=8))
@settings(max_examples=25, deadline=None)
def test_events_depend_on_their_numbers_only_not_on_the_chunks(chunks: list[int]) -> None:
    whole = VideoSite(VideoSiteParams(), 3, "site", 1).generate(sum(chunks), 0.0, 0.01)["events"]
    site = VideoSite(VideoSiteParams(), 3, "site", 1)
    done = 0
    parts = []
    for count in chunks:
        parts.append(site.generate(count, done * 0.01, 0.01)["events"])
        done += count
    joined = Table.concat(parts)
    for name in whole.schema.names:  # event times are start + i x interval of each call
        if name != "timestamp":
            assert np.array_equal(joined.columns[name], whole.columns[name]), name
    assert np.allclose(joined.columns["timestamp"], whole.columns["timestamp"])
    assert site.counts() == whole.kind_counts() | {
        k: 0 for k in VIDEO_KINDS if k not in whole.kind_counts()
    }


REFERENCES = {
    "video_stats": (lambda: VideoStats(NoParams()), lambda: ReferenceVideoStats()),
    "blogger_analytics": (
        lambda: BloggerAnalytics(BloggerAnalyticsParams(window=0.5, top=4)),
        lambda: ReferenceBloggerAnalytics(BloggerAnalyticsParams(window=0.5, top=4)),
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@given(sizes=st.lists(st.integers(1, 700), min_size=1, max_size=10), seed=st.integers(0, 99))
@settings(max_examples=20, deadline=None)
def test_columnar_processors_give_the_per_event_aggregates(
    name: str, sizes: list[int], seed: int
) -> None:
    columnar, reference = (make() for make in REFERENCES[name])
    site = VideoSite(VideoSiteParams(videos=300, bloggers=6), seed, "site", 0)
    done = 0
    for size in sizes:
        table = site.generate(size, done * 0.004, 0.004)["events"]
        done += size
        columnar.process_columns(table)
        reference.process(table.rows())
    assert columnar.result() == reference.result()
    assert columnar.totals() == reference.totals()


@given(
    steps=st.lists(
        st.tuples(st.integers(1, 400), st.sampled_from(["table", "list", "restore"])),
        min_size=1,
        max_size=10,
    ),
    seed=st.integers(0, 99),
)
@settings(max_examples=30, deadline=None)
def test_ugc_counters_on_tables_give_the_per_event_counts(
    steps: list[tuple[int, str]], seed: int
) -> None:
    kind = PROCESSORS["ugc_counters"]
    columnar = kind.make(NoParams())
    reference = ReferenceUgcCounters()
    ugc = Ugc(UgcParams(pages=40, movies=30), seed, "f", 0)
    for size, how in steps:
        if how == "restore":  # through the encoded state, as an epoch does
            restored = kind.make(NoParams())
            stored = encode(ProcessorPart.of(columnar.snapshot()))
            part = decode("processor", stored)
            assert isinstance(part, ProcessorPart)
            restored.restore(part.state_as(kind.state_type))
            columnar = restored
        for table in ugc.generate(size, 0.0, 0.01).values():
            if how == "list":
                columnar.process(table.rows())
            else:
                columnar.process_columns(table)  # type: ignore[attr-defined]
            reference.process(table.rows())
    assert columnar.result() == reference.result()
    assert columnar.totals() == reference.totals()


def test_films_beyond_the_arrays_are_counted_one_by_one() -> None:
    events = [
        WatchProgress(1, movie, 90, 100, 0.5, 0, i) for i, movie in enumerate([5, 2**40] * 30)
    ]
    columnar, reference = PROCESSORS["ugc_counters"].make(NoParams()), ReferenceUgcCounters()
    columnar.process_columns(Table.from_events(WatchProgress, events))  # type: ignore[attr-defined]
    reference.process(events)
    assert columnar.result() == reference.result()
    assert columnar.result()["movies"][str(2**40)] == {"progress_updates": 30, "completed": 30}


def test_ids_beyond_the_arrays_are_counted_one_by_one() -> None:
    far = VideoEvent("like", 1, 2**40, 3, 0.5, 0, 0, 0)
    near = VideoEvent("view", 1, 5, 2, 0.5, 0, 0, 1)
    stats, reference = VideoStats(NoParams()), ReferenceVideoStats()
    stats.process([near, far, far])
    reference.process([near, far, far])
    assert stats.result() == reference.result()
    restored = VideoStats(NoParams())
    restored.restore(stats.snapshot())
    assert restored.result() == reference.result()


# -- whole pipelines -----------------------------------------------------------------------


def as_rows(workload: WorkloadType) -> WorkloadType:
    """``workload`` handing over lists of events instead of tables (the per-event path)."""

    class Rows:
        def __init__(self, *args: Any) -> None:
            self.inner = workload.make(*args)

        def generate(self, count: int, start: float, interval: float) -> dict[str, list[Any]]:
            made = self.inner.generate(count, start, interval)
            return {stream: list(events) for stream, events in made.items()}

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    return attrs.evolve(workload, make=Rows)


class EventsOnly:
    """A processor written record by record: ``process`` only."""

    def __init__(self, _params: NoParams) -> None:
        self.inner = ReferenceVideoStats()
        self.process = self.inner.process
        self.result = self.inner.result
        self.totals = self.inner.totals

    def snapshot(self) -> Any:
        raise NotImplementedError

    def restore(self, state: Any) -> None:
        raise NotImplementedError


def registry(*, rows: bool = False, events_only: bool = False) -> Registry:
    workloads = dict(WORKLOADS)
    processors = dict(PROCESSORS)
    if rows:
        workloads = {name: as_rows(kind) for name, kind in workloads.items()}
    if events_only:
        processors["video_stats"] = attrs.evolve(PROCESSORS["video_stats"], make=EventsOnly)
    return Registry(workloads, processors)


def run(topology: Topology, kinds: Registry, events: int = 30_000) -> dict[str, Any]:
    return run_pipeline(Pipeline.build(topology, kinds, events=events)).report.to_dict()


@pytest.mark.parametrize(
    ("partitions", "instances"), [(4, 2), (1, 1), (3, 3)], ids=["4x2", "1x1", "3x3"]
)
def test_tables_and_lists_of_events_give_one_digest(partitions: int, instances: int) -> None:
    topology = load_topology(EXAMPLES / "video-site.yaml")
    topic = attrs.evolve(topology.topics["events"], partitions=partitions)
    consumers = {
        name: attrs.evolve(spec, instances=instances) for name, spec in topology.consumers.items()
    }
    topology = attrs.evolve(topology, topics={"events": topic}, consumers=consumers)
    columnar = run(topology, REGISTRY)
    per_event = run(topology, registry(rows=True))
    assert columnar["expect_ok"]
    assert per_event["expect_ok"]
    assert columnar["digest"] == per_event["digest"]
    assert columnar["aggregates"] == per_event["aggregates"]


def test_the_ugc_example_gives_one_digest_on_tables_and_lists() -> None:
    topology = load_topology(EXAMPLES / "ugc.yaml")
    columnar = run(topology, REGISTRY, events=20_000)
    per_event = run(topology, registry(rows=True), events=20_000)
    assert columnar["expect_ok"]
    assert per_event["expect_ok"]
    assert columnar["digest"] == per_event["digest"]


def test_a_processor_with_only_process_events_still_works() -> None:
    topology = load_topology(EXAMPLES / "video-site.yaml")
    report = run(topology, registry(events_only=True))
    assert report["expect_ok"]
    assert report["aggregates"] == run(topology, REGISTRY)["aggregates"]


def test_the_plain_loop_computes_the_run_s_aggregates() -> None:
    from sim.baseline import plain_loop

    topology = load_topology(EXAMPLES / "video-site.yaml")
    loop = plain_loop(Pipeline.build(topology, REGISTRY, events=30_000))
    assert digest(loop["aggregates"]) == run(topology, REGISTRY)["digest"]
    assert loop["events"] == 30_000


def test_a_processor_type_names_a_state_of_the_columnar_layout() -> None:
    kind: ProcessorType = PROCESSORS["blogger_analytics"]
    assert kind.state_type.__struct_config__.tag == 2


def test_frames_carry_tables_as_typed_buffers_both_ways() -> None:
    from actors import RecordBatch, batch_frame, decoder, frame_columns
    from actors.wire import delivery_frame

    table = video_events(400)
    columns = Columns(table.columns["video_id"], table, table.columns["timestamp"])
    data = batch_frame(0, 17, columns)
    assert len(data) < 400 * 80  # a key, a time and eight fields: 73 bytes an event, no more
    frame = decoder(VideoEvent).decode(data)
    got = frame_columns(frame, VideoEvent)
    assert isinstance(got.values, Table)
    assert got == columns
    stored = RecordBatch("events", 0, 5, columns.keys, table, columns.timestamps)
    delivered = frame_columns(decoder(VideoEvent).decode(delivery_frame(stored)), VideoEvent)
    assert delivered == columns
    with pytest.raises(ValueError, match="batch: values of type 'video' are not carried here"):
        frame_columns(decoder(Click).decode(data), Click)


def test_the_per_key_check_keeps_nothing_per_key_and_finds_a_key_out_of_its_partition() -> None:
    from actors import Partitioner, RecordBatch, partitions_of, stable_hash
    from sim.parsing import UserSum
    from topology import ConsumerTally
    from topology.snapshot import ConsumerTallyPart

    def sums(users: Any, first: int) -> Table:
        count = len(users)
        return Table(
            UserSum,
            {
                "seq": np.arange(first, first + count, dtype=np.int64),
                "source": np.zeros(count, dtype=np.int64),
                "timestamp": np.zeros(count),
                "user_id": users,
                "amount": np.ones(count, dtype=np.int64),
            },
        )

    # Keys beyond any table, in their own partitions: no violation, and no key in the epoch.
    keys = np.array([0, 7, 2**22, 2**40 + 3, 2**63 - 1] * 40, dtype=np.int64)
    placed = Partitioner(4).partition_array(keys)
    assert placed.tolist() == [stable_hash(k) % 4 for k in keys.tolist()]
    assert partitions_of(keys, 4).tolist() == placed.tolist()
    tally = ConsumerTally("c", ("sums",), 1, True, partitions={"sums": 4})
    for partition in range(4):
        mine = keys[placed == partition]
        table = sums(mine, 1_000 * partition)
        stamps = np.zeros(len(mine))
        tally.observe("sums", RecordBatch("sums", partition, 0, mine, table, stamps), 1.0)
    assert tally.order_violations == 0
    part = tally.capture()
    assert part.key_partition == {}
    assert part.key_table == {}
    decoded = decode("consumer", encode(part))
    assert isinstance(decoded, ConsumerTallyPart)
    restored = ConsumerTally("c", ("sums",), 1, True, partitions={"sums": 4})
    restored.restore(decoded)
    # One key in another partition than its own: found, whether in an array or a list.
    stray = int(keys[0])
    other = (stable_hash(stray) + 1) % 4
    table = sums(np.array([stray]), 5_000)
    restored.observe(
        "sums", RecordBatch("sums", other, 9, np.array([stray]), table, np.zeros(1)), 2.0
    )
    event = UserSum(seq=5_001, source=0, timestamp=0.0, user_id=stray, amount=1)
    restored.observe("sums", RecordBatch("sums", other, 10, [stray], [event], [0.0]), 2.0)
    assert restored.order_violations == 2
    assert f"key {stray}: in partition {other}, not in its own ({stable_hash(stray) % 4} of 4)" in (
        str(restored.first_violation)
    )


def test_the_processor_of_the_docs_runs_as_shown(capsys: pytest.CaptureFixture[str]) -> None:
    text = (Path(__file__).parent.parent / "docs" / "processors.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/processors.md", "exec"), {"__name__": "docs_example"})
    ok, views = capsys.readouterr().out.split()
    assert ok == "True"
    assert 100_000 < int(views) < 140_000  # 60% of 200,000 events are views


def test_ids_beyond_2_to_the_53_are_refused_at_the_door() -> None:
    from actors import batch_frame, decoder

    big = VideoEvent("view", 2**63, 5, 2, 0.5, 0, 0, 0)
    data = batch_frame(0, 0, Columns([5], [big], [0.5]))
    with pytest.raises(msgspec.ValidationError, match=r"<= 9007199254740992"):
        decoder(VideoEvent).decode(data)
    table = Table.from_events(VideoEvent, [msgspec.structs.replace(big, user_id=1, watch_ms=2**62)])
    with pytest.raises(ValueError, match=r"field watch_ms: values must be <= 8\.64e"):
        unpack_values(packed(table), (VideoEvent,))


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (np.array([1, 2, 3], dtype=np.int32), [1, 2, 3]),
        (np.array([1, 2, 3], dtype=">i8"), [1, 2, 3]),
        (np.array([1, 2**64 - 1, 3], dtype=np.uint64), [1, 2**64 - 1, 3]),
        (np.array(["a", "b", "c"]), ["a", "b", "c"]),
    ],
    ids=["int32", "big-endian", "uint64", "strings"],
)
def test_arrays_of_any_dtype_become_keys_every_path_reads_alike(
    keys: Any, expected: list[Any]
) -> None:
    from actors import BatchCodec, RecordBatch

    batch = RecordBatch("t", 0, 0, keys, [1, 2, 3], np.array([1, 2, 3], dtype=np.int32))
    assert [r.key for r in batch.stored_records()] == expected
    assert all(
        type(r.key) is type(e) for r, e in zip(batch.stored_records(), expected, strict=True)
    )
    assert batch.record(1).timestamp == 2.0
    decoded = BatchCodec().decode(BatchCodec().encode(batch))
    assert [r.key for r in decoded.stored_records()] == expected
    assert list(decoded.timestamps) == [1.0, 2.0, 3.0]


def test_a_restored_partition_s_batches_must_add_up() -> None:
    topic = Topic("events", partitions=1, capacity=1000)
    table = video_events(30)
    partition = topic.partitions[0]
    for part in (table[:10], table[10:]):
        partition.send_nowait(Columns(part.columns["video_id"], part, part.columns["timestamp"]))
    good = PartitionPart.of(partition.snapshot())
    first, second = good.batches
    bad = {
        "9 keys, 10 values": [msgspec.structs.replace(first, keys=first.keys[:-8]), second],
        "starts at 11, not 10": [first, msgspec.structs.replace(second, base_offset=11)],
        "offsets 0 to 10, not the records from 0 to 30": [first],
    }
    for message, batches in bad.items():
        part = msgspec.structs.replace(good, batches=batches)
        with pytest.raises(ValueError, match=message):
            part.state("events", 0, VideoEvent)
    assert len(good.state("events", 0, VideoEvent).batches) == 2


def test_bloggers_of_large_ids_cost_no_table_per_window() -> None:
    analytics = BloggerAnalytics(BloggerAnalyticsParams(window=1.0))
    events = [VideoEvent("view", 1, 5, 65_535, float(i * 10), 0, 0, i) for i in range(50)]
    analytics.process(events)
    assert analytics._window_rows == {}
    reference = ReferenceBloggerAnalytics(BloggerAnalyticsParams(window=1.0))
    reference.process(events)
    assert analytics.result() == reference.result()
