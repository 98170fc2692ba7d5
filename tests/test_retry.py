"""The retry policy: pauses that double up to a limit, a reset, and a time to give up; and
retrying a connection with it."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import CloseReason, ConnectionClosed

from actors import Backoff, BackoffStatistics
from actors.connection import keep_trying


async def test_pauses_double_up_to_the_most_and_a_success_starts_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = Backoff(first=0.05, most=0.3)
    pauses = []
    for _ in range(5):
        start = trio.current_time()
        assert await backoff.failed()
        pauses.append(round(trio.current_time() - start, 6))
    assert pauses == [0.05, 0.1, 0.2, 0.3, 0.3]
    assert backoff.statistics() == BackoffStatistics(
        failures=5, delay=0.3, failing_since=0.0, gave_up=False
    )
    backoff.reset()
    assert backoff.statistics() == BackoffStatistics(0, 0.0, None, False)
    assert backoff.failed_nowait() == 0.05


async def test_it_gives_up_at_the_first_failure_after_give_up_seconds_of_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failures at 0, 0.05, 0.15, 0.35 and 0.75 s: the one at 0.75 s is past the 0.5 s."""
    backoff = Backoff(give_up=0.5)
    failures = 0
    while await backoff.failed():
        failures += 1
    assert (failures, trio.current_time()) == (4, 0.75)
    assert backoff.statistics().gave_up
    assert not await Backoff(give_up=0).failed()  # no second try at all


async def test_the_pause_can_be_taken_on_another_clock() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await trio.lowlevel.checkpoint()

    backoff = Backoff(first=1.0, most=4.0, sleep=sleep)
    for _ in range(4):
        assert await backoff.failed()
    assert slept == [1.0, 2.0, 4.0, 4.0]


async def test_a_connection_failing_in_a_retryable_and_another_way_at_once_raises_the_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reader that sees the connection drop beside a writer that hits a bug: the bug leaves
    as itself, not inside an exception group that callers would not recognise."""
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1

        async def dropped() -> None:
            raise ConnectionClosed(CloseReason(1006, None))

        async def bug() -> None:
            raise RuntimeError("a bug in the writer")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dropped)
            nursery.start_soon(bug)

    with pytest.raises(RuntimeError, match="a bug in the writer"):
        await keep_trying("ws://127.0.0.1:1/node", Backoff(give_up=5), attempt)
    assert attempts == 1
