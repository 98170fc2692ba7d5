"""What a topology can name: workloads and processors, registered by the layer above."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import msgspec

from actors import Columns, RecordBatch

from .convert import converter, describe_errors
from .crosscheck import order_problems, remote_output_problems
from .folder import FileAnnounced
from .schema import Topology
from .sections import BreakerSpec, ConsumerSpec, RetrySpec


@runtime_checkable
class Event(Protocol):
    """What a pipeline reads of every event a workload generates; the rest is the processors'.

    A producer stamps each record with the event's :attr:`timestamp`; the tallies of a run sum
    :attr:`seq` per :attr:`source` to prove that nothing was lost or counted twice, check that
    each source's events arrive in order, and count events per :attr:`kind` to compare with
    the processors' totals. Event types are usually frozen msgspec structs (they cross
    gateways and checkpoints), and :attr:`kind` may be a class variable of a type that has
    one kind only.
    """

    @property
    def seq(self) -> int:
        """The event's position in its source's sequence: 0, 1, 2... with no gap."""
        ...

    @property
    def source(self) -> int:
        """The producer instance that generated it, unique over the topology's instances."""
        ...

    @property
    def kind(self) -> str:
        """What happened (``view``, ``click``...), as the processors' totals count it."""
        ...

    @property
    def timestamp(self) -> float:
        """Event time, in seconds of the run's clock."""
        ...


class State(msgspec.Struct, frozen=True, kw_only=True, tag_field="v", forbid_unknown_fields=True):
    """What a processor keeps, or where a workload is, as an epoch saves it.

    Each processor and workload declares a subclass as its ``state_type``, with the version
    of its layout as its tag: ``class CountsState(State, frozen=True, tag=1)``. It is encoded
    as a map of its field names and that version ``v``, and decoded strictly as the declared
    type: a map that says another version, lacks a field, or has a field unknown to it or of
    another type is refused (the epoch holding it cannot be restored), never misread. A new
    layout is a new subclass with the next version; the epochs of the old one are then
    refused. A ``__post_init__`` that raises ``ValueError`` refuses what types alone cannot
    (columns that must be as long as each other).
    """


class Workload(Protocol):
    """Generates the events (each an :class:`Event`) of one producer instance, reproducibly
    from its random source.

    The events a workload generates depend only on its random source and on how many it has
    generated before, never on how they are split into calls: generating 10 then 90 events
    gives the same 100 events as generating 100 at once.
    """

    def generate(self, count: int, start: float, interval: float) -> Mapping[str, Sequence[Any]]:
        """Return the next ``count`` events, grouped by stream: per stream a list of events,
        or for speed a :class:`~actors.Table` of them (one numpy array per field).

        Args:
            count: How many events.
            start: The event time of the first one, in seconds.
            interval: Seconds between consecutive events.
        """
        ...

    def counts(self) -> dict[str, int]:
        """Return how many events of each kind were generated so far."""
        ...

    def position(self) -> State:
        """Return where the workload is (for checkpoints), as its type's ``state_type``.

        It shares nothing mutable with the workload: what comes next does not change it.
        """
        ...

    def restore(self, position: Any) -> None:
        """Carry on from a :meth:`position` (an instance of its type's ``state_type``): the
        next events are those that would have come."""
        ...


class Processor(Protocol):
    """Aggregates the records a consumer reads; one per consumer, shared by its instances.

    Aggregates must not depend on the order in which partitions are served: sum integers, and
    break ties in rankings by key.

    A processor may also have ``process_columns(table)``, which folds a batch whose values are
    a :class:`~actors.Table` (one numpy array per field) with no Python step per event: a
    consumer then hands it every table, and lists of events to :meth:`process`. Either may be
    the only one a processor really implements: ``process`` of a table sees events built
    from its rows.
    """

    def process(self, events: Sequence[Event]) -> None:
        """Fold a batch of events (the values of the records read) into the aggregates."""
        ...

    def result(self) -> dict[str, Any]:
        """Return the aggregates as plain JSON data."""
        ...

    def totals(self) -> dict[str, int]:
        """Return the number of events per kind that the aggregates account for."""
        ...

    def snapshot(self) -> State:
        """Return the whole state (for checkpoints), as its type's ``state_type``.

        It shares nothing mutable with the processor: processing more does not change it.
        """
        ...

    def restore(self, state: Any) -> None:
        """Replace the state with a :meth:`snapshot` (an instance of its type's
        ``state_type``); the processor does not keep a reference to ``state``."""
        ...


