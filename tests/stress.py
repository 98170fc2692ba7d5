"""Repeat the kill tests under CPU load: ``make stress`` (or ``python tests/stress.py``).

Every test marked ``kill`` SIGKILLs real processes at moments drawn from
``RINGFLOW_KILL_SEED``. A test that kills at a "random" moment explores only the moments the
machine's speed allows, so this runs them again and again, each repetition with another seed,
while a CPU burner loads every core, and prints how many repetitions of each test passed.
The output of a failed repetition is kept under ``reports/stress/`` for inspection.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_burners(count: int) -> list[subprocess.Popen[bytes]]:
    """One busy loop per core; each dies with this process, however it ends."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            preexec_fn=_die_with_parent,
        )
        for _ in range(count)
    ]


def run_once(seed: int, expression: str | None, out: Path) -> dict[str, bool]:
    """Run the kill tests once with ``seed``; return each test's outcome by node id."""
    junit = out / f"seed-{seed}.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "kill",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
    ]
    if expression:
        command += ["-k", expression]
    env = {**os.environ, "RINGFLOW_KILL_SEED": str(seed)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    outcomes: dict[str, bool] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            failed = any(child.tag in ("failure", "error") for child in case)
            outcomes[name] = not failed
    if done.returncode != 0 or not outcomes:
        (out / f"seed-{seed}.log").write_text(done.stdout + done.stderr)
    if not outcomes:
        outcomes["(pytest did not run)"] = False
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="repetitions (default 20)")
    parser.add_argument(
        "--burners", type=int, default=os.cpu_count() or 1, help="busy loops (default: cores)"
    )
    parser.add_argument("-k", dest="expression", help="only kill tests matching this")
    parser.add_argument("--first-seed", type=int, default=1, help="seed of repetition 1")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.burners < 0:
        parser.error("--repeat must be at least 1 and --burners at least 0")
    out = ROOT / "reports" / "stress"
    out.mkdir(parents=True, exist_ok=True)
    passed: Counter[str] = Counter()
    runs: Counter[str] = Counter()
    burners = start_burners(args.burners)
    started = time.monotonic()
    try:
        for number in range(args.repeat):
            seed = args.first_seed + number
            outcomes = run_once(seed, args.expression, out)
            for name, ok in outcomes.items():
                runs[name] += 1
                passed[name] += ok
            failed = [name for name, ok in outcomes.items() if not ok]
            elapsed = time.monotonic() - started
            status = "ok" if not failed else f"FAILED {', '.join(failed)} (see {out})"
            print(f"[{number + 1}/{args.repeat}] seed {seed}: {status} ({elapsed:.0f} s)")
            sys.stdout.flush()
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    print(f"\nkill tests under {args.burners} CPU burners, {args.repeat} repetitions:")
    for name in sorted(runs):
        print(f"  {passed[name]:>3}/{runs[name]} passed  {name}")
    return 0 if all(passed[name] == runs[name] for name in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
