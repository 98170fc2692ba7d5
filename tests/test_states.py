"""What processors and workloads keep in an epoch: versioned structs, read by name, strictly.

A processor's state and a workload's position are each a :class:`~topology.State` that their
type declares (``state_type``); processor and producer parts carry it, and only that type
decodes it. The parts themselves are read the same way: a part of another version is refused.
"""

from __future__ import annotations

import functools
import itertools
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sim.parsing import FilePosition, UsageParserState
from sim.processors import PROCESSORS
from sim.relays import RedisStreamState, WebhookState
from sim.run import REGISTRY
from sim.sinks import ClickHouseState
from sim.social import ALL_WORKLOADS as WORKLOADS
from sim.social import SocialParams
from sim.usage_store import UsageTotalsState
from sim.workloads import UgcParams, VideoSiteParams
from tests.test_checkpoint import run_with_state, topology
from topology import (
    CheckpointStore,
    DamagedEpoch,
    EpochInfo,
    Pipeline,
    Processor,
    State,
    describe_part,
)
from topology.snapshot import (
    KINDS,
    ProcessorPart,
    ProcessorState,
    ProducerPart,
    decode,
    encode,
    restore_parts,
)

EVENTS = 4_000

WORKLOAD_OF = {
    "video_stats": "video_site",
    "blogger_analytics": "video_site",
    "ugc_counters": "ugc",
    "topic": "video_site",
}
"""A workload whose events each processor accepts."""

PARAMS: dict[str, Any] = {
    "video_site": VideoSiteParams(videos=50, bloggers=5),
    "ugc": UgcParams(pages=20, movies=10),
    "social": SocialParams(users=1_000, max_followers=500),
}


def events_of(workload: str, count: int, start: int = 0) -> list[Any]:
    """Events ``start`` to ``start + count`` of instance 0 of ``workload``, one every 0.1 s."""
    made = WORKLOADS[workload].make(PARAMS[workload], 7, "p", 0, 0)
    if start:
        made.generate(start, 0.0, 0.1)
    streams = made.generate(count, start * 0.1, 0.1)
    return sorted(itertools.chain(*streams.values()), key=lambda event: event.seq)


def make_processor(name: str) -> Processor:
    kind = PROCESSORS[name]
    # Short windows, so that the blogger analytics have many.
    if name == "blogger_analytics":
        params = kind.params(window=1.0)
    elif name == "webhook":
        params = kind.params(url="http://127.0.0.1:9/hook")
    elif name == "redis_stream":
        params = kind.params(url="redis://127.0.0.1:9")
    else:
        params = kind.params()
    return kind.make(params)


def through_a_part(processor: Processor, name: str) -> Processor:
    """A fresh processor restored from ``processor``'s part, encoded and decoded."""
    data = encode(ProcessorState(processor, PROCESSORS[name].state_type).capture())
    restored = make_processor(name)
    part = decode("processor", data)
    assert isinstance(part, ProcessorPart)
    ProcessorState(restored, PROCESSORS[name].state_type).restore(part)
    return restored


def outcome(processor: Any) -> tuple[Any, ...]:
    """What a processor shows: its result, its totals and its live view."""
    return processor.result(), processor.totals(), processor.live()


SINKS = {
    "clickhouse": ClickHouseState,
    "webhook": WebhookState,
    "redis_stream": RedisStreamState,
    "usage_totals": UsageTotalsState,
}
"""The processors that write elsewhere, and their state types."""

WORKERS = {"usage_parser": UsageParserState}
"""The processors that work on each record at length (see test_usage_files)."""

FOLDING = sorted(name for name in PROCESSORS if name not in SINKS and name not in WORKERS)
"""The processors that fold events (a sink writes them elsewhere: see test_sinks)."""


