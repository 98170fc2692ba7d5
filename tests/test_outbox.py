"""A client's outbox: bounded, the oldest dropped and counted when full, never blocking."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import ConfigurationError, Outbox, OutboxFull


async def test_messages_come_out_in_order_and_a_reader_waits_for_the_next() -> None:
    outbox = Outbox(3)
    got: list[object] = []

    async def reader() -> None:
        for _ in range(3):
            got.append(await outbox.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing yet: it waits
        for message in ("a", "b", "c"):
            outbox.put(message)
            await trio.testing.wait_all_tasks_blocked()
            assert got[-1] == message  # taken as soon as the reader runs
    assert got == ["a", "b", "c"]
    assert outbox.peak == 1


async def test_a_full_outbox_drops_the_oldest_and_says_how_many_before_the_rest() -> None:
    outbox = Outbox(3)
    for number in range(10):
        outbox.put(number)  # never blocks
    assert len(outbox) == 4  # three messages and the notice
    assert await outbox.get() == {"type": "skipped", "count": 7}
    assert [await outbox.get() for _ in range(3)] == [7, 8, 9]
    outbox.put(10)
    assert await outbox.get() == 10  # told once
    assert (outbox.skipped, outbox.skipped_total, outbox.peak) == (0, 7, 3)


async def test_a_full_outbox_set_to_close_refuses_and_keeps_what_it_holds() -> None:
    outbox = Outbox(2, on_full="close")
    outbox.put("a")
    outbox.put("b")
    with pytest.raises(OutboxFull, match=r"the client's outbox is full \(2 messages\)"):
        outbox.put("c")
    assert [await outbox.get(), await outbox.get()] == ["a", "b"]
    assert outbox.skipped_total == 0


def test_an_outbox_of_no_room_or_an_unknown_setting_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 1 message"):
        Outbox(0)
    with pytest.raises(ConfigurationError, match="expected 'skip' or 'close'"):
        Outbox(5, on_full="drop")  # type: ignore[arg-type]
