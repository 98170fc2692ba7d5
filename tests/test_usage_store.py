"""The central database of the file pipeline: totals increased exactly once, in SQLite and
in a real PostgreSQL (the embedded server of the pgserver wheel)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actors import PermanentError, TransientError
from sim.postgres_server import EmbeddedPostgres
from sim.usage_store import SqliteTotals, Totals, open_totals
from tests.test_hardening_redis import wait_until

U64 = 2**64 - 1


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres.start(tmp_path_factory.mktemp("pg") / "postgres")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: EmbeddedPostgres
) -> Iterator[Totals]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'totals.sqlite'}"
    else:  # a database of its own in the shared server
        name = f"t_{os.getpid()}_{abs(hash(tmp_path)) % 10**9}"
        with open_totals(postgres.url, None) as admin:
            admin._conn.execute(f"CREATE DATABASE {name}")  # type: ignore[attr-defined]
        url = postgres.url.replace("/postgres?", f"/{name}?")
    with open_totals(url, None, raw=True) as opened:
        yield opened


def arrays(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    amounts = np.array([a for _, a in pairs], dtype=np.uint64)
    return users, amounts


def test_a_batch_adds_to_the_totals_once_whatever_is_sent_again(store: Totals) -> None:
    users, amounts = arrays([(7, 5), (3, 1), (7, 10), (-2, 4)])
    assert store.apply("sums", 0, 0, users, amounts) == 4
    assert dict(store.totals()) == {-2: 4, 3: 1, 7: 15}
    # The same batch again (a crash after the commit, before ringflow's epoch): nothing.
    assert store.apply("sums", 0, 0, users, amounts) == 0
    # A batch overlapping what was applied: only its new records count.
    more_users, more_amounts = arrays([(7, 10), (-2, 4), (3, 100), (9, 9)])
    assert store.apply("sums", 0, 2, more_users, more_amounts) == 2
    assert list(store.totals()) == [(-2, 4), (3, 101), (7, 15), (9, 9)]
    assert list(store.totals(3)) == [(3, 101)]
    assert list(store.totals(4)) == []
    # Partitions and topics are counted apart.
    assert store.apply("sums", 1, 0, *arrays([(3, 1)])) == 1
    assert store.applied("sums") == {0: 6, 1: 1}
    assert store.applied("other") == {}


def test_a_gap_in_the_offsets_is_refused_and_changes_nothing(store: Totals) -> None:
    store.apply("sums", 0, 0, *arrays([(1, 1), (2, 2)]))
    with pytest.raises(PermanentError, match=r"sums\[0\]: records from offset 5 on, but the "):
        store.apply("sums", 0, 5, *arrays([(1, 1)]))
    assert dict(store.totals()) == {1: 1, 2: 2}
    assert store.applied("sums") == {0: 2}


def test_totals_are_exact_beyond_64_bits_in_postgresql(store: Totals) -> None:
    users, amounts = arrays([(1, U64), (1, U64), (2, U64)])
    if isinstance(store, SqliteTotals):
        with pytest.raises(PermanentError, match="does not fit in SQLite's 64-bit integers"):
            store.apply("sums", 0, 0, users, amounts)
        assert list(store.totals()) == []  # the transaction was rolled back whole
        assert store.applied("sums") == {}
    else:
        store.apply("sums", 0, 0, users, amounts)
        store.apply("sums", 0, 3, *arrays([(1, U64)]))
        assert dict(store.totals()) == {1: 3 * U64, 2: U64}


def test_many_users_merge_to_the_sums_of_their_amounts(store: Totals) -> None:
    rng = np.random.default_rng(4)
    users = rng.integers(0, 5_000, 40_000).astype(np.int64)
    amounts = rng.integers(0, 2**40, 40_000).astype(np.uint64)
    for start in range(0, 40_000, 10_000):
        store.apply(
            "sums", 0, start, users[start : start + 10_000], amounts[start : start + 10_000]
        )
    expected: dict[int, int] = {}
    for user, amount in zip(users.tolist(), amounts.tolist(), strict=True):
        expected[user] = expected.get(user, 0) + amount
    assert dict(store.totals()) == expected


def test_a_bad_url_is_refused_and_an_unreachable_server_is_transient(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match=r"expected postgresql://\.\.\. or sqlite:///PATH"),
        open_totals("mysql://x", None),
    ):
        pass
    refused = r"cannot reach PostgreSQL at postgresql://u:\*\*\*@"
    with (
        pytest.raises(TransientError, match=refused),
        open_totals(f"postgresql://u:secret@/db?host={tmp_path}", None),
    ):
        pass


def test_the_embedded_server_keeps_its_data_and_dies_with_its_owner(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "postgres"
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, numpy as np
                from pathlib import Path
                from sim.usage_store import open_totals
                with open_totals(None, Path({str(tmp_path / "state")!r})) as store:
                    store.apply("sums", 0, 0, np.array([5], np.int64), np.array([8], np.uint64))
                    pid_file = Path({str(folder)!r}) / "data" / "postmaster.pid"
                    print(pid_file.read_text().splitlines()[0], flush=True)
                    sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        wait_until(lambda: not _alive(pid), "the embedded PostgreSQL to end with its owner")
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.communicate()
    # Started again on the same folder: what was committed is there.
    with open_totals(None, tmp_path / "state") as store:
        assert list(store.totals()) == [(5, 8)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