@pytest.mark.parametrize("name", FOLDING)
def test_a_processor_restored_from_its_part_carries_on_as_if_never_stopped(name: str) -> None:
    events = events_of(WORKLOAD_OF[name], EVENTS)
    first, then = events[: EVENTS // 2], events[EVENTS // 2 :]
    uninterrupted = make_processor(name)
    uninterrupted.process(first)
    restored = through_a_part(uninterrupted, name)
    assert outcome(restored) == outcome(uninterrupted)
    uninterrupted.process(then)
    restored.process(then)
    assert outcome(restored) == outcome(uninterrupted)


@pytest.mark.parametrize("name", FOLDING)
def test_a_snapshot_shares_nothing_with_the_processor(name: str) -> None:
    processor = make_processor(name)
    events = events_of(WORKLOAD_OF[name], EVENTS)
    processor.process(events[:100])
    state = processor.snapshot()
    before = msgspec.msgpack.encode(state)
    processor.process(events[100:])
    assert msgspec.msgpack.encode(state) == before
    restored = make_processor(name)
    restored.restore(state)
    restored.process(events[100:])
    assert msgspec.msgpack.encode(state) == before


def test_the_fields_of_processor_states_say_what_they_hold() -> None:
    """Each column holds the figure it is named for, as the processor's result shows it."""
    events = events_of("video_site", EVENTS)
    videos = make_processor("video_stats")
    videos.process(events)
    state = videos.snapshot()
    shown = videos.result()["videos"]
    assert len(state.video) == len(shown) > 10
    for i, video in enumerate(state.video):
        assert shown[str(video)] == {
            "blogger": state.blogger[i],
            "views": state.views[i],
            "likes": state.likes[i],
            "dislikes": state.dislikes[i],
            "comments": state.comments[i],
            "watches": state.watches[i],
            "watch_seconds": state.watch_ms[i] / 1000,
        }

    bloggers = make_processor("blogger_analytics")
    bloggers.process(events)
    windows = bloggers.snapshot()
    shown = bloggers.result()["bloggers"]
    assert windows.latest == max(windows.window) == int(events[-1].timestamp)
    for i, (blogger, index) in enumerate(zip(windows.blogger, windows.window, strict=True)):
        [window] = [w for w in shown[str(blogger)]["windows"] if w["start"] == index]
        assert (
            window["views"],
            window["likes"],
            window["dislikes"],
            window["comments"],
            window["watch_seconds"],
        ) == (
            windows.views[i],
            windows.likes[i],
            windows.dislikes[i],
            windows.comments[i],
            windows.watch_ms[i] / 1000,
        )
        views = zip(windows.view_row, windows.view_count, strict=True)
        assert sum(n for row, n in views if row == i) == windows.views[i]

    counters = make_processor("ugc_counters")
    counters.process(events_of("ugc", EVENTS))
    ugc = counters.snapshot()
    shown = counters.result()
    assert ugc.kinds == shown["kinds"]
    assert ugc.custom == shown["custom"]
    for i, page in enumerate(ugc.page):
        assert shown["pages"][page] == {
            "clicks": ugc.page_clicks[i],
            "views": ugc.page_views[i],
            "view_seconds": ugc.page_view_ms[i] / 1000,
        }
    for i, movie in enumerate(ugc.movie):
        assert shown["movies"][str(movie)] == {
            "progress_updates": ugc.movie_updates[i],
            "completed": ugc.movie_completed[i],
        }


@pytest.mark.parametrize("name", FOLDING)
def test_a_state_is_read_by_its_field_names_in_any_order(name: str) -> None:
    processor = make_processor(name)
    processor.process(events_of(WORKLOAD_OF[name], EVENTS))
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(processor.snapshot()))
    shuffled = list(fields.items())
    random.Random(3).shuffle(shuffled)
    part = ProcessorPart(state=msgspec.Raw(msgspec.msgpack.encode(dict(shuffled))))
    restored = make_processor(name)
    ProcessorState(restored, PROCESSORS[name].state_type).restore(part)
    assert outcome(restored) == outcome(processor)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_a_workload_restored_from_its_part_makes_the_same_events(name: str) -> None:
    kind = WORKLOADS[name]
    workload = kind.make(PARAMS[name], 7, "p", 0, 0)
    workload.generate(500, 0.0, 0.1)
    part = ProducerPart.of(500, workload.position(), {})
    decoded = decode("producer", encode(part))
    assert isinstance(decoded, ProducerPart)
    restored = kind.make(PARAMS[name], 7, "p", 0, 0)
    restored.restore(decoded.position_as(kind.state_type))
    assert restored.counts() == workload.counts()
    assert restored.generate(500, 50.0, 0.1) == workload.generate(500, 50.0, 0.1)
    assert restored.counts() == workload.counts()


