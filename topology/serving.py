"""Serving: the HTTP API of a topology with an ``http`` section, as a source of its pipeline.

:class:`HttpIntake` is to clients what a :class:`~topology.source.WorkloadSource` is to a
workload: it counts what it admits in the run's topic tallies, keeps its position (the next
sequence number) in every epoch, and registers as a producer of its topics, so they close
once it stops taking events and consumers then drain them. Unlike a workload's source it
holds nothing between its steps (each request's events enter their rings in one step, or
none do), so it is at a safe point at every moment and an epoch never waits for it.

With ``acks: durable`` a request is answered only once an epoch holding its events has been
written: the epoch's hook tells the intake which sequence numbers it holds.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from actors import HttpLimits, HttpServer, Topic, serve_http

from .api import EventsApi, EventStore
from .delivering import SinkDelivery
from .epochs import Barrier
from .errors import CheckpointError, TopologyError
from .intake import Intake, Route
from .node import Node, RemoteLink
from .plan import api_nodes
from .registry import Processor, Registry, Sink, SinkContext
from .schema import Topology
from .sections import HttpSpec, parse_address
from .snapshot import IntakePart
from .tally import TopicTally

INTAKE = ("http", 0)
"""How the intake is known to the barrier of epochs (as producer instances are)."""

STOP_GRACE = 10.0
"""Real seconds a stopping intake waits for the requests it is taking (admitting their events,
or waiting until those are held as their answers require)."""


@attrs.frozen
class IntakeSettings:
    """How a served pipeline takes events: where it listens, when it answers."""

    listen: tuple[str, int]
    """Host and port of the API."""
    token: str | None
    """The bearer token requests must present; None for none."""


def intake_settings(
    topology: Topology, listen: str | None = None, node: str | None = None
) -> IntakeSettings:
    """The settings of ``topology``'s HTTP API (as ``node`` serves it, when split),
    ``listen`` replacing the file's address.

    Raises:
        TopologyError: ``listen`` is not ``HOST:PORT``, or the token's environment variable
            is unset or empty.
    """
    spec = topology.http
    assert spec is not None, "the topology takes no events over HTTP"
    given = spec.listen if node is None else topology.nodes[node].api
    assert given is not None, f"node {node} serves no API"
    try:
        address = parse_address(listen or given, any_port=True)
    except ValueError as exc:
        raise TopologyError([f"listen: {exc}"], topology.name) from None
    token = None
    if spec.token_env is not None:
        token = os.environ.get(spec.token_env)
        if not token:
            raise TopologyError(
                [
                    f"$.http.token_env: the environment variable {spec.token_env} is unset or "
                    "empty; set it to the bearer token clients must present"
                ],
                topology.name,
            )
    return IntakeSettings(address, token)


@attrs.define(eq=False)
class HttpIntake:
    """The HTTP API of a served pipeline, and the source of the events it takes.

    Make one with :meth:`make`; the pipeline serves it with :meth:`serve` (the HTTP server,
    for as long as the pipeline runs) and runs :meth:`run` beside its producers (the source,
    until :meth:`stop`).
    """

    intake: Intake
    api: EventsApi
    topics: list[Topic]
    """The topics here that its routes write to."""
    spec: HttpSpec
    """The ``http`` section it serves."""
    links: dict[str, RemoteLink] = attrs.field(factory=dict)
    """By topic, its links to the topics on other nodes that its routes write to (a node
    of a split topology); their routes are made as :meth:`open_links` opens them."""
    _remote_routes: dict[str, tuple[type, str, str | None]] = attrs.field(factory=dict)
    max_body: int = 0
    """The largest body taken: ``max_body`` of the section, and with links, at most half the
    largest message the other nodes take (an event then always fits in one)."""

    def __attrs_post_init__(self) -> None:
        self.max_body = self.max_body or self.spec.max_body

    settings: IntakeSettings | None = None
    """Where to listen; None until the pipeline is served."""
    server: HttpServer | None = None
    """The HTTP server, once it listens."""
    on_listening: Callable[[str], None] | None = None
    """Called with the API's URL each time it starts listening."""
    on_error: Callable[[BaseException], None] = lambda _: None
    """Called with what a request's handler raised (the request was answered 500)."""
    on_stopping: Callable[[], None] = lambda: None
    """Called when :meth:`stop` is."""
    _stopping: trio.Event = attrs.field(factory=trio.Event)
    _durable_seq: int = 0
    """Every event with a sequence number below this is in a written epoch."""
    _durable_changed: trio.Event = attrs.field(factory=trio.Event)
    _request_epoch: Callable[[], Awaitable[object]] | None = None

    @classmethod
    def make(
        cls,
        topology: Topology,
        registry: Registry,
        topics: Mapping[str, Topic],
        source: int,
        produced: Mapping[str, TopicTally],
        now: Callable[[], float],
        links: Mapping[str, RemoteLink] | None = None,
    ) -> HttpIntake:
        """The intake of ``topology``'s ``http`` section.

        Args:
            topology: A validated topology with an ``http`` section.
            registry: Its event types by kind.
            topics: The topics (rings here) its routes name.
            source: The number its events carry in ``source``.
            produced: The run's tallies by topic.
            now: Event time now, to stamp events with.
            links: By topic, links to the topics its routes name that are on other nodes.
        """
        spec = topology.http
        assert spec is not None
        routes, remote = {}, {}
        for kind, topic in spec.routes.items():
            if topic in topics:
                routes[kind] = Route(
                    registry.events[kind], topics[topic], topology.topics[topic].key
                )
            else:
                remote[kind] = (registry.events[kind], topic, topology.topics[topic].key)
        intake = Intake(routes, source, now, produced, max_wait=spec.max_wait)
        targets = [topics[name] for name in dict.fromkeys(spec.routes.values()) if name in topics]
        api = EventsApi(
            intake,
            partitions=lambda: {t.name: t.statistics() for t in targets},
            title=topology.name,
        )
        return cls(intake, api, targets, spec, dict(links or {}), remote)

    async def open_links(self, stack: AsyncExitStack) -> None:
        """Open the links to topics on other nodes (each leaves ``stack`` when the run ends:
        normally once the other node holds every event sent, durably) and route their
        kinds to them.

        Raises:
            GatewayError: A node could not be reached within the gateway's connect timeout,
                or refused the link.
        """
        opened = {}
        for topic, link in self.links.items():
            opened[topic] = await stack.enter_async_context(link)
        routes = dict(self.intake.routes)
        for kind, (event_type, topic, key) in self._remote_routes.items():
            routes[kind] = Route(event_type, opened[topic], key)
        self.intake.routes = routes

    # -- its part of an epoch ----------------------------------------------------------------

    def capture(self) -> IntakePart:
        """The sequence number the next event gets."""
        return IntakePart(seq=self.intake.seq)

    def restore(self, state: IntakePart) -> None:
        """Carry on numbering from an epoch (every event before it is in that epoch)."""
        self.intake.seq = self._durable_seq = state.seq

    def durable_hook(self) -> Callable[[], None]:
        """What to call once the epoch being captured now is written: the events admitted so
        far are then durable."""
        seq = self.intake.seq

        def written() -> None:
            if seq > self._durable_seq:
                self._durable_seq = seq
                self._durable_changed.set()
                self._durable_changed = trio.Event()

        return written

    async def _until_durable(self, seq: int) -> None:
        # Ask for an epoch at once: requests that wait meanwhile share the next one (a
        # group commit). One that cannot be written leaves the request to the next epoch.
        while self._durable_seq < seq:
            if self._request_epoch is None:
                await self._durable_changed.wait()
                continue
            try:
                await self._request_epoch()
            except CheckpointError:
                await self._durable_changed.wait()

    # -- running ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop taking events: requests are answered ``503`` from now on, and :meth:`run`
        returns once the requests already admitting their events are done."""
        self.api.accepting = False
        self._stopping.set()
        self.on_stopping()

    def unconfirmed(self) -> int:
        """Events sent to topics on other nodes that those nodes do not yet hold durably."""
        return sum(
            sum(link.topic.statistics().retained)
            for link in self.links.values()
            if link.topic is not None
        )

    async def serve(
        self,
        settings: IntakeSettings,
        durable: Callable[[], Awaitable[object]] | None,
        *,
        task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the API until cancelled.

        Args:
            settings: Where to listen, and the token.
            durable: When requests are answered once an epoch holds their events, asks for an
                epoch and waits until it is written; None answers them once admitted.

        Raises:
            OSError: The address cannot be listened on.
        """
        self.settings = settings
        self.api.token = settings.token
        self._request_epoch = durable
        self.intake.admitted = self._until_durable if durable is not None else None
        self.intake.durable = durable is not None
        host, port = settings.listen
        limits = HttpLimits(max_body=self.max_body, max_connections=self.spec.max_connections)
        async with trio.open_nursery() as nursery:
            self.server = await nursery.start(
                functools.partial(
                    serve_http, self.api, host, port, limits=limits, on_error=self.on_error
                )
            )
            self.api.http = self.server.statistics
            if self.on_listening is not None:
                shown = f"[{host}]" if ":" in host else host
                self.on_listening(f"http://{shown}:{self.server.port}")
            task_status.started(self.server)

    async def run(self, barrier: Barrier) -> None:
        """Be a producer of the route topics until :meth:`stop`; then let them close.

        Meanwhile it answers epochs at once: it holds nothing between requests, so any moment
        is a safe point (an epoch captures every ring and the sequence number in one step).
        """
        for topic in self.topics:
            topic.add_producer()
        graceful = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._answer_epochs, barrier)
                await self._stopping.wait()
                with trio.move_on_after(STOP_GRACE):
                    await self.intake.settled()
                nursery.cancel_scope.cancel()
            graceful = True
        finally:
            barrier.finished(INTAKE)
            for topic in self.topics:
                topic.remove_producer(graceful=graceful)

    @staticmethod
    async def _answer_epochs(barrier: Barrier) -> None:
        while True:
            await barrier.asked()
            await barrier.pause(INTAKE)


