"""Tallies kept while a pipeline runs, and the ``expect`` invariants checked against them."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import msgspec
import numpy as np

from actors import RecordBatch, Table, as_list, partitions_of, stable_hash

from .registry import Processor, Sink
from .sections import ExpectSpec
from .snapshot import ConsumerTallyPart, TopicSummary, TopicTallyPart

LATENCY_SAMPLE_EVERY = 8
"""One record in this many has its latency measured."""
LATENCY_RESOLUTION = 10_000
"""Latency histogram buckets per second (0.1 ms)."""

_SEQ = operator.attrgetter("seq")
_SOURCE = operator.attrgetter("source")
_KIND = operator.attrgetter("kind")


@attrs.frozen
class TopicTallyStatistics:
    """A snapshot of a :class:`TopicTally`."""

    records: int
    """Records producers got accepted into the topic."""
    sources: int
    """Producer instances whose records were counted."""
    kinds: dict[str, int]
    """Records per kind of event."""


@attrs.define(eq=False)
class TopicTally:
    """What producers got accepted into one topic."""

    records: int = 0
    seq_sums: dict[int, int] = attrs.field(factory=dict)
    kinds: Counter[str] = attrs.field(factory=Counter)

    def count(self, source: int, events: Sequence[Any], seq_sum: int) -> None:
        """Add ``events`` (a list or a table) of producer instance ``source``, whose sequence
        numbers sum to ``seq_sum``."""
        self.records += len(events)
        self.seq_sums[source] = self.seq_sums.get(source, 0) + seq_sum
        if isinstance(events, Table):
            self.kinds.update(events.kind_counts())
        else:
            self.kinds.update(map(_KIND, events))

    def count_all(self, events: Sequence[Any]) -> None:
        """Add ``events`` (a list or a table) of any producer instances (a relay passes on
        what several sent)."""
        self.records += len(events)
        sums = self.seq_sums
        if isinstance(events, Table):
            sources, seqs = events.columns["source"], events.columns["seq"]
            for source in np.unique(sources).tolist():
                sums[source] = sums.get(source, 0) + int(seqs[sources == source].sum())
            self.kinds.update(events.kind_counts())
            return
        for event in events:
            sums[event.source] = sums.get(event.source, 0) + event.seq
        self.kinds.update(map(_KIND, events))

    def capture(self) -> TopicTallyPart:
        """The tally as a part of an epoch."""
        return TopicTallyPart(
            records=self.records, seq_sums=dict(self.seq_sums), kinds=dict(self.kinds)
        )

    def restore(self, state: TopicTallyPart) -> None:
        """Replace the tally with a part of an epoch."""
        self.records = state.records
        self.seq_sums = dict(state.seq_sums)
        self.kinds = Counter(state.kinds)

    def statistics(self) -> TopicTallyStatistics:
        """Return a snapshot of the counts."""
        return TopicTallyStatistics(
            records=self.records, sources=len(self.seq_sums), kinds=dict(self.kinds)
        )

    def summary(self) -> TopicSummary:
        """What a producer instance says it sent, as gateways pass it on."""
        return TopicSummary(self.records, list(self.seq_sums.items()), dict(self.kinds))

    @classmethod
    def merged(cls, summaries: Iterable[Any]) -> TopicTally:
        """The sum of the summaries of the producers of one topic (as :meth:`summary` gave
        them, or as they came over the wire).

        Raises:
            msgspec.ValidationError: A summary is not one.
        """
        tally = cls()
        for summary in summaries:
            checked = msgspec.convert(summary, TopicSummary)
            tally.records += checked.records
            for source, total in checked.seq_sums:
                tally.seq_sums[source] = tally.seq_sums.get(source, 0) + total
            tally.kinds.update(checked.kinds)
        return tally


@attrs.frozen
class ConsumerTallyStatistics:
    """A snapshot of a :class:`ConsumerTally`."""

    name: str
    """The consumer's name."""
    records: int
    """Records processed, over all its topics."""
    per_topic: dict[str, int]
    """Records processed per topic."""
    order_violations: int
    """Events that arrived out of the order they were made in, or twice, or whose key was
    seen in two partitions (0 unless the order is checked)."""
    first_violation: str | None
    """What the first of those was; None when there was none."""
    strangers: dict[str, int]
    """Per topic, records whose source is no producer instance of this topology."""
    latency_samples: int
    """Records whose latency was measured (one in :data:`LATENCY_SAMPLE_EVERY`)."""


