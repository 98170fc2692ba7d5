"""The file pipeline of seed 004 end to end: real files in a temporary folder, a real
``ringflow run`` process, real SQLite and PostgreSQL; totals checked against sums computed
here line by line."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from actors import Columns, RecordBatch
from sim.gen_files import generate_files
from sim.live import LiveView
from sim.parsing import UsageParser, UsageParserParams, read_lines
from sim.run import REGISTRY
from sim.usage import LONG_LINE, explain
from tests.test_hardening_redis import wait_until
from topology import Pipeline, Topology, announcement, identify

VALID = re.compile(rb"(\d+) (\d+)\r?")


def reference(folder: Path) -> tuple[dict[int, int], int]:
    """Each user's total over the files of ``folder``, and the bad lines, line by line."""
    totals: dict[int, int] = {}
    bad = 0
    for path in sorted(folder.glob("[!.]*.txt")):
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":  # the newline that ends a file is not a line
            lines.pop()
        for line in lines:
            found = VALID.fullmatch(line)
            if found is None or int(found[1]) >= 2**63 or int(found[2]) >= 2**64:
                bad += 1
                continue
            user = int(found[1])
            totals[user] = totals.get(user, 0) + int(found[2])
    return totals, bad


def bad_lines(folder: Path) -> list[tuple[str, int]]:
    """The bad lines of the files of ``folder``, by file name and line number."""
    found = []
    for path in sorted(folder.glob("[!.]*.txt")):
        lines = path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for number, line in enumerate(lines, 1):
            valid = VALID.fullmatch(line)
            if valid is None or int(valid[1]) >= 2**63 or int(valid[2]) >= 2**64:
                found.append((path.name, number))
    return found


def topology_file(folder: Path, *, url: str | None, instances: int = 2, **params: Any) -> Path:
    data: dict[str, Any] = {
        "name": "usage-test",
        "clock": "real",
        "topics": {
            "files": {"partitions": 2, "capacity": 100},
            "sums": {"partitions": 3, "capacity": 50_000, "key": "user_id"},
        },
        "producers": {
            "incoming": {
                "files": {"dir": str(folder / "in"), "pattern": "*.txt", "poll": 0.1},
                "topic": "files",
            }
        },
        "consumers": {
            "parse": {
                "topic": "files",
                "processor": "usage_parser",
                "instances": instances,
                "output": "sums",
                "params": {"max_keys": 2_000, "chunk_bytes": 16_384, **params},
            },
            "totals": {
                "topic": "sums",
                "processor": "usage_totals",
                "params": {} if url is None else {"url": url},
            },
        },
        "checkpoint": {"every": 0.2},
        "redis": {"enabled": False},
    }
    if params.get("on_bad_line") == "dead_letter":
        data["topics"]["bad-lines"] = {"partitions": 2, "capacity": 100_000}
        data["consumers"]["parse"]["dead_letter"] = "bad-lines"
    path = folder / "usage.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def letters(path: Path, state: Path) -> list[tuple[str, int]]:
    """The bad lines the dead letters of ``state`` hold, by file name and line number."""
    shown = ringflow("dlq", path, "show", "--state", state, "--json", "--limit", "1000000")
    assert shown.returncode == 0, shown.stderr
    values = [json.loads(line)["value"] for line in shown.stdout.splitlines()]
    return sorted((Path(v["file"]).name, v["line"]) for v in values)


