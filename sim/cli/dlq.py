"""``ringflow dlq``: the dead letters of a state folder: list them, show them, send them back
to their consumer's sink, or remove them."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import trio
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from actors import RingflowError
from topology import (
    CheckpointError,
    CheckpointStore,
    Letter,
    Pipeline,
    Placement,
    Topology,
    TopologyError,
    dead_letter_topics,
    read_letters,
    replay,
    without,
    write_epoch,
)

from ..console import make_console
from ..exitcode import ExitCode
from ..resume import hold, let_go, state_folder
from ..run import REGISTRY, load_topology
from .errors import refuse
from .options import Command, events_option, option, positive, seed_option, topology_file
from .running import warn_damaged

ACTIONS = ("list", "show", "replay", "purge")

SHOWN = 50
"""Dead letters ``show`` prints without ``--limit``."""


def dlq(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow dlq``; return its exit code."""
    err = make_console(stderr=True)
    out = make_console()
    try:
        topology = load_topology(args.topology)
        if not dead_letter_topics(topology):
            raise TopologyError(
                ["no consumer of this topology has a dead_letter topic: it keeps no dead letters"],
                str(args.topology),
            )
        node = _node(topology, args.node, args.consumer)
        folder = state_folder(topology, args.state, node)
        placement = None if node is None else Placement(node)
        pipeline = Pipeline.build(
            topology, REGISTRY, seed=args.seed, events=args.events, placement=placement
        )
        if not (folder / "checkpoints.sqlite3").exists():
            raise CheckpointError(
                f"no checkpoints in {folder}: nothing was dead-lettered there (give the run's "
                "state folder with --state)"
            )
        spec = topology.checkpoint
        store = CheckpointStore.open(
            folder, pipeline.fingerprint, keep=spec.keep if spec else 3, name=topology.name
        )
    except (TopologyError, CheckpointError) as exc:
        return refuse(err, exc)
    try:
        if args.action in ("replay", "purge"):
            hold(folder)  # no run may write epochs meanwhile
        loaded = store.load_intact(lambda epoch: epoch)
        warn_damaged(err, store)
        if loaded is None:
            out.print(f"no epochs in {escape(str(folder))} yet: no dead letters")
            return ExitCode.OK
        info, parts = loaded
        letters = [
            item
            for item in read_letters(topology, parts)
            if args.consumer is None or item.letter.consumer == args.consumer
        ]
        wall = topology.http is not None
        if args.action == "list":
            return _list(out, letters, args.json, wall, info.epoch)
        if args.action == "show":
            return _show(out, pipeline, letters, args.json, wall, args.limit or SHOWN)
        if args.limit is not None:  # the oldest first: in the order they are listed
            letters = letters[: args.limit]
        if not letters:
            _say(
                out,
                args.json,
                {"action": args.action, "letters": 0},
                f"no dead letters to {args.action}",
            )
            return ExitCode.OK
        consumers = {item.letter.consumer for item in letters}
        unsent = sorted(consumers - set(pipeline.deliveries)) if args.action == "replay" else []
        if unsent:
            err.print(
                f"[red]cannot replay:[/red] the dead letters of {', '.join(unsent)} are bad "
                "input it set aside (lines of files), not records a sink refused: there is "
                "nothing to send them back to. Put the lines right ('show' prints them) in a "
                "new file in the folder, then 'purge' them (--consumer NAME)"
            )
            return ExitCode.USAGE
        rest = without(topology, parts, letters)
        if args.action == "purge":
            written = write_epoch(store, info, rest, info.ring_records - len(letters))
            counts = collections.Counter(item.letter.consumer for item in letters)
            _say(
                out,
                args.json,
                {"action": "purge", "purged": dict(counts), "epoch": written.epoch},
                f"purged {len(letters):,} dead letters ("
                + ", ".join(f"{c}: {n:,}" for c, n in sorted(counts.items()))
                + f"); epoch {written.epoch} written",
            )
            return ExitCode.OK
        rebuilt = Pipeline.build(
            topology,
            REGISTRY,
            seed=args.seed,
            events=args.events,
            restore=(info, rest),
            placement=placement,
        )
        rebuilt.state_folder = folder
        retried = (lambda text: err.print(escape(text))) if not args.json else None
        results, changed = trio.run(replay, rebuilt, letters, retried)
        again = sum(r.dead_lettered + r.kept for r in results)
        written = write_epoch(
            store, info, {**rest, **changed}, info.ring_records - len(letters) + again
        )
        lines = [
            f"{r.consumer}: {r.letters - r.kept:,} replayed, {r.delivered:,} delivered, "
            f"{r.dead_lettered:,} dead-lettered again"
            + (f"; the sink stayed away: {r.kept:,} not tried (kept)" if r.kept else "")
            for r in results
        ]
        _say(
            out,
            args.json,
            {
                "action": "replay",
                "consumers": [
                    {
                        "consumer": r.consumer,
                        "replayed": r.letters - r.kept,
                        "delivered": r.delivered,
                        "dead_lettered": r.dead_lettered,
                        "kept": r.kept,
                    }
                    for r in results
                ],
                "epoch": written.epoch,
            },
            "\n".join(lines) + f"\nepoch {written.epoch} written",
        )
        return ExitCode.FAILED if again else ExitCode.OK
    except CheckpointError as exc:
        return refuse(err, exc)
    except RingflowError as exc:
        err.print(f"[red]replay stopped:[/red] {escape(str(exc))}; the dead letters are kept")
        return ExitCode.FAILED
    except KeyboardInterrupt:
        err.print("interrupted: the dead letters are kept (records already sent may be sent again)")
        return ExitCode.INTERRUPTED
    finally:
        store.close()
        let_go(folder)