def fields_of(state: State) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.msgpack.decode(msgspec.msgpack.encode(state))
    return fields


def first_list(fields: dict[str, Any]) -> str:
    return next(name for name, value in fields.items() if isinstance(value, (list, dict)))


CHANGES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "another version": lambda fields: {**fields, "v": fields["v"] + 1},
    "an unknown field": lambda fields: {**fields, "extra": 1},
    "a missing field": lambda fields: {k: v for k, v in itertools.islice(fields.items(), 2)},
    "a field of another type": lambda fields: {**fields, first_list(fields): "a string"},
    "a row by position": lambda fields: [list(fields.values())],
}
"""Ways a state can be not what its part holds."""


@functools.cache
def states() -> dict[str, tuple[type[State], State]]:
    """A state with something in it of each processor's and workload's state type."""
    found: dict[str, tuple[type[State], State]] = {}
    for name, processor_type in PROCESSORS.items():
        processor = make_processor(name)
        if name in FOLDING:
            processor.process(events_of(WORKLOAD_OF[name], 200))
        elif name == "clickhouse":  # a sink counts what it wrote
            processor.restore(
                ClickHouseState(kinds={"click": 2, "playback": 5}, already_stored=1, lineage="a1")
            )
        elif name == "redis_stream":
            processor.restore(RedisStreamState(kinds={"view": 3}, lineage="a1"))
        elif name == "usage_totals":
            processor.restore(UsageTotalsState(kinds={"sum": 5}, applied=3, lineage="a1"))
        elif name == "usage_parser":
            processor.restore(
                UsageParserState(
                    processed={"12:ab": "/in/a.txt"},
                    positions={"40:cd": FilePosition(20, 3, 1)},
                    files=1,
                    duplicates=0,
                    missing=0,
                    lines=7,
                    bad_lines=1,
                    records=4,
                    seq_sums={0: 6},
                    unsettled=[],
                )
            )
        else:
            processor.restore(WebhookState(kinds={"view": 3}, batches=1))
        found[name] = processor_type.state_type, processor.snapshot()
    for name, workload_type in WORKLOADS.items():
        workload = workload_type.make(PARAMS[name], 7, "p", 0, 0)
        workload.generate(10, 0.0, 0.1)
        found[name] = workload_type.state_type, workload.position()
    return found


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("name", sorted([*PROCESSORS, *WORKLOADS]))
def test_a_state_of_another_shape_or_version_is_refused(name: str, change: str) -> None:
    state_type, state = states()[name]
    raw = msgspec.Raw(msgspec.msgpack.encode(CHANGES[change](fields_of(state))))
    with pytest.raises(msgspec.ValidationError):
        ProcessorPart(state=raw).state_as(state_type)
    with pytest.raises(msgspec.ValidationError):
        ProducerPart(done=0, workload=raw).position_as(state_type)
    unchanged = ProcessorPart.of(state).state_as(state_type)
    assert msgspec.msgpack.encode(unchanged) == msgspec.msgpack.encode(state)


@pytest.mark.parametrize("name", ["video_stats", "blogger_analytics", "ugc_counters"])
def test_columns_of_different_lengths_are_refused(name: str) -> None:
    state_type, state = states()[name]
    fields = fields_of(state)
    column = next(n for n in state_type.__struct_fields__ if isinstance(fields[n], list))
    fields[column] = fields[column][:-1]
    with pytest.raises(msgspec.ValidationError, match="columns of different lengths"):
        ProcessorPart(state=msgspec.Raw(msgspec.msgpack.encode(fields))).state_as(state_type)


