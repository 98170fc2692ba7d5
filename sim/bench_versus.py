"""``ringflow bench`` against others: the examples with everything on, in fresh processes,
against the plain per-event loop over the same events and Bytewax over as many."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

import topology

from .baseline import plain_loop
from .redis_logging import LogSettings
from .redis_server import EmbeddedRedis
from .report import LoggingReport, digest
from .resume import open_checkpoints
from .run import REGISTRY, load_topology, relaxed_gc, run_pipeline


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives fork and
    exec, so a child started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def example_topology(name: str) -> Path:
    """Return the path of an example topology shipped with ringflow."""
    return Path(topology.__file__).parent / "examples" / name


UGC_AT_THROUGHPUT: dict[str, Any] = {"rate": 100_000.0, "max_batch": 5000, "linger": 0.2}
"""Producer settings that make the UGC example's batches fill: its file models the 1,000
requests a second of its service, which makes batches of a dozen events."""


def example_spec(example: str, producers: dict[str, Any] | None = None) -> topology.Topology:
    """Load an example topology, with ``producers`` (fields of a producer: rate, linger...)
    replaced in every producer."""
    spec = load_topology(example_topology(example))
    if producers:
        changed = {name: attrs.evolve(p, **producers) for name, p in spec.producers.items()}
        spec = attrs.evolve(spec, producers=changed)
    return spec


def full_run(example: str, events: int, producers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run an example topology as users run it with everything on: an epoch every simulated
    second into a fresh state folder, and every event logged to an embedded Redis. Call it in
    a fresh process (:func:`in_fresh_process`): it reports that process's peak RSS.
    ``producers`` replaces fields of every producer (see :func:`example_spec`)."""
    spec = example_spec(example, producers)
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis.start(Path(folder))
        try:
            pipeline = topology.Pipeline.build(spec, REGISTRY, events=events)
            settings, pipeline = open_checkpoints(pipeline, Path(folder) / "state")
            result = run_pipeline(
                pipeline, checkpoints=settings, logging=LogSettings(server.url, "bench")
            )
        finally:
            server.stop(save=False)
    report = result.report
    assert isinstance(report.logging, LoggingReport), report.logging
    return {
        "events": report.events_produced,
        "events_per_s": report.events_per_second or 0.0,
        "epochs": len(result.pipeline.epochs),
        "digest": report.digest,
        "expect_ok": report.expect_ok,
        "logged": sum(report.logging.written.values()),
        "dropped": sum(report.logging.dropped.values()),
        "peak_rss_mb": peak_rss_mb(),
    }


