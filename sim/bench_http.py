"""``ringflow bench``'s HTTP figures: an example served by ``ringflow serve`` in a child
process, loaded by ``ringflow load`` from this one, on this machine's loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio
import yaml

from .load import LoadSettings, Mix, run_load
from .redis_server import parent_death_hook

EXAMPLES = Path(__file__).resolve().parent.parent / "topology" / "examples"

HTTP_CASES: tuple[tuple[str, str, str, float, int], ...] = (
    ("durable_1000", "ess.yaml", "durable", 1000.0, 1),
    ("ring_3500", "ess.yaml", "ring", 3500.0, 1),
    ("ring_batch100", "ess.yaml", "ring", 2000.0, 100),
)
"""(name, example, acks, requests a second, events a request) of each measurement: seed
001's ESS at seed 002's rate with durable answers, at seed 001's rate, and in batches."""


def measure_http(
    example: str, acks: str, rps: float, batch: int, seconds: float, mix: Mix = "ess"
) -> dict[str, Any]:
    """Serve ``example`` with ``http.acks`` set to ``acks`` (fresh state, logging off), load it
    at ``rps`` requests of ``batch`` events for ``seconds``; return what the load measured.

    Raises:
        RuntimeError: The service did not start.
    """
    data = yaml.safe_load((EXAMPLES / example).read_text())
    data["http"]["acks"] = acks
    with tempfile.TemporaryDirectory(prefix="ringflow-bench-http-") as folder:
        path = Path(folder) / example
        path.write_text(yaml.safe_dump(data))
        server, url = serve_in_child(path, Path(folder) / "state")
        try:
            settings = LoadSettings(url, rps=rps, duration=seconds, batch=batch, mix=mix)
            result = trio.run(run_load, settings)
        finally:
            stop(server)
    return attrs.asdict(result)


def serve_in_child(path: Path, state: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``ringflow serve PATH`` in a child process (which dies with this one) on a free
    loopback port, logging off, its state and report in ``state``; return it and its URL
    once it listens.

    Raises:
        RuntimeError: It stopped before listening (with what it printed).
    """
    command = [sys.executable, "-m", "sim", "serve", str(path), "--quiet", "--no-log"]
    command += ["--listen", "127.0.0.1:0", "--state", str(state)]
    command += ["--report", str(state / "report.json")]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=parent_death_hook(),
    )
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("listening on "):
            return server, line.split()[-1]
    out, err = server.communicate()
    raise RuntimeError(f"ringflow serve {path} stopped before listening: {err or out}")


def stop(server: subprocess.Popen[str]) -> str:
    """Stop a child started by :func:`serve_in_child` with SIGTERM (killed if it takes more
    than a minute); return what it printed on standard error."""
    server.send_signal(signal.SIGTERM)
    try:
        _, err = server.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        _, err = server.communicate()
    return err
