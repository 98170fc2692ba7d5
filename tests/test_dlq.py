"""``ringflow dlq``: the dead letters of a state folder listed, shown, replayed into the
consumer's sink once the receiver takes them, and purged; each as a real process against a
real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis
import trio
import yaml

from actors import Request, Response, serve_http
from sim.cli import main

from .test_relays import relay_data

POISON = {"events/0/10", "events/0/11", "events/1/40"}
"""Records the receiver refuses until told otherwise."""


def relay_file(folder: Path, url: str, events: int = 400) -> Path:
    data = relay_data(url, events)
    data["name"] = "dlq-test"
    data["consumers"]["relay"]["retry"]["attempt_timeout"] = 2.0
    del data["consumers"]["relay"]["breaker"]
    data["checkpoint"] = {"every": 0.5}
    path = folder / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Receiver:
    """Takes every batch unless it holds a refused record (422); keeps what it took."""

    def __init__(self) -> None:
        self.refused = set(POISON)
        self.taken: Counter[str] = Counter()
        self.down = False
        """Answer 503 to everything (an outage)."""

    async def __call__(self, request: Request) -> Response:
        if self.down:
            return Response.json(503, {"error": "down for maintenance"})
        ids = [record["id"] for record in json.loads(request.body)["records"]]
        if self.refused.intersection(ids):
            return Response.json(422, {"error": "cannot take it"})
        self.taken.update(ids)
        return Response.json(200, {"ok": len(ids)})


async def ringflow(*args: str | Path) -> tuple[int, str, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "sim", *map(str, args)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_dead_letters_are_listed_shown_replayed_once_the_receiver_takes_them_and_purged(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, receiver, "127.0.0.1", 0)
        path = relay_file(tmp_path, f"http://127.0.0.1:{server.port}/hook")
        code, out, err = await ringflow(
            "run", path, "--state", state, "--quiet", "--no-chart", "--report", tmp_path / "r.json"
        )
        assert code == 1, out + err  # totals_match: three records did not reach the receiver
        assert len(receiver.taken) == 397
        assert not POISON & set(receiver.taken)

        code, out, err = await ringflow("dlq", path, "list", "--state", state, "--json")
        assert code == 0, err
        [row] = json.loads(out)["consumers"]
        assert row["consumer"] == "relay"
        assert row["letters"] == 3
        [error] = row["errors"]
        assert error.endswith('/hook answered 422: {"error":"cannot take it"}')

        code, out, err = await ringflow("dlq", path, "show", "--state", state, "--json")
        assert code == 0, err
        shown = [json.loads(line) for line in out.splitlines()]
        assert {f"{s['topic']}/{s['partition']}/{s['offset']}" for s in shown} == POISON
        assert all(s["value"]["video_id"] == s["key"] for s in shown)
        assert all(s["attempts"] == 1 and not s["retryable"] for s in shown)

        # Still refused: the replay dead-letters them again, and says so.
        code, out, err = await ringflow("dlq", path, "replay", "--state", state, "--json")
        assert code == 1, out + err
        [result] = json.loads(out)["consumers"]
        assert (result["replayed"], result["delivered"], result["dead_lettered"]) == (3, 0, 3)

        receiver.refused.clear()  # the cause is fixed
        code, out, err = await ringflow("dlq", path, "replay", "--state", state, "--json")
        assert code == 0, out + err
        [result] = json.loads(out)["consumers"]
        assert (result["replayed"], result["delivered"], result["dead_lettered"]) == (3, 3, 0)
        assert set(receiver.taken) >= POISON
        assert all(n == 1 for n in receiver.taken.values()), "a record was delivered twice"
        assert len(receiver.taken) == 400

        code, out, err = await ringflow("dlq", path, "list", "--state", state, "--json")
        assert json.loads(out)["consumers"] == []

        # The run resumes from the epoch the replay wrote: done, every record delivered.
        code, out, err = await ringflow(
            "run", path, "--state", state, "--quiet", "--no-chart", "--report", tmp_path / "r.json"
        )
        assert code == 0, out + err
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["expect_ok"], report["expect"]
        assert report["expect"]["totals_match"]["ok"]
        nursery.cancel_scope.cancel()
    assert len(receiver.taken) == 400


async def test_purge_removes_the_dead_letters_and_an_unknown_consumer_is_refused(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, receiver, "127.0.0.1", 0)
        path = relay_file(tmp_path, f"http://127.0.0.1:{server.port}/hook", events=200)
        await ringflow(
            "run", path, "--state", state, "--quiet", "--no-chart", "--report", tmp_path / "r.json"
        )
        nursery.cancel_scope.cancel()
    code, out, err = await ringflow("dlq", path, "purge", "--state", state, "--consumer", "nope")
    assert code == 2
    assert "--consumer: no consumer named 'nope'" in err
    code, out, err = await ringflow("dlq", path, "purge", "--state", state, "--json")
    assert code == 0, err
    assert json.loads(out)["purged"] == {"relay": 3}
    code, out, err = await ringflow("dlq", path, "list", "--state", state)
    assert "no dead letters" in out
    newest = max(int(str(e)) for (e,) in _query(state, "SELECT epoch FROM epochs"))
    extra = tmp_path / "extra"  # a copy whose newest epoch (the purge's) is damaged
    shutil.copytree(state, extra)
    _query(extra, f"UPDATE parts SET data = X'00' WHERE epoch = {newest}")
    code, out, err = await ringflow("dlq", path, "list", "--state", extra)
    assert code == 0, err
    assert f"epoch {newest}" in err
    assert "passed over for an older epoch" in err
    assert "no dead letters" not in out  # the epoch before the purge holds them


async def test_records_dead_lettered_while_the_receiver_was_down_fail_totals_and_replay_later(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    receiver.refused.clear()
    receiver.down = True
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, receiver, "127.0.0.1", 0)
        path = relay_file(tmp_path, f"http://127.0.0.1:{server.port}/hook", events=100)
        data = yaml.safe_load(path.read_text())
        relay = data["consumers"]["relay"]
        relay["retry"] = {"initial": 0.01, "maximum": 0.02, "max_attempts": 3}
        relay["breaker"] = {"threshold": 100, "cool_down": 0.1}
        path.write_text(yaml.safe_dump(data))
        report = tmp_path / "r.json"
        code, out, err = await ringflow(
            "run", path, "--state", state, "--quiet", "--no-chart", "--report", report
        )
        assert code == 1, out + err
        totals = json.loads(report.read_text())["expect"]["totals_match"]
        assert not totals["ok"]
        assert "relay: view totals 0, producers reported" in totals["detail"]

        code, out, err = await ringflow("dlq", path, "show", "--state", state, "--json")
        shown = [json.loads(line) for line in out.splitlines()]
        assert len(shown) == 50  # --limit's default
        assert all(s["retryable"] and s["attempts"] == 3 for s in shown)
        assert all("answered 503" in s["error"] for s in shown)

        # Still away: the first run of letters runs out of attempts again; the others are
        # not tried, and every letter is kept, the retried ones with their whole history.
        code, out, err = await ringflow("dlq", path, "replay", "--state", state, "--json")
        assert code == 1, out + err
        [result] = json.loads(out)["consumers"]
        assert result["delivered"] == 0
        assert result["dead_lettered"] + result["kept"] == 100
        assert 0 < result["dead_lettered"] < 100
        code, out, err = await ringflow(
            "dlq", path, "show", "--state", state, "--json", "--limit", "100"
        )
        after = {
            (s["topic"], s["partition"], s["offset"]): s for s in map(json.loads, out.splitlines())
        }
        assert len(after) == 100
        first = {(s["topic"], s["partition"], s["offset"]): s for s in shown}
        for key, letter in first.items():
            assert after[key]["first_failed"] == letter["first_failed"]
            assert after[key]["attempts"] in (3, 6)  # kept as it was, or 3 more
        assert sorted({s["attempts"] for s in after.values()}) == [3, 6]

        receiver.down = False  # back
        code, out, err = await ringflow("dlq", path, "replay", "--state", state)
        assert code == 0, out + err
        assert "relay: 100 replayed, 100 delivered, 0 dead-lettered again" in out
        nursery.cancel_scope.cancel()
    assert len(receiver.taken) == 100


@pytest.mark.kill
async def test_a_run_killed_while_retrying_delivers_everything_once_when_resumed(
    tmp_path: Path,
) -> None:
    rng = random.Random(f"dlq/{os.environ.get('RINGFLOW_KILL_SEED', '0')}")
    away_after, kill_after = rng.randrange(50, 1500), rng.randrange(5, 60)
    receiver = Receiver()
    receiver.refused.clear()
    failed = trio.Event()
    answered = {"failures": 0, "back": False}

    async def flaky(request: Request) -> Response:
        if not answered["back"] and len(receiver.taken) >= away_after:  # then away
            answered["failures"] += 1
            if answered["failures"] >= kill_after:
                failed.set()
            return Response.json(503, {"error": "away"})
        return await receiver(request)

    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, flaky, "127.0.0.1", 0)
        path = relay_file(tmp_path, f"http://127.0.0.1:{server.port}/hook", events=2000)
        data = yaml.safe_load(path.read_text())
        data["consumers"]["relay"]["retry"] = {
            "initial": 0.01,
            "maximum": 0.05,
            "max_attempts": None,
        }
        data["consumers"]["relay"]["breaker"] = {"threshold": 1000, "cool_down": 0.1}
        path.write_text(yaml.safe_dump(data))
        run = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "sim", "run", str(path), "--state", str(state), "--quiet"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        )
        await failed.wait()  # retrying for a while: epochs were written meanwhile
        run.kill()
        await run.wait()
        assert run.returncode == -9
        delivered_before = len(receiver.taken)
        assert away_after <= delivered_before < 2000

        answered["back"] = True
        code, out, err = await ringflow(
            "run", path, "--state", state, "--quiet", "--no-chart", "--report", tmp_path / "r.json"
        )
        assert code == 0, out + err
        nursery.cancel_scope.cancel()
    # Every record reached the receiver; those sent after the newest epoch before the kill
    # came again, with the same ids (dropped by a receiver that deduplicates).
    assert len(receiver.taken) == 2000, "a record was lost"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["expect_ok"], report["expect"]


async def test_without_a_dead_letter_topic_a_poison_record_fails_the_run_at_once(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, receiver, "127.0.0.1", 0)
        path = relay_file(tmp_path, f"http://127.0.0.1:{server.port}/hook", events=200)
        data = yaml.safe_load(path.read_text())
        del data["consumers"]["relay"]["dead_letter"], data["topics"]["events-dlq"]
        path.write_text(yaml.safe_dump(data))
        code, out, err = await ringflow(
            "run", path, "--quiet", "--no-chart", "--report", tmp_path / "r.json"
        )
        nursery.cancel_scope.cancel()
    assert code == 1, out + err
    said = " ".join((out + err).split())
    assert "run failed: consumer relay cannot deliver records events[" in said
    assert "give it a dead_letter topic to go on past such records" in said
    assert "rolled back" not in said, "rolling back cannot cure a record the sink refuses"
    assert said.count("cannot deliver") == 1


async def test_letters_replay_to_a_sink_whose_url_was_fixed(tmp_path: Path) -> None:
    wrong, right = Receiver(), Receiver()
    right.refused.clear()
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        first = await nursery.start(serve_http, wrong, "127.0.0.1", 0)
        second = await nursery.start(serve_http, right, "127.0.0.1", 0)
        path = relay_file(tmp_path, f"http://127.0.0.1:{first.port}/hook", events=200)
        code, out, err = await ringflow("run", path, "--state", state, "--quiet", "--no-chart")
        assert code == 1, out + err
        # Where the relay writes is no part of what its state means: the file may say
        # another URL and still be the run's.
        data = yaml.safe_load(path.read_text())
        data["consumers"]["relay"]["params"]["url"] = f"http://127.0.0.1:{second.port}/hook"
        path.write_text(yaml.safe_dump(data))
        code, out, err = await ringflow("dlq", path, "replay", "--state", state, "--json")
        assert code == 0, out + err
        nursery.cancel_scope.cancel()
    assert set(right.taken) == POISON


def test_dlq_names_the_node_that_holds_the_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = relay_data("http://127.0.0.1:9/hook")
    data["nodes"] = {
        "broker": {"listen": "127.0.0.1:7601", "topics": ["events"], "producers": ["site"]},
        "sink": {"listen": "127.0.0.1:7602", "topics": ["events-dlq"], "consumers": ["relay"]},
    }
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["dlq", str(path), "list", "--node", "broker"]) == 2
    assert (
        "--node broker: it holds no dead-letter topic; they are on sink" in capsys.readouterr().err
    )
    assert main(["dlq", str(path), "list"]) == 2  # the sink's folder, which has no epochs yet
    assert "no checkpoints in state/relay-test-sink" in capsys.readouterr().err


async def test_a_redis_stream_run_refused_as_it_started_runs_when_the_cause_is_gone(
    tmp_path: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("rs:events:1", "not a stream")  # partition 1's stream: a key of another type
    data = relay_data(redis_url, events=400)
    relay = data["consumers"]["relay"]
    relay["processor"], relay["params"] = (
        "redis_stream",
        {"url": redis_url, "stream": "rs:{topic}:{partition}"},
    )
    relay.pop("breaker")
    data["checkpoint"] = {"every": 0.5}
    path = tmp_path / "rs.yaml"
    path.write_text(yaml.safe_dump(data))
    state = tmp_path / "state"
    code, out, err = await ringflow("run", path, "--state", state, "--quiet", "--no-chart")
    assert code == 2, out + err  # partition 0's stream was claimed before 1 was refused
    assert "WRONGTYPE" in out + err
    client.delete("rs:events:1")
    code, out, err = await ringflow("run", path, "--state", state, "--quiet", "--no-chart")
    assert code == 0, out + err  # the same state folder: the same run, its claims its own
    assert client.xlen("rs:events:0") + client.xlen("rs:events:1") == 400
    client.close()


async def test_a_full_dead_letter_topic_is_made_larger_and_the_run_resumed(
    tmp_path: Path,
) -> None:
    receiver = Receiver()  # refuses the three POISON records
    state = tmp_path / "state"
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, receiver, "127.0.0.1", 0)
        path = relay_file(tmp_path, f"http://127.0.0.1:{server.port}/hook")
        data = yaml.safe_load(path.read_text())
        data["topics"]["events-dlq"]["capacity"] = 2
        path.write_text(yaml.safe_dump(data))
        code, out, err = await ringflow("run", path, "--state", state, "--quiet", "--no-chart")
        assert code == 1, out + err
        assert "its dead-letter topic 'events-dlq' is full" in " ".join((out + err).split())
        data["topics"]["events-dlq"]["capacity"] = 100  # the same run, with more room
        path.write_text(yaml.safe_dump(data))
        code, out, err = await ringflow("run", path, "--state", state, "--quiet", "--no-chart")
        assert code == 1, out + err  # totals_match: the three did not reach the receiver
        assert "is full" not in out + err
        code, out, err = await ringflow("dlq", path, "list", "--state", state, "--json")
        nursery.cancel_scope.cancel()
    [row] = json.loads(out)["consumers"]
    assert row["letters"] == 3
    assert len(receiver.taken) == 397
    assert not POISON & set(receiver.taken)


def _query(state: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(state / "checkpoints.sqlite3")) as db, db:
        return db.execute(sql).fetchall()
