"""The checks of a topology file that span its sections: the names one section gives another."""

from __future__ import annotations

from collections.abc import Mapping

from .checks import NAME
from .limits import MAX_RING_RECORDS, MAX_RING_RECORDS_WHY, limit_problem
from .sections import (
    ConsumerSpec,
    GatewaySpec,
    HttpSpec,
    NodeSpec,
    ProducerSpec,
    TopicSpec,
    parse_address,
)


def problems_across(
    *,
    topics: Mapping[str, TopicSpec],
    producers: Mapping[str, ProducerSpec],
    consumers: Mapping[str, ConsumerSpec],
    nodes: Mapping[str, NodeSpec],
    gateway: GatewaySpec,
    http: HttpSpec | None = None,
) -> list[str]:
    """Return the problems of a topology that span sections, one ``path: message`` each.

    Names must be valid and refer to what exists; every consumed topic needs a producer and
    every produced one a consumer (or ``allow_unconsumed``); the rings must fit in memory; and
    with a ``nodes`` section, everything runs on exactly one node.

    Args:
        topics: The topics by name.
        producers: The producers by name.
        consumers: The consumers by name.
        nodes: The nodes by name (empty: the topology runs in one process).
        gateway: The settings of the gateways between nodes.
        http: Events taken over HTTP, if the topology takes them.
    """
    problems = []
    for kind, specs in (
        ("topics", topics),
        ("producers", producers),
        ("consumers", consumers),
    ):
        for name in specs:
            if not NAME.match(name):
                problems.append(f"$.{kind}.{name}: {name!r} is not a valid name")
    for name, producer in producers.items():
        targets = (
            {"topic": producer.topic}
            if producer.topic
            else {f"topics.{s}": t for s, t in producer.topics.items()}
        )
        for field, topic in targets.items():
            if topic not in topics:
                problems.append(
                    f"$.producers.{name}.{field}: no topic named {topic!r}; "
                    f"topics are: {', '.join(sorted(topics)) or 'none'}"
                )
    produced = {
        t for p in producers.values() for t in ([p.topic] if p.topic else p.topics.values())
    }
    if http is not None:
        for kind, topic in http.routes.items():
            if topic not in topics:
                problems.append(
                    f"$.http.routes.{kind}: no topic named {topic!r}; "
                    f"topics are: {', '.join(sorted(topics)) or 'none'}"
                )
        produced.update(http.routes.values())
        if nodes and not any(spec.api for spec in nodes.values()):
            problems.append(
                "$.http: with a 'nodes' section, the API runs on the nodes that give an 'api' "
                "address (nodes.NAME.api: HOST:PORT); none does"
            )
    elif any(spec.api for spec in nodes.values()):
        node = next(name for name, spec in nodes.items() if spec.api)
        problems.append(
            f"$.nodes.{node}.api: the topology has no 'http' section, so there is no API to "
            "serve; add one (routes of event kinds to topics) or drop 'api'"
        )
    dead_letters = {c.dead_letter for c in consumers.values() if c.dead_letter is not None}
    problems.extend(_output_problems(consumers, topics, dead_letters))
    produced.update(c.output for c in consumers.values() if c.output and c.output in topics)
    for name, consumer in consumers.items():
        problems.extend(_dead_letter_problems(name, consumer, topics, produced))
        field = "topic" if consumer.topic else "topics"
        for topic in consumer.topic_names:
            if topic in dead_letters:
                problems.append(
                    f"$.consumers.{name}.{field}: {topic!r} is a dead-letter topic; its records "
                    "are read with 'ringflow dlq', not by consumers"
                )
            elif topic not in topics:
                problems.append(
                    f"$.consumers.{name}.{field}: no topic named {topic!r}; "
                    f"topics are: {', '.join(sorted(topics)) or 'none'}"
                )
            elif topic not in produced:
                problems.append(
                    f"$.consumers.{name}.{field}: no producer writes to topic {topic!r}, "
                    "nor is it any consumer's output, so this consumer would wait forever"
                )
    groups: dict[tuple[str, str], str] = {}
    for name, consumer in consumers.items():
        for topic in consumer.topic_names:
            group = consumer.group or name
            if (group, topic) in groups:
                problems.append(
                    f"$.consumers.{name}.group: group {group!r} on topic {topic!r} is "
                    f"already used by consumer {groups[group, topic]!r}"
                )
            groups[group, topic] = name
    if not producers and http is None:
        problems.append(
            "$.producers: at least one producer is needed (or an 'http' section taking "
            "events from clients)"
        )
    consumed = {t for c in consumers.values() for t in c.topic_names}
    for name, topic_spec in topics.items():
        if name in consumed or topic_spec.allow_unconsumed:
            continue
        writers = sorted(
            p
            for p, spec in producers.items()
            if name in ([spec.topic] if spec.topic else spec.topics.values())
        )
        if http is not None and name in http.routes.values():
            writers.append("the HTTP API")
        writers.extend(f"consumer {c}" for c, spec in consumers.items() if spec.output == name)
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
    ring_records = sum(spec.ring_records for spec in topics.values())
    problem = limit_problem(
        ring_records,
        MAX_RING_RECORDS,
        "records in all rings (partitions x (capacity + retention), over the topics)",
        MAX_RING_RECORDS_WHY,
    )
    if problem is not None:
        problems.append(f"$.topics: {problem}")
    problems.extend(_check_nodes(topics, producers, consumers, nodes, gateway))
    return problems


