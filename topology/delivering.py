"""Delivering: how a sink's consumer hands it records, retried while the other system is
away, and dead-lettered when it cannot take them.

A consumer commits nothing the sink has not confirmed: while deliveries are retried its ring
fills and its producers (and HTTP clients) are held back, so nothing is lost. When a batch
fails in a way retrying cannot fix, its records are tried in halves, in order, down to the
one the sink refuses: that one goes to the consumer's dead-letter topic with why, and the
others are delivered, so a poison record never blocks its partition and no record goes
before an earlier one of its partition. Each part is committed in the same step as it is
delivered or dead-lettered, so an epoch always finds the sink's counts, the dead letters and
the committed offsets in agreement.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import attrs
import msgspec
import numpy as np
import trio

from actors import (
    CircuitBreaker,
    Columns,
    DeliveryError,
    DeliveryStatistics,
    Failure,
    Partition,
    RecordBatch,
    RetryPolicy,
    RingflowError,
    Table,
    Topic,
    Undeliverable,
    admit_sized,
    deliver,
    kept,
)

from .registry import Sink
from .sections import ConsumerSpec

Writer = Callable[[Sequence[RecordBatch]], Awaitable[None]]
"""How batches are handed to a sink: its ``write``, or its ``replay`` for dead letters sent
back."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, tag="dead_letter"):
    """A record a sink could not take, in its consumer's dead-letter topic."""

    kind: ClassVar[str] = "dead_letter"
    consumer: str
    """The consumer that gave up on it."""
    topic: str
    partition: int
    offset: int
    """Where the record was."""
    key: str | int | None
    value: bytes
    """The record's value, encoded with msgpack (decode it as the topic's event type)."""
    error: str
    """The last attempt's error."""
    attempts: int
    retryable: bool
    """Whether the attempts ran out (True) or the sink refused the record for good."""
    first_failed: float
    last_failed: float
    """When the first and last attempts failed, on the run's clock: Unix time for a served
    topology, seconds of simulated time otherwise."""


class UndeliveredError(RingflowError):
    """A record a sink cannot take, and its consumer has no dead-letter topic (fail fast)."""


