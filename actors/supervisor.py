"""Supervision: run actors in a nursery the supervisor owns and restart them when they crash."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import trio

from .errors import ConfigurationError, SupervisionError
from .nursery import open_nursery

Strategy = Literal["one_for_one", "one_for_all"]
Restart = Literal["permanent", "transient", "temporary"]
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all")
RESTARTS: tuple[str, ...] = ("permanent", "transient", "temporary")


@attrs.frozen
class CrashReport:
    """What crashed, when and why."""

    actor: str
    """The actor's name."""
    error: str
    """The exception's type and message, such as ``"ValueError: bad record"``."""
    time: float
    """When it crashed, in seconds of the run's clock."""
    traceback: str = attrs.field(repr=False)
    """The formatted traceback."""
    restarted: bool
    """Whether the supervisor restarted it (False once the restart limit is exceeded)."""

    def __str__(self) -> str:
        return f"actor {self.actor!r} crashed at t={self.time:.3f}: {self.error}"


@attrs.frozen
class SupervisorStatistics:
    """A snapshot of a supervisor, as :meth:`Supervisor.statistics` returns it."""

    strategy: str
    """The restart strategy."""
    running: tuple[str, ...]
    """Names of the actors running now."""
    restarts: int
    """Restarts performed so far."""
    crashes: tuple[CrashReport, ...]
    """Every crash so far, oldest first."""


@attrs.define(eq=False)
class _Child:
    name: str
    fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    restart: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    running: bool = False