def _node(topology: Topology, given: str | None, consumer: str | None) -> str | None:
    # The node whose state folder holds the dead letters: given, or the one node hosting
    # dead-letter topics (of the consumer, when one is named).
    senders = sorted(c for cs in dead_letter_topics(topology).values() for c in cs)
    if consumer is not None and consumer not in senders:
        why = (
            f"no consumer named {consumer!r}"
            if consumer not in topology.consumers
            else f"consumer {consumer!r} has no dead_letter topic"
        )
        raise TopologyError(
            [f"--consumer: {why}; consumers with one: {', '.join(senders) or 'none'}"],
            topology.name,
        )
    if not topology.nodes:
        if given is not None:
            raise TopologyError([f"--node {given}: the topology has no nodes"], topology.name)
        return None
    topics = {
        topic
        for topic, consumers in dead_letter_topics(topology).items()
        if consumer is None or consumer in consumers
    }
    nodes = sorted({n for n, spec in topology.nodes.items() if topics & set(spec.topics)})
    if given is not None:
        if given not in topology.nodes:
            known = ", ".join(sorted(topology.nodes))
            raise TopologyError(
                [f"--node: no node named {given!r}; nodes are: {known}"], topology.name
            )
        if given not in nodes:
            raise TopologyError(
                [
                    f"--node {given}: it holds no dead-letter topic; "
                    f"{'they are on ' + ', '.join(nodes) if nodes else 'no node holds one'}"
                ],
                topology.name,
            )
        return given
    if len(nodes) != 1:
        raise TopologyError(
            [
                "--node: name the node whose state folder to read"
                + (f" (dead-letter topics are on {', '.join(nodes)})" if nodes else "")
            ],
            topology.name,
        )
    return nodes[0]


def when(seconds: float, wall: bool) -> str:
    """A dead letter's time for people: a date and time for a served topology (Unix time),
    else seconds of simulated time."""
    if wall:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    return f"t={seconds:,.2f} s"