class Building(Protocol):
    """What :func:`make_intake` reads of a pipeline being built."""

    @property
    def plans(self) -> list[Any]: ...
    @property
    def produced(self) -> dict[str, TopicTally]: ...
    @property
    def deliveries(self) -> dict[str, SinkDelivery]: ...
    def event_time(self) -> float: ...
    def value_type(self, topic: str) -> Any: ...


def make_intake(
    topology: Topology,
    registry: Registry,
    topics: Mapping[str, Topic],
    pipeline: Building,
    node: Node | None,
) -> HttpIntake | None:
    """The HTTP intake that runs here, if one does: with the topology whole, when it has an
    ``http`` section; on a node, when the node gives an ``api`` address. Its events carry
    ``source`` numbers after the producer instances'."""
    here = "" if node is None else node.placement.node
    serving = api_nodes(topology)
    if here not in serving:
        return None
    links = {}
    if node is not None:
        assert topology.http is not None
        elsewhere = [t for t in dict.fromkeys(topology.http.routes.values()) if t not in topics]
        links = node.intake_links(elsewhere, pipeline.value_type)
    source = len(pipeline.plans) + serving.index(here)
    intake = HttpIntake.make(
        topology, registry, topics, source, pipeline.produced, pipeline.event_time, links
    )
    intake.api.deliveries = lambda: pipeline.deliveries
    if node is not None:
        intake.api.stored_elsewhere = _stored_on(topology, registry)
    if links:
        intake.max_body = min(intake.max_body, topology.gateway.max_message_size // 2)
    return intake


def _stored_on(topology: Topology, registry: Registry) -> str | None:
    # The APIs of the nodes whose sinks can read events back.
    apis = []
    for node, spec in topology.nodes.items():
        for consumer in spec.consumers:
            kind = registry.processors[topology.consumers[consumer].processor]
            made = kind.make(registry.processor_params(topology, consumer))  # opens nothing
            if isinstance(made, EventStore) and spec.api:
                apis.append(f"the API of node {node} ({spec.api})")
                break
    return " or ".join(apis) or None


class Served(Protocol):
    """What :func:`open_sinks` reads of a pipeline."""

    @property
    def topology(self) -> Topology: ...
    @property
    def processors(self) -> Mapping[str, Processor]: ...
    @property
    def value_types(self) -> Mapping[str, tuple[type, ...]]: ...
    @property
    def topics(self) -> Mapping[str, Topic]: ...
    @property
    def state_folder(self) -> Path | None: ...
    @property
    def intake(self) -> HttpIntake | None: ...


async def open_sinks(stack: AsyncExitStack, pipeline: Served) -> None:
    """Connect every sink among ``pipeline``'s processors for the run (each leaves
    ``stack`` when it ends); the first sink that can read events back answers the intake's
    queries. Then open the intake's links to topics on other nodes (see
    :meth:`HttpIntake.open_links`).

    Raises:
        RingflowError: A sink cannot connect (its store is missing or refuses it), or a node
            the intake writes to cannot be reached.
    """
    intake = pipeline.intake
    for name, processor in pipeline.processors.items():
        if not isinstance(processor, Sink):
            continue
        await open_sink(stack, pipeline, name)
        if intake is not None and intake.api.store is None and isinstance(processor, EventStore):
            intake.api.store = processor
    if intake is not None:
        await intake.open_links(stack)


async def open_sink(stack: AsyncExitStack, pipeline: Served, name: str) -> None:
    """Connect the sink of consumer ``name`` (it leaves ``stack`` when it ends).

    Raises:
        RingflowError: It cannot connect (its store is missing or refuses it).
    """
    topology, topics, value_types = pipeline.topology, pipeline.topics, pipeline.value_types
    processor = pipeline.processors[name]
    assert isinstance(processor, Sink), f"consumer {name} has no sink"
    names = topology.consumers[name].topic_names
    ends = {
        (topic, partition.index): partition.end_offset
        for topic in names
        if topic in topics
        for partition in topics[topic].partitions
    }
    context = SinkContext(name, {t: value_types[t] for t in names}, pipeline.state_folder, ends)
    await stack.enter_async_context(processor.opened(context))
