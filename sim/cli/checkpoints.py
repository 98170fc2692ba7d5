"""``ringflow checkpoints``: list the epochs of a state folder, or show one."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from topology import CheckpointError, DamagedEpoch, describe_part, read_store

from ..console import make_console
from ..exitcode import ExitCode
from .errors import refuse
from .options import Command, option, positive


def checkpoints(args: argparse.Namespace) -> ExitCode:
    """Run ``ringflow checkpoints``; return its exit code."""
    err = make_console(stderr=True)
    out = make_console()
    try:
        meta, store = read_store(args.state)
    except CheckpointError as exc:
        return refuse(err, exc)
    checked = store.checksummed
    try:
        epochs = store.epochs()
        loaded = store.load(args.epoch, verify=False) if args.epoch else None
        damage = {e.epoch: store.verify(e.epoch) if checked else None for e in epochs}
    except CheckpointError as exc:
        return refuse(err, exc)
    finally:
        store.close()
    out.print(
        f"{escape(str(store.path))}: topology {meta.get('topology')!r}, schema "
        f"{meta.get('schema_version')}, fingerprint {meta.get('fingerprint', '?')[:12]}"
        + ("" if checked else " (an older schema: epochs have no checksums to verify)")
    )
    bad = [d for d in damage.values() if d is not None]
    if loaded is None:
        table = Table(
            "epoch",
            "written",
            "sim time",
            "events",
            "in rings",
            "size",
            "write",
            "final",
            "intact",
        )
        for e in epochs:
            written = datetime.datetime.fromtimestamp(e.created_at).strftime("%H:%M:%S")
            table.add_row(
                str(e.epoch),
                written,
                f"{e.sim_time:,.2f} s",
                f"{e.events_produced:,}",
                f"{e.ring_records:,}",
                f"{e.bytes / 1024:,.1f} KiB",
                f"{e.write_seconds * 1000:,.1f} ms",
                ("completed" if e.completed else "yes") if e.final else "",
                "?" if not checked else "yes" if damage[e.epoch] is None else "[red]DAMAGED[/red]",
            )
        out.print(table if epochs else "no epochs yet")
        for found in bad:
            out.print(f"[red]damaged:[/red] {escape(str(found))}")
        return ExitCode.OK
    info, parts = loaded
    out.print(
        f"epoch {info.epoch}: t={info.sim_time:,.2f}s, {info.events_produced:,} events "
        f"produced, {info.ring_records:,} records in rings, {info.bytes:,} bytes, "
        f"written in {info.write_seconds * 1000:,.1f} ms{', final' if info.final else ''}"
        + (", the run completed" if info.completed else "")
    )
    problem = damage.get(info.epoch)
    if problem is not None:
        out.print(f"[red]damaged:[/red] {escape(str(problem))}")
    table = Table("part", "name", "bytes", "what")
    for (kind, name), data in sorted(parts.items()):
        if problem is not None and problem.part == f"{kind}/{name}":
            table.add_row(kind, escape(name), f"{len(data):,}", "[red]damaged[/red]")
            continue
        try:
            what = describe_part(kind, name, data, schema=store.version)
        except DamagedEpoch as exc:
            what = f"[red]{exc.problem}[/red]"
        table.add_row(kind, escape(name), f"{len(data):,}", what)
    out.print(table)
    return ExitCode.OK


CHECKPOINTS = Command(
    name="checkpoints",
    help="list the checkpoint epochs in a state folder, or show one",
    description="List the epochs kept in a state folder (number, time, records, size, "
    "duration of the write), or show one in detail with --epoch.",
    options=(
        option("state", type=Path, metavar="DIR", help="the state folder"),
        option("--epoch", type=positive, help="show this epoch in detail"),
    ),
    handler=checkpoints,
)
"""The ``checkpoints`` command."""
