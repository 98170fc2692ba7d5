from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import ConfigurationError, SupervisionError, open_supervisor


class Boom(Exception):
    pass


def flaky(starts: list[float], crashes: int, *, then_sleep: float = 0.0):  # type: ignore[no-untyped-def]
    """Return an actor that crashes ``crashes`` times and then runs for ``then_sleep`` seconds."""

    async def actor() -> None:
        starts.append(trio.current_time())
        await trio.sleep(1)
        if len(starts) <= crashes:
            raise Boom(f"crash {len(starts)}")
        await trio.sleep(then_sleep)

    return actor


async def test_one_for_one_restarts_only_the_crashed_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad: list[float] = []
    good: list[float] = []
    async with open_supervisor("one_for_one", max_restarts=3, within=10) as supervisor:
        supervisor.start_soon("bad", flaky(bad, crashes=2))
        supervisor.start_soon("good", flaky(good, crashes=0, then_sleep=5))
    assert bad == [0, 1, 2]
    assert good == [0]
    stats = supervisor.statistics()
    assert stats.restarts == 2
    assert [(c.actor, c.error, c.time, c.restarted) for c in stats.crashes] == [
        ("bad", "Boom: crash 1", 1.0, True),
        ("bad", "Boom: crash 2", 2.0, True),
    ]
    assert "Boom: crash 1" in stats.crashes[0].traceback
    assert stats.running == ()


async def test_one_for_all_restarts_every_actor(autojump_clock: trio.testing.MockClock) -> None:
    bad: list[float] = []
    good: list[float] = []
    async with open_supervisor("one_for_all", max_restarts=3, within=10) as supervisor:
        supervisor.start_soon("bad", flaky(bad, crashes=1))
        supervisor.start_soon("good", flaky(good, crashes=0, then_sleep=5))
    assert bad == [0, 1]
    assert good == [0, 1]  # stopped at t=1 when "bad" crashed, started again with it
    assert trio.current_time() == 7


async def test_too_many_crashes_stop_everything_with_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad: list[float] = []
    bystander_cancelled = []

    async def bystander() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            bystander_cancelled.append(True)
            raise

    with pytest.raises(SupervisionError) as info:  # noqa: PT012 - the block is under test
        async with open_supervisor(max_restarts=2, within=10) as supervisor:
            supervisor.start_soon("bystander", bystander)
            supervisor.start_soon("bad", flaky(bad, crashes=100))
    message = str(info.value)
    assert "giving up on actor 'bad' (Boom: crash 3)" in message
    assert "3 restarts needed within 10s, more than the 2 allowed" in message
    assert isinstance(info.value.__cause__, Boom)
    assert len(info.value.crashes) == 3
    assert bad == [0, 1, 2]
    assert bystander_cancelled == [True]


async def test_crashes_spread_beyond_the_window_are_forgiven(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def slow_crasher() -> None:
        starts.append(trio.current_time())
        await trio.sleep(3)
        if len(starts) <= 5:
            raise Boom("again")

    async with open_supervisor(max_restarts=1, within=2) as supervisor:
        supervisor.start_soon("slow", slow_crasher)
    assert starts == [0, 3, 6, 9, 12, 15]


async def test_temporary_actor_is_not_restarted(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []
    async with open_supervisor() as supervisor:
        supervisor.start_soon("once", flaky(starts, crashes=5), restart="temporary")
    assert starts == [0]
    assert [c.restarted for c in supervisor.crashes] == [False]


async def test_permanent_actor_is_restarted_after_returning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    with pytest.raises(SupervisionError, match="giving up on actor 'loop' \\(returned\\)"):
        async with open_supervisor(max_restarts=2, within=100) as supervisor:
            supervisor.start_soon("loop", flaky(starts, crashes=0), restart="permanent")
    assert starts == [0, 1, 2]


async def test_an_error_in_the_block_escapes_alone() -> None:
    with pytest.raises(KeyError):
        async with open_supervisor():
            raise KeyError("x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "rest_for_one"}, "unknown restart strategy 'rest_for_one'"),
        ({"max_restarts": -1}, "max_restarts must be 0 or more"),
        ({"within": 0}, "within must be a positive number"),
    ],
)
async def test_bad_supervisor_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        async with open_supervisor(**kwargs):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_bad_child_settings_are_refused() -> None:
    async def idle() -> None:
        await trio.lowlevel.checkpoint()

    async with open_supervisor() as supervisor:
        supervisor.start_soon("a", idle)
        with pytest.raises(ConfigurationError, match="already supervised"):
            supervisor.start_soon("a", idle)
        with pytest.raises(ConfigurationError, match="unknown restart type 'sometimes'"):
            supervisor.start_soon("b", idle, restart="sometimes")  # type: ignore[arg-type]
