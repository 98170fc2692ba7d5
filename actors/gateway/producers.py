"""Remote producers on ``/node``: numbered batches in, windows (the free room) out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from typing import Any

import attrs
import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..errors import RingflowError
from ..nursery import open_nursery
from ..partition import Partition
from ..topic import Topic
from ..wire import (
    DUPLICATE,
    ENCODER,
    MALFORMED,
    PROTOCOL,
    SOFTWARE,
    Batch,
    Finish,
    Finished,
    Hello,
    Welcome,
    Window,
    batch_problem,
    frame_columns,
)
from .endpoint import ABNORMAL, FrameReader, Owed, Refusal, Settings, Signal, peer

WINDOW_LINGER = 0.002
"""Seconds between windows to one producer: one window for many batches under load."""

STILL_THERE = 2.0
"""Seconds a producer's open connection has to answer a ping when the same producer connects
again: one that answers is another process running as the same node."""


@attrs.frozen
class ProducerEndpointStatistics:
    """A snapshot of a gateway's producers, as :meth:`ProducerEndpoint.statistics` returns it."""

    connected: int
    """Remote producers connected now."""
    finished: int
    """Remote producers that have sent their finish (restored ones included)."""
    waiting_for: int
    """Producers the topics are kept open for that have not finished yet."""


