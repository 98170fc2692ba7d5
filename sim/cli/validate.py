"""``ringflow validate``: check a topology file and explain every problem."""

from __future__ import annotations

import argparse

from rich.markup import escape

from topology import TopologyError

from ..console import make_console
from ..exitcode import ExitCode
from ..run import load_topology
from .errors import refuse
from .options import Command, topology_file


def validate(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow validate``; return its exit code."""
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        return refuse(make_console(stderr=True), exc)
    counts = ", ".join(
        _count(len(things), what)
        for things, what in (
            (topology.topics, "topic"),
            (topology.producers, "producer"),
            (topology.consumers, "consumer"),
        )
    )
    if topology.http is not None:
        kinds = len(topology.http.routes)
        serving = [name for name, node in topology.nodes.items() if node.api]
        how = f"on nodes {', '.join(serving)}" if serving else "ringflow serve"
        counts += f"; an HTTP API taking {_count(kinds, 'event kind')} ({how})"
    make_console().print(
        f"{escape(str(args.topology))}: valid topology {topology.name!r}: {counts}"
    )
    return ExitCode.OK


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


VALIDATE = Command(
    name="validate",
    help="check a topology file and explain every problem",
    description="Check a topology file. Exit code 0 when it is valid, 2 otherwise, with "
    "one line per problem naming its place in the file.",
    options=(topology_file(),),
    handler=validate,
)
"""The ``validate`` command."""
