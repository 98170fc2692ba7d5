"""One retry policy: pauses that double while attempts keep failing, and a time to give up."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import attrs
import trio


@attrs.frozen
class BackoffStatistics:
    """A snapshot of a policy, as :meth:`Backoff.statistics` returns it."""

    failures: int
    """Attempts that failed in a row (0 after a success)."""
    delay: float
    """The pause after the last failure, in seconds (0 after a success)."""
    failing_since: float | None
    """When the first of those failures happened (the clock's time), or None."""
    gave_up: bool
    """Whether the policy has said to stop trying."""


@attrs.define(eq=False)
class Backoff:
    """When to try again after a failure, and when to stop.

    The first pause is ``first`` seconds; each failure in a row doubles it, up to ``most``. A
    success (:meth:`reset`) starts again from ``first``. Once failures have gone on for
    ``give_up`` seconds, counted from the first of them, the next failure gives up: an
    operation is tried for at least ``give_up`` seconds before it is abandoned.

    Waiting is split as trio splits its primitives: :meth:`failed_nowait` counts a failure and
    says how long to pause without waiting, and :meth:`failed` waits that long.

    Args:
        first: The pause after the first failure, in seconds.
        most: The longest pause, in seconds.
        give_up: Seconds of failures after which to stop trying (never, by default).
        sleep: How to pause; ``trio.sleep`` pauses on the run's clock. A caller whose
            failures come from real time (a server that is away) while the run's clock is
            virtual passes a real-time sleep instead.
    """

    first: float = 0.05
    most: float = 2.0
    give_up: float = math.inf
    sleep: Callable[[float], Awaitable[object]] = trio.sleep
    _failures: int = attrs.field(init=False, default=0)
    _delay: float = attrs.field(init=False, default=0.0)
    _since: float | None = attrs.field(init=False, default=None)
    _gave_up: bool = attrs.field(init=False, default=False)

    def reset(self) -> None:
        """An attempt succeeded: the next failure pauses ``first`` seconds again."""
        self._failures = 0
        self._delay = 0.0
        self._since = None
        self._gave_up = False

    def failed_nowait(self) -> float | None:
        """Count a failure; return the pause before the next attempt, or None to give up."""
        now = trio.current_time()
        if self._since is None:
            self._since = now
        self._failures += 1
        if now - self._since >= self.give_up:
            self._gave_up = True
            return None
        self._delay = self.first if self._failures == 1 else min(self.most, self._delay * 2)
        return self._delay

    async def failed(self) -> bool:
        """Count a failure and pause before the next attempt.

        Returns:
            True once the pause is over; False, at once, when it is time to give up.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        delay = self.failed_nowait()
        if delay is None:
            return False
        await self.sleep(delay)
        return True

    def statistics(self) -> BackoffStatistics:
        """Return a snapshot of the failures counted so far."""
        return BackoffStatistics(
            failures=self._failures,
            delay=self._delay,
            failing_since=self._since,
            gave_up=self._gave_up,
        )