@attrs.frozen
class GatewayCheckpoint:
    """What a checkpoint keeps of a gateway, as :meth:`~actors.Gateway.snapshot` gives it
    and :meth:`~actors.Gateway.restore` takes it: the remote producers that finished, and
    what each said it sent, and the remote members that left."""

    finished: tuple[tuple[str, str], ...] = ()
    """(topic, producer id) of each producer that has sent its finish, sorted."""
    summaries: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Per topic and producer id, what the producer said it sent (see
    :meth:`~actors.Gateway.add_summary`)."""
    left: tuple[tuple[str, str, str], ...] = ()
    """(group, topic, member) of each remote member that has left after the end, sorted."""


@attrs.define(eq=False)
class ProducerEndpoint:
    """Serves remote producers of a gateway's topics and keeps what they finished.

    Args:
        topics: The topics whose partitions the gateway hosts.
        frames: Reads the frames producers send.
        event: Called with (category, message) for producers that finished.
        owed: Where producers are noted that may not have had their finish's answer.
        settings: The gateway's ``durable_only`` (producers may forget records only once
            :meth:`mark_durable` says an epoch holds them) and ``summary_type`` (what a
            producer's summary, sent with its finish, must convert to).
    """

    topics: Mapping[str, Topic]
    frames: FrameReader
    event: Callable[[str, str], None]
    settings: Settings
    owed: Owed = attrs.field(factory=Owed)
    """Producers told their finish is recorded whose connection then broke."""
    _expected: dict[str, set[str]] = attrs.field(init=False, factory=dict)
    _finished: set[tuple[str, str]] = attrs.field(init=False, factory=set)
    summaries: dict[str, dict[str, Any]] = attrs.field(init=False, factory=dict)
    """Per topic, what each producer said it sent when it finished (see :meth:`add_summary`)."""
    _durable: dict[tuple[str, int], dict[str, int]] = attrs.field(init=False, factory=dict)
    _watchers: set[Signal] = attrs.field(init=False, factory=set)
    _finish_waiters: dict[tuple[str, str], trio.Event] = attrs.field(init=False, factory=dict)
    _producing: int = attrs.field(init=False, default=0)
    _durable_finishes: set[tuple[str, str]] = attrs.field(init=False, factory=set)
    _open: dict[tuple[str, str], WebSocketConnection] = attrs.field(init=False, factory=dict)
    """By (topic, producer), the connection each producer is served on now."""

    # -- producers that must finish ----------------------------------------------------------

    def expect(self, topic: str, producers: set[str]) -> None:
        """Keep ``topic`` open until each of ``producers`` (remote ids) has sent its finish."""
        waiting = producers - {p for t, p in self._finished if t == topic}
        self._expected.setdefault(topic, set()).update(waiting)
        for _ in waiting:
            self.topics[topic].add_producer()

    def _finish(self, topic: str, producer: str) -> None:
        if (topic, producer) in self._finished:
            return
        self._finished.add((topic, producer))
        if producer in self._expected.get(topic, ()):
            self._expected[topic].discard(producer)
            self.topics[topic].remove_producer(graceful=True)
        self.event("meta", f"producer {producer} finished topic {topic}")

    def add_summary(self, topic: str, producer: str, summary: Any) -> None:
        """Keep what ``producer`` says it sent to ``topic``; consumers get it at the end."""
        if summary is not None:
            self.summaries.setdefault(topic, {})[producer] = summary

    @property
    def busy(self) -> bool:
        """Whether a producer is connected, or waits for its finish to be recorded."""
        return bool(self._producing or self._finish_waiters)

    def mark_durable(
        self,
        sequences: Mapping[tuple[str, int], Mapping[str, int]],
        finished: Set[tuple[str, str]] = frozenset(),
    ) -> None:
        """Note what a written epoch holds: per (topic, partition), the records of each
        producer it has (producers may now forget them), and the (topic, producer) finishes
        it has (those producers are told their finish is recorded)."""
        for where, numbers in sequences.items():
            self._durable[where] = dict(numbers)
        for key in finished:
            waiter = self._finish_waiters.pop(key, None)
            self._durable_finishes.add(key)
            if waiter is not None:
                waiter.set()
        for watcher in self._watchers:
            watcher.set()

    async def _finish_recorded(self, topic: str, producer: str) -> None:
        # With durable_only, a finish counts for the producer once an epoch holds it: a node
        # restored from an older epoch would otherwise wait for a producer that has gone.
        key = (topic, producer)
        if not self.settings.durable_only or key in self._durable_finishes:
            return
        waiter = self._finish_waiters.setdefault(key, trio.Event())
        await waiter.wait()

    def snapshot(self) -> GatewayCheckpoint:
        """The producers that have finished and their summaries, for a checkpoint."""
        return GatewayCheckpoint(
            tuple(sorted(self._finished)), {t: dict(s) for t, s in self.summaries.items()}
        )

    def restore(self, state: GatewayCheckpoint) -> None:
        """Take back :meth:`snapshot`; call before :meth:`expect`."""
        self._finished = set(state.finished)
        self._durable_finishes = set(self._finished)
        self.summaries = {t: dict(s) for t, s in state.summaries.items()}

    @property
    def waiting_for(self) -> dict[str, set[str]]:
        """Per topic, the remote producers that have not finished yet."""
        return {topic: set(ids) for topic, ids in self._expected.items() if ids}

    def statistics(self) -> ProducerEndpointStatistics:
        """Return a snapshot of the producers connected, finished and awaited."""
        return ProducerEndpointStatistics(
            connected=self._producing,
            finished=len(self._finished),
            waiting_for=sum(len(ids) for ids in self._expected.values()),
        )

    # -- serving -----------------------------------------------------------------------------

    def _window(self, topic: Topic, partition: Partition, producer: str) -> Window:
        acked = partition.next_sequence(producer)
        if self.settings.durable_only:
            durable = self._durable.get((topic.name, partition.index), {}).get(producer, 0)
        else:
            durable = acked
        room = partition.free_room
        return Window(partition.index, acked, durable, None if room is None else acked + room)

    async def serve(self, ws: WebSocketConnection, hello: Hello, topic: Topic) -> None:
        """Serve the producer that sent ``hello`` until it leaves.

        Raises:
            Refusal: The producer broke the protocol.
        """
        name = hello.name
        partitions = topic.partitions
        await self._only_one(ws, topic.name, name)
        owed = ("produce", topic.name, name)
        owed_before = self.owed.owes(owed)
        welcome = Welcome(
            PROTOCOL,
            SOFTWARE,
            len(partitions),
            topic.capacity,
            [p.next_sequence(name) for p in partitions],
        )
        await ws.send_message(ENCODER.encode(welcome))
        signal = Signal()
        answered = clean = False
        self._watchers.add(signal)
        self._producing += 1

        async def watch(partition: Partition) -> None:
            while True:
                await partition.wait_room_changed()
                signal.set()

        async def send_windows() -> None:
            sent: list[Window | None] = [None] * len(partitions)
            while True:
                wrote = False
                for index, partition in enumerate(partitions):
                    window = self._window(topic, partition, name)
                    if window != sent[index]:
                        try:
                            await ws.send_message(ENCODER.encode(window))
                        except ConnectionClosed:
                            # The reading loop sees the close too, and tells how it
                            # closed: raised here as well, the two would come as a group
                            # that looks like no close at all (the producer, answered and
                            # gone, would be waited for).
                            return
                        sent[index] = window
                        wrote = True
                if wrote:  # gather what changes meanwhile into the next windows
                    await trio.sleep(WINDOW_LINGER)
                await signal.wait()

        try:
            async with open_nursery() as nursery:
                for partition in partitions:
                    nursery.start_soon(watch, partition)
                nursery.start_soon(send_windows)
                while True:
                    frame = await self.frames.receive(ws, topic.name)
                    if isinstance(frame, Batch):
                        try:
                            columns = frame_columns(
                                frame, self.frames.value_types.get(topic.name, Any)
                            )
                        except ValueError as exc:
                            raise Refusal(MALFORMED, f"malformed frame: {exc}") from None
                        problem = batch_problem(frame, columns, len(partitions))
                        if problem is not None:
                            raise Refusal(MALFORMED, problem)
                        try:
                            accepted = await partitions[frame.partition].send_sequenced(
                                columns, name, frame.sequence
                            )
                        except RingflowError as exc:
                            raise Refusal(MALFORMED, str(exc)) from None
                        if accepted and self.settings.on_accepted is not None:
                            self.settings.on_accepted()
                        signal.set()
                    elif isinstance(frame, Finish):
                        try:
                            msgspec.convert(frame.summary, self.settings.summary_type)
                        except msgspec.ValidationError as exc:
                            raise Refusal(MALFORMED, f"finish: summary: {exc}") from None
                        self.add_summary(topic.name, name, frame.summary)
                        self._finish(topic.name, name)
                        await self._finish_recorded(topic.name, name)
                        answered = True
                        await ws.send_message(ENCODER.encode(Finished()))
                    else:
                        raise Refusal(MALFORMED, f"unexpected {type(frame).__name__} frame")
        except ConnectionClosed as exc:
            clean = _closed_by_peer(exc)
            raise
        finally:
            # A producer that had its answer closes the connection itself (once its own
            # epoch holds its finish); one whose connection ended otherwise may not have
            # had it, or may come back from before its finish, and so may one that was
            # waited for already: each is waited for afresh.
            if answered and clean:
                self.owed.back(owed)
            elif answered or owed_before:
                self.owed.owe(owed, self.settings.linger)
            self._watchers.discard(signal)
            self._producing -= 1
            if self._open.get((topic.name, name)) is ws:
                del self._open[topic.name, name]

    async def _only_one(self, ws: WebSocketConnection, topic: str, name: str) -> None:
        # A producer numbers its records: two processes numbering as one would have records
        # of one taken for the other's. A connection still open for the producer is one it
        # left behind (it is reconnecting) unless it answers a ping.
        old = self._open.get((topic, name))
        if old is not None:
            alive = False
            with trio.move_on_after(STILL_THERE):
                try:
                    await old.ping()
                    alive = True
                except (ConnectionClosed, trio.BrokenResourceError, ValueError):
                    pass
            if alive and self._open.get((topic, name)) is old:
                raise Refusal(
                    DUPLICATE,
                    f"producer {name!r} of topic {topic!r} is connected already (from "
                    f"{peer(old)}): is the same node running twice?",
                )
            with trio.move_on_after(STILL_THERE):
                await old.aclose()
        self._open[topic, name] = ws


def _closed_by_peer(exc: ConnectionClosed) -> bool:
    # Whether the peer closed the connection with a closing handshake.
    return exc.reason is not None and exc.reason.code != ABNORMAL