def _output_problems(
    consumers: Mapping[str, ConsumerSpec], topics: Mapping[str, TopicSpec], dead_letters: set[str]
) -> list[str]:
    # Each consumer's output topic exists, is no dead-letter topic, and no chain of
    # outputs leads back to a topic it reads (that topic would never close).
    problems = []
    feeds = {name: c.output for name, c in consumers.items() if c.output is not None}
    for name, target in feeds.items():
        where = f"$.consumers.{name}.output"
        if target not in topics:
            problems.append(
                f"{where}: no topic named {target!r}; topics are: "
                f"{', '.join(sorted(topics)) or 'none'}"
            )
            continue
        if target in dead_letters:
            problems.append(
                f"{where}: {target!r} is a dead-letter topic; it holds dead letters only"
            )
            continue
        reached, chain = {target}, [target]
        while True:  # the topics records written there reach, through other outputs
            further = {
                feeds[c]
                for c, spec in consumers.items()
                if c in feeds and set(spec.topic_names) & reached and feeds[c] not in reached
            }
            if not further:
                break
            reached |= further
            chain.extend(sorted(further))
        looped = sorted(reached & set(consumers[name].topic_names))
        if looped:
            problems.append(
                f"{where}: records written to {target!r} come back to {looped[0]!r}, which "
                f"this consumer reads (through {' -> '.join(chain)}): the topics would never "
                "close; write to a topic outside the loop"
            )
    return problems


def _dead_letter_problems(
    name: str, consumer: ConsumerSpec, topics: Mapping[str, TopicSpec], produced: set[str]
) -> list[str]:
    topic = consumer.dead_letter
    if topic is None:
        return []
    where = f"$.consumers.{name}.dead_letter"
    if topic not in topics:
        return [
            f"{where}: no topic named {topic!r}; declare it under topics (with a capacity: "
            "dead letters stay in its ring until 'ringflow dlq' replays or purges them)"
        ]
    if topic in consumer.topic_names:
        return [f"{where}: {topic!r} is a topic this consumer reads; name another one"]
    if topic in produced:
        return [
            f"{where}: producers write to {topic!r}; a dead-letter topic holds dead letters only"
        ]
    if topics[topic].ring_capacity is None:
        return [
            f"{where}: topic {topic!r} is dynamic; give it a capacity (nothing consumes it, and "
            "a dynamic ring takes records only while a consumer is attached)"
        ]
    return []


def _check_nodes(
    topics: Mapping[str, TopicSpec],
    producers: Mapping[str, ProducerSpec],
    consumers: Mapping[str, ConsumerSpec],
    nodes: Mapping[str, NodeSpec],
    gateway: GatewaySpec,
) -> list[str]:
    if not nodes:
        return []
    problems = []
    places: dict[str, dict[str, str]] = {"topics": {}, "producers": {}, "consumers": {}}
    listening: dict[tuple[str, int], str] = {}
    for node, spec in nodes.items():
        if not NAME.match(node):
            problems.append(f"$.nodes.{node}: {node!r} is not a valid name")
        address = parse_address(spec.listen)
        if address in listening:
            problems.append(
                f"$.nodes.{node}.listen: {spec.listen} is also where node "
                f"{listening[address]!r} listens"
            )
        listening[address] = node
        if spec.api is not None:
            api = parse_address(spec.api, any_port=True)
            if api in listening:
                problems.append(
                    f"$.nodes.{node}.api: {spec.api} is also where node {listening[api]!r} listens"
                )
            elif api[1]:  # port 0: a free port is picked
                listening[api] = f"{node}" + " (its API)"
        if not (spec.topics or spec.producers or spec.consumers or spec.api):
            problems.append(f"$.nodes.{node}: hosts no topic, producer, consumer or API")
        for kind, known in (
            ("topics", topics),
            ("producers", producers),
            ("consumers", consumers),
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
        ("topics", topics),
        ("producers", producers),
        ("consumers", consumers),
    ):
        missing = sorted(set(known) - set(places[kind]))
        if missing:
            problems.append(
                f"$.nodes: {kind} {', '.join(map(repr, missing))} on no node; with a "
                "'nodes' section every topic, producer and consumer needs one"
            )
    for name, consumer in consumers.items():
        dead, home = consumer.dead_letter, places["consumers"].get(name)
        there = places["topics"].get(dead) if dead is not None else None
        if home is not None and there is not None and there != home:
            problems.append(
                f"$.consumers.{name}.dead_letter: topic {dead!r} is on node {there!r}, the "
                f"consumer on node {home!r}; a dead-letter topic lives on its consumer's node "
                "(its letters are committed in the same step as the consumer's offsets)"
            )
    if gateway.token_env is None:
        for node, spec in nodes.items():
            host = parse_address(spec.listen)[0]
            if host not in ("127.0.0.1", "localhost", "::1"):
                problems.append(
                    f"$.nodes.{node}.listen: {spec.listen} is reachable from other "
                    "machines, so the gateways need a shared token: set "
                    "gateway.token_env to the name of an environment variable holding it"
                )
    return problems