@attrs.define(eq=False)
class Supervisor:
    """Runs actors and restarts the ones that crash, by a named strategy.

    ``"one_for_one"`` restarts only the actor that crashed. ``"one_for_all"`` stops every
    other actor too and then starts them all again: use it when actors share state that a
    crash leaves inconsistent. Either way, more than ``max_restarts`` crashes within
    ``within`` seconds means something is wrong that restarting will not fix: the supervisor
    stops everything and raises :exc:`SupervisionError` naming each crash.

    Open one with :func:`open_supervisor`.
    """

    strategy: str = "one_for_one"
    max_restarts: int = 3
    within: float = 5.0
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _children: list[_Child] = attrs.field(init=False, factory=list)
    _crashes: list[CrashReport] = attrs.field(init=False, factory=list)
    _recent: list[float] = attrs.field(init=False, factory=list)
    _restarts: int = attrs.field(init=False, default=0)
    _failure: SupervisionError | None = attrs.field(init=False, default=None)
    _all_stopped: trio.Event = attrs.field(init=False, factory=trio.Event)
    _round: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(
                f"unknown restart strategy {self.strategy!r}; use one of: {', '.join(STRATEGIES)}"
            )
        if self.max_restarts < 0:
            raise ConfigurationError(f"max_restarts must be 0 or more, got {self.max_restarts}")
        if not self.within > 0:
            raise ConfigurationError(
                f"within must be a positive number of seconds, got {self.within}"
            )

    @property
    def crashes(self) -> tuple[CrashReport, ...]:
        """Every crash so far, oldest first."""
        return tuple(self._crashes)

    def start_soon(
        self,
        name: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        restart: Restart = "transient",
    ) -> None:
        """Start ``await fn(*args)`` as a supervised actor called ``name``.

        Args:
            name: A name for reports; unique among running actors.
            fn: The actor's async function. It is called afresh on each restart, so it must
                pick its state up from somewhere that survived (a checkpoint, a group offset).
            restart: ``"transient"`` (the default) restarts after a crash only;
                ``"permanent"`` also after a normal return; ``"temporary"`` never.

        Raises:
            ConfigurationError: ``restart`` is unknown or ``name`` is taken.
            RuntimeError: The supervisor is not open.
        """
        if restart not in RESTARTS:
            raise ConfigurationError(
                f"unknown restart type {restart!r}; use one of: {', '.join(RESTARTS)}"
            )
        if any(child.name == name for child in self._children):
            raise ConfigurationError(f"an actor named {name!r} is already supervised")
        if self._nursery is None:
            raise RuntimeError("the supervisor is not open; use 'async with open_supervisor()'")
        child = _Child(name, fn, args, restart)
        self._children.append(child)
        self._nursery.start_soon(self._run_child, child, name=name)

    def cancel(self) -> None:
        """Stop every actor now, without restarting any."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _run_child(self, child: _Child) -> None:
        while True:
            child.scope = trio.CancelScope()
            child.running = True
            error: Exception | None = None
            with child.scope:
                try:
                    await child.fn(*child.args)
                except Exception as exc:
                    error = exc
            child.running = False
            if error is not None:
                restart = self._note_crash(child, error)
                if self.strategy == "one_for_all" and self._failure is None:
                    self._stop_others(child)
            elif child.scope.cancelled_caught:
                restart = True  # stopped so that the whole group restarts (one_for_all)
            else:
                restart = child.restart == "permanent" and self._within_limit(child, None)
            if not restart:
                self._children.remove(child)
                self._check_all_stopped()
                return
            if self.strategy == "one_for_all":
                await self._wait_for_round()
            self._restarts += 1

    def _note_crash(self, child: _Child, error: Exception) -> bool:
        restart = child.restart != "temporary" and self._within_limit(child, error)
        self._crashes.append(
            CrashReport(
                actor=child.name,
                error=f"{type(error).__name__}: {error}",
                time=trio.current_time(),
                traceback="".join(traceback.format_exception(error)),
                restarted=restart,
            )
        )
        if self._failure is not None:
            self._failure.crashes = tuple(self._crashes)
            self._failure.args = (self._failure.args[0] + f"; last: {self._crashes[-1]}",)
        return restart

    def _within_limit(self, child: _Child, error: Exception | None) -> bool:
        now = trio.current_time()
        self._recent = [t for t in self._recent if now - t < self.within]
        self._recent.append(now)
        if len(self._recent) <= self.max_restarts:
            return True
        why = f"{type(error).__name__}: {error}" if error is not None else "returned"
        failure = SupervisionError(
            f"giving up on actor {child.name!r} ({why}): {len(self._recent)} restarts needed "
            f"within {self.within}s, more than the {self.max_restarts} allowed"
        )
        failure.__cause__ = error
        self._failure = failure
        self.cancel()
        return False

    def _stop_others(self, crashed: _Child) -> None:
        self._round += 1
        self._all_stopped = trio.Event()
        for child in self._children:
            if child is not crashed:
                child.scope.cancel()
        self._check_all_stopped()

    def _check_all_stopped(self) -> None:
        if not any(child.running for child in self._children):
            self._all_stopped.set()

    async def _wait_for_round(self) -> None:
        self._check_all_stopped()
        await self._all_stopped.wait()

    def statistics(self) -> SupervisorStatistics:
        """Return a snapshot of the supervisor."""
        return SupervisorStatistics(
            strategy=self.strategy,
            running=tuple(child.name for child in self._children if child.running),
            restarts=self._restarts,
            crashes=tuple(self._crashes),
        )


@asynccontextmanager
async def open_supervisor(
    strategy: Strategy = "one_for_one", *, max_restarts: int = 3, within: float = 5.0
) -> AsyncIterator[Supervisor]:
    """Open a supervisor whose actors run until they finish.

    The block's end waits for every actor to finish. When the restart limit is exceeded,
    every actor is cancelled and :exc:`SupervisionError` is raised from the block.

    Example::

        async with open_supervisor("one_for_one", max_restarts=5, within=10) as supervisor:
            supervisor.start_soon("producer", run_producer, topic)
            supervisor.start_soon("stats", run_consumer, group)

    Raises:
        SupervisionError: Actors crashed more often than allowed.
        ConfigurationError: An unknown strategy or impossible limits.
    """
    supervisor = Supervisor(strategy, max_restarts, within)
    try:
        async with open_nursery() as nursery:
            supervisor._nursery = nursery
            yield supervisor
    finally:
        supervisor._nursery = None
    if supervisor._failure is not None:
        raise supervisor._failure