def _say(out: Console, as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        out.print(escape(text))


def _list(out: Console, letters: list[Letter], as_json: bool, wall: bool, epoch: int) -> ExitCode:
    by_consumer: dict[str, list[Letter]] = {}
    for item in letters:
        by_consumer.setdefault(item.letter.consumer, []).append(item)
    summary: list[dict[str, Any]] = []
    for consumer, items in sorted(by_consumer.items()):
        errors = collections.Counter(item.letter.error for item in items)
        summary.append(
            {
                "consumer": consumer,
                "letters": len(items),
                "topic": items[0].topic,
                "first_failed": min(item.letter.first_failed for item in items),
                "last_failed": max(item.letter.last_failed for item in items),
                "errors": dict(errors.most_common()),
            }
        )
    if as_json:
        sys.stdout.write(json.dumps({"epoch": epoch, "consumers": summary}) + "\n")
        return ExitCode.OK
    if not summary:
        out.print(f"no dead letters (epoch {epoch})")
        return ExitCode.OK
    table = Table("consumer", "dead letters", "in topic", "first failed", "last failed", "errors")
    for row in summary:
        errors = row["errors"]
        top = list(errors.items())[:3]
        shown = "\n".join(f"{n:,} x {e[:60]}" for e, n in top)
        if len(errors) > 3:
            rest = row["letters"] - sum(n for _, n in top)
            shown += f"\n{rest:,} more, for {len(errors) - 3:,} other reasons"
        table.add_row(
            escape(row["consumer"]),
            f"{row['letters']:,}",
            escape(row["topic"]),
            when(row["first_failed"], wall),
            when(row["last_failed"], wall),
            escape(shown),
        )
    out.print(f"dead letters in epoch {epoch}:")
    out.print(table)
    return ExitCode.OK


def _show(
    out: Console,
    pipeline: Pipeline,
    letters: list[Letter],
    as_json: bool,
    wall: bool,
    limit: int,
) -> ExitCode:
    rows = []
    for item in letters[:limit]:
        letter = item.letter
        try:
            event = msgspec.msgpack.decode(letter.value, type=pipeline.value_type(letter.topic))
        except (msgspec.DecodeError, KeyError):
            event = msgspec.msgpack.decode(letter.value)
        if isinstance(event, msgspec.Struct):  # by field name, whatever its layout
            fields = msgspec.structs.asdict(event)
            kind = getattr(event, "kind", None)
            event = fields if kind is None else {"kind": kind, **fields}
        value = msgspec.to_builtins(event)
        data = msgspec.to_builtins(letter)
        data["value"] = value
        data["at"] = {"topic": item.topic, "partition": item.partition, "offset": item.offset}
        rows.append(data)
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return ExitCode.OK
    if not rows:
        out.print("no dead letters")
        return ExitCode.OK
    for row in rows:
        out.print(
            f"[bold]{escape(row['consumer'])}[/bold] {escape(row['topic'])}"
            f"[{row['partition']}] offset {row['offset']} key {escape(repr(row['key']))}: "
            f"{row['attempts']} attempt{'s' if row['attempts'] != 1 else ''}, "
            f"{'ran out' if row['retryable'] else 'refused'}, "
            f"first failed {when(row['first_failed'], wall)}, last "
            f"{when(row['last_failed'], wall)}"
        )
        out.print(f"  error: {escape(row['error'])}")
        out.print(f"  value: {escape(json.dumps(row['value']))}")
    if len(letters) > limit:
        out.print(f"... and {len(letters) - limit:,} more (--limit)")
    return ExitCode.OK


DLQ = Command(
    name="dlq",
    help="list, show, replay or purge the dead letters of a state folder",
    description=(
        "Dead letters are records a consumer's sink refused for good, or whose attempts ran "
        "out; they wait in the consumer's dead_letter topic, in the state folder's epochs. "
        "'list' counts them per consumer with their errors; 'show' prints them one by one "
        "with their values; 'replay' hands them back to their consumer's sink (with its "
        "retries: those refused again are dead letters again) and 'purge' removes them: "
        "both write a new epoch, which the next run resumes from, and need the state folder "
        "to themselves (stop the pipeline first). Exit code: 0, 1 when a replay left "
        "records dead-lettered again or not tried (its sink stayed away) or a sink could not "
        "be reached, 2 for a bad file, argument or state folder, 130 on Ctrl-C, 143 on SIGTERM "
        "(the dead letters are kept)."
    ),
    options=(
        topology_file(help="the topology file the state folder belongs to"),
        option("action", choices=ACTIONS, help="list, show, replay or purge"),
        option(
            "--state",
            type=Path,
            metavar="DIR",
            help="the run's state folder (default: as 'ringflow run' picks it)",
        ),
        option("--node", help="the node whose state folder it is (split topologies)"),
        option("--consumer", metavar="NAME", help="only the dead letters of this consumer"),
        option(
            "--limit",
            type=positive,
            help=f"show, replay or purge at most this many, in the order 'show' lists them "
            f"(show: {SHOWN} by default; replay and purge: all)",
        ),
        option("--json", action="store_true", help="print JSON (one line; show: one per letter)"),
        seed_option("the seed the run had, if not the file's"),
        events_option("the events the run had, if not the file's"),
    ),
    handler=dlq,
)
"""The ``dlq`` command."""
