"""Delivery to other systems: retries with exponential backoff and full jitter, on the run's
clock, only for failures worth retrying, and a circuit breaker that stops calling a system
that keeps failing.

A delivery is an attempt function (an insert, an HTTP POST) tried until it succeeds, fails
in a way retrying cannot fix (:class:`PermanentError`), or runs out of attempts or time
(:class:`RetryPolicy`). Waits use ``trio.sleep``, so under a simulated clock an hour's
outage passes in moments and a fault schedule can drive it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import attrs
import trio

from .errors import RingflowError

T = TypeVar("T")


class DeliveryError(RingflowError):
    """A delivery attempt failed; :attr:`retryable` says whether another may succeed.

    Args:
        message: What failed, for people.
        retryable: Whether retrying may help (a system away, overloaded, slow).
        retry_after: Seconds the other system asked to wait before the next attempt.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class TransientError(DeliveryError):
    """An attempt failed for a reason that may pass: a connection refused or broken, a
    timeout, an answer 429 or 5xx, a sink's declared transient error."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=True, retry_after=retry_after)


class PermanentError(DeliveryError):
    """An attempt failed for a reason retrying cannot fix: an answer 4xx other than 429,
    a record the other system refuses, a sink's declared permanent error."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


TRANSIENT: tuple[type[BaseException], ...] = (OSError, trio.BrokenResourceError, trio.TooSlowError)
"""Exceptions that are transient whatever raised them (connections, timeouts)."""


def classify(error: BaseException) -> DeliveryError:
    """``error`` as a :class:`DeliveryError`: one already, a connection or timeout error
    (transient), or anything else (permanent: a bug or a record no attempt can deliver)."""
    if isinstance(error, DeliveryError):
        return error
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, TRANSIENT):
        return TransientError(text)
    return PermanentError(text)


