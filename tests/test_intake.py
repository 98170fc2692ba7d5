"""Clients' events into topics: decoded, checked, stamped, admitted all at once or refused."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import Topic
from sim.workloads import Click, PageView, VideoEvent
from topology import Intake, IntakeError, Route, TopicTally, input_type

CLICK = b'{"type": "click", "user_id": 7, "page": "/home", "element": "play"}'
VIEW = b'{"type": "page_view", "user_id": 8, "page": "/film", "duration_ms": 1500}'


def intake(capacity: int | None = 100, partitions: int = 2, max_wait: float = 5.0) -> Intake:
    clicks = Topic("clicks", partitions=partitions, capacity=capacity)
    views = Topic("views", partitions=1, capacity=capacity)
    for topic in (clicks, views):
        for partition in topic.partitions:
            partition.register_group("g", trio.lowlevel.ParkingLot())
    return Intake(
        routes={
            "click": Route(Click, clicks, "user_id"),
            "page_view": Route(PageView, views, "user_id"),
        },
        source=3,
        now=trio.current_time,
        produced={"clicks": TopicTally(), "views": TopicTally()},
        max_wait=max_wait,
    )


def held(topic: Topic) -> list[object]:
    values: list[object] = []
    for partition in topic.partitions:
        offset = 0
        while (batch := partition.read(offset)) is not None:
            values += list(batch.values)
            offset += len(batch.values)
    return values


def topic_of(taken: Intake, kind: str) -> Topic:
    return taken.routes[kind].topic


async def test_events_are_stamped_keyed_counted_and_admitted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    taken = intake()
    await trio.sleep(2.5)
    assert await taken.accept(CLICK) == 1
    assert await taken.accept(b"[" + VIEW + b"," + CLICK + b"]") == 2
    clicks = held(topic_of(taken, "click"))
    assert sorted(clicks, key=lambda e: e.seq) == [  # type: ignore[attr-defined]
        Click(7, "/home", "play", 2.5, 3, 0),
        Click(7, "/home", "play", 2.5, 3, 2),
    ]
    assert held(topic_of(taken, "page_view")) == [PageView(8, "/film", 1500, 2.5, 3, 1)]
    partition = topic_of(taken, "click").partitioner.partition_for(7)
    stored = topic_of(taken, "click").partitions[partition]
    assert [stored.read(0).keys, stored.read(1).keys] == [[7], [7]]  # type: ignore[union-attr]
    assert taken.produced["clicks"].records == 2
    assert taken.produced["clicks"].seq_sums == {3: 0 + 2}
    assert taken.produced["views"].seq_sums == {3: 1}
    assert taken.seq == 3
    stats = taken.statistics()
    assert (stats.accepted, stats.requests_accepted, stats.refused) == (3, 2, {})


async def test_a_typed_route_takes_its_kind_with_or_without_type() -> None:
    taken = intake()
    body = b'{"user_id": 1, "page": "/", "element": "x"}'
    assert await taken.accept(body, "click") == 1
    with pytest.raises(IntakeError) as refused:
        await taken.accept(VIEW, "click")
    assert refused.value.status == 422
    assert refused.value.details["path"] == "$.type"
    with pytest.raises(IntakeError) as unknown:
        await taken.accept(CLICK, "watch_progress")
    assert unknown.value.status == 404
    assert unknown.value.details["kinds"] == ["click", "page_view"]


@pytest.mark.parametrize(
    ("body", "status", "said", "path"),
    [
        (b'{"type": "click", "user_id": 1', 400, "malformed JSON", None),
        (b"", 400, "no body", None),
        (
            b'[{"type": "click", "user_id": "x", "page": "/", "element": "e"}]',
            422,
            "Expected `int`, got `str`",
            "$[0].user_id",
        ),
        (
            b'{"type": "click", "user_id": -1, "page": "/", "element": "e"}',
            422,
            "Expected `int` >= 0",
            "$.user_id",
        ),
        (
            b'{"type": "click", "user_id": 1, "page": "/", "element": "e", "seq": 5}',
            422,
            "unknown field `seq`",
            "$",
        ),
        (b'{"type": "purchase", "user_id": 1}', 422, "Invalid value 'purchase'", "$.type"),
        (b'{"user_id": 1}', 422, "missing required field `type`", "$"),
        (b"42", 422, "Expected `object | array`, got `int`", "$"),
    ],
)
async def test_bad_requests_are_refused_with_what_and_where(
    body: bytes, status: int, said: str, path: str | None
) -> None:
    taken = intake()
    with pytest.raises(IntakeError) as refused:
        await taken.accept(body)
    assert refused.value.status == status
    assert said in refused.value.message
    assert refused.value.details.get("path") == path
    assert taken.statistics().refused == {status: 1}


async def test_one_bad_event_refuses_the_whole_request() -> None:
    taken = intake()
    bad = b'{"type": "page_view", "user_id": 8, "page": "/film", "duration_ms": -5}'
    with pytest.raises(IntakeError) as refused:
        await taken.accept(b"[" + CLICK + b"," + VIEW + b"," + bad + b"]")
    assert refused.value.details["path"] == "$[2].duration_ms"
    assert "nothing of the request was accepted" in refused.value.message
    assert held(topic_of(taken, "click")) == held(topic_of(taken, "page_view")) == []
    assert taken.seq == 0
    assert taken.produced["clicks"].records == 0


async def test_a_request_waits_for_room_and_is_refused_whole_when_none_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    taken = intake(capacity=1, partitions=1, max_wait=2)
    await taken.accept(CLICK)  # clicks is full now; views is not
    start = trio.current_time()
    with pytest.raises(IntakeError) as refused:
        await taken.accept(b"[" + VIEW + b"," + CLICK + b"]")
    assert refused.value.status == 503
    assert refused.value.details["retry_after"] == 2
    assert trio.current_time() - start == pytest.approx(2)
    assert held(topic_of(taken, "page_view")) == []  # not even the share that had room
    assert taken.seq == 1


async def test_a_waiting_request_is_admitted_when_room_comes_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    taken = intake(capacity=1, partitions=1, max_wait=5)
    await taken.accept(CLICK)
    accepted: list[int] = []

    async def send() -> None:
        accepted.append(await taken.accept(CLICK))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.sleep(3)
        assert taken.statistics().waiting == 1
        topic_of(taken, "click").partitions[0].commit("g", 1)
    assert accepted == [1]
    assert taken.statistics().waiting == 0


async def test_more_events_than_a_ring_holds_and_a_closed_topic_are_refused() -> None:
    taken = intake(capacity=2, partitions=1)
    with pytest.raises(IntakeError) as too_many:
        await taken.accept(b"[" + b",".join([CLICK] * 3) + b"]")
    assert too_many.value.status == 413
    topic_of(taken, "click").close()
    with pytest.raises(IntakeError) as closed:
        await taken.accept(CLICK)
    assert closed.value.status == 503
    assert await taken.accept(VIEW) == 1  # another topic still takes events


def test_the_input_form_leaves_out_what_ringflow_stamps() -> None:
    fields = input_type(Click).__struct_fields__
    assert fields == ("user_id", "page", "element")


async def test_events_whose_stamps_are_not_their_last_fields_are_made_by_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    videos = Topic("videos", partitions=1, capacity=10)
    videos.partitions[0].register_group("g", trio.lowlevel.ParkingLot())
    route = Route(VideoEvent, videos, "video_id")
    assert not route.stamped_last  # its timestamp comes before watch_ms
    assert Route(Click, videos, "user_id").stamped_last
    taken = Intake(
        routes={"video": route},
        source=2,
        now=trio.current_time,
        produced={"videos": TopicTally()},
        max_wait=1.0,
    )
    await trio.sleep(1.5)
    body = b'{"type": "video", "kind": "watch", "user_id": 4, "video_id": 9, "blogger_id": 1, '
    assert await taken.accept(body + b'"watch_ms": 3000}') == 1
    assert held(videos) == [VideoEvent("watch", 4, 9, 1, 1.5, 3000, 2, 0)]


# -- what an attack found ------------------------------------------------------------------------


async def test_requests_waiting_together_get_distinct_numbers_in_admission_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    taken = intake(capacity=3, partitions=1)
    await taken.accept(CLICK)
    await taken.accept(b"[" + CLICK + b"," + CLICK + b"]")  # full now
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(taken.accept, CLICK)
        await trio.sleep(2)
        topic_of(taken, "click").partitions[0].commit("g", 3)
    stored = topic_of(taken, "click").partitions[0]
    later = [stored.read(offset).values[0] for offset in (3, 4, 5)]  # type: ignore[union-attr]
    assert sorted(e.seq for e in later) == [3, 4, 5]  # type: ignore[attr-defined]
    assert {e.timestamp for e in later} == {2.0}  # type: ignore[attr-defined]
    assert taken.produced["clicks"].seq_sums == {3: sum(range(6))}


async def test_a_share_that_can_never_enter_is_refused_at_once_whatever_its_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    taken = intake(capacity=1, partitions=1, max_wait=5)
    await taken.accept(CLICK)  # clicks full: its share would wait
    start = trio.current_time()
    with pytest.raises(IntakeError) as too_large:
        await taken.accept(b"[" + CLICK + b"," + VIEW + b"," + VIEW + b"]")
    assert too_large.value.status == 413
    topic_of(taken, "page_view").close()
    with pytest.raises(IntakeError) as closed:
        await taken.accept(b"[" + CLICK + b"," + VIEW + b"]")
    assert closed.value.status == 503
    assert "closed" in closed.value.message
    assert trio.current_time() == start  # neither waited


async def test_the_path_of_a_failed_check_is_read_only_where_msgspec_puts_it() -> None:
    with pytest.raises(IntakeError) as refused:
        await intake().accept(
            b'{"type": "click", "user_id": 1, "page": "/", "element": "e", "x - at `$.y`": 1}'
        )
    assert refused.value.details["path"] == "$"