@attrs.frozen
class SinkContext:
    """What a sink learns when its run starts (see :class:`Sink`)."""

    consumer: str
    """The consumer's name."""
    topics: Mapping[str, tuple[type, ...]]
    """The topics the consumer reads, with the event types each carries."""
    state: Path | None
    """The run's state folder, where an embedded store keeps its data; None: no folder was
    given (the sink picks its own default)."""
    ends: Mapping[tuple[str, int], int] = attrs.field(factory=dict)
    """By (topic, partition), the offset the partition's ring ends at as the run starts
    (restored from an epoch, or 0): a record the sink wrote at this offset or beyond before
    a crash belonged to no epoch, and the offset now belongs to another record (partitions
    on other nodes are not here)."""


@runtime_checkable
class Sink(Processor, Protocol):
    """A processor that writes what it consumes to another system (ClickHouse...).

    Its consumer awaits :meth:`write` with the batches it reads (every batch ready at once)
    before committing them: a batch is committed only once the sink has it. After a crash,
    the batches since the last epoch are written again, so a sink makes writing a batch
    twice harmless (deduplicating by topic, partition and offset). :meth:`process` is not
    called; :meth:`totals` counts what was written, as an epoch keeps it.

    :meth:`write` raises :class:`~actors.TransientError` for what retrying may cure and
    :class:`~actors.PermanentError` for a batch the other system refuses (see
    :mod:`topology.delivering`). A sink with ``one_batch_per_write = True`` is handed one
    batch per call.
    """

    @property
    def linger(self) -> float:
        """Seconds between the starts of two writes at least: records gather meanwhile
        (0: write as soon as a batch is ready)."""
        ...

    def opened(self, context: SinkContext) -> AbstractAsyncContextManager[None]:
        """Connect for the run (create tables...); leaving the block disconnects."""
        ...

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        """Store every record of ``batches`` (of one topic; values may be events or
        tables), all of them before returning."""
        ...


class Write(Protocol):
    """Writes records a processor made to its consumer's ``output`` topic, all in one step,
    and calls ``settled`` in that step (see :meth:`~topology.forwarding.Output.write`);
    ``letters``, dead letters of input it set aside (bad lines), enter the consumer's
    dead-letter topic in the same step (their ``consumer`` is filled in)."""

    async def __call__(
        self, columns: Columns, settled: Callable[[], None], letters: Sequence[Any] = ()
    ) -> None: ...


@runtime_checkable
class Worker(Processor, Protocol):
    """A processor that works on each record at length (a file read in chunks), writing
    what it makes to its consumer's ``output`` topic as it goes.

    Its consumer awaits :meth:`work` with every batch it reads. The processor commits each
    record itself, with ``commit(offset)`` (the offset just past it), in the same step as
    its last write for it: so an epoch holds a record either uncommitted with the
    processor's progress on it, or committed and done. :meth:`process` is not called.
    """

    async def work(self, batch: RecordBatch, write: Write, commit: Callable[[int], None]) -> None:
        """Work on every record of ``batch``, writing with ``write``, committing with
        ``commit``."""
        ...


@attrs.frozen
class WorkloadType:
    """A workload a topology can name in ``producers.NAME.workload``."""

    name: str
    description: str
    params: type
    """An attrs class of the workload's settings, filled from ``params`` in the file."""
    streams: tuple[str, ...]
    """The streams the workload writes; each goes to a topic."""
    make: Callable[[Any, int, str, int, int], Workload]
    """Build an instance from (params, run seed, producer name, instance number, source).

    Its randomness comes from the seed, the name and the instance number; every event carries
    ``source``, a number unique over all producer instances of the topology."""
    event_types: Mapping[str, tuple[type[Event], ...]]
    """The event classes each stream produces (msgspec structs with tags, each an
    :class:`Event`): what a processor reading the stream's topic must accept, and how
    checkpoints and the wire decode them."""
    state_type: type[State]
    """What the workload's :meth:`~Workload.position` gives: a checkpoint's producer part
    decodes its position as this type, and refuses one of any other shape or version."""


@attrs.frozen
class ProcessorType:
    """A processor a topology can name in ``consumers.NAME.processor``."""

    name: str
    description: str
    params: type
    """An attrs class of the processor's settings, filled from ``params`` in the file."""
    make: Callable[[Any], Processor]
    """Build an instance from its params."""
    accepts: tuple[type[Event], ...] | None
    """The event classes it can fold: every topic it reads must carry only these (None:
    any)."""
    state_type: type[State]
    """What the processor's :meth:`~Processor.snapshot` gives: a checkpoint's processor part
    decodes as this type, and is refused if it has any other shape or version."""
    writes: tuple[type[Event], ...] | Literal["input"] | None = None
    """What it writes to its consumer's ``output`` topic: these event classes, or
    ``"input"`` for the events it reads (a relay); None: it writes to no topic."""
    reads_durable: bool = False
    """Whether its consumer reads only records an epoch holds (in a run that writes
    epochs): then an offset names the same record after any restart, and a sink may keep
    offsets in its own system to skip what it applied before (``usage_totals``)."""
    resumable: frozenset[str] = frozenset()
    """Params a run resumed from its checkpoints may give otherwise: they change how it
    works, not what its state means (``usage_parser``'s ``max_keys``, ``on_bad_line``)."""