@attrs.define(eq=False)
class SinkDelivery:
    """How one consumer's sink is handed records: shared by the consumer's instances."""

    consumer: str
    sink: Sink
    policy: RetryPolicy
    breaker: CircuitBreaker
    rng: random.Random
    dead_letters: Topic | None = None
    """The consumer's dead-letter topic; None: an undeliverable record stops the consumer."""
    statistics: DeliveryStatistics = attrs.field(factory=DeliveryStatistics)
    dead_lettered: int = 0
    """Records sent to the dead-letter topic so far."""
    on_retry: Callable[[str], None] | None = None
    """Told of each failed attempt that will be retried (for the log)."""
    writing: int = 0
    """Writes under way now (waiting for the sink, its retries or its breaker)."""
    earlier: dict[tuple[str, int, int], DeadLetter] = attrs.field(factory=dict)
    """Dead letters being replayed, by topic, partition and offset: one dead-lettered again
    keeps its first failure and adds up its attempts."""
    last_given_up: Failure | None = None
    """Why the last records given up on were (None before any)."""
    now: Callable[[], float] = trio.current_time
    """The run's clock, as dead letters are stamped with it (event time: Unix time when
    served, simulated seconds otherwise)."""

    @classmethod
    def make(
        cls,
        name: str,
        spec: ConsumerSpec,
        sink: Sink,
        topics: dict[str, Topic],
        seed: int,
    ) -> SinkDelivery:
        """The delivery of consumer ``name`` (``spec``) to ``sink``; jitter seeded by the
        run's seed and the consumer's name."""
        retry = spec.retry
        policy = RetryPolicy(
            retry.initial,
            retry.multiplier,
            retry.maximum,
            retry.max_attempts,
            retry.max_elapsed,
            retry.attempt_timeout,
        )
        breaker = CircuitBreaker(spec.breaker.threshold, spec.breaker.cool_down)
        rng = random.Random(f"{seed}/deliver/{name}")
        dead = None if spec.dead_letter is None else topics[spec.dead_letter]
        return cls(name, sink, policy, breaker, rng, dead)

    async def write(
        self,
        batches: Sequence[RecordBatch],
        done: Callable[[RecordBatch], None],
        *,
        replaying: bool = False,
    ) -> None:
        """Deliver every record of ``batches`` or dead-letter it; call ``done`` with each
        part in the same step as the sink counted it or its dead letters entered their
        ring (``done`` commits it).

        A sink that writes each batch on its own (``one_batch_per_write``: a webhook's POST
        per batch) gets one attempt per batch, so that a flaky system is not asked to take
        many batches in a row without a failure; consecutive batches of a partition go as
        one, up to the sink's ``max_records`` (a backlog, after a wait, goes in fewer
        calls).

        Args:
            batches: Records of one topic, each batch of one partition.
            done: Called with each part once delivered or dead-lettered.
            replaying: The records are dead letters sent back (``ringflow dlq replay``): a
                sink with a ``replay`` method is handed them through it (they are behind
                what it stored, and not to be taken for records it has).

        Raises:
            UndeliveredError: A record cannot be delivered and there is no dead-letter topic.
        """
        replay = getattr(self.sink, "replay", None) if replaying else None
        writer: Writer = replay or self.sink.write
        self.writing += 1
        try:
            if getattr(self.sink, "one_batch_per_write", False):
                limit = getattr(self.sink, "max_records", None)
                for batch in coalesced(batches, limit) if limit else batches:
                    await self._write([batch], done, writer)
            else:
                await self._write(batches, done, writer)
        finally:
            self.writing -= 1

    async def _write(
        self, batches: Sequence[RecordBatch], done: Callable[[RecordBatch], None], writer: Writer
    ) -> None:
        try:
            await self._attempt(batches, writer)
        except Undeliverable as failed:
            if failed.failure.retryable:  # the sink stayed away: no record is to blame
                for batch in batches:
                    await self._dead_letter(batch, failed.failure, done)
                return
            for batch in batches:
                if len(batches) == 1:  # refused just now: straight to its halves
                    await self._halves(batch, failed.failure, done, writer)
                else:
                    await self._isolate(batch, done, writer)
            return
        for batch in batches:
            done(batch)

    async def _attempt(self, batches: Sequence[RecordBatch], writer: Writer) -> None:
        if not kept("deliver_before_commit"):  # one attempt, and whatever it did is done
            with contextlib.suppress(Exception):
                await writer(batches)
            return

        def retried(error: DeliveryError, failures: int, wait: float) -> None:
            if self.on_retry is not None:
                self.on_retry(
                    f"{self.consumer}: attempt {failures} failed: {error}; next in {wait:.2f} s"
                )

        await deliver(
            lambda: writer(batches),
            self.policy,
            self.breaker,
            self.rng,
            self.statistics,
            retried,
        )

    async def _isolate(
        self, batch: RecordBatch, done: Callable[[RecordBatch], None], writer: Writer
    ) -> None:
        # Halves in order, down to the records the sink refuses.
        try:
            await self._attempt([batch], writer)
        except Undeliverable as failed:
            await self._halves(batch, failed.failure, done, writer)
            return
        done(batch)

    async def _halves(
        self,
        batch: RecordBatch,
        failure: Failure,
        done: Callable[[RecordBatch], None],
        writer: Writer,
    ) -> None:
        # A batch that failed: dead-lettered if it is one record or its attempts ran out,
        # else tried again as two halves, in order.
        count = len(batch.values)
        if count == 1 or failure.retryable:
            await self._dead_letter(batch, failure, done)
            return
        half = count // 2
        await self._isolate(batch.slice(0, half), done, writer)
        await self._isolate(batch.slice(half, count), done, writer)

    async def _dead_letter(
        self, batch: RecordBatch, failure: Failure, done: Callable[[RecordBatch], None]
    ) -> None:
        where = f"{batch.topic}[{batch.partition}] offsets {batch.base_offset}"
        if self.dead_letters is None:
            raise UndeliveredError(
                f"consumer {self.consumer} cannot deliver records {where} to "
                f"{batch.base_offset + len(batch.values) - 1}: {failure.error} "
                f"({failure.attempts} attempt{'s' if failure.attempts != 1 else ''}); give it "
                "a dead_letter topic to go on past "
                "such records"
            )
        self.last_given_up = failure
        shift = self.now() - trio.current_time()  # failure times on the run's clock
        letters = [
            self._with_history(
                DeadLetter(
                    consumer=self.consumer,
                    topic=batch.topic,
                    partition=int(batch.partition),
                    offset=int(batch.base_offset) + i,
                    key=_plain(key),
                    value=msgspec.msgpack.encode(value),
                    error=failure.error,
                    attempts=failure.attempts,
                    retryable=failure.retryable,
                    first_failed=failure.first_failed + shift,
                    last_failed=failure.last_failed + shift,
                )
            )
            for i, (key, value) in enumerate(zip(batch.keys, list(batch.values), strict=True))
        ]

        def settled() -> None:
            done(batch)  # committed in the same step as the dead letters enter their ring
            self.dead_lettered += len(letters)

        await self.keep(letters, settled)

    async def keep(
        self, letters: Sequence[DeadLetter], settled: Callable[[], None] | None = None
    ) -> None:
        """Put ``letters`` in the dead-letter topic (calling ``settled`` in the same step)."""
        topic = self.dead_letters
        assert topic is not None, "no dead-letter topic"
        shares = letter_shares(self.consumer, topic, letters, "replay or purge")
        sizes = [(p, len(s)) for p, s in shares]

        def build() -> list[Columns]:
            if settled is not None:
                settled()
            return [s for _, s in shares]

        await admit_sized(sizes, build)

    def _with_history(self, letter: DeadLetter) -> DeadLetter:
        before = self.earlier.get((letter.topic, letter.partition, letter.offset))
        if before is None:
            return letter
        return msgspec.structs.replace(
            letter,
            attempts=before.attempts + letter.attempts,
            first_failed=min(before.first_failed, letter.first_failed),
        )


