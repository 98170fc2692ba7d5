"""The delivery engine: retries with backoff and full jitter on the run's clock, what is
retried and what is not, ``Retry-After``, and the circuit breaker (virtual time)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from actors import (
    CircuitBreaker,
    DeliveryStatistics,
    PermanentError,
    RetryPolicy,
    TransientError,
    Undeliverable,
    deliver,
)


def failing(times: int, error: Exception) -> tuple[list[float], object]:
    """An attempt that fails ``times`` times with ``error``, then returns "ok"; and the
    moments it was called."""
    calls: list[float] = []

    async def attempt() -> str:
        calls.append(trio.current_time())
        if len(calls) <= times:
            raise error
        return "ok"

    return calls, attempt


def test_the_waits_grow_to_the_maximum_and_are_drawn_below_their_bound() -> None:
    policy = RetryPolicy(initial=0.1, multiplier=2.0, maximum=1.0)
    assert [policy.bound(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.bound(10**6) == 1.0  # no overflow
    rng = random.Random(7)
    waits = [policy.wait(3, rng) for _ in range(1000)]
    assert 0 <= min(waits) < 0.01
    assert 0.39 < max(waits) <= 0.4  # full jitter: anywhere below the bound
    assert policy.wait(1, rng, retry_after=5.0) == 5.0  # the other system asked for longer


async def test_transient_failures_are_retried_with_jittered_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls, attempt = failing(3, TransientError("503 Service Unavailable"))
    policy = RetryPolicy(initial=1.0, multiplier=2.0, maximum=60.0, max_attempts=10)
    statistics = DeliveryStatistics()
    retried: list[tuple[int, float]] = []
    start = trio.current_time()
    result = await deliver(
        attempt,  # type: ignore[arg-type]
        policy,
        CircuitBreaker(threshold=100),
        random.Random(1),
        statistics,
        on_retry=lambda error, failures, wait: retried.append((failures, wait)),
    )
    assert result == "ok"
    gaps = [b - a for a, b in zip([start, *calls], calls, strict=False)][1:]
    assert [round(g, 9) for g in gaps] == [round(w, 9) for _, w in retried]
    assert [f for f, _ in retried] == [1, 2, 3]
    for failures, wait in retried:
        assert 0 <= wait <= policy.bound(failures)
    assert (statistics.attempts, statistics.retries, statistics.failures) == (4, 3, 3)


async def test_an_hour_of_outage_passes_in_virtual_time_until_the_attempts_run_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls, attempt = failing(10**6, ConnectionRefusedError("refused"))
    policy = RetryPolicy(initial=1.0, maximum=60.0, max_attempts=None, max_elapsed=3600.0)
    with pytest.raises(Undeliverable) as given_up:
        await deliver(attempt, policy, CircuitBreaker(threshold=10**6), random.Random(2))  # type: ignore[arg-type]
    failure = given_up.value.failure
    assert failure.retryable
    assert "ConnectionRefusedError: refused" in failure.error
    assert failure.last_failed - failure.first_failed >= 3600.0
    assert failure.attempts == len(calls) > 60  # waits of 30 s on average


async def test_a_permanent_error_is_not_retried_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls, attempt = failing(1, PermanentError("400 Bad Request: no field 'x'"))
    breaker = CircuitBreaker(threshold=1)
    with pytest.raises(Undeliverable, match=r"400 Bad Request.*1 attempt; it cannot succeed"):
        await deliver(attempt, RetryPolicy(), breaker, random.Random(3))  # type: ignore[arg-type]
    assert len(calls) == 1
    assert breaker.state == "closed", "a refusal is an answer: the system is up"
    calls, attempt = failing(1, ValueError("a bug"))  # anything else: permanent too
    with pytest.raises(Undeliverable, match="ValueError: a bug"):
        await deliver(attempt, RetryPolicy(), breaker, random.Random(3))  # type: ignore[arg-type]


async def test_an_attempt_that_takes_too_long_fails_and_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    async def slow_then_quick() -> str:
        calls.append(trio.current_time())
        if len(calls) == 1:
            await trio.sleep(100)
        return "ok"

    policy = RetryPolicy(initial=0.5, attempt_timeout=2.0)
    reasons: list[str] = []
    result = await deliver(
        slow_then_quick,
        policy,
        CircuitBreaker(),
        random.Random(4),
        on_retry=lambda error, *_: reasons.append(str(error)),
    )
    assert result == "ok"
    assert reasons == ["no answer within 2 s"]
    assert 2.0 <= calls[1] - calls[0] <= 2.5


async def test_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    calls, attempt = failing(1, TransientError("429 Too Many Requests", retry_after=30.0))
    await deliver(attempt, RetryPolicy(initial=0.1), CircuitBreaker(), random.Random(5))  # type: ignore[arg-type]
    assert calls[1] - calls[0] == pytest.approx(30.0)


async def test_the_breaker_opens_after_failures_in_a_row_and_one_call_probes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(threshold=3, cool_down=10.0)
    for _ in range(2):
        breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.statistics().state == "open"
    opened = trio.current_time()
    admitted: list[float] = []

    async def call(succeeds: bool) -> None:
        await breaker.admit()
        admitted.append(trio.current_time())
        await trio.sleep(1)
        if succeeds:
            breaker.succeeded()
        else:
            breaker.failed()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, False)  # probes after 10 s, fails: open 10 s more
        await trio.sleep(10.5)
        nursery.start_soon(call, True)  # waits while one probes, then for the next probe
    assert [round(t - opened, 6) for t in admitted] == [10.0, 21.0]
    assert breaker.statistics().state == "closed"
    assert breaker.statistics().opened == 1


async def test_deliveries_wait_while_the_breaker_is_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(threshold=2, cool_down=60.0)
    calls, attempt = failing(2, TransientError("502 Bad Gateway"))
    policy = RetryPolicy(initial=0.001, max_attempts=5)
    await deliver(attempt, policy, breaker, random.Random(6))  # type: ignore[arg-type]
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 60.0  # the third call is the probe, after the cool-down
    assert breaker.state == "closed"