@attrs.frozen
class RetryPolicy:
    """How often and how long a delivery is retried: ``retry`` of a consumer in the file.

    The wait before attempt ``n + 1`` is drawn uniformly between 0 and ``min(maximum,
    initial * multiplier ** (n - 1))`` (full jitter: failing clients do not retry in step),
    or what the other system asked for (``Retry-After``) if that is longer.
    """

    initial: float = 0.1
    """Seconds: the bound of the first wait."""
    multiplier: float = 2.0
    """How much the bound grows after each failed attempt."""
    maximum: float = 30.0
    """Seconds: the most any wait's bound grows to."""
    max_attempts: int | None = 10
    """Attempts in all before the records are given up on; None: no limit."""
    max_elapsed: float | None = None
    """Seconds from the first failure after which no attempt is made; None: no limit."""
    attempt_timeout: float | None = 10.0
    """Seconds one attempt may take before it counts as failed (transient)."""

    def bound(self, failures: int) -> float:
        """The longest wait after ``failures`` failed attempts (at least one)."""
        try:
            grown = self.initial * self.multiplier ** (failures - 1)
        except OverflowError:  # far past any maximum
            return float(self.maximum)
        return float(min(self.maximum, grown))

    def wait(self, failures: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failures`` failed attempts."""
        drawn = rng.uniform(0.0, self.bound(failures))
        return drawn if retry_after is None else max(drawn, retry_after)

    def exhausted(self, failures: int, elapsed: float) -> bool:
        """Whether no attempt is left after ``failures`` failures over ``elapsed`` seconds."""
        if self.max_attempts is not None and failures >= self.max_attempts:
            return True
        return self.max_elapsed is not None and elapsed >= self.max_elapsed


BreakerState = Literal["closed", "open", "half-open"]


@attrs.frozen
class BreakerStatistics:
    """A snapshot of a :class:`CircuitBreaker`."""

    state: BreakerState
    """``closed`` (calls go through), ``open`` (no calls until the probe time) or
    ``half-open`` (one call is probing)."""
    failures: int
    """Failed attempts in a row."""
    opened: int
    """Times it opened."""


@attrs.define(eq=False)
class CircuitBreaker:
    """Stops calling a system after ``threshold`` failed attempts in a row; after
    ``cool_down`` seconds one call probes it: a success closes the breaker, a failure
    opens it again. Shared by everything that calls the same system.
    """

    threshold: int = 5
    cool_down: float = 30.0
    _failures: int = 0
    _opened_at: float | None = None
    _probing: bool = False
    _opened: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def state(self) -> BreakerState:
        """Where it stands now."""
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._probing else "open"

    async def admit(self) -> None:
        """Wait until a call may be made: at once while closed; while open, until the
        cool-down has passed and no other call is probing."""
        while self._opened_at is not None:
            if not self._probing:
                wait = self._opened_at + self.cool_down - trio.current_time()
                if wait <= 0:
                    self._probing = True
                    return
                with trio.move_on_after(wait):
                    await self._changed.wait()
            else:
                await self._changed.wait()
        await trio.lowlevel.checkpoint()

    def succeeded(self) -> None:
        """A call went through: close the breaker."""
        if self._opened_at is not None or self._failures:
            self._failures, self._opened_at, self._probing = 0, None, False
            self._wake()

    def failed(self) -> None:
        """A call failed for a reason that may pass: count it, open when due."""
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.threshold):
            if not self._probing:
                self._opened += 1
            self._opened_at, self._probing = trio.current_time(), False
            self._wake()

    def released(self) -> None:
        """A probing call ended neither way (cancelled): let another probe."""
        if self._probing:
            self._probing = False
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def statistics(self) -> BreakerStatistics:
        """Return a snapshot of its state and counters."""
        return BreakerStatistics(state=self.state, failures=self._failures, opened=self._opened)


@attrs.frozen
class Failure:
    """Why a delivery was given up on."""

    error: str
    """The last attempt's error."""
    attempts: int
    """Attempts made."""
    first_failed: float
    """When the first attempt failed (the run's clock)."""
    last_failed: float
    """When the last one did."""
    retryable: bool
    """Whether the last error was one retrying may cure (the attempts ran out)."""


class Undeliverable(RingflowError):
    """A delivery was given up on: :attr:`failure` says why."""

    def __init__(self, failure: Failure) -> None:
        why = "attempts ran out" if failure.retryable else "it cannot succeed"
        attempts = f"{failure.attempts} attempt{'s' if failure.attempts != 1 else ''}"
        super().__init__(f"{failure.error} ({attempts}; {why})")
        self.failure = failure


@attrs.define(eq=False)
class DeliveryStatistics:
    """What deliveries of one consumer went through (counters, mutable)."""

    attempts: int = 0
    retries: int = 0
    failures: int = 0
    """Attempts that failed, transient or permanent."""
    given_up: int = 0
    """Deliveries given up on (each dead-letters its records, or stops the consumer)."""


async def deliver(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    breaker: CircuitBreaker,
    rng: random.Random,
    statistics: DeliveryStatistics | None = None,
    on_retry: Callable[[DeliveryError, int, float], None] | None = None,
) -> T:
    """Call ``attempt`` until it succeeds, as ``policy`` and ``breaker`` allow.

    Args:
        attempt: One try; it raises what went wrong (see :func:`classify`).
        policy: How long each try may take, and when to try again.
        breaker: The breaker of the system ``attempt`` calls.
        rng: Draws the jitter (seeded, for deterministic runs).
        statistics: Counts attempts, retries and failures.
        on_retry: Told of each failure that will be retried, with the number of failures
            so far and the wait before the next attempt.

    Raises:
        Undeliverable: A permanent error, or the attempts ran out.
    """
    stats = statistics if statistics is not None else DeliveryStatistics()
    failures = 0
    first_failed = -math.inf
    while True:
        await breaker.admit()
        stats.attempts += 1
        try:
            if policy.attempt_timeout is None:
                result = await attempt()
            else:
                with trio.fail_after(policy.attempt_timeout):
                    result = await attempt()
        except trio.Cancelled:
            breaker.released()
            raise
        except Exception as exc:
            error = classify(exc)
            if isinstance(exc, trio.TooSlowError):
                error = TransientError(f"no answer within {policy.attempt_timeout:g} s")
        else:
            breaker.succeeded()
            return result
        now = trio.current_time()
        failures += 1
        stats.failures += 1
        if failures == 1:
            first_failed = now
        if not error.retryable:
            breaker.released()  # the system answered: it is not the one failing
            stats.given_up += 1
            raise Undeliverable(Failure(str(error), failures, first_failed, now, False))
        breaker.failed()
        if policy.exhausted(failures, now - first_failed):
            stats.given_up += 1
            raise Undeliverable(Failure(str(error), failures, first_failed, now, True))
        wait = policy.wait(failures, rng, error.retry_after)
        stats.retries += 1
        if on_retry is not None:
            on_retry(error, failures, wait)
        await trio.sleep(wait)
