"""The schema of a topology file: attrs classes, converted and validated with cattrs."""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import cattrs
import yaml
from cattrs.errors import ForbiddenExtraKeysError

from .errors import FieldError, TopologyError, raise_field_errors
from .limits import (
    MAX_BATCH,
    MAX_BATCH_WHY,
    MAX_EVENTS,
    MAX_EVENTS_WHY,
    MAX_INSTANCES,
    MAX_INSTANCES_WHY,
    MAX_MESSAGE_SIZE,
    MAX_MESSAGE_SIZE_WHY,
    MAX_PARTITIONS,
    MAX_PARTITIONS_WHY,
    MAX_RING_RECORDS,
    MAX_RING_RECORDS_WHY,
    limit_problem,
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


Check = Callable[[Any, "attrs.Attribute[Any]", Any], None]
"""A check of one field's value: raises :exc:`FieldError` when the value is wrong."""


def _at_least(low: float) -> Check:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value < low:
            raise FieldError(attribute.name, f"must be >= {low:g}, got {value}")

    return check


def _at_most(high: int, what: str, why: str) -> Check:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        problem = None if value is None else limit_problem(value, high, what, why)
        if problem is not None:
            raise FieldError(attribute.name, problem)

    return check


def _positive(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise FieldError(attribute.name, f"must be > 0, got {value}")


def _optional_name(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not NAME.match(value):
        raise FieldError(
            attribute.name,
            f"{value!r} is not a valid name: use letters, digits, '_', '-' and '.', "
            "at most 64, starting with a letter or digit",
        )


def _capacity(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value != "dynamic" and isinstance(value, int) and value < 1:
        raise FieldError(attribute.name, f"must be >= 1 or 'dynamic', got {value}")


def checks(*run: Check) -> dict[str, Any]:
    """Field metadata naming the checks of a field of a :class:`Checked` class.

    Unlike attrs validators, which stop at the first value that is wrong, every check of every
    field runs, so a block with several problems has all of them reported at once.
    """
    return {"checks": run}


class Checked:
    """A mixin for attrs classes of a topology file: checks every field, reports every problem.

    Fields name their checks with :func:`checks`; a class adds checks across its fields by
    overriding :meth:`problems`. After ``__init__`` every check runs, and all the problems
    found are raised at once (see :func:`raise_field_errors`).
    """

    __slots__ = ()

    def __attrs_post_init__(self) -> None:
        errors = []
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]
            for check in field.metadata.get("checks", ()):
                try:
                    check(self, field, getattr(self, field.name))
                except FieldError as error:
                    errors.append(error)
        errors.extend(self.problems())
        raise_field_errors(errors)

    def problems(self) -> list[FieldError]:
        """Return the problems across fields (values that are wrong alone are already
        reported: skip them here)."""
        return []


@attrs.frozen
class TopicSpec(Checked):
    """A topic: ``topics.NAME`` in the file."""

    partitions: int = attrs.field(
        default=1,
        metadata=checks(
            _at_least(1), _at_most(MAX_PARTITIONS, "partitions per topic", MAX_PARTITIONS_WHY)
        ),
    )
    """How many partitions; records with the same key always share one."""
    capacity: int | Literal["dynamic"] = attrs.field(default=10_000, metadata=checks(_capacity))
    """Records each partition's ring holds at once; ``dynamic`` grows without bound but blocks
    producers while no consumer is attached."""
    key: str | None = None
    """The field of each event used as the record key; None spreads records round robin."""
    retention: int = attrs.field(default=0, metadata=checks(_at_least(0)))
    """Records kept after every group has committed them (readable by late readers)."""
    allow_unconsumed: bool = False
    """Let no consumer of the topology read this topic (only taps do). Without it such a topic
    is refused: its producers would block for good once its rings are full."""

    @property
    def ring_capacity(self) -> int | None:
        """The capacity to give partitions: None in dynamic mode."""
        return None if self.capacity == "dynamic" else self.capacity

    @property
    def ring_records(self) -> int:
        """The most records the topic's rings hold at once; for dynamic rings, which grow as
        far as consumers lag, only what retention keeps."""
        return self.partitions * ((self.ring_capacity or 0) + self.retention)


@attrs.frozen
class ProducerSpec(Checked):
    """A producer: ``producers.NAME`` in the file."""

    workload: str
    """The workload's name, such as ``video_site`` or ``ugc``."""
    topic: str | None = None
    """The topic every stream of the workload goes to."""
    topics: dict[str, str] = attrs.field(factory=dict)
    """Topic per stream of the workload (``{click: clicks, ...}``), instead of ``topic``."""
    instances: int = attrs.field(
        default=1,
        metadata=checks(_at_least(1), _at_most(MAX_INSTANCES, "instances", MAX_INSTANCES_WHY)),
    )
    """How many copies run; events and rate are split evenly among them."""
    rate: float | None = attrs.field(default=None, metadata=checks(_positive))
    """Events per simulated second over all instances; None produces as fast as possible."""
    events: int | None = attrs.field(
        default=None,
        metadata=checks(_at_least(0), _at_most(MAX_EVENTS, "events", MAX_EVENTS_WHY)),
    )
    """How many events in total over all instances."""
    duration: float | None = attrs.field(default=None, metadata=checks(_positive))
    """Simulated seconds to produce for, at ``rate``, instead of ``events``."""
    max_batch: int = attrs.field(
        default=1000,
        metadata=checks(_at_least(1), _at_most(MAX_BATCH, "records per batch", MAX_BATCH_WHY)),
    )
    """The most records per batch."""
    linger: float = attrs.field(default=0.005, metadata=checks(_at_least(0)))
    """Seconds a partly filled batch may wait before it is sent."""
    params: dict[str, Any] = attrs.field(factory=dict)
    """The workload's own settings; see the workload's reference."""

    def problems(self) -> list[FieldError]:
        """Exactly one of ``topic`` and ``topics``, of ``events`` and ``duration``; ``rate``
        with ``duration``; not too many events."""
        errors = []
        if self.topic is None and not self.topics:
            errors.append(
                FieldError("topic", "required: name the topic (or give 'topics' per stream)")
            )
        if self.topic is not None and self.topics:
            errors.append(FieldError("topics", "give either 'topic' or 'topics', not both"))
        if self.events is None and self.duration is None:
            errors.append(
                FieldError("events", "required: say how many events (or give 'duration')")
            )
        if self.events is not None and self.duration is not None:
            errors.append(FieldError("duration", "give either 'events' or 'duration', not both"))
        if self.duration is not None and self.rate is None:
            errors.append(
                FieldError("rate", "required with 'duration': events per simulated second")
            )
        if self.events is None and self.duration and self.rate and self.duration > 0:
            problem = limit_problem(
                self.duration * self.rate, MAX_EVENTS, "events (duration x rate)", MAX_EVENTS_WHY
            )
            if problem is not None:
                errors.append(FieldError("duration", problem))
        return errors

    @property
    def total_events(self) -> int:
        """Events over all instances."""
        if self.events is not None:
            return self.events
        assert self.duration is not None
        assert self.rate is not None
        return math.floor(self.duration * self.rate)


@attrs.frozen
class ConsumerSpec(Checked):
    """A consumer: ``consumers.NAME`` in the file."""

    processor: str
    """The processor's name, such as ``video_stats``."""
    topic: str | None = None
    """The topic to read."""
    topics: list[str] = attrs.field(factory=list)
    """Several topics to read, instead of ``topic``; one group per topic, one processor."""
    group: str | None = attrs.field(default=None, metadata=checks(_optional_name))
    """The consumer group's name; the consumer's name by default."""
    instances: int = attrs.field(
        default=1,
        metadata=checks(_at_least(1), _at_most(MAX_INSTANCES, "instances", MAX_INSTANCES_WHY)),
    )
    """How many members the group has; they share the partitions."""
    strategy: str = "range"
    """How partitions are assigned to members: ``range`` or ``round_robin``."""
    max_records: int | None = attrs.field(default=None, metadata=checks(_at_least(1)))
    """The most records handed to a member at once; None hands whole stored batches."""
    params: dict[str, Any] = attrs.field(factory=dict)
    """The processor's own settings; see the processor's reference."""

    def problems(self) -> list[FieldError]:
        """Exactly one of ``topic`` and ``topics``; a known strategy."""
        errors = []
        if self.topic is None and not self.topics:
            errors.append(
                FieldError("topic", "required: name the topic to read (or give 'topics')")
            )
        if self.topic is not None and self.topics:
            errors.append(FieldError("topics", "give either 'topic' or 'topics', not both"))
        if self.strategy not in ("range", "round_robin"):
            errors.append(
                FieldError(
                    "strategy", f"unknown strategy {self.strategy!r}; use range or round_robin"
                )
            )
        return errors

    @property
    def topic_names(self) -> list[str]:
        """Every topic this consumer reads."""
        return [self.topic] if self.topic is not None else list(self.topics)


@attrs.frozen
class ExpectSpec:
    """Invariants checked at the end of a run: ``expect`` in the file."""

    no_loss: bool = True
    """Every consumer processed every record produced to its topics, none twice."""
    per_key_order: bool = True
    """Each consumer saw the events of each key, from each producer, in the order sent."""
    totals_match: bool = True
    """Each processor's totals per event kind equal the counts the producers report."""


@attrs.frozen
class CheckpointSpec:
    """When and where a run writes checkpoints: ``checkpoint`` in the file."""

    path: str | None = None
    """The state folder; by default the one given with ``--state``, else ``state/NAME``."""
    every: float | None = attrs.field(default=1.0, validator=_positive)
    """Seconds of the run's clock between epochs (simulated seconds with a virtual clock)."""
    every_records: int | None = attrs.field(default=None, validator=_at_least(1))
    """Events produced between epochs, as well as or instead of ``every``."""
    keep: int = attrs.field(default=3, validator=_at_least(1))
    """How many of the newest epochs to keep."""


@attrs.frozen
class RedisSpec:
    """Logging to Redis: ``redis`` in the file."""

    enabled: bool = True
    """Log every event by category to Redis streams; ``false`` turns logging off."""
    url: str | None = attrs.field(default=None)
    """An external Redis (``redis://``, ``rediss://`` or ``unix://``); without it ringflow starts
    its own ``redis-server`` on a unix socket and stops it at the end."""
    maxlen: int = attrs.field(default=100_000, validator=_at_least(1))
    """Approximate length each stream is trimmed to."""
    on_unavailable: Literal["warn", "fail"] = "warn"
    """When Redis cannot be reached at start: run without logging and say so, or refuse to run."""
    flush_timeout: float = attrs.field(default=5.0, validator=_positive)
    """Real seconds the end of a run may spend writing the entries left (retrying while Redis
    is away); what is still unwritten then is counted and reported."""

    @url.validator
    def _check_url(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is None:
            return
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise FieldError(attribute.name, "must start with redis://, rediss:// or unix://")
        try:
            _ = urlsplit(value).port  # a bad port or IPv6 host shows only when read
        except ValueError as exc:  # its message never holds the password
            raise FieldError(attribute.name, f"is not a usable URL: {exc}") from None


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[IPv6]:PORT``); raise ValueError with the reason."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} of {text!r} is not between 1 and 65535")
    return host.strip("[]"), number


@attrs.frozen
class NodeSpec:
    """One process (or container) of a split topology: ``nodes.NAME`` in the file."""

    listen: str = attrs.field()
    """``HOST:PORT`` its gateway listens on and other nodes connect to; ``--listen`` and
    ``--peer`` of ``ringflow node`` override it (in containers, for example)."""
    topics: list[str] = attrs.field(factory=list)
    """The topics whose partitions (rings) live on this node."""
    producers: list[str] = attrs.field(factory=list)
    """The producers that run here; they write to their topics wherever those live."""
    consumers: list[str] = attrs.field(factory=list)
    """The consumers that run here; they join their groups wherever the topics live."""

    @listen.validator
    def _check_listen(self, attribute: attrs.Attribute[Any], value: str) -> None:
        try:
            parse_address(value)
        except ValueError as exc:
            raise FieldError(attribute.name, str(exc)) from None


@attrs.frozen
class GatewaySpec(Checked):
    """How the nodes of a split topology talk: ``gateway`` in the file."""

    token_env: str | None = None
    """The environment variable holding the shared token every connection must present;
    None: no token (listen on 127.0.0.1 only)."""
    session_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds a remote consumer may be away before its group rebalances without it."""
    connect_timeout: float = attrs.field(default=30.0, validator=_positive)
    """Seconds a node keeps retrying a peer that cannot be reached before it gives up."""
    max_message_size: int = attrs.field(
        default=16 * 1024 * 1024,
        metadata=checks(_at_least(1024), _at_most(MAX_MESSAGE_SIZE, "bytes", MAX_MESSAGE_SIZE_WHY)),
    )
    """The largest websocket message accepted, in bytes; a larger one closes the connection."""


def _code_point(character: object) -> int:
    return character if isinstance(character, int) else ord(str(character)[:1] or "\0")


_TOO_DEEP = "$: values are nested too deeply (hundreds of levels); a topology is a few levels deep"


@attrs.frozen
class Topology(Checked):
    """A whole topology file.

    Make one with :meth:`from_yaml` or :meth:`from_dict`; both report every problem at once
    as a :exc:`TopologyError`.
    """

    name: str = attrs.field(metadata=checks(_optional_name))
    """The topology's name, used in reports."""
    topics: dict[str, TopicSpec]
    """The topics by name."""
    producers: dict[str, ProducerSpec]
    """The producers by name."""
    consumers: dict[str, ConsumerSpec]
    """The consumers by name."""
    seed: int = attrs.field(default=0, metadata=checks(_at_least(0)))
    """The seed every random choice is derived from (0 or more, as ``--seed``)."""
    clock: Literal["virtual", "real"] = "virtual"
    """``virtual`` runs in simulated time (fast, deterministic); ``real`` uses the wall clock."""
    expect: ExpectSpec = ExpectSpec()
    """Invariants checked at the end of the run."""
    checkpoint: CheckpointSpec | None = None
    """Checkpoints; without this section, only ``--state`` turns them on."""
    redis: RedisSpec = RedisSpec()
    """Logging to Redis; on by default, with an embedded server."""
    nodes: dict[str, NodeSpec] = attrs.field(factory=dict)
    """How the topology splits across processes for ``ringflow node``; ``ringflow run``
    ignores it and runs everything in one process."""
    gateway: GatewaySpec = GatewaySpec()
    """Settings of the websocket gateways between nodes."""

    def node_of(self, kind: Literal["topics", "producers", "consumers"], name: str) -> str:
        """The node a topic, producer or consumer is assigned to (the topology has nodes)."""
        for node, spec in self.nodes.items():
            if name in getattr(spec, kind):
                return node
        raise KeyError(f"{kind[:-1]} {name!r} is on no node")

    @classmethod
    def from_yaml(cls, text: str, source: str = "topology") -> Topology:
        """Parse and validate a topology from YAML text.

        Raises:
            TopologyError: The YAML is malformed or the topology has problems.
        """
        loader: yaml.SafeLoader | None = None
        try:
            loader = yaml.SafeLoader(text)  # refuses control characters already
            node = loader.get_single_node()
            duplicates = [] if node is None else duplicate_keys(node)
            if duplicates:
                raise TopologyError(duplicates, source)
            data = None if node is None else loader.construct_document(node)
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            raise TopologyError(
                [
                    f"line {line} (character {exc.position}): the control character "
                    f"U+{_code_point(exc.character):04X} cannot appear in a topology file"
                ],
                source,
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise TopologyError([f"{where}malformed YAML: {problem}"], source) from None
        except RecursionError:
            raise TopologyError([_TOO_DEEP], source) from None
        finally:
            if loader is not None:
                loader.dispose()
        return cls.from_dict(data, source)

    @classmethod
    def from_file(cls, path: Path) -> Topology:
        """Read, parse and validate a topology file (UTF-8 text).

        Raises:
            TopologyError: The file cannot be read, is not UTF-8, is malformed YAML, or the
                topology has problems.
        """
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TopologyError([f"cannot read the file: {exc.strerror}"], str(path)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise TopologyError(
                [
                    f"line {line}, column {column} (byte {exc.start}): byte "
                    f"0x{raw[exc.start]:02x} is not UTF-8 text; save the file as UTF-8"
                ],
                str(path),
            ) from None
        return cls.from_yaml(text, str(path))

    @classmethod
    def from_dict(cls, data: object, source: str = "topology") -> Topology:
        """Validate a topology given as plain data (what YAML or JSON parse to).

        Raises:
            TopologyError: The topology has problems.
        """
        if not isinstance(data, dict):
            kind = "empty" if data is None else f"a {type(data).__name__}"
            raise TopologyError([f"$: expected a mapping of topology fields, got {kind}"], source)
        try:
            topology = converter.structure(data, cls)
        except RecursionError:
            raise TopologyError([_TOO_DEEP], source) from None
        except Exception as exc:  # cattrs raises groups of everything it found
            try:
                problems = describe_errors(exc)
            except RecursionError:
                problems = [_TOO_DEEP]
            raise TopologyError(problems, source) from None
        problems = topology.cross_check()
        if problems:
            raise TopologyError(problems, source)
        return topology

    def cross_check(self) -> list[str]:
        """Return the problems that span sections: references to topics that do not exist."""
        problems = []
        for kind, specs in (
            ("topics", self.topics),
            ("producers", self.producers),
            ("consumers", self.consumers),
        ):
            for name in specs:
                if not NAME.match(name):
                    problems.append(f"$.{kind}.{name}: {name!r} is not a valid name")
        for name, producer in self.producers.items():
            targets = (
                {"topic": producer.topic}
                if producer.topic
                else {f"topics.{s}": t for s, t in producer.topics.items()}
            )
            for field, topic in targets.items():
                if topic not in self.topics:
                    problems.append(
                        f"$.producers.{name}.{field}: no topic named {topic!r}; "
                        f"topics are: {', '.join(sorted(self.topics)) or 'none'}"
                    )
        produced = {
            t
            for p in self.producers.values()
            for t in ([p.topic] if p.topic else p.topics.values())
        }
        for name, consumer in self.consumers.items():
            field = "topic" if consumer.topic else "topics"
            for topic in consumer.topic_names:
                if topic not in self.topics:
                    problems.append(
                        f"$.consumers.{name}.{field}: no topic named {topic!r}; "
                        f"topics are: {', '.join(sorted(self.topics)) or 'none'}"
                    )
                elif topic not in produced:
                    problems.append(
                        f"$.consumers.{name}.{field}: no producer writes to topic {topic!r}, "
                        "so this consumer would wait forever"
                    )
        groups: dict[tuple[str, str], str] = {}
        for name, consumer in self.consumers.items():
            for topic in consumer.topic_names:
                group = consumer.group or name
                if (group, topic) in groups:
                    problems.append(
                        f"$.consumers.{name}.group: group {group!r} on topic {topic!r} is "
                        f"already used by consumer {groups[group, topic]!r}"
                    )
                groups[group, topic] = name
        if not self.producers:
            problems.append("$.producers: at least one producer is needed")
        consumed = {t for c in self.consumers.values() for t in c.topic_names}
        for name, topic_spec in self.topics.items():
            if name in consumed or topic_spec.allow_unconsumed:
                continue
            writers = sorted(
                p
                for p, spec in self.producers.items()
                if name in ([spec.topic] if spec.topic else spec.topics.values())
            )
            if not writers:
                continue  # a topic nobody uses blocks nothing
            blocks = (
                "block while no consumer is attached"
                if topic_spec.ring_capacity is None
                else "block for good once its rings are full"
            )
            problems.append(
                f"$.topics.{name}: no consumer reads this topic, so its producers "
                f"({', '.join(writers)}) would {blocks}; add a consumer, or set "
                "'allow_unconsumed: true' if only taps read it"
            )
        ring_records = sum(spec.ring_records for spec in self.topics.values())
        problem = limit_problem(
            ring_records,
            MAX_RING_RECORDS,
            "records in all rings (partitions x (capacity + retention), over the topics)",
            MAX_RING_RECORDS_WHY,
        )
        if problem is not None:
            problems.append(f"$.topics: {problem}")
        problems.extend(self._check_nodes())
        return problems

    def _check_nodes(self) -> list[str]:
        if not self.nodes:
            return []
        problems = []
        places: dict[str, dict[str, str]] = {"topics": {}, "producers": {}, "consumers": {}}
        listening: dict[tuple[str, int], str] = {}
        for node, spec in self.nodes.items():
            if not NAME.match(node):
                problems.append(f"$.nodes.{node}: {node!r} is not a valid name")
            address = parse_address(spec.listen)
            if address in listening:
                problems.append(
                    f"$.nodes.{node}.listen: {spec.listen} is also where node "
                    f"{listening[address]!r} listens"
                )
            listening[address] = node
            if not (spec.topics or spec.producers or spec.consumers):
                problems.append(f"$.nodes.{node}: hosts no topic, producer or consumer")
            for kind, known in (
                ("topics", self.topics),
                ("producers", self.producers),
                ("consumers", self.consumers),
            ):
                for name in getattr(spec, kind):
                    if name not in known:
                        problems.append(
                            f"$.nodes.{node}.{kind}: no {kind[:-1]} named {name!r}; "
                            f"{kind} are: {', '.join(sorted(known)) or 'none'}"
                        )
                    elif name in places[kind]:
                        problems.append(
                            f"$.nodes.{node}.{kind}: {name!r} is already on node "
                            f"{places[kind][name]!r}; each runs on exactly one node"
                        )
                    else:
                        places[kind][name] = node
        for kind, known in (
            ("topics", self.topics),
            ("producers", self.producers),
            ("consumers", self.consumers),
        ):
            missing = sorted(set(known) - set(places[kind]))
            if missing:
                problems.append(
                    f"$.nodes: {kind} {', '.join(map(repr, missing))} on no node; with a "
                    "'nodes' section every topic, producer and consumer needs one"
                )
        if self.gateway.token_env is None:
            for node, spec in self.nodes.items():
                host = parse_address(spec.listen)[0]
                if host not in ("127.0.0.1", "localhost", "::1"):
                    problems.append(
                        f"$.nodes.{node}.listen: {spec.listen} is reachable from other "
                        "machines, so the gateways need a shared token: set "
                        "gateway.token_env to the name of an environment variable holding it"
                    )
        return problems


def duplicate_keys(root: yaml.Node) -> list[str]:
    """Return one problem per key given twice in one mapping of a YAML document.

    YAML leaves duplicates to the reader and PyYAML keeps the last, so a setting given twice
    would silently lose its first value; a topology file refuses them instead.
    """
    problems: list[str] = []
    seen: set[int] = set()  # aliases may share nodes, or even form cycles
    todo: list[tuple[yaml.Node, str]] = [(root, "$")]
    while todo:
        node, path = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag.endswith(":merge"):
                    todo.append((value, path))
                    continue
                line = key.start_mark.line + 1
                first = lines.get((key.tag, key.value))
                if first is None:
                    lines[key.tag, key.value] = line
                else:
                    where = f"line {line}" if first == line else f"lines {first} and {line}"
                    problems.append(
                        f"{path}.{key.value}: given twice ({where}); keep one, or the last "
                        "would silently replace the first"
                    )
                todo.append((value, f"{path}.{key.value}"))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return sorted(problems)


def _strict(kind: type, names: str) -> Callable[[Any, type], Any]:
    def structure(value: Any, _type: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {names}, got a boolean")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {names}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"expected a finite number, got {value}")
        return value

    return structure


def _is_literal(kind: Any) -> bool:
    return typing.get_origin(kind) is Literal


def make_converter() -> cattrs.Converter:
    """Return the converter for topology files: strict types, no unknown fields."""
    result = cattrs.Converter(forbid_extra_keys=True)
    result.register_structure_hook(int, _strict(int, "a whole number"))
    result.register_structure_hook(float, _strict(float, "a number"))
    result.register_structure_hook(str, _strict(str, "a string"))
    result.register_structure_hook(bool, _strict(bool, "true or false"))

    def capacity(value: Any, _type: type) -> int | str:
        if value == "dynamic" or (isinstance(value, int) and not isinstance(value, bool)):
            return value  # type: ignore[no-any-return]
        raise TypeError(f"expected a whole number of records or 'dynamic', got {value!r}")

    result.register_structure_hook(int | Literal["dynamic"], capacity)

    def literal(value: Any, kind: Any) -> Any:
        choices = typing.get_args(kind)
        if value not in choices or isinstance(value, bool):
            raise TypeError(f"must be one of: {', '.join(map(str, choices))}; got {value!r}")
        return value

    result.register_structure_hook_func(_is_literal, literal)
    return result


converter = make_converter()
"""The one converter for topology files."""


def _wants_mapping(wanted: Any) -> bool:
    # Whether a value was to become a mapping (a section, a dict), also inside an Optional.
    if wanted is dict or typing.get_origin(wanted) is dict:
        return True
    if isinstance(wanted, type) and attrs.has(wanted):
        return True
    if typing.get_origin(wanted) in (typing.Union, types.UnionType):
        return any(_wants_mapping(arg) for arg in typing.get_args(wanted))
    return False


def describe_errors(exc: BaseException, path: str = "$") -> list[str]:
    """Flatten what cattrs raised into one ``path: message`` line per problem."""
    notes = getattr(exc, "__notes__", None) or []
    wanted: Any = None  # the type the value was to become, when cattrs says
    for note in notes:
        name = getattr(note, "name", None)
        index = getattr(note, "index", None)
        wanted = getattr(note, "type", wanted)
        if name is not None:
            path = f"{path}.{name}"
        elif index is not None:
            path = f"{path}.{index}" if isinstance(index, str) else f"{path}[{index}]"
    mapping = _wants_mapping(wanted)
    if isinstance(exc, BaseExceptionGroup):
        problems: list[str] = []
        for sub in exc.exceptions:
            problems.extend(describe_errors(sub, path))
        return problems
    if isinstance(exc, ForbiddenExtraKeysError):
        allowed = ", ".join(field.name for field in attrs.fields(exc.cl))
        unknown = ", ".join(sorted(exc.extra_fields))
        return [
            f"{path}: unknown field{'s' if len(exc.extra_fields) > 1 else ''} {unknown}; "
            f"allowed: {allowed}"
        ]
    if isinstance(exc, FieldError):
        return [f"{path}.{exc.field}: {exc}"]
    if isinstance(exc, KeyError):
        return [f"{path}: required field missing"]
    if isinstance(exc, AttributeError) and ("items" in str(exc) or "keys" in str(exc)):
        return [f"{path}: expected a mapping"]
    if isinstance(exc, TypeError | ValueError):
        message = str(exc)
        if "not iterable" in message or "unhashable" in message:
            message = "expected a mapping" if mapping else "expected a list"
        return [f"{path}: {message}"]
    return [f"{path}: {type(exc).__name__}: {exc}"]