def letter_shares(
    consumer: str, topic: Topic, letters: Sequence[DeadLetter], remedy: str
) -> list[tuple[Partition, Columns]]:
    """``letters`` split over the partitions of their dead-letter ``topic`` (by key), each
    partition with its share.

    Raises:
        UndeliveredError: A partition has no room for its share now: nothing reads a
            dead-letter topic, so waiting would be for ever (``remedy`` names what
            ``ringflow dlq`` may do about the letters an epoch holds).
    """
    keys = [letter.key for letter in letters]  # plain values: epochs encode them
    now = trio.current_time()
    split = topic.split(Columns(keys, list(letters), [now] * len(letters)))
    shares = [(p, s) for p, s in zip(topic.partitions, split, strict=True) if len(s)]
    full = next(((p, len(s)) for p, s in shares if p.closed or not p.can_take(len(s))), None)
    if full is not None:
        partition, more = full
        held = (partition.capacity or 0) - (partition.free_room or 0)
        raise UndeliveredError(
            f"consumer {consumer}: its dead-letter topic {topic.name!r} is full "
            f"(partition {partition.index} holds {held:,} letters of the "
            f"{partition.capacity or 0:,} it may hold, and {more:,} more came for it): give "
            "the topic a larger capacity and run again (with checkpoints, it resumes from "
            f"its newest epoch), or {remedy} the letters an epoch holds ('ringflow dlq') first"
        )
    return shares


def coalesced(batches: Sequence[RecordBatch], limit: int) -> list[RecordBatch]:
    """``batches`` with each run of consecutive batches of one partition joined, up to
    ``limit`` records a batch (a batch already larger stays as it is; tables are not
    joined)."""
    joined: list[RecordBatch] = []
    for batch in batches:
        last = joined[-1] if joined else None
        if (
            last is not None
            and last.topic == batch.topic
            and last.partition == batch.partition
            and last.next_offset == batch.base_offset
            and len(last.values) + len(batch.values) <= limit
            and not isinstance(last.values, Table)
            and not isinstance(batch.values, Table)
        ):
            joined[-1] = RecordBatch(
                last.topic,
                last.partition,
                last.base_offset,
                _joined(last.keys, batch.keys),
                [*last.values, *batch.values],
                _joined(last.timestamps, batch.timestamps),
            )
        else:
            joined.append(batch)
    return joined


def _joined(first: Any, second: Any) -> Any:
    if isinstance(first, np.ndarray) and isinstance(second, np.ndarray):
        return np.concatenate([first, second])
    return [*first, *second]


def _plain(key: Any) -> str | int | None:
    # A key as the dead letter keeps it (numpy integers become ints).
    if key is None or isinstance(key, str):
        return key
    return int(key)