@pytest.mark.parametrize(
    "internal",
    [[1, 2, 3], [*range(624), 625], [-1, *range(624)], [*range(624), "a"]],
    ids=["short", "index", "negative", "not-a-number"],
)
def test_a_random_state_that_random_does_not_take_is_refused(internal: list[Any]) -> None:
    state_type, state = states()["video_site"]
    fields = {**fields_of(state), "random_internal": internal}
    raw = msgspec.Raw(msgspec.msgpack.encode(fields))
    with pytest.raises(msgspec.ValidationError):
        ProducerPart(done=0, workload=raw).position_as(state_type)


def test_a_processor_part_that_cannot_be_restored_is_damage_and_changes_nothing() -> None:
    processor = make_processor("video_stats")
    processor.process(events_of("video_site", 100))
    before = outcome(processor)
    wrong = {**fields_of(processor.snapshot()), "v": 2}
    data = msgspec.msgpack.encode({"v": 1, "state": wrong})
    holder = ProcessorState(processor, PROCESSORS["video_stats"].state_type)
    with pytest.raises(DamagedEpoch) as caught:
        restore_parts({("processor", "video-stats"): holder}, {("processor", "video-stats"): data})
    assert (caught.value.part, caught.value.problem) == (
        "processor/video-stats",
        "cannot be restored (ValidationError: Invalid value 2 - at `$.v`)",
    )
    assert outcome(processor) == before


# -- the versions of parts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def epoch() -> tuple[EpochInfo, dict[tuple[str, str], bytes]]:
    """The final epoch of a short run of the video site, and its parts."""
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder)
        run_with_state(state, events=EVENTS)
        store = CheckpointStore.open(
            state, Pipeline.build(topology(), REGISTRY, events=EVENTS).fingerprint
        )
        loaded = store.load()
        store.close()
    assert loaded is not None
    return loaded


@pytest.fixture
def epoch_parts(
    epoch: tuple[EpochInfo, dict[tuple[str, str], bytes]],
) -> dict[tuple[str, str], bytes]:
    """The parts of :func:`epoch`."""
    return epoch[1]


def with_version(data: bytes, version: int) -> bytes:
    fields = msgspec.msgpack.decode(data)
    assert fields["v"] == 1
    return msgspec.msgpack.encode({**fields, "v": version})


def test_a_whole_run_has_a_part_of_most_kinds(epoch_parts: dict[tuple[str, str], bytes]) -> None:
    kinds = {kind for kind, _ in epoch_parts}
    # The others are kept by the nodes of a split topology, and by a served topology's
    # HTTP intake (tested in test_serve).
    assert kinds == set(KINDS) - {"remote", "member", "gateway", "intake"}


def test_a_part_of_an_unknown_version_is_not_what_the_part_holds(
    epoch_parts: dict[tuple[str, str], bytes],
) -> None:
    for (kind, name), data in epoch_parts.items():
        describe_part(kind, name, with_version(data, 1))  # the same part, as it is
        with pytest.raises(DamagedEpoch) as caught:
            describe_part(kind, name, with_version(data, 2))
        assert (caught.value.part, caught.value.problem) == (
            f"{kind}/{name}",
            "not what this part holds",
        )


def test_an_epoch_with_a_part_of_an_unknown_version_is_not_restored(
    epoch: tuple[EpochInfo, dict[tuple[str, str], bytes]],
) -> None:
    info, intact = epoch
    spec = topology()
    Pipeline.build(spec, REGISTRY, events=EVENTS, restore=(info, intact))
    for key in sorted(intact):
        parts = {**intact, key: with_version(intact[key], 2)}
        with pytest.raises(DamagedEpoch) as caught:
            Pipeline.build(spec, REGISTRY, events=EVENTS, restore=(info, parts))
        assert caught.value.part == f"{key[0]}/{key[1]}"
        assert caught.value.problem.startswith("cannot be restored (ValidationError: Invalid")
