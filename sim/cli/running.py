"""What ``ringflow run`` and ``ringflow node`` share: the lines before a run (damaged epochs,
the checkpoint folder or the epoch resumed from, where it logs) and the end of a run (the
report written, the summary printed, the exit code)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
from rich.console import Console
from rich.markup import escape

from actors import DISAGREEMENT, GatewayError, RingflowError, redact
from topology import CheckpointSettings, CheckpointStore, Pipeline, Topology, TopologyError

from .. import run as engine
from ..exitcode import ExitCode
from ..live import LiveView
from ..redis_logging import LogSettings, probe_redis, run_id_for
from ..redis_server import EmbeddedRedis, RedisUnavailable
from ..report import Report, write_chart
from ..resume import completes
from .errors import refuse
from .report_file import save_report
from .summary import print_summary


def warn_damaged(err: Console, checkpoints: CheckpointSettings | CheckpointStore | None) -> None:
    """Say which epochs were passed over because they are damaged."""
    if checkpoints is None:
        return
    store = checkpoints if isinstance(checkpoints, CheckpointStore) else checkpoints.store
    for damage in store.damaged:
        err.print(
            f"[yellow]warning:[/yellow] {escape(str(store.path))}: "
            f"{escape(str(damage))}; passed over for an older epoch"
        )


def check_saved(pipeline: Pipeline, checkpoints: CheckpointSettings | None, file: object) -> None:
    """Refuse to watch a folder without checkpoints: the ledger of the files processed and
    how far each was read live in epochs (without them, each run would read every file
    again, and add it again).

    Raises:
        TopologyError: Some producer here watches a folder, and checkpoints are off.
    """
    here = None if pipeline.node is None else set(pipeline.node.spec.producers)
    watching = [
        name
        for name, spec in pipeline.topology.producers.items()
        if spec.files is not None and (here is None or name in here)
    ]
    if watching and checkpoints is None:
        raise TopologyError(
            [
                f"$.producers.{watching[0]}.files: a folder's files need checkpoints (the "
                "ledger of files processed and how far each was read live in epochs): "
                "add a 'checkpoint' section, or give --state DIR"
            ],
            str(file),
        )


def announce_checkpoints(
    out: Console, pipeline: Pipeline, checkpoints: CheckpointSettings | None, *, node: bool
) -> None:
    """Say where the run keeps its checkpoints, or which epoch it resumes from (a node, on
    the real clock, does not give the simulated time)."""
    if checkpoints is None:
        return
    where = escape(str(checkpoints.store.path))
    epoch = pipeline.restored_from
    if epoch is None:
        out.print(f"checkpoints: {where}")
    elif node:
        out.print(
            f"resuming from epoch {epoch.epoch} of {where}: "
            f"{epoch.events_produced:,} events produced, {epoch.ring_records:,} records in rings"
        )
    elif epoch.completed and completes(pipeline):
        out.print(
            f"already complete: epoch {epoch.epoch} of {where} is the final epoch of a "
            f"completed run (t={epoch.sim_time:,.2f}s, {epoch.events_produced:,} events "
            "produced); nothing is left to run, its results follow"
        )
    else:
        out.print(
            f"resuming from epoch {epoch.epoch} of {where}: "
            f"t={epoch.sim_time:,.2f}s, {epoch.events_produced:,} events produced, "
            f"{epoch.ring_records:,} records in rings"
            + (
                " (the run completed there: what came since is taken now)"
                if epoch.completed
                else " (the run was stopped there)"
                if epoch.final
                else ""
            )
        )


@attrs.frozen
class Logging:
    """Where a run logs, and the embedded Redis started for it (to stop after the run)."""

    settings: LogSettings | None
    """None when the run does not log."""
    server: EmbeddedRedis | None
    """The embedded Redis this command started or attached to, if any."""


def open_logging(
    topology: Topology,
    no_log: bool,
    url: str | None,
    folder: Path,
    run_name: str,
    out: Console,
    err: Console,
    *,
    resumed: bool = False,
) -> Logging | ExitCode:
    """Where a run logs to: the Redis at ``url`` or in the file, or the embedded one of
    ``folder`` (started, or attached to when another command serves it); nowhere when logging
    is off. Redis is checked here, before the run: unavailable, it is said at once, and the
    run goes on without logging (an exit code when that is configured to fail). A run resumed
    from a checkpoint logs on under the run id of the folder's earlier segments."""
    spec = topology.redis
    if not spec.enabled or no_log:
        return Logging(None, None)
    server = None
    url = url or spec.url
    problem = None
    if url is None:
        try:
            url, server = EmbeddedRedis.attach_or_start(
                folder, on_note=lambda line: err.print(escape(line))
            )
        except RedisUnavailable as exc:
            if spec.on_unavailable == "fail":
                return refuse(err, f"cannot log to Redis: {exc}")
            err.print(escape(f"warning: running without logging: {exc}"))
            return Logging(None, None)
    else:
        problem = probe_redis(url)
        if problem is not None and spec.on_unavailable == "fail":
            return refuse(err, f"{problem} (redis.on_unavailable is 'fail')")
        if problem is not None:
            err.print(escape(f"warning: {problem} (running without logging)"))
    settings = LogSettings(
        url,
        run_id_for(folder, run_name, resumed=resumed),
        spec.maxlen,
        fail_if_unavailable=spec.on_unavailable == "fail",
        flush_timeout=spec.flush_timeout,
        unavailable=problem,
    )
    if problem is None:
        out.print(f"logging to Redis at {escape(redact(url))} as run {settings.run_id}")
    return Logging(settings, server)