@attrs.frozen
class Registry:
    """The workloads and processors a topology may name."""

    workloads: Mapping[str, WorkloadType]
    processors: Mapping[str, ProcessorType]
    events: Mapping[str, type[Event]] = attrs.field(factory=dict)
    """The event types clients may send over HTTP, by kind (each type's msgspec tag):
    ``http.routes`` in a topology names these."""

    def writers(self, topology: Topology) -> dict[str, list[tuple[str, tuple[type, ...]]]]:
        """Per topic, who writes to it (``workload 'ugc' (producer 'site')``, ``the HTTP
        API``) and the event types each writes; unknown names are left out."""
        found: dict[str, list[tuple[str, tuple[type, ...]]]] = {}
        for producer_name, producer in topology.producers.items():
            if producer.files is not None and producer.topic is not None:
                found.setdefault(producer.topic, []).append(
                    (f"the files of producer {producer_name!r}", (FileAnnounced,))
                )
                continue
            workload = self.workloads.get(producer.workload or "")
            if workload is None:
                continue
            for stream in workload.streams:
                topic = producer.topic if producer.topic else producer.topics.get(stream)
                if topic is None:
                    continue
                found.setdefault(topic, []).append(
                    (
                        f"workload {workload.name!r} (producer {producer_name!r})",
                        tuple(workload.event_types.get(stream, ())),
                    )
                )
        if topology.http is not None:
            for kind, topic in topology.http.routes.items():
                event_type = self.events.get(kind)
                if event_type is not None:
                    found.setdefault(topic, []).append(
                        (f"the HTTP API (kind {kind!r})", (event_type,))
                    )
        for topic, entries in self._outputs(topology, found).items():
            found.setdefault(topic, []).extend(entries)
        return found

    def _outputs(
        self, topology: Topology, found: Mapping[str, list[tuple[str, tuple[type, ...]]]]
    ) -> dict[str, list[tuple[str, tuple[type, ...]]]]:
        # Per topic, the consumers writing to it as their output and what they write: a
        # relay writes what reaches the topics it reads, perhaps through other relays.
        written: dict[str, tuple[str, tuple[str, tuple[type, ...]]]] = {}
        for _ in range(len(topology.consumers) + 1):  # until nothing more reaches a topic
            changed = False
            for name, consumer in topology.consumers.items():
                kind = self.processors.get(consumer.processor)
                if kind is None or kind.writes is None or consumer.output is None:
                    continue
                types: tuple[type, ...] = ()
                if kind.writes == "input":
                    for topic in consumer.topic_names:
                        sources = [*found.get(topic, []), *_entries(written, topic)]
                        for _, carried in sources:
                            types += tuple(t for t in carried if t not in types)
                else:
                    types = kind.writes
                entry = (consumer.output, (f"consumer {name!r}", types))
                changed |= written.get(name) != entry
                written[name] = entry
            if not changed:
                break
        outputs: dict[str, list[tuple[str, tuple[type, ...]]]] = {}
        for topic, (writer, types) in written.values():
            outputs.setdefault(topic, []).append((writer, types))
        return outputs

    def sink_consumers(self, topology: Topology) -> set[str]:
        """The consumers whose processor is a sink (making one opens nothing); consumers
        with an unknown processor or wrong params are left out."""
        found = set()
        for name, consumer in topology.consumers.items():
            kind = self.processors.get(consumer.processor)
            if kind is None or _check_params(kind.params, consumer.params, ""):
                continue
            if isinstance(kind.make(self.processor_params(topology, name)), Sink):
                found.add(name)
        return found

    def check(self, topology: Topology) -> list[str]:
        """Return every problem with names and params in ``topology``; empty when it is fine."""
        problems: list[str] = []
        for name, producer in topology.producers.items():
            path = f"$.producers.{name}"
            if producer.files is not None:
                continue  # a folder, checked with the file
            workload = self.workloads.get(producer.workload or "")
            if workload is None:
                problems.append(
                    f"{path}.workload: unknown workload {producer.workload!r}; "
                    f"known: {', '.join(sorted(self.workloads))}"
                )
                continue
            problems.extend(_check_params(workload.params, producer.params, f"{path}.params"))
            if producer.topics:
                missing = set(workload.streams) - set(producer.topics)
                extra = set(producer.topics) - set(workload.streams)
                if missing:
                    problems.append(
                        f"{path}.topics: no topic for stream{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(sorted(missing))} of workload {workload.name!r}"
                    )
                if extra:
                    problems.append(
                        f"{path}.topics: workload {workload.name!r} has no stream "
                        f"{', '.join(sorted(extra))}; its streams are {', '.join(workload.streams)}"
                    )
            problems.extend(_check_keys(topology, producer.topic, producer.topics, workload))
        for name, consumer in topology.consumers.items():
            path = f"$.consumers.{name}"
            processor = self.processors.get(consumer.processor)
            if processor is None:
                problems.append(
                    f"{path}.processor: unknown processor {consumer.processor!r}; "
                    f"known: {', '.join(sorted(self.processors))}"
                )
                continue
            wrong = _check_params(processor.params, consumer.params, f"{path}.params")
            problems.extend(wrong)
            made = None if wrong else processor.make(self.processor_params(topology, name))
            simulated = topology.clock == "virtual" and topology.http is None
            if isinstance(made, Sink) and simulated and not topology.nodes:
                problems.append(
                    f"{path}.processor: processor {processor.name!r} writes to another "
                    "system, whose answers take real seconds: on the simulated clock "
                    "(clock: virtual) its attempts would time out at once; set clock: real"
                )
            problems.extend(_check_output(name, consumer.output, processor))
            if processor.writes is not None:
                relay, where = processor.writes == "input", (topology.topics, topology.nodes)
                problems.extend(remote_output_problems(name, consumer, *where, passes_on=relay))
            most = getattr(getattr(made, "params", None), "max_keys", None)
            room = topology.topics.get(consumer.output or "")
            capacity = None if room is None else room.ring_capacity
            if most is not None and capacity is not None and capacity < most:
                problems.append(
                    f"{path}.params.max_keys: {most:,} records may be written at once to one "
                    f"partition of {consumer.output!r}, whose capacity is {capacity:,}; make "
                    "max_keys at most the capacity"
                )
            if made is not None and not isinstance(made, Sink):
                for field, default in (("retry", RetrySpec()), ("breaker", BreakerSpec())):
                    if getattr(consumer, field) != default:
                        problems.append(
                            f"{path}.{field}: processor {processor.name!r} writes to no "
                            f"other system, so nothing of it is retried; drop {field} (it is "
                            "for sinks: clickhouse, webhook, redis_stream, usage_totals)"
                        )
            if topology.expect.per_key_order:
                problems.extend(
                    order_problems(
                        name,
                        topics=topology.topics,
                        producers=topology.producers,
                        consumers=topology.consumers,
                        http=topology.http,
                        passes_on=processor.writes == "input",
                    )
                )
            problems.extend(_check_dead_letter(path, consumer, processor, made))
            problems.extend(self._check_events(topology, name, processor))
        problems.extend(self._check_http(topology))
        return problems

    def _check_events(self, topology: Topology, name: str, processor: ProcessorType) -> list[str]:
        """Every event a consumer's topics carry must be one its processor accepts."""
        problems: list[str] = []
        if processor.accepts is None:  # any event
            return problems
        consumer = topology.consumers[name]
        writers = self.writers(topology)
        for topic in consumer.topic_names:
            for writer, types in writers.get(topic, []):
                refused = [t for t in types if t not in processor.accepts]
                if not refused:
                    continue
                names = ", ".join(t.__name__ for t in refused)
                fitting = sorted(
                    other.name
                    for other in self.processors.values()
                    if other.accepts is not None and all(t in other.accepts for t in refused)
                )
                problems.append(
                    f"$.consumers.{name}.processor: processor {processor.name!r} accepts "
                    f"{', '.join(t.__name__ for t in processor.accepts)} events, but topic "
                    f"{topic!r} carries {names} events from {writer}; use a processor that "
                    "accepts them"
                    + (f" ({', '.join(fitting)})" if fitting else "")
                    + " or read another topic"
                )
        return problems

    def _check_http(self, topology: Topology) -> list[str]:
        """Routes name known kinds, and a route's topic key is a field of its events."""
        problems: list[str] = []
        if topology.http is None:
            return problems
        for kind, topic in topology.http.routes.items():
            event_type = self.events.get(kind)
            if event_type is None:
                problems.append(
                    f"$.http.routes.{kind}: unknown event kind {kind!r}; "
                    f"known: {', '.join(sorted(self.events)) or 'none'}"
                )
                continue
            spec = topology.topics.get(topic)
            fields = _fields_of(event_type)
            if spec is not None and spec.key and fields is not None and spec.key not in fields:
                problems.append(
                    f"$.topics.{topic}.key: {event_type.__name__} events (kind {kind!r}) "
                    f"have no field {spec.key!r}; their fields are {', '.join(fields)}"
                )
        return problems

    def workload_params(self, topology: Topology, producer: str) -> Any:
        """Return the structured params of a producer's workload (already checked)."""
        spec = topology.producers[producer]
        assert spec.workload is not None, f"producer {producer!r} has no workload"
        return converter.structure(spec.params, self.workloads[spec.workload].params)

    def processor_params(self, topology: Topology, consumer: str) -> Any:
        """Return the structured params of a consumer's processor (already checked)."""
        spec = topology.consumers[consumer]
        return converter.structure(spec.params, self.processors[spec.processor].params)


