"""An embedded PostgreSQL: the server the ``pgserver`` wheel ships, run as a child of this
process with its data in a state folder, for the central database of the file pipeline.

It listens only on a unix socket in its folder and stops when its owner ends, however the
owner ends (a parent-death signal), like the embedded ``redis-server``. PostgreSQL refuses
to run as root: under root (a container's default) the server runs as the unprivileged
user ``nobody``, which then owns its data folder; the folders above it are made
traversable (``o+x``) for it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import attrs

from .redis_server import parent_death_hook

UNPRIVILEGED = "nobody"
"""The user the server runs as when this process is root."""

SOCKET_NAME = ".s.PGSQL.5432"
MAX_SOCKET_PATH = 100
"""Longest unix socket path used (the kernel's limit is 107 bytes)."""


class PostgresUnavailable(RuntimeError):
    """The embedded server cannot be found or started."""


def find_postgres_bin() -> Path:
    """The folder holding ``postgres`` and ``initdb``: the ``pgserver`` wheel's, else the
    one ``pg_config --bindir`` names.

    Raises:
        PostgresUnavailable: Neither is installed.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (folder / "postgres").exists():
            return folder
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        folder = Path(found.stdout.strip())
        if found.returncode == 0 and (folder / "postgres").exists():
            return folder
    raise PostgresUnavailable(
        "PostgreSQL is not installed: pip install pgserver (a dependency of ringflow), "
        "or give the store's url (postgresql://... or sqlite:///PATH)"
    )


def _ids(user: pwd.struct_passwd | None) -> tuple[int, int] | None:
    return None if user is None else (user.pw_uid, user.pw_gid)


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        raise PostgresUnavailable(
            f"PostgreSQL does not run as root, and there is no user {UNPRIVILEGED!r} to run "
            "it as: run ringflow as another user, or give the store's url"
        ) from None


def _open_to(user: pwd.struct_passwd, folder: Path) -> None:
    os.chown(folder, user.pw_uid, user.pw_gid)
    for above in folder.parents:
        mode = above.stat().st_mode
        if not mode & stat.S_IXOTH:
            above.chmod(mode | stat.S_IXOTH)


@attrs.define(eq=False)
class EmbeddedPostgres:
    """A PostgreSQL server started by this process (see :meth:`start`)."""

    process: subprocess.Popen[bytes]
    folder: Path
    """Its folder: ``data/`` (the cluster) and, unless the path was too long, its socket."""
    socket_dir: Path
    temporary_socket: bool = False

    @property
    def url(self) -> str:
        """A libpq URL reaching the server through its socket, as ``postgres``."""
        return f"postgresql://postgres@/postgres?host={quote(str(self.socket_dir), safe='/')}"

    @classmethod
    def start(cls, folder: Path, *, timeout: float = 60.0) -> EmbeddedPostgres:
        """Start a server on ``folder/data`` (made with ``initdb`` the first time).

        Waits, within ``timeout``, for a server of an owner that just died to finish
        stopping (its data folder is locked until then).

        Raises:
            PostgresUnavailable: It could not be found, made or started.
        """
        binaries = find_postgres_bin()
        user = _server_user()
        folder = folder.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _open_to(user, folder)
        data = folder / "data"
        if not (data / "PG_VERSION").exists():
            shutil.rmtree(data, ignore_errors=True)  # an initdb cut short
            made = subprocess.run(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(data),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                capture_output=True,
                text=True,
                preexec_fn=parent_death_hook(signal.SIGKILL, _ids(user)),
            )
            if made.returncode != 0:
                shutil.rmtree(data, ignore_errors=True)
                raise PostgresUnavailable(
                    f"initdb failed in {data} (code {made.returncode}): "
                    f"{made.stderr.strip()[-300:] or 'it said nothing'}"
                )
        socket_dir, temporary = folder, False
        if len(str(folder / SOCKET_NAME)) > MAX_SOCKET_PATH:
            socket_dir, temporary = Path(tempfile.mkdtemp(prefix="ringflow-pg-")), True
            if user is not None:
                _open_to(user, socket_dir)
        deadline = time.monotonic() + timeout
        while True:
            process = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(socket_dir),
                    "-h",
                    "",  # no TCP: the socket only
                    "-c",
                    f"log_directory={data / 'log'}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                # Fast shutdown when the owner dies: its sessions are gone with it.
                preexec_fn=parent_death_hook(signal.SIGINT, _ids(user)),
                start_new_session=True,  # Ctrl-C reaches the owner, which stops it
            )
            server = cls(process, folder, socket_dir, temporary)
            error = server._wait_ready(deadline)
            if error is None:
                return server
            if "lock file" not in error or time.monotonic() >= deadline:
                server.stop()
                raise PostgresUnavailable(f"PostgreSQL did not start in {data}: {error}")
            time.sleep(0.2)  # the server of an owner that just died is still stopping

    def _wait_ready(self, deadline: float) -> str | None:
        socket_path = self.socket_dir / SOCKET_NAME
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                said = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                return f"it exited (code {code}): {said.strip()[-300:] or 'it said nothing'}"
            if socket_path.exists() and (self.folder / "data" / "postmaster.pid").exists():
                lines = (self.folder / "data" / "postmaster.pid").read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return None
            time.sleep(0.02)
        return "it was not ready in time"

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop the server (a fast shutdown: open sessions are ended), and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGQUIT)  # immediate shutdown
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        if self.temporary_socket:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
