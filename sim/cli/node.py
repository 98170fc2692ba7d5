"""``ringflow node``: run one node of a split topology (one per process or container)."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from topology import (
    CheckpointError,
    Pipeline,
    Placement,
    TopologyError,
    intake_settings,
    parse_address,
)

from ..console import make_console
from ..exitcode import ExitCode
from ..resume import open_checkpoints
from ..run import REGISTRY, load_topology
from .errors import refuse
from .options import (
    Command,
    events_option,
    flag,
    option,
    report_option,
    seed_option,
    state_option,
    topology_file,
)
from .report_file import ReportPathError, check_report_path
from .running import (
    announce_checkpoints,
    check_saved,
    open_logging,
    run_to_the_end,
    warn_damaged,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Hosts a node may listen on without a shared token: nothing beyond this machine reaches
them."""


def node(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow node``; return its exit code."""
    err = make_console(stderr=True)
    out = make_console()
    try:
        topology = load_topology(args.topology)
        peers = peers_of(args.peer or os.environ.get("RINGFLOW_PEERS", "").split(","))
        token_env = topology.gateway.token_env
        token = os.environ.get(token_env) or None if token_env else None
        placement = Placement(args.node, args.listen, peers, token)
        pipeline = Pipeline.build(
            topology, REGISTRY, seed=args.seed, events=args.events, placement=placement
        )
        if pipeline.intake is not None:
            pipeline.serving = intake_settings(topology, args.api, args.node)
        elif args.api:
            raise ValueError(f"--api: node {args.node} serves no API (it gives no 'api' address)")
    except (TopologyError, ValueError) as exc:
        return refuse(err, exc)
    name = f"{topology.name}-{args.node}"
    path = args.report or Path("reports") / f"{name}-seed{pipeline.seed}.json"
    try:
        check_report_path(path)
        checkpoints, pipeline = open_checkpoints(pipeline, args.state)
        check_saved(pipeline, checkpoints, args.topology)
    except (CheckpointError, ReportPathError, TopologyError) as exc:
        return refuse(err, exc)
    warn_damaged(err, checkpoints)
    address = pipeline.address_of(args.node)
    host = parse_address(address)[0]
    if token is None and host not in LOOPBACK:
        hint = f"set {token_env}" if token_env else "name one in gateway.token_env and set it"
        return refuse(
            err,
            f"refusing to listen on {address} without a shared token: any machine "
            f"that reaches it could read and write the topics; {hint}",
        )
    problem = cannot_listen(address)
    if problem is None and pipeline.serving is not None:
        problem = api_problem(pipeline, checkpoints is not None, str(args.topology))
    if problem is not None:
        return refuse(err, problem)
    here = topology.nodes[args.node]
    out.print(
        f"node {escape(args.node)} of {escape(topology.name)}: gateway on ws://{escape(address)}"
        f" (topics: {escape(', '.join(here.topics) or '-')}; producers: "
        f"{escape(', '.join(here.producers) or '-')}; consumers: "
        f"{escape(', '.join(here.consumers) or '-')})" + ("; token required" if token else "")
    )
    announce_checkpoints(out, pipeline, checkpoints, node=True)
    folder = checkpoints.store.path.parent if checkpoints else Path("state") / name
    pipeline.state_folder = folder  # where sinks keep embedded stores
    logging = open_logging(
        topology,
        args.no_log,
        args.redis,
        folder,
        name,
        out,
        err,
        resumed=pipeline.restored_from is not None,
    )
    if isinstance(logging, ExitCode):
        return logging
    if pipeline.intake is not None:
        announce_api(out, err, pipeline, checkpoints is not None)
    return run_to_the_end(
        pipeline,
        checkpoints,
        logging,
        report_path=path,
        name=name,
        out=out,
        err=err,
        on_gateway_error=lambda message: err.print(f"gateway: {escape(message)}"),
    )


def api_problem(pipeline: Pipeline, checkpointed: bool, file: str) -> str | None:
    """Why the API of a served pipeline cannot be served as asked, or None."""
    assert pipeline.serving is not None
    assert pipeline.topology.http is not None
    host, port = pipeline.serving.listen
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    node = pipeline.placement is not None
    problem = cannot_listen(address, "the API", "--api" if node else "--listen")
    if problem is None and pipeline.topology.http.acks == "durable" and not checkpointed:
        problem = (
            f"{file}: $.http.acks: 'durable' answers a request once an epoch holds its "
            "events, so it needs checkpoints: add a 'checkpoint' section or give --state"
        )
    return problem


def announce_api(out: Console, err: Console, pipeline: Pipeline, checkpointed: bool) -> None:
    """Say when requests are answered, and print where the API listens once it does, and
    what a request's handler raises."""
    intake = pipeline.intake
    assert intake is not None
    durable = intake.spec.durable(checkpointed)
    where = "an epoch" if not intake.links else "an epoch of their topic's node"
    if pipeline.node is None:
        stop = "stops taking events, drains the rings and ends"
    elif not pipeline.topics:
        stop = "stops taking events, waits until the topics' nodes hold what it sent, and ends"
    else:
        stop = "writes a final epoch and stops (the same command carries on from it)"
    out.print(
        f"serving {escape(pipeline.topology.name)}: events are answered once "
        + (f"{where} holds them (acks: durable)" if durable else "in their rings (acks: ring)")
        + f"; Ctrl-C or SIGTERM {stop}"
    )
    intake.on_listening = lambda url: out.print(f"listening on {url}")

    def stopping() -> None:
        waiting = intake.unconfirmed()
        out.print(
            "stopping: no more events are taken (503)"
            + (f"; waiting until their nodes hold the {waiting:,} events sent" if waiting else "")
            + "; Ctrl-C again stops at once"
        )

    intake.on_stopping = stopping
    intake.on_error = lambda exc: err.print(
        escape(f"error: a request was answered 500: {type(exc).__name__}: {exc}")
    )


def peers_of(items: Sequence[str]) -> dict[str, str]:
    """Parse ``NODE=HOST:PORT`` items (blank ones are skipped).

    Raises:
        ValueError: An item is not ``NODE=HOST:PORT``.
    """
    peers = {}
    for item in items:
        if not item.strip():
            continue
        name, equals, address = item.strip().partition("=")
        if not equals or not name or not address:
            raise ValueError(f"--peer {item!r}: expected NODE=HOST:PORT")
        peers[name] = address
    return peers


def cannot_listen(address: str, what: str = "this node", option: str = "--listen") -> str | None:
    """Why ``what`` could not listen on ``address`` (HOST:PORT), or None if it can."""
    host, port = parse_address(address, any_port=True)  # checked already: 0 picks one
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot listen on {address}: {exc.strerror or exc}"
    for family, kind, protocol, _, where in infos:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway does
            try:
                probe.bind(where)
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
                return (
                    f"cannot listen on {address}: {why}; stop what listens there or give "
                    f"{what} another address ({option} HOST:PORT)"
                )
    return None


NODE = Command(
    name="node",
    help="run one node of a split topology (one per process or container)",
    description=(
        "Run the part of a topology that its 'nodes' section puts on NODE: its topics' "
        "rings, producers and consumers, with a websocket gateway serving its topics to "
        "the other nodes and to taps. Nodes find each other at their 'listen' addresses "
        "and may start in any order; a peer that cannot be reached is retried for "
        "gateway.connect_timeout seconds. Runs on the real clock. Exit code as 'run'."
    ),
    options=(
        topology_file(help="the topology file"),
        option("--node", required=True, metavar="NAME", help="which node to run"),
        seed_option("replace the file's seed (same on every node)"),
        events_option("replace the total number of events (give the same number to every node)"),
        report_option(
            "where to write this node's JSON report (default: reports/NAME-NODE-seedSEED.json)"
        ),
        option(
            "--listen",
            metavar="HOST:PORT",
            env="RINGFLOW_LISTEN",
            help="listen here instead of the node's address in the file, 0.0.0.0:PORT in a "
            "container for example (default: $RINGFLOW_LISTEN)",
        ),
        option(
            "--peer",
            action="append",
            metavar="NODE=HOST:PORT",
            help="reach NODE here instead of at its address in the file, such as "
            "broker=broker:7402 (repeatable; default: $RINGFLOW_PEERS, comma separated)",
        ),
        option(
            "--redis",
            metavar="URL",
            env="RINGFLOW_REDIS_URL",
            help="log to this Redis instead of the file's (default: $RINGFLOW_REDIS_URL)",
        ),
        state_option(
            "keep this node's checkpoints in DIR and resume from the newest one there (also "
            "turns checkpoints on when the file has no 'checkpoint' section; default folder: "
            "state/NAME-NODE)"
        ),
        option(
            "--api",
            metavar="HOST:PORT",
            env="RINGFLOW_API",
            help="serve the HTTP API here instead of at the node's 'api' address in the file "
            "(nodes that give one; port 0 picks a free one; default: $RINGFLOW_API)",
        ),
        flag("--no-log", "do not log events to Redis"),
    ),
    handler=node,
)
"""The ``node`` command."""