def _entries(
    written: Mapping[str, tuple[str, tuple[str, tuple[type, ...]]]], topic: str
) -> list[tuple[str, tuple[type, ...]]]:
    return [entry for target, entry in written.values() if target == topic]


def _check_output(name: str, output: str | None, processor: ProcessorType) -> list[str]:
    """A processor that writes records has an ``output`` topic, and only such a one."""
    if processor.writes is not None and output is None:
        return [
            f"$.consumers.{name}.output: processor {processor.name!r} writes records to a "
            "topic; name it here (output: TOPIC)"
        ]
    if processor.writes is None and output is not None:
        return [
            f"$.consumers.{name}.output: processor {processor.name!r} writes no records; "
            "drop 'output', or use a processor that writes to a topic (topic)"
        ]
    return []


def _check_dead_letter(
    path: str, consumer: ConsumerSpec, processor: ProcessorType, made: Processor | None
) -> list[str]:
    """A ``dead_letter`` topic is for sinks, and for processors that set bad input aside
    (``on_bad_line: dead_letter``), which need one."""
    letters = getattr(getattr(made, "params", None), "on_bad_line", None) == "dead_letter"
    if letters and consumer.dead_letter is None:
        return [
            f"{path}.params.on_bad_line: dead_letter needs a dead-letter topic: name one in "
            f"{path}.dead_letter (and declare it under topics, with a capacity)"
        ]
    if consumer.dead_letter is None or letters:
        return []
    if processor.writes is not None:
        bad_input = (
            "; or set params.on_bad_line: dead_letter"
            if made and hasattr(getattr(made, "params", None), "on_bad_line")
            else ""
        )
        return [
            f"{path}.dead_letter: processor {processor.name!r} writes to topic "
            f"{consumer.output!r}, which holds it back while full and never refuses a "
            f"record; drop dead_letter{bad_input}"
        ]
    if made is not None and not isinstance(made, Sink):
        return [
            f"{path}.dead_letter: processor {processor.name!r} folds the events "
            "into aggregates, and dead letters are records a sink could not "
            "deliver to another system; drop dead_letter (an exception in a "
            "processor rolls the run back to its newest epoch)"
        ]
    return []


