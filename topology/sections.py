"""The sections of a topology file: one attrs class per block (a topic, a producer, a node...)."""

from __future__ import annotations

import math
import os
from pathlib import PurePath
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from .checks import Checked, at_least, at_most, checks, optional_name, positive
from .errors import FieldError
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
    limit_problem,
)


def _capacity(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value != "dynamic" and isinstance(value, int) and value < 1:
        raise FieldError(attribute.name, f"must be >= 1 or 'dynamic', got {value}")


@attrs.frozen
class TopicSpec(Checked):
    """A topic: ``topics.NAME`` in the file."""

    partitions: int = attrs.field(
        default=1,
        metadata=checks(
            at_least(1), at_most(MAX_PARTITIONS, "partitions per topic", MAX_PARTITIONS_WHY)
        ),
    )
    """How many partitions; records with the same key always share one."""
    capacity: int | Literal["dynamic"] = attrs.field(default=10_000, metadata=checks(_capacity))
    """Records each partition's ring holds at once; ``dynamic`` grows without bound but blocks
    producers while no consumer is attached."""
    key: str | None = None
    """The field of each event used as the record key; None spreads records round robin."""
    retention: int = attrs.field(default=0, metadata=checks(at_least(0)))
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
class FilesSpec(Checked):
    """A folder watched for complete files: ``producers.NAME.files`` in the file."""

    dir: str
    """The folder (files directly in it; relative paths from the working folder)."""
    pattern: str = "*"
    """Names of the files to take (shell-style: ``*.txt``); hidden files never are."""
    ready: Literal["rename", "marker", "quiet"] = "rename"
    """How a complete file is told from one being written (see docs/files.md)."""
    quiet: float = attrs.field(default=5.0, metadata=checks(positive))
    """Seconds a file must stay unchanged under ``ready: quiet``."""
    after: Literal["move", "delete", "keep"] = "move"
    """What becomes of a file once processed: moved into ``done``, deleted, or kept."""
    done: str = "done"
    """Where processed files are moved (relative to ``dir``)."""
    poll: float = attrs.field(default=0.5, metadata=checks(positive))
    """Seconds between looks at the folder."""
    idle: float | None = attrs.field(default=None, metadata=checks(positive))
    """Seconds without a new complete file after which the source ends (and the run with
    it, once everything is processed); None: it watches until stopped. ``ringflow run
    --idle`` overrides it."""

    def problems(self) -> list[FieldError]:
        """Processed files go elsewhere than the folder watched."""
        same = os.path.abspath(self.done_folder) == os.path.abspath(self.dir)  # ../dir too
        if same or self.done in ("", "."):
            return [FieldError("done", "must be another folder than 'dir' (the one watched)")]
        return []

    @property
    def done_folder(self) -> str:
        """Where processed files go: ``done`` under ``dir`` unless absolute."""
        return str(PurePath(self.dir) / self.done)


@attrs.frozen
class ProducerSpec(Checked):
    """A producer: ``producers.NAME`` in the file."""

    workload: str | None = None
    """The workload's name, such as ``video_site`` or ``ugc``."""
    files: FilesSpec | None = None
    """A folder whose complete files are announced on ``topic``, instead of a workload."""
    topic: str | None = None
    """The topic every stream of the workload goes to."""
    topics: dict[str, str] = attrs.field(factory=dict)
    """Topic per stream of the workload (``{click: clicks, ...}``), instead of ``topic``."""
    instances: int = attrs.field(
        default=1,
        metadata=checks(at_least(1), at_most(MAX_INSTANCES, "instances", MAX_INSTANCES_WHY)),
    )
    """How many copies run; events and rate are split evenly among them."""
    rate: float | None = attrs.field(default=None, metadata=checks(positive))
    """Events per simulated second over all instances; None produces as fast as possible."""
    events: int | None = attrs.field(
        default=None,
        metadata=checks(at_least(0), at_most(MAX_EVENTS, "events", MAX_EVENTS_WHY)),
    )
    """How many events in total over all instances."""
    duration: float | None = attrs.field(default=None, metadata=checks(positive))
    """Simulated seconds to produce for, at ``rate``, instead of ``events``."""
    max_batch: int = attrs.field(
        default=1000,
        metadata=checks(at_least(1), at_most(MAX_BATCH, "records per batch", MAX_BATCH_WHY)),
    )
    """The most records per batch."""
    linger: float = attrs.field(default=0.005, metadata=checks(at_least(0)))
    """Seconds a partly filled batch may wait before it is sent."""
    params: dict[str, Any] = attrs.field(factory=dict)
    """The workload's own settings; see the workload's reference."""

    def problems(self) -> list[FieldError]:
        """Exactly one of ``topic`` and ``topics``, of ``events`` and ``duration``; ``rate``
        with ``duration``; not too many events."""
        errors = []
        if self.files is not None:
            return self._files_problems()
        if self.workload is None:
            errors.append(FieldError("workload", "required: name the workload (or give 'files')"))
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

    def _files_problems(self) -> list[FieldError]:
        errors = []
        if self.workload is not None:
            errors.append(FieldError("files", "give either 'workload' or 'files', not both"))
        if self.topic is None:
            errors.append(FieldError("topic", "required: the topic files are announced on"))
        for name in ("topics", "events", "duration", "rate"):
            if getattr(self, name):
                errors.append(FieldError(name, "not for a 'files' producer (it announces files)"))
        if self.instances != 1:
            errors.append(
                FieldError(
                    "instances", "a folder is watched by one instance (give a producer per folder)"
                )
            )
        return errors

    @property
    def total_events(self) -> int:
        """Events over all instances (0 for a ``files`` producer: files are not planned)."""
        if self.files is not None:
            return 0
        if self.events is not None:
            return self.events
        assert self.duration is not None
        assert self.rate is not None
        return math.floor(self.duration * self.rate)


@attrs.frozen
class RetrySpec(Checked):
    """How a sink's deliveries are retried: ``consumers.NAME.retry`` in the file (see
    :class:`~actors.RetryPolicy`)."""

    initial: float = attrs.field(default=0.1, metadata=checks(positive))
    """Seconds: the bound of the first wait (each wait is drawn between 0 and its bound)."""
    multiplier: float = attrs.field(default=2.0, metadata=checks(at_least(1)))
    """How much the bound grows after each failed attempt."""
    maximum: float = attrs.field(default=30.0, metadata=checks(positive))
    """Seconds: the most a bound grows to."""
    max_attempts: int | None = attrs.field(default=10, metadata=checks(at_least(1)))
    """Attempts before the records are dead-lettered (or the consumer stops); None: no limit."""
    max_elapsed: float | None = attrs.field(default=None, metadata=checks(positive))
    """Seconds from the first failure after which no attempt is made; None: no limit."""
    attempt_timeout: float | None = attrs.field(default=10.0, metadata=checks(positive))
    """Seconds one attempt may take before it counts as a (transient) failure."""


@attrs.frozen
class BreakerSpec(Checked):
    """When a sink that keeps failing is left alone: ``consumers.NAME.breaker``."""

    threshold: int = attrs.field(default=5, metadata=checks(at_least(1)))
    """Failed attempts in a row that open the breaker."""
    cool_down: float = attrs.field(default=30.0, metadata=checks(positive))
    """Seconds the breaker stays open before one attempt probes the sink again."""


@attrs.frozen
class ConsumerSpec(Checked):
    """A consumer: ``consumers.NAME`` in the file."""

    processor: str
    """The processor's name, such as ``video_stats``."""
    topic: str | None = None
    """The topic to read."""
    topics: list[str] = attrs.field(factory=list)
    """Several topics to read, instead of ``topic``; one group per topic, one processor."""
    group: str | None = attrs.field(default=None, metadata=checks(optional_name))
    """The consumer group's name; the consumer's name by default."""
    instances: int = attrs.field(
        default=1,
        metadata=checks(at_least(1), at_most(MAX_INSTANCES, "instances", MAX_INSTANCES_WHY)),
    )
    """How many members the group has; they share the partitions."""
    strategy: str = "range"
    """How partitions are assigned to members: ``range`` or ``round_robin``."""
    max_records: int | None = attrs.field(default=None, metadata=checks(at_least(1)))
    """The most records handed to a member at once; None hands whole stored batches."""
    params: dict[str, Any] = attrs.field(factory=dict)
    """The processor's own settings; see the processor's reference."""
    retry: RetrySpec = attrs.field(factory=RetrySpec)
    """How a sink's deliveries are retried."""
    breaker: BreakerSpec = attrs.field(factory=BreakerSpec)
    """When a sink that keeps failing is left alone for a while."""
    dead_letter: str | None = None
    """The topic records a sink cannot deliver go to, with why; None: such a record stops
    the consumer (fail fast)."""
    output: str | None = None
    """The topic a processor that writes records (the ``topic`` relay) writes to, on this
    node or another."""

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
    every: float | None = attrs.field(default=1.0, validator=positive)
    """Seconds of the run's clock between epochs (simulated seconds with a virtual clock)."""
    every_records: int | None = attrs.field(default=None, validator=at_least(1))
    """Events produced between epochs, as well as or instead of ``every``."""
    keep: int = attrs.field(default=3, validator=at_least(1))
    """How many of the newest epochs to keep."""


@attrs.frozen
class RedisSpec:
    """Logging to Redis: ``redis`` in the file."""

    enabled: bool = True
    """Log every event by category to Redis streams; ``false`` turns logging off."""
    url: str | None = attrs.field(default=None)
    """An external Redis (``redis://``, ``rediss://`` or ``unix://``); without it ringflow starts
    its own ``redis-server`` on a unix socket and stops it at the end."""
    maxlen: int = attrs.field(default=100_000, validator=at_least(1))
    """Approximate length each stream is trimmed to."""
    on_unavailable: Literal["warn", "fail"] = "warn"
    """When Redis cannot be reached at start: run without logging and say so, or refuse to run."""
    flush_timeout: float = attrs.field(default=5.0, validator=positive)
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


def parse_address(text: str, *, any_port: bool = False) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[IPv6]:PORT``); raise ValueError with the reason.
    ``any_port`` lets port 0 through (listen on a free port)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    number = int(port)
    if not (0 if any_port else 1) <= number < 65536:
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
    api: str | None = attrs.field(default=None)
    """``HOST:PORT`` where this node serves the ``http`` section's API, its events going to
    their topics wherever those live; ``--api`` of ``ringflow node`` overrides it. Several
    nodes may serve it (each takes its share of the clients)."""

    @listen.validator
    def _check_listen(self, attribute: attrs.Attribute[Any], value: str) -> None:
        try:
            parse_address(value)
        except ValueError as exc:
            raise FieldError(attribute.name, str(exc)) from None

    @api.validator
    def _check_api(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is None:
            return
        try:
            parse_address(value, any_port=True)
        except ValueError as exc:
            raise FieldError(attribute.name, str(exc)) from None


@attrs.frozen
class GatewaySpec(Checked):
    """How the nodes of a split topology talk: ``gateway`` in the file."""

    token_env: str | None = None
    """The environment variable holding the shared token every connection must present;
    None: no token (listen on 127.0.0.1 only)."""
    session_timeout: float = attrs.field(default=10.0, validator=positive)
    """Seconds a remote consumer may be away before its group rebalances without it."""
    connect_timeout: float = attrs.field(default=30.0, validator=positive)
    """Seconds a node keeps retrying a peer that cannot be reached before it gives up."""
    max_message_size: int = attrs.field(
        default=16 * 1024 * 1024,
        metadata=checks(at_least(1024), at_most(MAX_MESSAGE_SIZE, "bytes", MAX_MESSAGE_SIZE_WHY)),
    )
    """The largest websocket message accepted, in bytes; a larger one closes the connection."""


@attrs.frozen
class HttpSpec(Checked):
    """Events taken from clients over HTTP by ``ringflow serve``: ``http`` in the file."""

    routes: dict[str, str]
    """By event kind (``click``, ``playback``...), the topic its events go to. Clients send a
    kind to ``POST /events`` (naming it in ``type``) or to ``POST /events/KIND``."""
    listen: str = attrs.field(default="127.0.0.1:8000")
    """``HOST:PORT`` the API listens on; ``--listen`` of ``ringflow serve`` overrides it."""
    acks: Literal["ring", "durable"] | None = None
    """When a request is answered ``202``: once its events are in their rings (``ring``), or
    once a checkpoint epoch holds them (``durable``, the default with checkpoints), so that
    no acknowledged event is lost by a crash."""
    max_body: int = attrs.field(
        default=1 << 20,
        metadata=checks(at_least(1), at_most(64 << 20, "bytes", "a body is held in memory whole")),
    )
    """The largest request body in bytes; a larger one is answered ``413``."""
    max_wait: float = attrs.field(default=5.0, metadata=checks(positive))
    """Seconds a request may wait for room in a full ring before it is answered ``503``
    with ``Retry-After``."""
    max_connections: int = attrs.field(default=1000, metadata=checks(at_least(1)))
    """Connections open at once; one more is answered ``503`` and closed."""
    token_env: str | None = None
    """The environment variable holding the bearer token every request but ``/health``
    must present (``401`` without it); None: no token."""

    @listen.validator
    def _check_listen(self, attribute: attrs.Attribute[Any], value: str) -> None:
        try:
            parse_address(value, any_port=True)
        except ValueError as exc:
            raise FieldError(attribute.name, str(exc)) from None

    def durable(self, checkpointed: bool) -> bool:
        """Whether requests are answered once an epoch holds their events: with ``acks:
        durable``, or by default, when the run writes epochs (never when it does not)."""
        return checkpointed and self.acks != "ring"

    def problems(self) -> list[FieldError]:
        """At least one route."""
        if not self.routes:
            return [FieldError("routes", "required: name the topic of each event kind taken")]
        return []
