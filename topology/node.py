"""Nodes: the wiring of one node of a split topology.

A node serves its own topics through its gateway, to consumers and producers on other nodes
and to taps; its producers write to topics on other nodes through remote topics, and its
consumers join groups hosted elsewhere through remote groups. Its epochs keep, besides what
a whole pipeline keeps, what these links need to resume without loss or duplicates, and what
an epoch holds becomes visible to the other nodes only once it is written.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import attrs
import msgspec
import trio

from actors import (
    MAX_MESSAGE_SIZE,
    TCP,
    ConsumerGroup,
    Gateway,
    Network,
    RemoteGroup,
    RemoteTopic,
    Topic,
    kept,
    open_remote_topic,
)

from .errors import CheckpointError
from .plan import Placement, ProducerPlan, producer_id, topics_of
from .schema import Topology
from .sections import parse_address
from .snapshot import GatewayPart, MemberPart, RemoteTopicPart, Stateful, TopicSummary
from .tally import TopicTally


def output_id(consumer: str) -> str:
    """The producer id at the gateways of ``consumer`` writing to its output topic."""
    return f"consumer:{consumer}"


def reopened_topics(topology: Topology) -> frozenset[str]:
    """The topics written again after any restart, whatever an epoch says of their end: those
    of producers that watch a folder (restored, a watch looks again) and of the HTTP routes
    (served again), and the outputs of the consumers that read them, and so on down. In an
    epoch, their producers' finishes, their groups' ends and their members' leaves belong to
    the run before: a node restored from it drops them, or it would wait for producers that
    finished already, or not join a group that has new records."""
    found = {
        topic
        for name, spec in topology.producers.items()
        if spec.files is not None
        for topic in topics_of(topology, name)
    }
    if topology.http is not None:
        found |= set(topology.http.routes.values())
    grown = True
    while grown:
        grown = False
        for spec in topology.consumers.values():
            if spec.output and spec.output not in found and found.intersection(spec.topic_names):
                found.add(spec.output)
                grown = True
    return frozenset(found)


@attrs.define(eq=False)
class RemoteLink:
    """A producer instance's link to a topic on another node, and its part of an epoch.

    Enter it (``async with link as topic``) to open the remote topic, resumed from the part
    it was restored from.
    """

    name: str
    """``producer/instance/topic``."""
    url: str
    topic_name: str
    producer: str
    """The producer instance's id at the gateways."""
    token: str | None
    value_type: Any
    give_up: float
    agreement: dict[str, str]
    network: Network = TCP
    max_message_size: int = MAX_MESSAGE_SIZE
    """The largest message the other node takes."""
    finish: bool = True
    """Whether closing the link finishes the producer (an HTTP API's links do not: it may
    serve again, and it numbers new events after what the other node has)."""
    keep_finish: Callable[[], Awaitable[object]] | None = None
    """Returns once an epoch of this node, captured from when it is called, is written
    (see :func:`~actors.open_remote_topic`); None when the node writes no epochs."""
    reopen: bool = False
    """Whether its topic is written again after a restart (see :func:`reopened_topics`):
    a finish that the part restored says is dropped."""
    topic: RemoteTopic | None = None
    """The remote topic, once opened."""
    _restored: RemoteTopicPart[Any] | None = None
    _context: AbstractAsyncContextManager[RemoteTopic] | None = None

    def capture(self) -> RemoteTopicPart[Any] | None:
        """The numbering and the records not yet durable on the other node."""
        if self.topic is None:
            return self._restored
        return RemoteTopicPart.of(self.topic.snapshot())

    def restore(self, state: RemoteTopicPart[Any]) -> None:
        """Resume from ``state`` when opened."""
        if self.reopen and state.finished:
            state = msgspec.structs.replace(state, finished=False)
        self._restored = state

    async def __aenter__(self) -> RemoteTopic:
        self._context = open_remote_topic(
            self.url,
            self.topic_name,
            self.producer,
            token=self.token,
            value_type=self.value_type,
            give_up=self.give_up,
            restore=None if self._restored is None else self._restored.state(self.value_type),
            agreement=self.agreement,
            network=self.network,
            keep_finish=self.keep_finish,
            finish=self.finish,
            adopt=not self.finish,
            max_message_size=self.max_message_size,
        )
        self.topic = await self._context.__aenter__()
        return self.topic

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._context is not None
        return await self._context.__aexit__(kind, error, traceback)


