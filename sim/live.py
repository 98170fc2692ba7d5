"""The live view of ``ringflow run``: a progress bar and a table per partition."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from topology import Pipeline


class LiveView:
    """Shows a running pipeline; call :meth:`refresh` with fresh figures, then :meth:`stop`."""

    def __init__(self, console: Console, pipeline: Pipeline) -> None:
        self.console = console
        self.pipeline = pipeline
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        )
        # A served pipeline takes events until stopped, and a watched folder's files come as
        # they come: no total to count towards.
        watching = any(p.files is not None for p in pipeline.topology.producers.values())
        total = None if pipeline.intake is not None or watching else pipeline.events_planned
        self.produced = self.progress.add_task("produced", total=total, detail="")
        self.consumed = self.progress.add_task("consumed", total=total, detail="")
        self.live = Live(console=console, refresh_per_second=4, transient=False)
        self._last = (time.perf_counter(), 0)

    def start(self) -> None:
        """Begin drawing."""
        self.live.start()

    def stop(self) -> None:
        """Stop drawing (the last frame stays on screen)."""
        self.live.stop()

    def refresh(self, pipeline: Pipeline, now: float) -> None:
        """Redraw with the pipeline's current figures; ``now`` is the run's clock."""
        wall = time.perf_counter()
        consumed = pipeline.events_consumed
        then, before = self._last
        rate = (consumed - before) / (wall - then) if wall > then else 0.0
        self._last = (wall, consumed)
        if pipeline.intake is not None:
            taken = pipeline.intake.intake.statistics()
            refused = sum(taken.refused.values())
            detail = f"{taken.requests_accepted:,} requests accepted, {refused:,} refused"
        else:
            sim = now - pipeline.origin  # the run's time, continuous across resumes
            virtual = pipeline.topology.clock == "virtual"
            detail = f"t={sim:,.1f}s" + (" simulated" if virtual else "")
        self.progress.update(self.produced, completed=pipeline.events_produced, detail=detail)
        self.progress.update(
            self.consumed,
            completed=consumed,
            detail=f"{rate:,.{1 if rate < 10 else 0}f} events/s, lag {pipeline.total_lag():,}",
        )
        parts: list[Any] = [self.progress, self.partition_table(), self.processor_table()]
        if pipeline.deliveries:
            parts.append(self.delivery_table())
        self.live.update(Group(*parts))

    def partition_table(self) -> Table:
        """One row per partition: records, depth, peak, blocked time, lag."""
        table = Table(title="partitions", title_justify="left", expand=False)
        for column in (
            "topic",
            "partition",
            "records",
            "depth / capacity",
            "peak",
            "blocked s",
            "lag",
        ):
            table.add_column(column, justify="right" if column != "topic" else "left")
        for topic in self.pipeline.topics.values():
            for s in topic.statistics():
                capacity = "dynamic" if s.capacity is None else f"{s.capacity:,}"
                table.add_row(
                    s.topic,
                    str(s.partition),
                    f"{s.end_offset:,}",
                    f"{s.depth:,} / {capacity}",
                    f"{s.peak_depth:,}",
                    f"{s.blocked_seconds:,.2f}",
                    f"{max(s.lag.values(), default=0):,}",
                )
        return table

    def processor_table(self) -> Table:
        """What the processors show live (top videos, current blogger windows, counters)."""
        table = Table(title="live aggregates", title_justify="left", show_header=False)
        table.add_column("consumer")
        table.add_column("what")
        table.add_column("figure", justify="right")
        for name, processor in self.pipeline.processors.items():
            live: Any = getattr(processor, "live", None)
            for what, figure in (live() if live else [])[:6]:
                table.add_row(name, what, figure)
        return table

    def delivery_table(self) -> Table:
        """One row per consumer with a sink: attempts, retries, failures, dead letters, the
        breaker, and writes waiting for the sink."""
        table = Table(title="deliveries", title_justify="left", expand=False)
        for column in ("consumer", "attempts", "retries", "failures", "dead-lettered"):
            table.add_column(column, justify="right" if column != "consumer" else "left")
        table.add_column("breaker")
        table.add_column("waiting", justify="right")
        for name, delivery in sorted(self.pipeline.deliveries.items()):
            stats = delivery.statistics
            state = delivery.breaker.state
            table.add_row(
                name,
                f"{stats.attempts:,}",
                f"{stats.retries:,}",
                f"{stats.failures:,}",
                f"{delivery.dead_lettered:,}",
                state if state == "closed" else f"[bold red]{state}[/bold red]",
                f"{delivery.writing:,}",
            )
        return table