@attrs.define(eq=False)
class ConsumerTally:
    """What one consumer has processed: counts, checks, and a latency sample.

    The order check is per key and producer instance: events of one key from one instance
    must arrive in the order they were made, each once. It is done a batch at a time: within
    a partition, each instance's sequence numbers must rise strictly, and each key must be in
    its own partition (``stable_hash(key) % partitions``), so in one only; together these
    imply per-key order. Nothing is kept per key: the check takes the same memory whatever
    the number of keys. Records without a key are spread round robin, so only the first part
    applies to them: within each partition, each instance's records arrive in the order
    made, each once.
    """

    name: str
    topics: tuple[str, ...]
    sources: int
    check_order: bool
    records: int = 0
    per_topic: dict[str, int] = attrs.field(factory=dict)
    seq_sums: dict[str, list[int]] = attrs.field(factory=dict)
    order_violations: int = 0
    strangers: dict[str, int] = attrs.field(factory=dict)
    """Per topic, records whose source is no producer instance of this topology."""
    first_violation: str | None = None
    latency: Counter[int] = attrs.field(factory=Counter)
    partitions: dict[str, int] = attrs.field(factory=dict)
    """Per topic, its number of partitions: the per-key check of a topic left out is only
    that of each source's order within a partition."""
    _last_seq: dict[tuple[str, int], list[int]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for topic in self.topics:
            self.per_topic[topic] = 0
            self.seq_sums[topic] = [0] * self.sources

    def observe(self, topic: str, batch: RecordBatch, now: float) -> None:
        """Account for a batch about to be processed."""
        if isinstance(batch.values, Table):
            self._observe_table(topic, batch, batch.values, now)
            return
        partition, events = batch.partition, batch.values
        count = len(events)
        self.records += count
        self.per_topic[topic] += count
        seqs = list(map(_SEQ, events))
        sources = set(map(_SOURCE, events))
        if max(sources) >= self.sources:  # sent through a gateway by no producer of ours
            self.strangers[topic] = self.strangers.get(topic, 0) + count
            return
        if len(sources) == 1:
            (source,) = sources
            self.seq_sums[topic][source] += sum(seqs)
            if self.check_order:
                last = self._last_seq.get((topic, partition))
                if last is None:
                    last = self._last_seq[topic, partition] = [-1] * self.sources
                if seqs[0] <= last[source] or not all(map(operator.lt, seqs, seqs[1:])):
                    self._out_of_order(topic, batch)
                else:
                    last[source] = seqs[-1]
                self._check_keys(topic, batch)
        else:
            for event in events:
                self.seq_sums[topic][event.source] += event.seq
            if self.check_order:
                self._out_of_order(topic, batch)
                self._check_keys(topic, batch)
        latency = self.latency
        for timestamp in batch.timestamps[::LATENCY_SAMPLE_EVERY]:
            latency[int((now - timestamp) * LATENCY_RESOLUTION)] += 1

    def _observe_table(self, topic: str, batch: RecordBatch, events: Table, now: float) -> None:
        # The same accounting as for a list, on the columns: no Python step per event.
        count = len(events)
        self.records += count
        self.per_topic[topic] += count
        if not count:
            return
        seqs, sources = events.columns["seq"], events.columns["source"]
        if int(sources.max()) >= self.sources:
            self.strangers[topic] = self.strangers.get(topic, 0) + count
            return
        first = int(sources[0])
        if (sources == first).all():
            runs = [(first, seqs)]
        else:
            runs = [(int(s), seqs[sources == s]) for s in np.unique(sources).tolist()]
        sums = self.seq_sums[topic]
        for source, run in runs:
            sums[source] += int(run.sum())
        if self.check_order:
            last = self._last_seq.get((topic, batch.partition))
            if last is None:
                last = self._last_seq[topic, batch.partition] = [-1] * self.sources
            if all(run[0] > last[s] and (run[1:] > run[:-1]).all() for s, run in runs):
                for source, run in runs:
                    last[source] = int(run[-1])
            else:
                self._out_of_order(topic, batch)
            self._check_keys(topic, batch)
        stamps = np.asarray(batch.timestamps)[::LATENCY_SAMPLE_EVERY]
        self.latency.update(((now - stamps) * LATENCY_RESOLUTION).astype(np.int64).tolist())

    def _out_of_order(self, topic: str, batch: RecordBatch) -> None:
        # The slow path: find exactly which events broke the order.
        last = self._last_seq.setdefault((topic, batch.partition), [-1] * self.sources)
        for key, event in zip(as_list(batch.keys), batch.values, strict=True):
            if event.seq <= last[event.source]:
                self._violation(
                    f"topic {topic!r}, key {key!r}: event {event.seq} of source "
                    f"{event.source} came after event {last[event.source]}"
                )
            else:
                last[event.source] = event.seq

    def _check_keys(self, topic: str, batch: RecordBatch) -> None:
        count = self.partitions.get(topic)
        if count is None:
            return
        partition = batch.partition
        keys: Any = batch.keys
        if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
            if not len(keys):
                return
            wrong = keys[partitions_of(keys.astype(np.int64), count) != partition]
            elsewhere = np.unique(wrong).tolist() if len(wrong) else []
        else:  # None: spread round robin, so no per-key order to keep
            distinct = set(as_list(keys)) - {None}
            elsewhere = [k for k in distinct if stable_hash(k) % count != partition]
        for key in elsewhere:
            self._violation(
                f"topic {topic!r}, key {key!r}: in partition {partition}, not in its own "
                f"({stable_hash(key) % count} of {count}), so its events may have lost "
                "their order"
            )

    def _violation(self, message: str) -> None:
        self.order_violations += 1
        if self.first_violation is None:
            self.first_violation = message

    def statistics(self) -> ConsumerTallyStatistics:
        """Return a snapshot of the counts and checks."""
        return ConsumerTallyStatistics(
            name=self.name,
            records=self.records,
            per_topic=dict(self.per_topic),
            order_violations=self.order_violations,
            first_violation=self.first_violation,
            strangers=dict(self.strangers),
            latency_samples=self.latency.total(),
        )

    def capture(self) -> ConsumerTallyPart:
        """The tally as a part of an epoch."""
        return ConsumerTallyPart(
            records=self.records,
            per_topic=dict(self.per_topic),
            seq_sums={t: list(sums) for t, sums in self.seq_sums.items()},
            order_violations=self.order_violations,
            first_violation=self.first_violation,
            strangers=dict(self.strangers),
            latency=list(self.latency.items()),
            last_seq=[(t, p, list(last)) for (t, p), last in self._last_seq.items()],
            key_partition={},
        )

    def restore(self, state: ConsumerTallyPart) -> None:
        """Replace the tally with a part of an epoch."""
        self.records = state.records
        self.per_topic = dict(state.per_topic)
        self.seq_sums = {t: list(sums) for t, sums in state.seq_sums.items()}
        self.order_violations, self.first_violation = state.order_violations, state.first_violation
        self.strangers = dict(state.strangers)
        self.latency = Counter(dict(state.latency))
        self._last_seq = {(t, p): list(last) for t, p, last in state.last_seq}


@attrs.frozen
class Expectation:
    """The result of one ``expect`` invariant."""

    name: str
    ok: bool
    detail: str


def check_expectations(
    expect: ExpectSpec,
    tallies: Mapping[str, ConsumerTally],
    produced: Mapping[str, TopicTally],
    processors: Mapping[str, Processor],
) -> list[Expectation]:
    """Check the ``expect`` invariants: what each consumer processed (``tallies``, by
    consumer) against what producers sent to each topic (``produced``), and each processor's
    totals against the producers' counts."""
    results: list[Expectation] = []
    if not tallies:  # a node with no consumers: checked where they run
        return results
    if expect.no_loss:
        results.append(_check_no_loss(tallies, produced))
    if expect.per_key_order:
        bad = [t for t in tallies.values() if t.order_violations]
        detail = "; ".join(
            f"{t.name}: {t.order_violations} out of order, first: {t.first_violation}" for t in bad
        )
        results.append(
            Expectation(
                "per_key_order", not bad, detail or "every key's events arrived in the order sent"
            )
        )
    if expect.totals_match:
        results.append(_check_totals(tallies, produced, processors))
    return results


def _check_no_loss(
    tallies: Mapping[str, ConsumerTally], produced: Mapping[str, TopicTally]
) -> Expectation:
    problems = []
    for name, tally in tallies.items():
        for topic in tally.topics:
            sent = produced[topic]
            got = tally.per_topic[topic]
            strangers = tally.strangers.get(topic, 0)
            if strangers:
                problems.append(
                    f"{name} processed {strangers:,} records of topic {topic!r} whose "
                    "source is no producer of this topology"
                )
                continue
            sums = {s: v for s, v in enumerate(tally.seq_sums[topic]) if v}
            expected = {s: v for s, v in sent.seq_sums.items() if v}
            if got != sent.records:
                problems.append(
                    f"{name} processed {got:,} records of topic {topic!r}, "
                    f"producers sent {sent.records:,}"
                )
            elif sums != expected:
                problems.append(
                    f"{name} processed as many records of topic {topic!r} as "
                    "were sent, but not the same ones (some lost, some twice)"
                )
    return Expectation(
        "no_loss",
        not problems,
        "; ".join(problems) or "every consumer processed every record once",
    )


def _check_totals(
    tallies: Mapping[str, ConsumerTally],
    produced: Mapping[str, TopicTally],
    processors: Mapping[str, Processor],
) -> Expectation:
    problems = []
    for name, processor in processors.items():
        expected: Counter[str] = Counter()
        for topic in tallies[name].topics:
            expected.update(produced[topic].kinds)
        totals = processor.totals()
        kinds = set(totals)
        if isinstance(processor, Sink):  # it takes every kind: one it has none of is missing
            kinds.update(expected)
        for kind in sorted(kinds):
            count = totals.get(kind, 0)
            if count != expected.get(kind, 0):
                problems.append(
                    f"{name}: {kind} totals {count:,}, producers reported {expected.get(kind, 0):,}"
                )
    return Expectation(
        "totals_match",
        not problems,
        "; ".join(problems) or "every processor's totals equal the producers' counts",
    )
