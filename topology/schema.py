"""The schema of a topology file: :class:`Topology`, its root, made from YAML or plain data.

Each section has its class in :mod:`topology.sections`; the checks of single values are in
:mod:`topology.checks`, those across sections in :mod:`topology.crosscheck`. Reading the file
is :mod:`topology.loading`, and converting plain data :mod:`topology.convert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

from .checks import Checked, at_least, checks, optional_name
from .convert import converter, describe_errors
from .crosscheck import problems_across
from .errors import TopologyError
from .loading import TOO_DEEP, load_yaml, read_text
from .sections import (
    CheckpointSpec,
    ConsumerSpec,
    ExpectSpec,
    GatewaySpec,
    HttpSpec,
    NodeSpec,
    ProducerSpec,
    RedisSpec,
    TopicSpec,
)


@attrs.frozen
class Topology(Checked):
    """A whole topology file.

    Make one with :meth:`from_yaml` or :meth:`from_dict`; both report every problem at once
    as a :exc:`TopologyError`.
    """

    name: str = attrs.field(metadata=checks(optional_name))
    """The topology's name, used in reports."""
    topics: dict[str, TopicSpec]
    """The topics by name."""
    producers: dict[str, ProducerSpec] = attrs.field(factory=dict)
    """The producers by name (none when every event comes over HTTP)."""
    consumers: dict[str, ConsumerSpec] = attrs.field(factory=dict)
    """The consumers by name."""
    seed: int = attrs.field(default=0, metadata=checks(at_least(0)))
    """The seed every random choice is derived from (0 or more, as ``--seed``)."""
    clock: Literal["virtual", "real"] = "virtual"
    """``virtual`` runs in simulated time (fast, deterministic); ``real`` uses the wall clock."""
    expect: ExpectSpec = attrs.field(factory=ExpectSpec)
    """Invariants checked at the end of the run."""
    checkpoint: CheckpointSpec | None = None
    """Checkpoints; without this section, only ``--state`` turns them on."""
    redis: RedisSpec = attrs.field(factory=RedisSpec)
    """Logging to Redis; on by default, with an embedded server."""
    nodes: dict[str, NodeSpec] = attrs.field(factory=dict)
    """How the topology splits across processes for ``ringflow node``; ``ringflow run``
    ignores it and runs everything in one process."""
    gateway: GatewaySpec = attrs.field(factory=GatewaySpec)
    """Settings of the websocket gateways between nodes."""
    http: HttpSpec | None = None
    """Events taken from clients over HTTP (``ringflow serve``); None: producers only."""

    def node_of(self, kind: Literal["topics", "producers", "consumers"], name: str) -> str:
        """The node a topic, producer or consumer is assigned to (the topology has nodes)."""
        for node, spec in self.nodes.items():
            if name in getattr(spec, kind):
                return node
        raise KeyError(f"{kind[:-1]} {name!r} is on no node")

    @classmethod
    def from_yaml(cls, text: str, source: str = "topology") -> Topology:
        """Parse and validate a topology from YAML text.

        Args:
            text: The YAML text.
            source: What to call it in messages (the file's path).

        Raises:
            TopologyError: The YAML is malformed or the topology has problems.
        """
        return cls.from_dict(load_yaml(text, source), source)

    @classmethod
    def from_file(cls, path: Path) -> Topology:
        """Read, parse and validate a topology file (UTF-8 text).

        Raises:
            TopologyError: The file cannot be read, is not UTF-8, is malformed YAML, or the
                topology has problems.
        """
        return cls.from_yaml(read_text(path), str(path))

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
            raise TopologyError([TOO_DEEP], source) from None
        except Exception as exc:  # cattrs raises groups of everything it found
            try:
                problems = describe_errors(exc)
            except RecursionError:
                problems = [TOO_DEEP]
            raise TopologyError(problems, source) from None
        problems = topology.cross_check()
        if problems:
            raise TopologyError(problems, source)
        expect = data.get("expect")
        if topology.http is not None and not (
            isinstance(expect, dict) and "per_key_order" in expect
        ):
            # A served topology's latency counts: the check (each distinct key of a batch
            # hashed again) is for those who ask for it.
            topology = attrs.evolve(
                topology, expect=attrs.evolve(topology.expect, per_key_order=False)
            )
        return topology

    def cross_check(self) -> list[str]:
        """Return the problems that span sections: names that refer to nothing, topics nobody
        reads or writes, rings too large for memory, nodes that do not add up."""
        problems = problems_across(
            topics=self.topics,
            producers=self.producers,
            consumers=self.consumers,
            nodes=self.nodes,
            gateway=self.gateway,
            http=self.http,
        )
        if self.nodes and self.checkpoint is not None and self.checkpoint.every is None:
            problems.append(
                "$.checkpoint.every: a topology with nodes needs epochs by time: a node "
                "without producers of its own counts no events for every_records, so it "
                "would write no epoch, and the other nodes see only what its epochs hold"
            )
        for name, producer in self.producers.items():
            if producer.files is not None and self.clock != "real":
                problems.append(
                    f"$.producers.{name}.files: a folder is watched on the real clock; set "
                    "clock: real (files are read as they come, not in simulated time)"
                )
        return problems