def ringflow(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def run(path: Path, state: Path, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return ringflow(
        "run",
        path,
        "--state",
        state,
        "--quiet",
        "--no-chart",
        "--report",
        report,
        "--idle",
        "0.5",
        *extra,
    )


def sqlite_totals(path: Path) -> dict[int, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT user_id, amount FROM usage_totals"))


def parsed(report: Path) -> dict[str, Any]:
    aggregates: dict[str, Any] = json.loads(report.read_text())["aggregates"]["parse"]
    return aggregates


EDGE_CASES = (
    b"1 5\n"
    b"2 7\r\n"  # CRLF: valid
    b"abc def\n42\n1 2 3\n7 -5\n7 2.5\n7 1e3\n\n"  # text, 1 and 3 fields, signs, blank
    b"99999999999999999999 1\n5 18446744073709551616\n"  # too large
    b"9223372036854775807 4\n"  # the largest user id
    b"1 6\n"
    b"3 4"  # a last line without its newline is a line
)


def test_totals_equal_the_sums_of_the_valid_lines_of_every_file(tmp_path: Path) -> None:
    made = generate_files(
        tmp_path / "in", files=5, size=60_000, users=300, seed=9, bad_fraction=0.01
    )
    (tmp_path / "in" / "edges.txt").write_bytes(EDGE_CASES)
    (tmp_path / "in" / ".writing.txt.tmp").write_bytes(b"1 1000000\n")  # not yet renamed
    expected, bad = reference(tmp_path / "in")
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    done = run(path, tmp_path / "state", tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sqlite_totals(tmp_path / "totals.sqlite") == expected
    aggregates = parsed(tmp_path / "r.json")
    assert aggregates["files"] == 6
    assert aggregates["bad_lines"] == bad == made.bad_lines + 9  # 9 in edges.txt
    sums = aggregates["sums_written"]
    assert "records read by parse" in done.stdout  # the chain's counts, each
    assert f"{sums:,}" in done.stdout.split("records read by totals", 1)[1].splitlines()[0]
    assert aggregates["duplicates"] == aggregates["missing"] == 0
    assert sorted(p.name for p in (tmp_path / "in" / "done").iterdir()) == sorted(
        [f"usage-9-{i:06d}.txt" for i in range(5)] + ["edges.txt"]
    )
    assert (tmp_path / "in" / ".writing.txt.tmp").exists()  # never read


def test_a_file_copied_back_or_renamed_is_not_counted_again(tmp_path: Path) -> None:
    generate_files(tmp_path / "in", files=2, size=20_000, users=50, seed=3)
    expected, _ = reference(tmp_path / "in")
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    state = tmp_path / "state"
    assert run(path, state, tmp_path / "r1.json").returncode == 0
    assert reference(tmp_path / "in")[0] == {}  # all moved into done/
    done = tmp_path / "in" / "done"
    shutil.copy(done / "usage-3-000000.txt", tmp_path / "in" / "again.txt")
    (done / "usage-3-000001.txt").rename(tmp_path / "in" / "renamed.txt")
    second = run(path, state, tmp_path / "r2.json")
    assert second.returncode == 0, second.stdout + second.stderr
    assert sqlite_totals(tmp_path / "totals.sqlite") == expected
    aggregates = parsed(tmp_path / "r2.json")
    assert (aggregates["files"], aggregates["duplicates"]) == (2, 2)
    assert sorted(p.name for p in done.iterdir()) == [
        "again.txt",
        "renamed.txt",
        "usage-3-000000.txt",
    ]


def test_on_bad_line_fail_stops_the_run_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1 2\n3 4\n5 x\n6 7\n")
    path = topology_file(
        tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}", on_bad_line="fail"
    )
    done = run(path, tmp_path / "state", tmp_path / "r.json")
    assert done.returncode == 1
    assert (
        "a.txt: line 3: the amount is not a base-10 integer: b'5 x' (on_bad_line: fail)"
        in done.stdout
    )
    assert "rolled back" not in done.stdout + done.stderr  # at once: it would meet it again


def test_how_a_parser_works_may_change_on_one_state_folder_but_not_what_it_reads(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()

    def fingerprint(instances: int = 2, **params: Any) -> str:
        path = topology_file(tmp_path, url=None, instances=instances, **params)
        return Pipeline.build(Topology.from_file(path), REGISTRY).fingerprint

    first = fingerprint()
    assert fingerprint(max_keys=10, chunk_bytes=8192, on_bad_line="fail") == first
    assert fingerprint(instances=3) != first
    path = topology_file(tmp_path, url=None)
    data = yaml.safe_load(path.read_text())
    data["producers"]["incoming"]["files"]["pattern"] = "*.csv"
    assert Pipeline.build(Topology.from_dict(data), REGISTRY).fingerprint != first


def test_the_live_view_of_a_watched_folder_counts_towards_no_total(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = topology_file(tmp_path, url=None)
    pipeline = Pipeline.build(Topology.from_file(path), REGISTRY)
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    view = LiveView(console, pipeline)
    view.refresh(pipeline, 12.5)
    console.print(view.progress)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "0/?" in shown  # not 0/0
    assert "t=12.5s" in shown
    assert "simulated" not in shown  # the real clock


def test_after_on_bad_line_fail_a_run_with_skip_goes_on_past_the_line_counting_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    lines = [f"{user} {user}\n".encode() for user in range(6_000)]  # sums written before it
    (tmp_path / "in" / "a.txt").write_bytes(b"".join(lines[:5_000]) + b"5 x\n" + b"".join(lines))
    expected, _ = reference(tmp_path / "in")
    url = f"sqlite:///{tmp_path / 'totals.sqlite'}"
    state = tmp_path / "state"
    failed = run(topology_file(tmp_path, url=url, on_bad_line="fail"), state, tmp_path / "r.json")
    assert failed.returncode == 1
    assert "a.txt: line 5001: " in failed.stdout
    assert "run again with the same state and on_bad_line: skip" in failed.stdout  # the way on
    skipped = run(topology_file(tmp_path, url=url, on_bad_line="skip"), state, tmp_path / "s.json")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert sqlite_totals(tmp_path / "totals.sqlite") == expected
    assert parsed(tmp_path / "s.json")["bad_lines"] == 1
    assert parsed(tmp_path / "s.json")["files"] == 1
    assert [p.name for p in (tmp_path / "in" / "done").iterdir()] == ["a.txt"]


def test_a_folder_into_embedded_postgresql_read_back_by_ringflow_totals(tmp_path: Path) -> None:
    generate_files(tmp_path / "in", files=4, size=40_000, users=500, seed=5)
    # The largest amounts, twice: a total beyond 64 bits, exact in PostgreSQL.
    largest = b"9223372036854775807 18446744073709551615\n"
    (tmp_path / "in" / "large.txt").write_bytes(largest * 2)
    expected, _ = reference(tmp_path / "in")
    path = topology_file(tmp_path, url=None, instances=3)
    state = tmp_path / "state"
    done = run(path, state, tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    shown = ringflow("totals", "--state", state)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "".join(f"{u} {a}\n" for u, a in sorted(expected.items()))
    assert expected[2**63 - 1] == 2 * (2**64 - 1)
    one = ringflow("totals", "--state", state, "--user", "7", "--json")
    assert json.loads(one.stdout) == {"7": expected[7]}
    missing = ringflow("totals", "--state", state, "--user", "100000")
    assert (missing.returncode, missing.stdout) == (1, "")
    nowhere = ringflow("totals", "--state", tmp_path / "nowhere")
    assert nowhere.returncode == 2
    assert "no embedded database in" in nowhere.stderr


@pytest.mark.kill
def test_a_run_killed_while_parsing_resumes_to_the_exact_totals(tmp_path: Path) -> None:
    rng = random.Random(f"usage/{os.environ.get('RINGFLOW_KILL_SEED', '0')}")
    generate_files(tmp_path / "in", files=6, size=400_000, users=2_000, seed=11, bad_fraction=0.001)
    expected, bad = reference(tmp_path / "in")
    store = tmp_path / "totals.sqlite"
    path = topology_file(
        tmp_path,
        url=f"sqlite:///{store}",
        chunk_bytes=4096,
        max_keys=300,
        on_bad_line="dead_letter",
    )
    wrong = bad_lines(tmp_path / "in")
    state = tmp_path / "state"
    args = [sys.executable, "-m", "sim", "run", str(path), "--state", str(state), "--quiet"]
    first = subprocess.Popen(
        [*args, "--idle", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wanted = rng.randrange(1, 4)

        def applied() -> bool:
            if not store.exists():
                return False
            try:
                with sqlite3.connect(store) as db:
                    rows = db.execute("SELECT count(*) FROM ringflow_applied").fetchone()
            except sqlite3.OperationalError:
                return False
            return bool(rows and rows[0] >= wanted)

        wait_until(applied, "sums applied before the kill", running=first)
        first.kill()
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert first.returncode == -9
    done = run(path, state, tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sqlite_totals(store) == expected
    aggregates = parsed(tmp_path / "r.json")
    assert aggregates["bad_lines"] == aggregates["dead_lettered"] == bad == len(wrong)
    assert aggregates["files"] == 6
    assert letters(path, state) == wrong  # each once, though some were read twice
    assert len(list((tmp_path / "in" / "done").iterdir())) == 6


async def test_a_processed_file_is_moved_only_once_an_epoch_holds_it(tmp_path: Path) -> None:
    # Moved as soon as it was read, a file was gone when a crash before the next epoch made
    # the parser read it again from where that epoch said: its last sums were lost.
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "a.txt"
    path.write_bytes(b"1 2\n3 4\n1 5\n")
    event = announcement(path, identify(path), 0, 0, 0.0, "move", str(folder / "done"))
    parser = UsageParser(UsageParserParams(max_keys=1))
    written: list[Any] = []
    committed: list[int] = []

    async def write(columns: Columns, settled: Callable[[], None], letters: Any = ()) -> None:
        settled()
        written.append(columns)

    batch = RecordBatch("files", 0, 0, [None], [event], [0.0])
    await parser.work(batch, write, committed.append)
    assert committed == [1]
    assert parser.processed == {event.key: str(path)}
    assert path.exists()  # processed, but no epoch holds that yet
    state = parser.snapshot()  # an epoch is captured...
    moved = parser.captured()
    assert moved is not None
    # ...and the process dies before it is written: restored from an earlier epoch, the file
    # is there to read again. Restored from this one, it is moved once the next is written.
    restored = UsageParser()
    restored.restore(state)
    assert path.exists()
    then = restored.captured()
    assert then is not None
    then()
    assert not path.exists()
    assert (folder / "done" / "a.txt").exists()
    assert restored.captured() is None
    moved()  # the first one's hook, late: the file is gone from there, nothing happens
    assert (folder / "done" / "a.txt").exists()


def test_the_same_command_again_takes_the_files_that_came_since(tmp_path: Path) -> None:
    # A completed run was taken for one with nothing left to do: run again, it read the new
    # files but wrote no epoch, and the run after that gave their sums offsets the database
    # had applied already, and skipped them.
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    state, seen = tmp_path / "state", tmp_path / "seen"
    for round_ in range(3):
        generate_files(seen / str(round_), files=1, size=20_000, users=100, seed=round_)
        (tmp_path / "in").mkdir(exist_ok=True)
        shutil.copy(seen / str(round_) / f"usage-{round_}-000000.txt", tmp_path / "in")
        done = run(path, state, tmp_path / f"r{round_}.json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("the run completed there" in done.stdout) == (round_ > 0)
    expected: dict[int, int] = {}
    for round_ in range(3):
        for user, amount in reference(seen / str(round_))[0].items():
            expected[user] = expected.get(user, 0) + amount
    assert sqlite_totals(tmp_path / "totals.sqlite") == expected


def test_a_missing_folder_a_missing_database_and_no_checkpoints_are_refused(
    tmp_path: Path,
) -> None:
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    done = run(path, tmp_path / "state", tmp_path / "r.json")  # no 'in' folder
    assert done.returncode == 2
    assert "$.producers.incoming.files.dir: " in done.stdout + done.stderr
    assert "is not a folder (create it, or fix the path)" in done.stdout + done.stderr
    (tmp_path / "in").mkdir()
    data = yaml.safe_load(path.read_text())
    del data["checkpoint"]
    path.write_text(yaml.safe_dump(data))
    for command in (("run", path, "--quiet", "--idle", "0.5"), ("serve", path, "--quiet")):
        unsaved = ringflow(*command)  # each run would read every file again, and add it again
        assert unsaved.returncode == 2, command
        assert "need checkpoints" in unsaved.stdout + unsaved.stderr
        assert "give --state DIR" in unsaved.stdout + unsaved.stderr
    missing = ringflow("totals", "--url", f"sqlite:///{tmp_path / 'no.db'}")
    both = ringflow("totals", "--state", tmp_path, "--url", f"sqlite:///{tmp_path / 'no.db'}")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
    assert missing.returncode == 2
    assert "no SQLite database at" in missing.stderr
    assert not (tmp_path / "no.db").exists()


def test_bad_arguments_and_a_damaged_database_are_refused_with_exit_2(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.sqlite"
    with sqlite3.connect(damaged) as db:  # the totals table without the expected columns
        db.execute("CREATE TABLE usage_totals (who TEXT)")
    read = ringflow("totals", "--url", f"sqlite:///{damaged}")
    assert read.returncode == 2, read.stdout + read.stderr
    assert "cannot read the totals of" in read.stderr
    assert "no such column" in read.stderr
    too_large = ringflow("totals", "--url", f"sqlite:///{damaged}", "--user", str(2**63))
    assert too_large.returncode == 2
    assert "--user: must be at most 9,223,372,036,854,775,807" in too_large.stderr
    users = ringflow("gen-files", tmp_path / "in", "--users", "99999999999999999999")
    assert users.returncode == 2
    assert "--users: must be at most" in users.stderr
    assert not (tmp_path / "in").exists()
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    counted = ringflow("run", path, "--events", "5")
    assert counted.returncode == 2
    assert "--events: this topology's producers watch folders" in counted.stdout + counted.stderr
    idle = ringflow("run", path, "--idle", "0")
    assert idle.returncode == 2
    assert "--idle: must be a number of seconds > 0, got 0" in idle.stderr
    assert "Traceback" not in read.stderr + too_large.stderr + users.stderr + idle.stderr


def test_another_database_on_a_state_folder_that_applied_sums_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1 2\n3 4\n")
    state = tmp_path / "state"
    first = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'a.sqlite'}")
    assert run(first, state, tmp_path / "r1.json").returncode == 0
    (tmp_path / "in" / "b.txt").write_bytes(b"1 10\n")
    other = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'b.sqlite'}")
    refused = run(other, state, tmp_path / "r2.json")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "this run's epochs say 2 sums were applied" in refused.stderr
    assert "holds none of this run's: was params.url changed" in refused.stderr
    assert (tmp_path / "in" / "b.txt").exists()  # not read: nothing lost
    first = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'a.sqlite'}")  # the run's url
    again = run(first, state, tmp_path / "r3.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sqlite_totals(tmp_path / "a.sqlite") == {1: 12, 3: 4}


def test_a_file_that_cannot_be_moved_to_done_is_counted_and_not_read_again(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1 2\n3 4\n")
    (tmp_path / "in" / "done").write_text("not a folder")  # where processed files would go
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    state = tmp_path / "state"
    for round_ in range(2):
        done = run(path, state, tmp_path / f"r{round_}.json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert sqlite_totals(tmp_path / "totals.sqlite") == {1: 2, 3: 4}  # once
    assert parsed(tmp_path / "r0.json")["not_settled"] == 1
    again = parsed(tmp_path / "r1.json")  # over the whole run: the file left, not read again
    assert (again["files"], again["not_settled"], again["duplicates"]) == (1, 1, 0)
    assert (tmp_path / "in" / "a.txt").exists()


def test_a_file_moved_back_from_done_is_a_duplicate_moved_there_again(tmp_path: Path) -> None:
    generate_files(tmp_path / "in", files=1, size=10_000, users=20, seed=2)
    expected, _ = reference(tmp_path / "in")
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    state = tmp_path / "state"
    assert run(path, state, tmp_path / "r1.json").returncode == 0
    name = "usage-2-000000.txt"
    (tmp_path / "in" / "done" / name).rename(tmp_path / "in" / name)  # moved back
    again = run(path, state, tmp_path / "r2.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert parsed(tmp_path / "r2.json")["duplicates"] == 1
    assert sqlite_totals(tmp_path / "totals.sqlite") == expected
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["done"]  # moved there again
    assert [p.name for p in (tmp_path / "in" / "done").iterdir()] == [name]


@pytest.mark.parametrize("long", [4000, 4095, 4096, 4097, 8190, 8191, 8192, 10_000, 12_288])
@pytest.mark.parametrize("tail", [b"", b"2 2\n3 3\n", b"2 2\n3 3", b"4 4\n" * 1500])
def test_the_lines_after_a_long_line_are_read_wherever_the_file_ends(
    tmp_path: Path, long: int, tail: bytes
) -> None:
    size = 4096
    data = b"1 1\n" + b"9" * long + b"\n" + tail
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    expected = [LONG_LINE[:-1] if len(line) >= size else line for line in expected]
    got = b""
    offset, ended = 0, False
    with path.open("rb") as handle:
        while not ended:
            chunk, taken, ended = read_lines(handle, offset, size)
            got += chunk
            offset += taken
    assert offset == len(data)
    lines = got.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    assert lines == expected
    assert explain(LONG_LINE[:-1]) == "a line longer than chunk_bytes"


def test_a_line_longer_than_a_chunk_is_one_bad_line_read_in_bounded_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"1 2\n" + b"ab" * 50_000 + b"\n3 4\n" + b"x" * 20_000)
    with path.open("rb") as handle:
        first = read_lines(handle, 0, 4096)
        assert first == (b"1 2\n", 4, False)
        second = read_lines(handle, 4, 4096)
        assert second == (LONG_LINE, 100_001, False)
        assert read_lines(handle, 100_005, 4096) == (b"3 4\n", 4, False)
        assert read_lines(handle, 100_009, 4096) == (LONG_LINE, 20_000, True)


def test_a_new_state_folder_on_a_kept_database_adds_to_its_totals(tmp_path: Path) -> None:
    # The offsets a database applied were recorded by topic and partition only: a run started
    # afresh found its offsets applied already, and added nothing.
    url = f"sqlite:///{tmp_path / 'totals.sqlite'}"
    path = topology_file(tmp_path, url=url)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1 1\n2 1\n")
    assert run(path, tmp_path / "state", tmp_path / "r1.json").returncode == 0
    (tmp_path / "in" / "b.txt").write_bytes(b"1 1000\n2 1000\n")
    done = run(path, tmp_path / "other-state", tmp_path / "r2.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sqlite_totals(tmp_path / "totals.sqlite") == {1: 1001, 2: 1001}


def test_an_unreadable_file_is_passed_over_and_the_others_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"1 5\n")
    os.symlink(folder / "nowhere", folder / "dangling.txt")  # a link to nothing
    bad_name = os.fsencode(folder) + b"/\xff\xfe.txt"  # a name that is not UTF-8
    with open(bad_name, "wb") as file:
        file.write(b"2 7\n")
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    done = run(path, tmp_path / "state", tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sqlite_totals(tmp_path / "totals.sqlite") == {1: 5}


def test_bad_lines_kept_as_dead_letters_shown_purged_but_not_replayed(tmp_path: Path) -> None:
    generate_files(tmp_path / "in", files=2, size=30_000, users=100, seed=4, bad_fraction=0.02)
    (tmp_path / "in" / "edges.txt").write_bytes(EDGE_CASES)
    (tmp_path / "in" / "only-bad.txt").write_bytes(b"x\n" * 25_000)  # more than one write
    expected, bad = reference(tmp_path / "in")
    wrong = bad_lines(tmp_path / "in")
    url = f"sqlite:///{tmp_path / 'totals.sqlite'}"
    path = topology_file(tmp_path, url=url, on_bad_line="dead_letter")
    state = tmp_path / "state"
    done = run(path, state, tmp_path / "r.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sqlite_totals(tmp_path / "totals.sqlite") == expected
    assert parsed(tmp_path / "r.json")["dead_lettered"] == bad == len(wrong)
    assert letters(path, state) == wrong
    shown = ringflow("dlq", path, "show", "--state", state, "--json", "--limit", "1000000")
    edges = {
        json.loads(line)["value"]["line"]: json.loads(line)
        for line in shown.stdout.splitlines()
        if json.loads(line)["value"]["file"].endswith("edges.txt")
    }
    assert edges[3]["value"]["text"] == "abc def"
    assert edges[3]["error"] == "bad line: the user id is not a base-10 integer"
    assert edges[4]["error"] == "bad line: 1 field, not 2 ('USER AMOUNT')"
    assert edges[9]["error"] == "bad line: a blank line"
    assert edges[11]["error"].startswith("bad line: the amount is too large")
    assert edges[11]["consumer"] == "parse"
    listed = ringflow("dlq", path, "list", "--state", state, "--json")
    (row,) = json.loads(listed.stdout)["consumers"]
    assert (row["consumer"], row["letters"], row["topic"]) == ("parse", bad, "bad-lines")
    replayed = ringflow("dlq", path, "replay", "--state", state)
    assert replayed.returncode == 2
    assert "are bad input it set aside (lines of files)" in replayed.stderr
    purged = ringflow("dlq", path, "purge", "--state", state)
    assert purged.returncode == 0, purged.stderr
    assert letters(path, state) == []


def test_on_bad_line_dead_letter_needs_a_dead_letter_topic(tmp_path: Path) -> None:
    path = topology_file(tmp_path, url=None, on_bad_line="dead_letter")
    data = yaml.safe_load(path.read_text())
    del data["consumers"]["parse"]["dead_letter"]
    path.write_text(yaml.safe_dump(data))
    checked = ringflow("validate", path)
    assert checked.returncode == 2
    assert "$.consumers.parse.params.on_bad_line: dead_letter needs a dead-letter topic" in (
        checked.stdout + checked.stderr
    )
    data["consumers"]["parse"]["dead_letter"] = "bad-lines"
    data["consumers"]["parse"]["params"]["on_bad_line"] = "skip"
    path.write_text(yaml.safe_dump(data))
    skipping = ringflow("validate", path)
    assert skipping.returncode == 2
    assert "drop dead_letter; or set params.on_bad_line: dead_letter" in (
        skipping.stdout + skipping.stderr
    )


def test_serve_watches_until_sigterm_then_finishes_what_it_announced(tmp_path: Path) -> None:
    generate_files(tmp_path / "in", files=2, size=20_000, users=100, seed=1)
    path = topology_file(tmp_path, url=f"sqlite:///{tmp_path / 'totals.sqlite'}")
    state, done = tmp_path / "state", tmp_path / "in" / "done"
    served = subprocess.Popen(
        [sys.executable, "-m", "sim", "serve", str(path), "--state", str(state), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def processed(count: int) -> Callable[[], bool]:
            return lambda: done.is_dir() and len(list(done.iterdir())) >= count

        wait_until(processed(2), "the first files processed", running=served)
        generate_files(tmp_path / "later", files=2, size=20_000, users=100, seed=2)
        for name in sorted(os.listdir(tmp_path / "later")):  # dropped while it watches
            (tmp_path / "later" / name).rename(tmp_path / "in" / name)
        wait_until(processed(3), "a file dropped later processed", running=served)
        served.send_signal(signal.SIGTERM)
        out, err = served.communicate(timeout=60)
    finally:
        if served.poll() is None:
            served.kill()
            served.communicate()
    assert served.returncode == 0, out + err
    assert "watching " in out
    assert "usage-test (seed 0): completed" in out
    assert sqlite_totals(tmp_path / "totals.sqlite") == reference(done)[0]  # what it read
    again = run(path, state, tmp_path / "r.json")  # and the rest, the next time
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(list(done.iterdir())) == 4
    assert sqlite_totals(tmp_path / "totals.sqlite") == reference(done)[0]
