"""The file pipeline killed with ``kill -9`` again and again: the totals must still be exact.

    python -m sim.kill_files DIR [--size 1G] [--kills 20] [--seed 1]

writes a corpus of usage files into ``DIR/in`` while it runs (the generator of seed 004:
each file written under a hidden name, then renamed into place, a few a second), and runs
the example topology ``usage-files.yaml`` on that folder (embedded PostgreSQL and Redis in
``DIR/state``) with ``ringflow run``, killing it with SIGKILL ``--kills`` times, each time
at a moment of a kind drawn from the seed:

- ``reading``: at a random time within a few seconds of its first sums since it started;
- ``writing``: while PostgreSQL runs one of its statements (the COPY into the staging table
  or the INSERT ... ON CONFLICT), seen in ``pg_stat_activity``;
- ``checkpointing``: as its checkpoint database changes (an epoch being written);
- ``renaming``: as a file appears in the folder (being written, or renamed into place).

After each kill the same command is run again. Once the kills are done, it runs to the end
(until the folder has been idle for a few seconds), and the totals in PostgreSQL are
compared with awk's over the same files (``{s[$1]+=$2}``; Python's exact sums when awk is
missing), along with the count of files processed. Prints a line per kill and a JSON
summary; exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import psycopg
import yaml

from .bench_files import AWK
from .gen_files import generate_files, parse_size

MOMENTS = ("reading", "writing", "checkpointing", "renaming")
FILE_SIZE = 64 << 20
EXAMPLE = Path(__file__).resolve().parent.parent / "topology" / "examples" / "usage-files.yaml"
WRITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
    "AND pid <> pg_backend_pid() AND (query ILIKE 'COPY%' OR query ILIKE 'INSERT%')"
)


def topology(folder: Path) -> Path:
    """The example topology, reading ``folder/in``."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["producers"]["incoming"]["files"]["dir"] = str(folder / "in")
    path = folder / "usage.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _applied(url: str) -> int | None:
    # Records of sums the database has applied (None: it cannot be reached now).
    try:
        with psycopg.connect(url, connect_timeout=1, autocommit=True) as db:
            row = db.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM ringflow_applied"
            ).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else int(row[0])


def _until(check: Callable[[], bool], run: subprocess.Popen[bytes], limit: float) -> bool:
    # Poll ``check`` until it holds (True), the run ends or ``limit`` seconds pass (False).
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and run.poll() is None:
        if check():
            return True
        time.sleep(0.002)
    return False


def wait_for(moment: str, run: subprocess.Popen[bytes], folder: Path, rng: random.Random) -> bool:
    """Wait until the run is at a ``moment`` of its kind; False if it ended first."""
    url = f"postgresql://postgres@/postgres?host={quote(str(folder / 'state' / 'postgres'))}"
    if not _until(lambda: _applied(url) is not None, run, 120):
        return False  # (its database up: the run is under way)
    if moment == "writing":
        connection: list[psycopg.Connection[tuple[int]]] = []

        def writing() -> bool:
            try:
                if not connection:
                    connection.append(psycopg.connect(url, connect_timeout=1, autocommit=True))
                row = connection[0].execute(WRITING).fetchone()
            except psycopg.Error:
                connection.clear()
                return False
            return bool(row and row[0])

        try:
            return _until(writing, run, 120)
        finally:
            for open_ in connection:
                open_.close()
    if moment == "checkpointing":
        files = [
            folder / "state" / name for name in ("checkpoints.sqlite3", "checkpoints.sqlite3-wal")
        ]

        def stamp() -> tuple[float, ...]:
            return tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files)

        before = stamp()
        return _until(lambda: stamp() != before, run, 120)
    if moment == "renaming":
        names = set(os.listdir(folder / "in"))
        return _until(lambda: set(os.listdir(folder / "in")) - names != set(), run, 30)
    start = _applied(url)
    if not _until(lambda: (_applied(url) or 0) > (start or 0), run, 120):
        return False
    time.sleep(rng.uniform(0, 3))
    return run.poll() is None


def exact_totals(files: list[Path]) -> dict[int, int]:
    """Each user's total over ``files``: awk's (its output parsed), or Python's."""
    awk = shutil.which("mawk") or shutil.which("awk")
    totals: dict[int, int] = {}
    if awk is not None:
        done = subprocess.run(
            [awk, AWK.replace("print u, s[u]", 'printf "%s %.0f\\n", u, s[u]'), *map(str, files)],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in done.stdout.splitlines():
            user, amount = line.split()
            totals[int(user)] = int(amount)
        return totals
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                fields = raw.split()
                who = int(fields[0])
                totals[who] = totals.get(who, 0) + int(fields[1])
    return totals


def main() -> None:
    """Run the kills; print a line each, then a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.5, help="files a second written")
    args = parser.parse_args()
    folder: Path = args.dir.resolve()
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "in").mkdir(parents=True)
    path = topology(folder)
    count = max(1, args.size // FILE_SIZE)
    rng = random.Random(args.seed)
    writer = threading.Thread(
        target=generate_files,
        args=(folder / "in",),
        kwargs={
            "files": count,
            "size": FILE_SIZE,
            "users": 1_000_000,
            "seed": args.seed,
            "rate": args.rate,
        },
        daemon=True,
    )
    command = [
        sys.executable,
        "-m",
        "sim",
        "run",
        str(path),
        "--state",
        str(folder / "state"),
        "--quiet",
        "--no-chart",
        "--report",
        str(folder / "report.json"),
    ]
    started = time.monotonic()
    writer.start()
    kills: dict[str, int] = {}
    for index in range(args.kills):
        moment = rng.choice(MOMENTS)
        if moment == "renaming" and not writer.is_alive():
            moment = "reading"
        run = subprocess.Popen(
            [*command, "--idle", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            caught = wait_for(moment, run, folder, rng)
            if caught:
                run.send_signal(signal.SIGKILL)
        finally:
            if run.poll() is None and not caught:
                run.send_signal(signal.SIGKILL)
            run.wait()
        kills[moment] = kills.get(moment, 0) + caught
        print(
            f"kill {index + 1}/{args.kills}: {moment}: "
            f"{'killed' if caught else 'not reached'} at {time.monotonic() - started:.1f} s",
            flush=True,
        )
    writer.join()
    final = subprocess.run([*command, "--idle", "5"], capture_output=True, text=True, check=False)
    shown = subprocess.run(
        [sys.executable, "-m", "sim", "totals", "--state", str(folder / "state")],
        capture_output=True,
        text=True,
        check=False,
    )
    stored = {int(u): int(a) for u, a in (line.split() for line in shown.stdout.splitlines())}
    files = sorted((folder / "in").rglob("usage-*.txt"))
    expected = exact_totals(files)
    report = json.loads((folder / "report.json").read_text())["aggregates"]["parse"]
    summary = {
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "kills": kills,
        "final_exit": final.returncode,
        "files_processed": report["files"],
        "totals_equal_awk": stored == expected,
        "users": len(expected),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary, indent=2))
    ok = final.returncode == 0 and stored == expected and report["files"] == len(files)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
