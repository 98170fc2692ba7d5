"""Epochs: the barrier that makes a snapshot consistent, and the checkpoint actor, the only
writer of a pipeline's epochs.

An epoch is taken in three steps: the barrier asks every producer to pause at its next safe
point (between chunks, everything handed to the partitions); once all have paused or
finished, the pipeline's state is captured in one synchronous step and the producers go on;
the snapshot is then written to the store. Consumers never pause: each commits a batch in the
same step as it processes it, so their state matches their offsets at any moment.

Epochs are asked for by the periodic timer, by a stop (Ctrl-C, SIGTERM), by the end of the
run and by consumers on a node that must wait until an epoch holds what they processed. All
go through :meth:`Checkpointer.epoch`: one task, :meth:`Checkpointer.serve`, takes and writes
them one at a time, and requests that arrive while an epoch is being taken wait for the next
one, together.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from contextlib import asynccontextmanager
from typing import Literal

import attrs
import trio

from actors import Backoff

from .checkpoint import CheckpointStore, EpochInfo, Snapshot
from .errors import CheckpointError
from .snapshot import ClockPart

INLINE_WRITE_BYTES = 256 << 10
"""A periodic epoch this small is written in the Trio thread even when writes go to a worker
thread: it takes well under a millisecond, less than the handing over to a thread and back
(which waits for the interpreter lock while other threads hold it). A final epoch always
goes to the thread, where its time limit can abandon a write that hangs."""


@attrs.define(eq=False)
class CheckpointSettings:
    """When a running pipeline writes epochs, and where."""

    store: CheckpointStore
    every: float | None = 1.0
    """Seconds of the run's clock between epochs, or None."""
    every_records: int | None = None
    """Events produced between epochs, or None."""
    final_timeout: float = 10.0
    """Real seconds the final epoch may take on a graceful stop."""
    in_thread: bool = True
    """Write epochs in a worker thread. With a virtual clock they are written in the Trio
    thread instead: while a thread works, autojump would move simulated time on, so the epoch
    schedule would depend on the machine's speed."""

    @property
    def periodic(self) -> bool:
        """Whether epochs are written while the run goes, not only at its end."""
        return bool(self.every or self.every_records)


@attrs.define(eq=False)
class RunClock:
    """The run's clock: events are stamped with seconds since its origin, and simulated time
    goes on across resumes."""

    origin: float = 0.0
    """The run's clock at event time 0."""
    restored_event_time: float | None = None
    """Event time at the epoch the run resumed from."""
    wall: bool = False
    """Event time is Unix time (a served topology, whose events come from clients and are
    stored with the time they were received), on every start and resume."""

    def start(self) -> float:
        """Set the origin for a run starting now; return the clock's reading."""
        now = trio.current_time()
        if self.wall:
            self.origin = now - time.time()
        elif self.restored_event_time is None:
            self.origin = now
        else:  # carry event time on from the epoch, whatever this clock reads
            self.origin = now - self.restored_event_time
        return now

    def capture(self) -> ClockPart:
        """The clock now, as a part of an epoch."""
        now = trio.current_time()
        return ClockPart(sim_time=now, event_time=now - self.origin)

    def restore(self, state: ClockPart) -> None:
        """Carry event time on from ``state`` when the run starts."""
        self.restored_event_time = float(state.event_time)


@attrs.frozen
class BarrierStatistics:
    """A snapshot of a :class:`Barrier`."""

    producers_active: int
    """Producers that have not finished."""
    producers_paused: int
    """Producers paused at a safe point for the epoch being taken."""
    requested: bool
    """Whether an epoch is being taken (producers are asked to pause)."""


