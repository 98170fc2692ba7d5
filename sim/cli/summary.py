"""The summary ``ringflow run`` and ``ringflow node`` print after a run, read from its
:class:`~sim.report.Report`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..report import LoggingReport, PartitionReport, Report


def print_summary(
    console: Console, report: Report, path: Path | None, problem: str | None = None
) -> None:
    """Print the summary of a run: its figures, invariants, checkpoints, logging, and where
    its report went (``path``), or why not where asked (``problem``)."""
    latency = report.latency_seconds
    table = Table(
        title=f"{report.topology}"
        + (f", node {report.node}" if report.node else "")
        + f" (seed {report.seed}): {report.status}",
        show_header=False,
        title_justify="left",
    )
    table.add_column("what")
    table.add_column("figure", justify="right")
    if report.events_planned or not report.node:
        table.add_row("events produced", f"{report.events_produced:,}")
    if report.consumers or not report.node:
        table.add_row("events consumed (by every consumer)", f"{report.events_consumed:,}")
    counts = {name: c.records for name, c in report.consumers.items()}
    if len(set(counts.values())) > 1:  # consumers read different topics (a chain): each
        for name, records in counts.items():
            table.add_row(f"  records read by {escape(name)}", f"{records:,}")
    if report.node and report.partitions:  # a node hosting topics: its rings' work
        for what, figure in broker_rows(report.partitions):
            table.add_row(escape(what), figure)
    segments = report.segments
    several = f" over {len(segments)} segments" if len(segments) > 1 else ""
    table.add_row("wall time", f"{report.wall_seconds:,.2f} s{several}")
    virtual = report.clock == "virtual"
    if virtual:
        table.add_row("simulated time", f"{report.sim_seconds:,.2f} s")
    rate = report.events_per_second
    table.add_row("throughput", f"{rate:,.0f} events/s" if rate else "-")
    if several:
        for segment in segments:
            start = segment.resumed_from_epoch
            speed = segment.events_per_second
            table.add_row(
                f"  segment {segment.segment}"
                + ("" if start is None else f" (from epoch {start})")
                + f": {segment.events:,} events",
                f"{segment.wall_seconds:,.2f} s, " + (f"{speed:,.0f} events/s" if speed else "-"),
            )
    if latency.p50 is not None and latency.p95 is not None and latency.p99 is not None:
        table.add_row(
            f"latency p50 / p95 / p99 ({'simulated' if virtual else 'real'})",
            " / ".join(f"{p * 1000:,.1f} ms" for p in (latency.p50, latency.p95, latency.p99)),
        )
    peak = max(report.partitions, key=lambda p: p.peak_depth, default=None)
    if peak:
        capacity = f"{peak.capacity:,}" if peak.capacity else "dynamic"
        table.add_row(
            "deepest ring",
            escape(f"{peak.topic}[{peak.partition}]: ") + f"{peak.peak_depth:,} of {capacity}",
        )
    table.add_row(
        "blocked time, all partitions",
        f"{sum(p.blocked_seconds for p in report.partitions):,.2f} s",
    )
    if report.aggregates and report.digest:  # where no consumer runs there are none to digest
        table.add_row("digest of aggregates", report.digest[:16] + "...")
    console.print(table)
    for name, result in report.expect.items():
        mark = "[green]ok[/green]" if result.ok else "[red]FAILED[/red]"
        console.print(f"expect {name}: {mark} - {escape(result.detail)}")
    _print_checkpoints(console, report)
    _print_logging(console, report)
    if report.error:
        console.print(f"[red]run failed:[/red] {escape(report.error)}")
    if report.status == "interrupted":
        by = f" by {report.stopped_by}" if report.stopped_by else ""
        console.print(f"[yellow]interrupted{by}: the report is partial[/yellow]")
    if report.already_complete:
        console.print(
            "already complete: nothing was run; the figures are those of the run that completed it"
        )
    if problem is not None:
        console.print(f"[red]{escape(problem)}[/red]")
        if report.digest:
            console.print(f"digest: {report.digest}")
        if path is None:
            console.print("[red]the report could not be saved anywhere[/red]")
            return
        console.print(f"report saved instead to: {escape(str(path))}")
        return
    console.print(f"report: {escape(str(path))}")


def _print_checkpoints(console: Console, report: Report) -> None:
    checkpoints = report.checkpoints
    if not checkpoints:
        return
    for rollback in checkpoints.rollbacks:
        console.print(
            f"[yellow]rolled back to epoch {rollback.to_epoch}[/yellow] after: "
            f"{escape(rollback.error)}"
        )
    if not report.already_complete:
        console.print(
            f"checkpoints: {checkpoints.epochs_written} epochs written "
            f"(last: {checkpoints.last_epoch}) to {escape(checkpoints.database)}"
        )
    if checkpoints.final_epoch in ("timed out", "failed"):
        console.print(
            f"[yellow]the final epoch {checkpoints.final_epoch}[/yellow]: running the same "
            "command again resumes from the last epoch written"
        )


def _print_logging(console: Console, report: Report) -> None:
    logging = report.logging
    if isinstance(logging, LoggingReport):
        written = sum(logging.written.values())
        dropped = sum(logging.dropped.values())
        console.print(
            f"logged {written:,} entries to {escape(logging.url)} as run {logging.run_id}"
            + (f", dropped {dropped:,} while Redis fell behind" if dropped else "")
            + (f", {logging.failures} failed writes retried" if logging.failures else "")
        )
        if logging.unwritten:
            console.print(
                f"[yellow]not written to Redis: {logging.unwritten:,} entries[/yellow] "
                f"(still failing when the run ended; last error: "
                f"{escape(str(logging.last_error))})"
            )
    elif logging is not None:
        console.print(f"[yellow]not logged:[/yellow] {escape(logging.reason)}")


def broker_rows(partitions: list[PartitionReport]) -> list[tuple[str, str]]:
    """Rows for the summary of a node that hosts topics: what its rings accepted, delivered
    to each consumer group, and still hold, in total and per partition."""
    groups = sorted({group for p in partitions for group in p.delivered})
    rows = [("records accepted", f"{sum(p.records for p in partitions):,}")]
    rows.extend(
        (
            f"records delivered to group {group}",
            f"{sum(p.delivered.get(group, 0) for p in partitions):,}",
        )
        for group in groups
    )
    rows.append(("records in rings", f"{sum(p.depth for p in partitions):,}"))
    for p in partitions:
        capacity = "dynamic" if p.capacity is None else f"{p.capacity:,}"
        counts = {group: p.delivered.get(group, 0) for group in groups}
        if len(set(counts.values())) == 1:
            delivered = f"{next(iter(counts.values())):,} delivered to each group"
        else:
            delivered = ", ".join(f"{n:,} delivered to {group}" for group, n in counts.items())
        rows.append(
            (
                f"{p.topic}[{p.partition}]",
                f"{p.records:,} accepted, {delivered or 'no group'}, {p.depth:,} in ring "
                f"(peak {p.peak_depth:,} of {capacity})",
            )
        )
    return rows
