"""The file pipeline measured against awk: parse and sum a corpus of usage files, and merge
the sums into the database.

    python -m sim.bench_files DIR [--size 2G] [--rounds 3]

makes the corpus in DIR once (``ringflow gen-files``, 64 MB files), then alternates: awk's
``{s[$1]+=$2}`` over the files, and ringflow's parse and sum (:func:`sim.usage.parse_lines`
and :class:`sim.usage.Sums`, chunk by chunk, as ``usage_parser`` reads a file), each timed
with its peak memory; and one merge of 1,000,000 users' sums into the embedded PostgreSQL.
Prints medians as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .gen_files import generate_files, parse_size
from .usage_store import open_totals

FILE_SIZE = 64 << 20
CHUNK = 2 << 20
AWK = "{s[$1]+=$2} END {for (u in s) print u, s[u]}"


def ringflow_sums(files: list[Path]) -> tuple[float, int, int]:
    """Seconds to parse and sum every file chunk by chunk as ``usage_parser`` does (sums
    written out every 100,000 users), the sums written, and the peak memory in KiB (in a
    child process, so that it is its own: ``VmHWM``, as ``ru_maxrss`` would count the
    parent's peak, which survives the fork and exec)."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sim.usage import Sums, parse_lines\n"
        "from sim.parsing import read_lines\n"
        "started = time.perf_counter()\n"
        "flushed = 0\n"
        "for name in sys.argv[1:]:\n"
        "    with open(name, 'rb') as handle:\n"
        "        offset, sums = 0, None\n"
        "        while True:\n"
        f"            data, taken, end = read_lines(handle, offset, {CHUNK})\n"
        "            parsed = parse_lines(data)\n"
        "            more = Sums.of(parsed.users, parsed.amounts)\n"
        "            sums = more if sums is None else sums + more\n"
        "            offset += taken\n"
        "            if end or len(sums) >= 100_000:\n"
        "                flushed += len(sums)\n"
        "                sums = None\n"
        "            if end:\n"
        "                break\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "print(time.perf_counter() - started, flushed, peak[0].split()[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True, check=True
    )
    seconds, users, rss = done.stdout.split()
    return float(seconds), int(users), int(rss)


def awk_sums(files: list[Path]) -> tuple[float, int]:
    """Seconds for awk over every file, and users found."""
    awk = shutil.which("mawk") or shutil.which("awk") or "awk"
    started = time.perf_counter()
    done = subprocess.run([awk, AWK, *map(str, files)], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout.count("\n")


def merge(users: int = 1_000_000) -> float:
    """Seconds to apply one batch of ``users`` distinct users' sums to the embedded
    PostgreSQL (a fresh one)."""
    with tempfile.TemporaryDirectory() as folder, open_totals(None, Path(folder)) as store:
        rng = np.random.default_rng(1)
        ids = rng.permutation(users).astype(np.int64)
        amounts = rng.integers(0, 1 << 40, users).astype(np.uint64)
        started = time.perf_counter()
        store.apply("sums", 0, 0, ids, amounts)
        return time.perf_counter() - started


def main() -> None:
    """Run the benchmark; print its medians as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    count = max(1, args.size // FILE_SIZE)
    files = sorted(args.dir.glob("usage-*.txt"))
    if len(files) != count:
        shutil.rmtree(args.dir, ignore_errors=True)
        generate_files(args.dir, files=count, size=FILE_SIZE, users=1_000_000, seed=1)
        files = sorted(args.dir.glob("usage-*.txt"))
    size = sum(f.stat().st_size for f in files)
    ours, theirs, rss = [], [], []
    for _ in range(args.rounds):
        seconds, _written, peak = ringflow_sums(files)
        ours.append(seconds)
        rss.append(peak)
        awk_seconds, _users = awk_sums(files)
        theirs.append(awk_seconds)
    merges = [merge() for _ in range(args.rounds)]
    print(
        json.dumps(
            {
                "bytes": size,
                "files": len(files),
                "ringflow_seconds": statistics.median(ours),
                "awk_seconds": statistics.median(theirs),
                "ratio_awk_over_ringflow": statistics.median(
                    t / o for t, o in zip(theirs, ours, strict=True)
                ),
                "ringflow_peak_rss_mb": max(rss) / 1024,
                "merge_1m_users_seconds": statistics.median(merges),
                "merge_users_per_second": 1_000_000 / statistics.median(merges),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