SAME_EVERYWHERE = "give every node the same topology file, --seed and --events"
"""What to do when nodes disagree."""


def run_to_the_end(
    pipeline: Pipeline,
    checkpoints: CheckpointSettings | None,
    logging: Logging,
    *,
    report_path: Path,
    name: str,
    out: Console,
    err: Console,
    view: LiveView | None = None,
    chart: bool = False,
    on_gateway_error: Callable[[str], None] | None = None,
) -> ExitCode:
    """Run ``pipeline``, write its report, print its summary, and return the exit code.

    Args:
        pipeline: What to run.
        checkpoints: Where and when to write epochs; None for no checkpoints.
        logging: Where to log; its embedded Redis is stopped when the run ends.
        report_path: Where the report goes (saved elsewhere if that fails).
        name: The run's name in a report saved elsewhere (``NAME`` or ``NAME-NODE``).
        out: Standard output.
        err: Standard error.
        view: A live view to show while the run goes on.
        chart: Draw the PNG chart next to the report.
        on_gateway_error: Shows what the node's gateway meets.
    """
    if view is not None:
        view.start()
    try:
        # Looked up on its module at each call, so that a test can stand in for it.
        result = engine.run_pipeline(
            pipeline,
            checkpoints=checkpoints,
            logging=logging.settings,
            on_refresh=view.refresh if view is not None else None,
            handle_sigint=True,
            on_gateway_error=on_gateway_error,
        )
    except RingflowError as exc:  # Redis unreachable at start, configured to fail
        return refuse(err, exc)
    except ExceptionGroup as group:  # a sink or a link that cannot connect, from the run
        refused = _refusal(group)
        if refused is None:
            raise
        if isinstance(refused, GatewayError) and refused.code == DISAGREEMENT:
            return refuse(err, f"{refused}; {SAME_EVERYWHERE}")
        if isinstance(refused, GatewayError):  # a peer away or refusing, as for producers
            err.print(escape(str(refused)))
            return ExitCode.FAILED
        return refuse(err, refused)
    finally:
        if view is not None:
            view.stop()
            out.print()
        if logging.server is not None:
            logging.server.stop()
    if result.refused is not None and result.refused.code == DISAGREEMENT:
        return refuse(err, f"{result.refused}; {SAME_EVERYWHERE}")
    report = result.report
    saved, problem = save_report(report, report_path, checkpoints, name)
    print_summary(out, report, saved, problem)
    if chart and report.status != "failed" and saved is not None:
        path = saved.with_suffix(".png")
        try:
            drawn = write_chart(report, path)
        except OSError as exc:
            drawn = f"no chart: cannot write {path}: {exc.strerror or exc}"
        out.print(escape(drawn) if drawn else f"chart: {escape(str(path))}")
    return exit_code(report, problem)


def _refusal(group: BaseExceptionGroup[BaseException]) -> RingflowError | None:
    # The first of a group's errors when all are ringflow's own (each says what to do).
    matched, rest = group.split(RingflowError)
    if matched is None or rest is not None:
        return None
    first: BaseException = matched
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, RingflowError)
    return first


def exit_code(report: Report, report_problem: str | None) -> ExitCode:
    """The exit code of a run: how it ended, and whether its report went where asked."""
    if report.status == "interrupted":
        return ExitCode.TERMINATED if report.stopped_by == "SIGTERM" else ExitCode.INTERRUPTED
    if report.status == "failed" or not report.expect_ok or report_problem:
        return ExitCode.FAILED
    return ExitCode.OK