@attrs.define(eq=False)
class MemberPositions:
    """What the members here of a group on another node processed, as a part of an epoch."""

    group: RemoteGroup
    reopen: bool = False
    """Whether its topic is written again after a restart (see :func:`reopened_topics`):
    an end that the part restored says is dropped, and the members join again."""

    def capture(self) -> MemberPart:
        """Offsets processed up to, per partition (saved whether or not members have joined
        yet: positions restored but not yet joined must not be forgotten)."""
        group = self.group
        return MemberPart(
            processed=dict(group.processed), ended=group.ended, summaries=dict(group.summaries)
        )

    def restore(self, state: MemberPart) -> None:
        """Skip what was processed before, when records come again; a group that had every
        record is not joined again."""
        if state.processed:
            self.group.resume_from(state.processed)
        if state.ended and not self.reopen:
            self.group.ended = True
            self.group.summaries = dict(state.summaries)


@attrs.define(eq=False)
class GatewayState:
    """A gateway's part of an epoch: producers that finished, and what they sent."""

    gateway: Gateway
    reopened: frozenset[str] = frozenset()
    """Topics written again after a restart (see :func:`reopened_topics`): their producers'
    finishes and members' leaves in the part restored are dropped."""

    def capture(self) -> GatewayPart:
        """The finished producers and their summaries."""
        return GatewayPart.of(self.gateway.snapshot())

    def restore(self, state: GatewayPart) -> None:
        """Take them back (before the gateway is told which producers to expect)."""
        again = self.reopened
        self.gateway.restore(
            GatewayPart(
                finished=[key for key in state.finished if key[0] not in again],
                summaries={t: s for t, s in state.summaries.items() if t not in again},
                left=[key for key in state.left if key[1] not in again],
            ).state()
        )


@attrs.frozen
class NodeStatistics:
    """A snapshot of a :class:`Node`."""

    node: str
    """The node's name."""
    remote_members: int
    """Consumer instances on other nodes that read topics here."""
    remote_groups: int
    """Groups on other nodes that consumers here read."""
    remote_links: int
    """Links of producers here to topics on other nodes."""


