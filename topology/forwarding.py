"""Forwarding: consumers whose processor writes records into a topic of the topology.

The ``topic`` relay passes every record it reads on to its consumer's ``output`` topic, on
this node or on another one (through the gateways, numbered, so that a batch sent again after
a reconnection or a restart is stored once). A record enters the output's ring in the same
step as its consumer commits it and its processor counts it, with no checkpoint between: an
epoch holds each record either in the topic it was read from, not yet committed, or in the
output, never in both and never in neither, so after a crash nothing is relayed twice and
nothing is lost. While the output's ring is full the relay waits, the topic it reads fills,
and its producers are held back: backpressure, never loss.

Records keep their key, value and timestamp (latency measured after the relay counts from
when the record was first made). When the output has as many partitions as the topic read,
a record goes to the partition of the same number, so each partition's order is kept as it
was; otherwise the output's partitioner places it by its key, and each key's order is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import attrs
import msgspec
import trio

from actors import (
    Admitting,
    BatchTooLargeError,
    Columns,
    RecordBatch,
    RemoteTopic,
    Topic,
    admit_sized,
    kept,
)

from .delivering import DeadLetter, letter_shares
from .registry import State
from .snapshot import TopicSummary, TopicTallyPart
from .tally import TopicTally


@attrs.frozen
class TopicRelayParams:
    """Settings of ``topic``: none (the consumer's ``output`` names the topic)."""


class TopicRelayState(State, frozen=True, tag=1):
    """The state of ``topic``: what it passed on, as a producer's tally counts it."""

    records: Annotated[int, msgspec.Meta(ge=0)]
    seq_sums: dict[int, int]
    """Per producer instance, the sum of the sequence numbers of its events passed on."""
    kinds: dict[str, Annotated[int, msgspec.Meta(ge=0)]]


@attrs.define(eq=False)
class TopicRelay:
    """Processor ``topic``: counts what its consumer passes on to its ``output`` topic (the
    passing is the consumer's: see :class:`Output`)."""

    params: TopicRelayParams = attrs.field(factory=TopicRelayParams)
    sent: TopicTally = attrs.field(factory=TopicTally)

    def process(self, events: Sequence[Any]) -> None:
        """Count events passed on (in the step they entered the output)."""
        self.sent.count_all(events)

    process_columns = process

    def result(self) -> dict[str, Any]:
        """What was passed on: records, and records per kind."""
        return {"relayed": self.sent.records, "kinds": dict(sorted(self.sent.kinds.items()))}

    def totals(self) -> dict[str, int]:
        """Records passed on per kind."""
        return dict(self.sent.kinds)

    def snapshot(self) -> TopicRelayState:
        """The counts, for an epoch."""
        return TopicRelayState(
            records=self.sent.records,
            seq_sums=dict(self.sent.seq_sums),
            kinds=dict(self.sent.kinds),
        )

    def restore(self, state: TopicRelayState) -> None:
        """Take the counts of an epoch back."""
        self.sent.restore(
            TopicTallyPart(records=state.records, seq_sums=state.seq_sums, kinds=state.kinds)
        )

    def summary(self) -> TopicSummary:
        """What was passed on, as a producer says what it sent."""
        return self.sent.summary()

    def live(self) -> list[tuple[str, str]]:
        """Records passed on so far."""
        return [("relayed", f"{self.sent.records:,}")]


@attrs.define(eq=False)
class Output:
    """Where one consumer's instances write records: its ``output`` topic, held here (a
    :class:`~actors.Topic`, of which they are producers) or on another node (a link through
    the gateways, opened by :meth:`run`)."""

    consumer: str
    topic: str
    instances: int
    """How many tasks of the consumer write here (instances times topics read)."""
    produced: TopicTally
    """The run's tally of the topic: consumers of it here are checked against it."""
    summary: Callable[[], TopicSummary]
    """What the consumer wrote, over every run resumed (its processor's count)."""
    same_partitions: frozenset[str]
    """The topics read with as many partitions as the output: records keep their partition."""
    target: Topic | RemoteTopic | None = None
    """The topic here; for one on another node, set once :meth:`run` has opened its link."""
    link: Any = None
    """The :class:`~topology.node.RemoteLink` to the topic on another node; None when here."""
    add_summary: Callable[[str, TopicSummary], None] | None = None
    """Hands the summary to this node's gateway once every task is done, when the topic
    is here and the node's consumers of it are checked against its producers' summaries."""
    dead_letters: Topic | None = None
    """The consumer's dead-letter topic (here), for input its processor sets aside."""
    waiting: int = 0
    """Tasks waiting for room in the output now."""
    _registered: int = 0
    _left: int = 0
    _ready: trio.Event = attrs.field(factory=trio.Event)
    _finished: trio.Event = attrs.field(factory=trio.Event)

    def register(self) -> None:
        """Count each task as a producer of the topic here (before anything runs: the topic
        must not close when its other producers finish first). A topic an epoch holds as
        closed was finished by them all, and stays closed."""
        if isinstance(self.target, Topic):
            self._ready.set()
            if not self.target.closed:
                for _ in range(self.instances):
                    self.target.add_producer()
                self._registered = self.instances

    async def run(self) -> None:
        """Keep the link to the topic on another node open until every task is done; then
        finish it with the summary of what was written (the other node closes the topic
        once its producers have all finished)."""
        assert self.link is not None, "the output is here"
        async with self.link as topic:
            self.target = topic
            self._ready.set()
            await self._finished.wait()
            topic.summary = self.summary()

    async def put(
        self,
        batch: RecordBatch,
        settled: Callable[[RecordBatch], None],
        done_up_to: Callable[[int], int] = lambda _: 0,
    ) -> None:
        """Write the records of ``batch``, in parts no larger than the output's rings; call
        ``settled`` with each part in the same step as it enters them (it commits the part).

        ``done_up_to(partition)`` says up to which offset the consumer's members here have
        passed records on: a member that waited for room while its partition went to
        another member (its session on another node timed out) writes only what that one
        has not, checked in the step it writes.

        Raises:
            TopicClosedError: The output closed (its node gave up).
        """
        await self._ready.wait()
        target = self.target
        assert target is not None
        room = min((p.capacity for p in target.partitions if p.capacity), default=None)
        count = len(batch.values)
        step = count if room is None else max(1, room)
        for start in range(0, count, step):
            part = batch if step >= count else batch.slice(start, min(count, start + step))
            await self._put(target, part, settled, done_up_to)

    async def _put(
        self,
        target: Topic | RemoteTopic,
        part: RecordBatch,
        settled: Callable[[RecordBatch], None],
        done_up_to: Callable[[int], int],
    ) -> None:
        while True:  # until every partition has room: then what is still to do goes at once
            skip = done_up_to(part.partition) - part.base_offset
            if skip >= len(part.values):
                return  # passed on by another member here meanwhile
            if skip > 0:
                part = part.slice(skip, len(part.values))
            pairs = self._pairs(target, part)
            blocked = next((p for p, s in pairs if not p.can_take(len(s))), None)
            if blocked is None or blocked.closed:  # (admitting a closed one raises)
                break
            self.waiting += 1
            try:
                await blocked.wait_room_changed()
            finally:
                self.waiting -= 1
        together = kept("commit_with_output")

        def build() -> list[Columns]:
            if together:
                settled(part)
            self.produced.count_all(part.values)
            return [share for _, share in pairs]

        await admit_sized([(p, len(s)) for p, s in pairs], build)
        if not together:  # settled later: an epoch between may hold the records twice
            await trio.sleep(0.01)
            settled(part)

    async def write(
        self,
        columns: Columns,
        settled: Callable[[], None],
        letters: Sequence[DeadLetter] = (),
    ) -> None:
        """Write records a processor made (not those it read), all in one step, and call
        ``settled`` in that step (it records how far the processor got, and may stamp the
        records' sequence numbers in place: they then follow the order of the writes). They
        are placed by key; waits until every partition they go to has room for its share.
        ``letters`` (input the processor set aside) enter the consumer's dead-letter topic
        in the same step, stamped with the consumer's name.

        Raises:
            BatchTooLargeError: A share could never fit (its partition's capacity is smaller).
            TopicClosedError: The output closed (its node gave up).
            UndeliveredError: The dead-letter topic has no room for ``letters`` (nothing reads
                it: waiting would be for ever).
        """
        await self._ready.wait()
        target = self.target
        assert target is not None
        shares = target.split(columns)
        partitions: Sequence[Admitting] = target.partitions
        pairs = [(p, s) for p, s in zip(partitions, shares, strict=True) if len(s)]
        for partition, share in pairs:
            if partition.capacity is not None and len(share) > partition.capacity:
                raise BatchTooLargeError(
                    f"consumer {self.consumer!r} wrote {len(share):,} records at once to a "
                    f"partition of {self.topic!r}, whose capacity is {partition.capacity:,}: "
                    "give the topic a larger capacity (or the processor a smaller batch)"
                )
        while True:
            blocked = next((p for p, s in pairs if not p.can_take(len(s))), None)
            if blocked is None or blocked.closed:
                break
            self.waiting += 1
            try:
                await blocked.wait_room_changed()
            finally:
                self.waiting -= 1
        keep = self._letters(letters)
        if not pairs:
            keep()
            settled()
            return

        def build() -> list[Columns]:
            keep()
            settled()  # which may stamp the records (their sequence numbers): split again
            self.produced.count_all(columns.values)
            return [share for share in target.split(columns) if len(share)]

        await admit_sized([(p, len(s)) for p, s in pairs], build)

    def _letters(self, letters: Sequence[DeadLetter]) -> Callable[[], None]:
        # What puts ``letters`` in the dead-letter topic, without waiting (checked as it does).
        if not letters:
            return lambda: None
        topic = self.dead_letters
        assert topic is not None, f"consumer {self.consumer!r} has no dead-letter topic"
        stamped = [msgspec.structs.replace(d, consumer=self.consumer) for d in letters]

        def keep() -> None:
            for partition, share in letter_shares(self.consumer, topic, stamped, "purge"):
                partition.send_nowait(share)

        return keep

    def _pairs(
        self, target: Topic | RemoteTopic, part: RecordBatch
    ) -> list[tuple[Admitting, Columns]]:
        # The output's partitions the part's records go to, and which records each takes.
        columns = Columns(part.keys, part.values, part.timestamps)
        partitions: Sequence[Admitting] = target.partitions
        if part.topic in self.same_partitions:
            return [(partitions[part.partition], columns)]
        shares = target.split(columns)
        return [(p, s) for p, s in zip(partitions, shares, strict=True) if len(s)]

    def left(self, *, graceful: bool) -> None:
        """A task is done (``graceful``) or crashed: it is a producer no more. Once every
        task is done, the topic here closes (if it has no other producer) and the link to
        one on another node is finished."""
        self._left += 1
        if isinstance(self.target, Topic) and self._registered:
            self._registered -= 1
            self.target.remove_producer(graceful=graceful)
        if graceful and self._left == self.instances:
            if self.add_summary is not None:
                self.add_summary(self.topic, self.summary())
            self._finished.set()