def order_problems(
    name: str,
    *,
    topics: Mapping[str, TopicSpec],
    producers: Mapping[str, ProducerSpec],
    consumers: Mapping[str, ConsumerSpec],
    http: HttpSpec | None,
    passes_on: bool,
) -> list[str]:
    """``per_key_order`` (asked for: check it first) checks each producer instance's order
    within a partition: records passed on (``passes_on``) into an output of another number
    of partitions than their topic interleave. (Records a processor makes are numbered as it
    writes them.)"""
    consumer = consumers[name]
    output = topics.get(consumer.output or "")
    if output is None:
        return []
    others = sorted(c for c, spec in consumers.items() if spec.output == consumer.output)
    writing = [
        p
        for p, spec in producers.items()
        if consumer.output in ([spec.topic] if spec.topic else spec.topics.values())
    ]
    routed = http is not None and consumer.output in http.routes.values()
    writers = [
        *(f"consumer {c}" for c in others if c != name),
        *(f"producer {p}" for p in writing),
        *(["the HTTP API"] if routed else []),
    ]
    if writers:
        return [
            f"$.consumers.{name}.output: topic {consumer.output!r} has other writers too "
            f"({', '.join(writers)}): their records interleave with these in each partition, "
            "and expect.per_key_order checks each producer's order within a partition; give "
            "each writer its own topic, or set expect.per_key_order: false"
        ]
    for topic in consumer.topic_names:
        read = topics.get(topic)
        if read is not None and read.partitions != output.partitions and passes_on:
            return [
                f"$.consumers.{name}.output: topic {consumer.output!r} has "
                f"{output.partitions} partitions and {topic!r} {read.partitions}: records "
                "are placed there by key, so a partition gets records of several partitions "
                "of the topic read, interleaved; each key keeps its order, but "
                "expect.per_key_order checks each producer's order within each partition; "
                "give both as many partitions (records then keep their partition), or set "
                "expect.per_key_order: false"
            ]
    return []


def remote_output_problems(
    name: str,
    consumer: ConsumerSpec,
    topics: Mapping[str, TopicSpec],
    nodes: Mapping[str, NodeSpec],
    *,
    passes_on: bool,
) -> list[str]:
    """A consumer that writes to a topic on another node sends its records numbered, and a
    node restarted from its newest epoch sends again what it wrote since, with the same
    numbers: the other node keeps the first of each number. That is right only when the
    records come again in the same order. A relay (``passes_on``) reads them again in the
    order of each partition it reads: into an output of as many partitions, each keeps its
    partition and its order. Into another number of partitions, several partitions' records
    interleave in one as they happen to be read; and records a processor makes (a file
    parser's sums) interleave as its instances write. Those go to a topic on their node."""
    output = consumer.output
    home = next((node for node, spec in nodes.items() if name in spec.consumers), None)
    there = next((node for node, spec in nodes.items() if output in spec.topics), None)
    if output is None or home is None or there is None or home == there:
        return []
    where = (
        f"$.consumers.{name}.output: topic {output!r} is on node {there!r}, the consumer "
        f"on node {home!r}"
    )
    if not passes_on:
        return [
            f"{where}; the records its processor makes go to a topic on its own node (put "
            f"{output!r} on {home!r}: consumers on other nodes read it from there)"
        ]
    partitions = topics[output].partitions if output in topics else None
    other = [t for t in consumer.topic_names if t in topics and topics[t].partitions != partitions]
    if not other:
        return []
    return [
        f"{where}, and has {partitions} partitions where {other[0]!r} has "
        f"{topics[other[0]].partitions}: records relayed to another node keep their "
        "partition, so that a node restarted sends them again in the same order; give both "
        f"as many partitions, or put {output!r} on {home!r}"
    ]