@attrs.define(eq=False)
class Barrier:
    """Where producers pause so that an epoch captures a consistent cut.

    A producer calls :meth:`pending` between chunks; when it is true, the producer stops
    sending (what it buffers is captured with it) and calls :meth:`pause`, which returns once
    the epoch is captured; :meth:`on_ask` tells a producer waiting for room to stop waiting.
    A producer that is done calls :meth:`finished`. The checkpoint actor alone calls
    :meth:`hold`.
    """

    _active: set[Hashable] = attrs.field(factory=set)
    _arrived: set[Hashable] = attrs.field(factory=set)
    _requested: bool = False
    _all_arrived: trio.Event = attrs.field(factory=trio.Event)
    _resume: trio.Event = attrs.field(factory=trio.Event)
    _asked: trio.Event = attrs.field(factory=trio.Event)
    _on_ask: dict[Hashable, Callable[[], None]] = attrs.field(factory=dict)

    def start(self, producers: Iterable[Hashable]) -> None:
        """Count ``producers`` as running: an epoch waits for each to pause or finish."""
        self._active = set(producers)

    @property
    def running(self) -> bool:
        """Whether any producer has not finished."""
        return bool(self._active)

    def pending(self, producer: Hashable) -> bool:
        """Whether an epoch waits for ``producer`` to pause."""
        return self._requested and producer not in self._arrived

    def on_ask(self, producer: Hashable, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever an epoch is asked for while ``producer`` runs: a
        producer waiting for room in a ring stops waiting (the ring may make room only once
        the epoch is written)."""
        self._on_ask[producer] = callback

    async def asked(self) -> None:
        """Wait until an epoch is asked for (a producer sleeping until its next chunk is due
        wakes up for it)."""
        await self._asked.wait()

    async def pause(self, producer: Hashable) -> None:
        """Say that ``producer`` is at a safe point, and wait until the epoch is captured."""
        self._arrived.add(producer)
        if self._active <= self._arrived:
            self._all_arrived.set()
        await self._resume.wait()

    def finished(self, producer: Hashable) -> None:
        """Say that ``producer`` is done: no epoch waits for it any more."""
        self._active.discard(producer)
        self._on_ask.pop(producer, None)
        if self._requested and self._active <= self._arrived:
            self._all_arrived.set()

    @asynccontextmanager
    async def hold(self, *, keep_paused: bool = False) -> AsyncIterator[None]:
        """Pause every running producer at its next safe point for the duration of the block
        (for good with ``keep_paused``: after the last epoch of a stopped run, whatever they
        made would be counted by the run's report and held by no epoch).

        Raises:
            RuntimeError: Another holder has not left its block yet.
        """
        if self._requested:
            raise RuntimeError("the barrier is already held: epochs are taken one at a time")
        self._all_arrived = trio.Event()
        self._resume = trio.Event()
        self._arrived = set()
        self._requested = True
        self._asked.set()
        for callback in list(self._on_ask.values()):
            callback()
        try:
            if not self._active <= self._arrived:
                await self._all_arrived.wait()
            yield
        finally:
            self._requested = False
            self._asked = trio.Event()
            if not keep_paused:
                self._resume.set()

    def statistics(self) -> BarrierStatistics:
        """Return a snapshot of the barrier."""
        return BarrierStatistics(
            producers_active=len(self._active),
            producers_paused=len(self._arrived) if self._requested else 0,
            requested=self._requested,
        )


FinalEpoch = Literal["not asked", "written", "failed", "timed out"]
"""What became of the final epoch: see :attr:`CheckpointerStatistics.final_epoch`."""


@attrs.frozen
class CheckpointerStatistics:
    """A snapshot of a :class:`Checkpointer`."""

    epochs_written: int
    """Epochs written by this checkpoint actor."""
    requests: int
    """Epochs asked for (by the timer, a stop, the end of the run, consumers waiting)."""
    shared: int
    """Requests answered by an epoch that another request also asked for."""
    abandoned_writes: int
    """Writes whose task was cancelled while the worker thread wrote: the thread goes on,
    and the epoch is in the store, or not at all, when it ends (one SQLite transaction)."""
    skipped_epochs: int
    """Periodic epochs that could not be written (a full disk, an I/O error) and were skipped:
    the run went on, and the next one was tried at its time."""
    final_epoch: FinalEpoch
    """``written``; ``failed`` (capturing or writing raised); ``timed out`` (not written
    within its time: it may still land, whole, if the process lives on); or ``not asked``."""
    serving: bool
    """Whether the actor is serving (between :meth:`Checkpointer.serve`'s start and end)."""


@attrs.define(eq=False)
class _Request:
    final: bool
    last: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    info: EpochInfo | None = None
    error: BaseException | None = None

    def answer(self, info: EpochInfo | None = None, error: BaseException | None = None) -> None:
        self.info, self.error = info, error
        self.done.set()


def _shared(error: Exception) -> CheckpointError:
    # Each waiter of a failed epoch raises its own error: one exception object raised by
    # several tasks would be reported as the crash of whichever was named first, and its
    # traceback would grow with each raise. The first waiter gets the error itself.
    shared = CheckpointError(str(error))
    shared.__cause__ = error
    return shared


@attrs.define(eq=False)
class Checkpointer:
    """The checkpoint actor of a pipeline: the only writer of its epochs.

    Run :meth:`serve` for as long as epochs may be asked for; ask with :meth:`epoch`. The
    pipeline gives the callables: ``capture`` takes a snapshot (only while the barrier holds)
    and returns it with what to do once it is written; ``written`` records a written epoch;
    ``events_produced`` counts events for ``every_records``.
    """

    barrier: Barrier
    capture: Callable[[bool], tuple[Snapshot, Callable[[], None] | None]]
    written: Callable[[EpochInfo], None]
    events_produced: Callable[[], int]
    on_skipped: Callable[[CheckpointError], None] | None = None
    """Called with the error of each periodic epoch that could not be written (for logging)."""
    before_write: Callable[[], Callable[[], Awaitable[None]] | None] = lambda: None
    """Called as an epoch is captured; what it returns is awaited before the epoch is written
    (the log written up to the capture, so that a crash cannot lose log entries of records
    the epoch holds)."""
    _store: CheckpointStore | None = None
    _in_thread: bool = True
    _queue: list[_Request] = attrs.field(factory=list)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _idle: trio.Event = attrs.field(factory=trio.Event)
    _turn: trio.Lock = attrs.field(factory=trio.Lock)
    _due: trio.Event = attrs.field(factory=trio.Event)
    _next_records: int | None = None
    _soon: bool = False
    _last_final: EpochInfo | None = None
    _epochs_written: int = 0
    _requests: int = 0
    _shared: int = 0
    _abandoned: int = 0
    _skipped: int = 0
    _final: FinalEpoch = "not asked"

    @property
    def store(self) -> CheckpointStore | None:
        """The store the actor writes to while it serves; None otherwise."""
        return self._store

    async def serve(
        self,
        store: CheckpointStore,
        *,
        in_thread: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write every epoch asked for, one at a time, to ``store`` until cancelled.

        Only one call serves at a time: another waits until it stops, then takes over the
        requests still waiting. A write in a worker thread (``in_thread``) that is cancelled
        is abandoned: the task returns at once, and the thread ends the transaction, or the
        process ends first and SQLite rolls it back. Requests still waiting when the last
        call stops are answered with the final epoch if one was written (nothing changed
        after it), else with an error.
        """
        async with self._turn:
            self._store, self._in_thread = store, in_thread
            try:
                task_status.started()
                while True:
                    while not self._queue:
                        self._idle.set()
                        self._wake = trio.Event()
                        await self._wake.wait()
                    if self._idle.is_set():
                        self._idle = trio.Event()
                    await self._take(store)
            finally:
                self._store = None
                if not self._turn.statistics().tasks_waiting:
                    self._strand()

    def _strand(self) -> None:
        stranded, self._queue = self._queue, []
        for request in stranded:
            if self._last_final is not None:
                request.answer(self._last_final)
            else:
                request.answer(
                    error=CheckpointError("the run stopped before the epoch asked for was taken")
                )

    async def _take(self, store: CheckpointStore) -> None:
        # Requests that came before the capture share this epoch; later ones wait for the next.
        taken, self._queue = self._queue, []
        final = any(request.final for request in taken)
        writing = False
        try:
            last = any(request.last for request in taken)
            async with self.barrier.hold(keep_paused=last):
                snapshot, durable = self.capture(final)
                ready = self.before_write()
            if ready is not None:
                await ready()
            writing = True
            if self._in_thread and (final or _size(snapshot) > INLINE_WRITE_BYTES):
                # Only a final epoch is abandoned when its time is up: a periodic write that
                # is cancelled (a crash rolling back) is waited for, so that the store is free
                # again when the rollback reads it.
                info = await trio.to_thread.run_sync(store.write, snapshot, abandon_on_cancel=final)
            else:
                info = store.write(snapshot)
            self._epochs_written += 1
            if final:
                self._last_final, self._final = info, "written"
            if durable is not None:
                durable()
            self.written(info)
            for request in taken:
                request.answer(info)
        except trio.Cancelled:
            if writing and self._in_thread and final:
                self._abandoned += 1
            for request in taken:
                request.answer(error=CheckpointError("the epoch was abandoned: the run stopped"))
            raise
        except Exception as exc:
            if final and self._final != "written":
                self._final = "failed"
            for number, request in enumerate(taken):
                request.answer(error=exc if number == 0 else _shared(exc))
            return
        finally:
            for request in taken:  # whatever escaped above, nobody is left waiting
                if not request.done.is_set():
                    request.answer(error=CheckpointError("the epoch could not be written"))
        await trio.lowlevel.checkpoint()

    async def epoch(self, *, final: bool = False, last: bool = False) -> EpochInfo:
        """Ask for an epoch captured from now on, and wait until it is written.

        Args:
            final: Mark the epoch as written at the end of the run (completed or stopped).
            last: The run ends with this epoch (a stop): producers stay paused after its
                capture, so the run makes nothing that it does not hold.

        The request waits for :meth:`serve` if the actor is not serving yet.

        Raises:
            CheckpointError: The epoch could not be written, or the run stopped first.
        """
        request = _Request(final, last)
        self._requests += 1
        if self._queue:
            self._shared += 1
        self._queue.append(request)
        if self._idle.is_set():  # busy again from now: settled() waits for this one too
            self._idle = trio.Event()
        self._wake.set()
        try:
            await request.done.wait()
        except trio.Cancelled:
            if request in self._queue:
                self._queue.remove(request)
            if final:
                self._final = "timed out"
            raise
        if request.error is not None:
            raise request.error
        assert request.info is not None
        return request.info

    async def settled(self) -> None:
        """Wait until the actor has answered every request and waits for the next."""
        while self._queue or not self._idle.is_set():
            await self._idle.wait()

    def soon(self) -> None:
        """Ask the periodic timer for an epoch at once, without waiting for it: one captured
        from now on (the next, if one is being taken). Many asks are served by one epoch."""
        self._soon = True
        self._due.set()

    def produced(self) -> None:
        """Called after producers made a chunk: an epoch may be due by ``every_records``."""
        if self._next_records is not None and self.events_produced() >= self._next_records:
            self._due.set()

    async def until_written(self, *, final: bool = False) -> None:
        """Ask for an epoch and wait until one is written, trying again while it fails.

        A store that refuses the epoch (a full disk that may clear) or a crash of the actor
        as it wrote is counted as a skipped epoch and tried again: everything the epoch would
        hold is still in memory, so rolling back to redo the work would not help. The
        caller bounds the wait (the final epoch's timeout). Failures are told to
        ``on_skipped`` but not counted as skipped periodic epochs.
        """
        backoff = Backoff(first=0.05, most=1.0)
        while True:
            try:
                await self.epoch(final=final)
                return
            except Exception as exc:
                if final:
                    error = CheckpointError(f"the final epoch could not be written: {exc}")
                elif isinstance(exc, CheckpointError):
                    error = exc
                else:
                    error = CheckpointError(f"the checkpoint actor crashed: {exc!r}")
                if self.on_skipped is not None:  # said, not counted: no periodic epoch
                    self.on_skipped(error)
                await backoff.failed()

    async def periodic(self, settings: CheckpointSettings, *, skip_crashes: bool = False) -> None:
        """Ask for an epoch every ``settings.every`` seconds or ``settings.every_records``
        events, whichever comes first, until cancelled (once every actor is done: consumers
        may drain a backlog long after the producers have finished).

        An epoch the store refuses is skipped; with ``skip_crashes``, so is one the actor
        crashed while taking (a node's: see :meth:`~topology.Pipeline.run`).
        """
        every_records = settings.every_records
        if every_records:
            self._next_records = self.events_produced() + every_records
        while True:
            self._due = trio.Event()
            if self._soon:  # asked while the last one was being taken
                self._due.set()
            with trio.move_on_after(settings.every if settings.every else math.inf):
                await self._due.wait()
            soon, self._soon = self._soon, False
            started = trio.current_time()
            try:
                await self.epoch()
            except Exception as exc:
                # The store refused the epoch (a full disk, an I/O error), whole: the epochs
                # before it are intact and nothing in memory is lost, so the run goes on and
                # tries again at the next interval, for as long as it takes.
                if not isinstance(exc, CheckpointError):
                    if not skip_crashes:
                        raise
                    exc = CheckpointError(f"the checkpoint actor crashed: {exc!r}")
                self._skipped += 1
                if self.on_skipped is not None:
                    self.on_skipped(exc)
            if every_records:
                self._next_records = self.events_produced() + every_records
            if soon:  # epochs asked for soon take at most half the time, whatever the load
                await trio.sleep(trio.current_time() - started)

    def statistics(self) -> CheckpointerStatistics:
        """Return a snapshot of the actor's counters."""
        return CheckpointerStatistics(
            epochs_written=self._epochs_written,
            requests=self._requests,
            shared=self._shared,
            abandoned_writes=self._abandoned,
            skipped_epochs=self._skipped,
            final_epoch=self._final,
            serving=self._store is not None,
        )


def all_of(*hooks: Callable[[], None] | None) -> Callable[[], None] | None:
    """One hook calling each of ``hooks`` that is given, in order (None for none)."""
    given = [hook for hook in hooks if hook is not None]
    if len(given) < 2:
        return given[0] if given else None

    def each() -> None:
        for hook in given:
            hook()

    return each


def _size(snapshot: Snapshot) -> int:
    return sum(map(len, snapshot.parts.values()))