def _check_params(kind: type, params: dict[str, Any], path: str) -> list[str]:
    try:
        converter.structure(params, kind)
    except Exception as exc:
        return describe_errors(exc, path)
    return []


def _fields_of(event_type: type) -> tuple[str, ...] | None:
    # The fields of an event type (a msgspec struct or an attrs class); None if unknown.
    fields = getattr(event_type, "__struct_fields__", None)
    if fields is not None:
        return tuple(fields)
    if attrs.has(event_type):
        return tuple(field.name for field in attrs.fields(event_type))
    return None


def _check_keys(
    topology: Topology, topic: str | None, topics: Mapping[str, str], workload: WorkloadType
) -> list[str]:
    """A topic's ``key`` must be a field of every event written to it: it is read from each."""
    problems = []
    for stream in workload.streams:
        target = topic if topic else topics.get(stream)
        spec = topology.topics.get(target or "")
        if spec is None or not spec.key:
            continue
        for event_type in workload.event_types.get(stream, ()):
            fields = _fields_of(event_type)
            if fields is not None and spec.key not in fields:
                problems.append(
                    f"$.topics.{target}.key: {event_type.__name__} events of workload "
                    f"{workload.name!r} have no field {spec.key!r}; their fields are "
                    f"{', '.join(fields)}"
                )
    return problems