def loop_run(example: str, events: int, producers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the plain per-event loop over the events of an example (in a fresh process)."""
    spec = example_spec(example, producers)
    with relaxed_gc():
        loop = plain_loop(topology.Pipeline.build(spec, REGISTRY, events=events))
    return {
        "events": loop["events"],
        "events_per_s": loop["events_per_second"],
        "digest": digest(loop["aggregates"]),
        "peak_rss_mb": peak_rss_mb(),
    }


def in_fresh_process(function: str, *args: Any) -> dict[str, Any]:
    """Call ``sim.bench_versus.FUNCTION(*args)`` in a fresh Python process and return its result."""
    code = (
        f"import json, sys; from sim.bench_versus import {function}; "
        f"print(json.dumps({function}(*json.loads(sys.argv[1]))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def has_bytewax(python: str) -> bool:
    """Whether ``python`` is a Python interpreter that imports Bytewax and numpy."""
    try:
        probe = subprocess.run(
            [python, "-c", "import bytewax, numpy; print('bytewax ok')"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):  # no such program, or not a Python
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "bytewax ok"


def bytewax_interpreter(given: str | None) -> tuple[str | None, str]:
    """The interpreter to run Bytewax with, and what to say when there is none: ``given``
    if it has Bytewax, else (when none is given) the one named by ``RINGFLOW_BYTEWAX_PYTHON``
    or this one."""
    if given:
        return (given, "") if has_bytewax(given) else (None, f"no Bytewax in {given}")
    for candidate in (os.environ.get("RINGFLOW_BYTEWAX_PYTHON"), sys.executable):
        if candidate and has_bytewax(candidate):
            return candidate, ""
    return None, "not installed"


def bytewax_run(python: str, events: int) -> dict[str, Any]:
    """Run ``sim/bench_bytewax.py`` (Bytewax counting the video site's events per video and
    kind) with ``python``; return what it prints."""
    script = Path(__file__).with_name("bench_bytewax.py")
    done = subprocess.run(
        [python, str(script), "--events", str(events)], capture_output=True, text=True
    )
    said = (done.stdout + done.stderr).strip()[-500:]
    if done.returncode != 0:
        return {"error": said or f"exit {done.returncode}"}
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        float(result["events_per_second"])
    except (IndexError, ValueError, KeyError, TypeError):
        return {"error": f"not the output of the benchmark: {said!r}"}
    return result


def headline(
    events: int, repeat: int, bytewax_python: str | None, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The video site with checkpoints and logging on against the plain loop and Bytewax."""
    python, missing = bytewax_interpreter(bytewax_python)
    runs: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    bytewax: list[dict[str, Any]] = []
    for round_ in range(1, repeat + 1):
        progress(
            f"round {round_}/{repeat}: video site, {events:,} events, checkpoints "
            "and logging on (fresh process)"
        )
        runs.append(in_fresh_process("full_run", "video-site.yaml", events))
        progress(f"round {round_}/{repeat}: plain Python loop, same events")
        loops.append(in_fresh_process("loop_run", "video-site.yaml", events))
        if python is not None:
            progress(f"round {round_}/{repeat}: Bytewax counting per video")
            bytewax.append(bytewax_run(python, events))
    rate = statistics.median(r["events_per_s"] for r in runs)
    loop_rate = statistics.median(r["events_per_s"] for r in loops)
    headline: dict[str, Any] = {
        "headline_events": runs[0]["events"],
        "video_site_events_per_s": rate,
        "video_site_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "video_site_epochs": runs[0]["epochs"],
        "video_site_logged_entries": runs[0]["logged"],
        "video_site_dropped_entries": sum(r["dropped"] for r in runs),
        "video_site_expect_ok": all(r["expect_ok"] for r in runs),
        "headline_plain_loop_events_per_s": loop_rate,
        "headline_loop_ratio": statistics.median(
            r["events_per_s"] / loop["events_per_s"] for r, loop in zip(runs, loops, strict=True)
        ),
        "headline_same_aggregates": all(
            r["digest"] == loop["digest"] for r, loop in zip(runs, loops, strict=True)
        ),
        "bytewax_events_per_s": None,
        "bytewax": missing if python is None else None,
    }
    failed = [b["error"] for b in bytewax if "error" in b]
    if failed:
        headline["bytewax"] = f"failed: {failed[0]}"
    elif bytewax:
        headline["bytewax"] = bytewax[0].get("bytewax")
        headline["bytewax_events_per_s"] = statistics.median(
            b["events_per_second"] for b in bytewax
        )
        headline["bytewax_ratio"] = statistics.median(
            r["events_per_s"] / b["events_per_second"] for r, b in zip(runs, bytewax, strict=True)
        )
    return headline


def versus_loop(
    example: str,
    events: int,
    repeat: int,
    progress: Callable[[str], None],
    producers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An example with everything on against its plain loop (the UGC one: ``ugc_*``), its
    producers' fields replaced by ``producers``."""
    runs: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    for round_ in range(1, repeat + 1):
        progress(
            f"round {round_}/{repeat}: {example}, {events:,} events, checkpoints and logging "
            "on, and its plain loop (fresh processes)"
        )
        runs.append(in_fresh_process("full_run", example, events, producers))
        loops.append(in_fresh_process("loop_run", example, events, producers))
    pairs = list(zip(runs, loops, strict=True))
    return {
        "ugc_events": runs[0]["events"],
        "ugc_events_per_s": statistics.median(r["events_per_s"] for r in runs),
        "ugc_plain_loop_events_per_s": statistics.median(r["events_per_s"] for r in loops),
        "ugc_ratio": statistics.median(r["events_per_s"] / lp["events_per_s"] for r, lp in pairs),
        "ugc_same_aggregates": all(r["digest"] == lp["digest"] for r, lp in pairs),
        "ugc_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def as_shipped(example: str, events: int, repeat: int, progress: Callable[[str], None]) -> float:
    """Events per second of an example exactly as its file says, everything on (median)."""
    rates: list[float] = []
    for round_ in range(1, repeat + 1):
        progress(f"round {round_}/{repeat}: {example} as shipped, {events:,} events")
        rates.append(in_fresh_process("full_run", example, events)["events_per_s"])
    return statistics.median(rates)