@attrs.define(eq=False)
class Node:
    """One node of a split topology: its gateway and its links to the other nodes.

    Make it with the topology and placement, then let the builder call :meth:`remote_group`,
    :meth:`link` and :meth:`open_gateway` as it meets groups, producers and topics.
    """

    topology: Topology
    placement: Placement
    agreement: dict[str, str]
    """What this node's peers must agree with (see :func:`~topology.plan.agreement`)."""
    gateway: Gateway | None = None
    """The node's gateway: serves its topics to other nodes and taps."""
    remote_members: set[tuple[str, str, str]] = attrs.field(factory=set)
    """(group, topic, member) of consumers on other nodes reading this node's topics."""
    remote_urls: dict[str, str] = attrs.field(factory=dict)
    """For topics on other nodes that this node uses: the ``ws://`` address of their node."""
    remote_groups: dict[tuple[str, str], RemoteGroup] = attrs.field(factory=dict)
    """By (consumer, topic), the groups on other nodes that consumers here read."""
    links: dict[str, RemoteLink] = attrs.field(factory=dict)
    """By ``producer/instance/topic``, the links of producers here to other nodes' topics."""
    reopened: frozenset[str] = attrs.field(init=False)
    """The topics written again after a restart (see :func:`reopened_topics`)."""

    @reopened.default
    def _reopened(self) -> frozenset[str]:
        return reopened_topics(self.topology)

    @property
    def spec(self) -> Any:
        """The node's section of the file."""
        return self.topology.nodes[self.placement.node]

    def address_of(self, node: str) -> str:
        """``HOST:PORT`` where ``node``'s gateway is reached (or listens, for this node)."""
        if node == self.placement.node and self.placement.listen is not None:
            return self.placement.listen
        return self.placement.peers.get(node) or self.topology.nodes[node].listen

    def url_of(self, topic: str) -> str:
        """The ``ws://`` address of the node that holds ``topic``."""
        url = self.remote_urls.get(topic)
        if url is None:
            node = self.topology.node_of("topics", topic)
            url = self.remote_urls[topic] = f"ws://{self.address_of(node)}/node"
        return url

    def remote_group(self, consumer: str, topic: str, group: str, value_type: Any) -> RemoteGroup:
        """The group ``group`` of ``topic`` on another node, for ``consumer`` here."""
        remote = self.remote_groups[consumer, topic] = RemoteGroup(
            self.url_of(topic),
            topic,
            group,
            self.placement.token,
            value_type,
            self.topology.gateway.connect_timeout,
            agreement=self.agreement,
            network=self.placement.network,
        )
        return remote

    def link(self, plan: ProducerPlan, topic: str, value_type: Any) -> RemoteLink:
        """The link of ``plan``'s producer instance to ``topic`` on another node."""
        name = f"{plan.producer}/{plan.instance}/{topic}"
        return self._link(name, topic, producer_id(plan), value_type)

    def intake_links(
        self, topics: Iterable[str], value_type: Callable[[str], Any]
    ) -> dict[str, RemoteLink]:
        """The links of this node's HTTP API to the ``topics`` on other nodes that its routes
        write to: one producer per node (``http-NODE``) that never finishes."""
        producer = f"http-{self.placement.node}"
        return {
            topic: self._link(
                f"http/{self.placement.node}/{topic}",
                topic,
                producer,
                value_type(topic),
                finish=False,
            )
            for topic in topics
        }

    def output_link(self, consumer: str, topic: str, value_type: Any) -> RemoteLink:
        """The link of ``consumer``'s instances here to ``topic``, its output, on another
        node: one producer (``consumer:NAME``) that finishes once they are all done."""
        return self._link(f"output/{consumer}/{topic}", topic, output_id(consumer), value_type)

    def _link(
        self, name: str, topic: str, producer: str, value_type: Any, *, finish: bool = True
    ) -> RemoteLink:
        link = self.links[name] = RemoteLink(
            name,
            self.url_of(topic),
            topic,
            producer,
            self.placement.token,
            value_type,
            self.topology.gateway.connect_timeout,
            self.agreement,
            self.placement.network,
            self.topology.gateway.max_message_size,
            finish=finish,
            reopen=topic in self.reopened,
        )
        return link

    def add_output_summary(self, consumer: str, topic: str, summary: TopicSummary) -> None:
        """Hand the gateway what ``consumer`` here wrote to ``topic`` (held here)."""
        assert self.gateway is not None
        self.gateway.add_summary(topic, output_id(consumer), summary)

    def source_wiring(
        self, plan: ProducerPlan, topics: Mapping[str, Topic], value_type: Callable[[str], Any]
    ) -> dict[str, Any]:
        """What the source of ``plan`` needs on this node (the fields of a
        :class:`~topology.source.WorkloadSource`): links to the topics it writes to that are
        not among ``topics`` (held here), a tally per topic of what it alone sent, and where
        to hand the summaries of what it sent to topics held here."""
        written = topics_of(self.topology, plan.producer)
        links = {t: self.link(plan, t, value_type(t)) for t in written if t not in topics}
        return {
            "open_remote": links.__getitem__,
            "sent": {t: TopicTally() for t in written},
            "add_summary": functools.partial(self.add_summary, plan),
        }

    def open_gateway(
        self,
        topics: Mapping[str, Topic],
        groups: Mapping[tuple[str, str], ConsumerGroup],
        value_types: Mapping[str, Any],
        summary_type: Any,
    ) -> Gateway:
        """Make the gateway that serves ``topics`` and their ``groups`` (by group, topic)."""
        settings = self.topology.gateway
        self.gateway = Gateway(
            dict(topics),
            dict(groups),
            dict(value_types),
            token=self.placement.token,
            session_timeout=settings.session_timeout,
            linger=settings.connect_timeout,
            max_message_size=settings.max_message_size,
            agreement=self.agreement,
            summary_type=summary_type,
            network=self.placement.network,
            kept_open=frozenset(
                c.dead_letter for c in self.topology.consumers.values() if c.dead_letter
            ),
        )
        return self.gateway

    def expect_producers(self, plans: Iterable[ProducerPlan], topics: Iterable[str]) -> None:
        """Tell the gateway which producers on other nodes write to each of ``topics``.

        A topic that only producers elsewhere write, all of which have finished (as an epoch
        this node is restored from says), is closed now: no producer is left to close it.
        """
        assert self.gateway is not None
        here = self.spec.producers
        consumers = self.topology.consumers
        for topic in topics:
            writers = [plan for plan in plans if topic in topics_of(self.topology, plan.producer)]
            remote = {producer_id(plan) for plan in writers if plan.producer not in here}
            outputs = {name for name, spec in consumers.items() if spec.output == topic}
            remote |= {output_id(name) for name in outputs - set(self.spec.consumers)}
            self.gateway.expect_producers(topic, remote)
            local = any(plan.producer in here for plan in writers) or bool(
                outputs & set(self.spec.consumers)
            )
            if remote and not local and not self.gateway.waiting_for.get(topic):
                self.gateway.topics[topic].close()

    def states(self) -> dict[tuple[str, str], Stateful[Any]]:
        """The node's own parts of an epoch, by (kind, name)."""
        states: dict[tuple[str, str], Stateful[Any]] = {
            ("remote", name): link for name, link in self.links.items()
        }
        for (consumer, read), group in self.remote_groups.items():
            positions = MemberPositions(group, reopen=read in self.reopened)
            for instance in range(self.topology.consumers[consumer].instances):
                states["member", f"{consumer}/{instance}/{read}"] = positions
        if self.gateway is not None:
            states["gateway", "state"] = GatewayState(self.gateway, self.reopened)
        return states

    def hold_back(
        self,
        topics: Iterable[Topic],
        epoch: Callable[[], Awaitable[object]],
        soon: Callable[[], None] | None = None,
    ) -> None:
        """Let other nodes see only what an epoch holds: a restart from it never rewrites an
        offset they saw, and producers keep their records until it holds them. Producers
        here keep their connections to other nodes open after their finish until an epoch
        (asked of ``epoch``) holds it, so that a restart of this node from before the
        finish finds those nodes still there. When APIs on other nodes write here, records
        they send ask for an epoch ``soon``: their answers wait for one; so do producers here
        waiting for room in a ring full of records no epoch holds yet."""
        for link in self.links.values():
            link.keep_finish = functools.partial(_keep_finish, epoch)
        assert self.gateway is not None
        self.gateway.durable_only = True
        if self.topology.http is not None:
            self.gateway.on_accepted = soon
        if not kept("hold_back"):
            return
        for topic in topics:
            for partition in topic.partitions:
                partition.hold_back(soon)
                partition.expose(partition.end_offset)

    def durable_hook(self, topics: Mapping[str, Topic]) -> Callable[[], None]:
        """What becomes durable for the other nodes once the epoch captured now is written:
        call it then."""
        processed = {key: dict(group.processed) for key, group in self.remote_groups.items()}
        ends = {}
        sequences: dict[tuple[str, int], dict[str, int]] = {}
        finished: set[tuple[str, str]] = set()
        left: set[tuple[str, str, str]] = set()
        gateway = self.gateway
        if gateway is not None:
            held = gateway.snapshot()
            finished, left = set(held.finished), set(held.left)
            for name, topic in topics.items():
                for partition in topic.partitions:
                    ends[partition] = partition.end_offset
                    sequences[name, partition.index] = dict(partition.snapshot().sequences)
        groups = dict(self.remote_groups)

        def durable() -> None:
            for partition, end in ends.items():
                partition.expose(end)
            if gateway is not None:
                gateway.mark_durable(sequences, finished, left)
            for key, group in groups.items():
                group.mark_durable(processed[key])

        return durable

    def gather_summaries(
        self, consumed: Iterable[str], topics: Mapping[str, Topic], produced: dict[str, TopicTally]
    ) -> None:
        """Replace ``produced`` of each topic ``consumed`` here by what every producer of the
        topic sent, as its node told the topic's node: consumers here are checked against it."""
        for topic in set(consumed):
            if topic in topics:
                assert self.gateway is not None
                summaries = self.gateway.summaries.get(topic, {})
            else:
                summaries = {}
                for (_, name), group in self.remote_groups.items():
                    if name == topic:
                        summaries.update(group.summaries)
            if summaries:
                produced[topic] = TopicTally.merged(summaries.values())

    def add_summary(self, plan: ProducerPlan, topic: str, summary: TopicSummary) -> None:
        """Hand the gateway what ``plan``'s producer instance sent to ``topic`` (held here)."""
        assert self.gateway is not None
        self.gateway.add_summary(topic, producer_id(plan), summary)

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the gateway where the node listens, until cancelled."""
        assert self.gateway is not None
        host, port = parse_address(self.address_of(self.placement.node))
        await self.gateway.serve(host, port, task_status=task_status)

    def statistics(self) -> NodeStatistics:
        """Return a snapshot of the node's wiring."""
        return NodeStatistics(
            node=self.placement.node,
            remote_members=len(self.remote_members),
            remote_groups=len(self.remote_groups),
            remote_links=len(self.links),
        )


async def _keep_finish(epoch: Callable[[], Awaitable[object]], tries: int = 3) -> None:
    # An epoch captured from now on, written: it holds a finish recorded before. An epoch
    # that fails is asked again, a few times (a run that stops fails them all at once).
    for _ in range(tries):
        try:
            await epoch()
        except CheckpointError:
            continue
        return
