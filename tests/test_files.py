"""The files source: which files of a folder are complete, what makes a file the same file,
and what becomes of a processed one. Real files in temporary folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import attrs
import pytest

from topology import FileWatch, ReadyFiles, Topology, TopologyError, identify, settle
from topology import files as files_module
from topology.folder import BLOCK


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def names(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def test_under_rename_a_file_the_pattern_matches_is_complete(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "1 2\n")
    write(tmp_path / "b.txt.tmp", "1 2\n")  # still being written, under another name
    write(tmp_path / ".c.txt", "1 2\n")  # hidden: a writer's temporary name
    write(tmp_path / "d.log", "1 2\n")
    (tmp_path / "sub.txt").mkdir()  # folders are never files to read
    ready = ReadyFiles(tmp_path, "*.txt")
    assert names(ready.scan(0.0)) == ["a.txt"]
    (tmp_path / "b.txt.tmp").rename(tmp_path / "b.txt")
    assert names(ready.scan(0.0)) == ["a.txt", "b.txt"]


def test_under_marker_a_file_is_complete_once_its_marker_exists(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "1 2\n")
    ready = ReadyFiles(tmp_path, "*", "marker")
    assert ready.scan(0.0) == []
    write(tmp_path / "a.txt.done", "")
    assert names(ready.scan(0.0)) == ["a.txt"]  # the marker itself is no file to read


def test_under_quiet_a_file_is_complete_once_unchanged_for_the_period(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "1 2\n")
    ready = ReadyFiles(tmp_path, "*.txt", "quiet", quiet=5.0)
    assert ready.scan(0.0) == []  # first seen now
    assert ready.scan(4.9) == []
    with path.open("a") as file:  # the writer goes on: the period starts again
        file.write("3 4\n")
    assert ready.scan(5.0) == []
    assert ready.scan(9.9) == []
    assert names(ready.scan(10.0)) == ["a.txt"]
    os.utime(path, ns=(1, 1))  # touched without a size change: changed too
    assert ready.scan(11.0) == []
    assert names(ready.scan(16.0)) == ["a.txt"]


def test_a_missing_folder_has_no_files(tmp_path: Path) -> None:
    assert ReadyFiles(tmp_path / "nowhere").scan(0.0) == []


def test_a_file_is_known_wherever_it_goes_but_not_with_other_content(tmp_path: Path) -> None:
    big = "\n".join(f"{i} {i * 7}" for i in range(40_000)) + "\n"
    assert len(big) > 2 * BLOCK
    first = identify(write(tmp_path / "a.txt", big))
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert identify(tmp_path / "b.txt").key == first.key  # renamed
    shutil.copy(tmp_path / "b.txt", tmp_path / "c.txt")
    copied = identify(tmp_path / "c.txt")
    assert copied.key == first.key  # copied back: the same content
    assert copied.inode != first.inode
    changed_end = identify(write(tmp_path / "d.txt", big[:-3] + "9\n"))
    changed_start = identify(write(tmp_path / "e.txt", "9" + big[1:]))
    longer = identify(write(tmp_path / "f.txt", big + "1 1\n"))
    assert len({first.key, changed_end.key, changed_start.key, longer.key}) == 4


def test_a_watch_announces_a_file_once_and_again_only_if_it_changed(tmp_path: Path) -> None:
    watch = FileWatch(ReadyFiles(tmp_path), source=0)
    write(tmp_path / "a.txt", "1 2\n")
    write(tmp_path / "b.txt", "3 4\n")
    found = watch.fresh(watch.ready.scan(0.0), 0.0)
    assert [path.name for path, _ in found] == ["a.txt", "b.txt"]
    assert watch.fresh(watch.ready.scan(1.0), 1.0) == []
    assert watch.idle_for(3.0) == 3.0
    write(tmp_path / "a.txt", "5 6\n")  # another file under the same name
    assert [path.name for path, _ in watch.fresh(watch.ready.scan(4.0), 4.0)] == ["a.txt"]
    assert watch.idle_for(4.0) == 0.0
    # An epoch keeps what was announced: a restored watch announces nothing again.
    restored = FileWatch(ReadyFiles(tmp_path), source=0)
    restored.restore(watch.capture(), 3)
    assert restored.fresh(restored.ready.scan(5.0), 5.0) == []
    assert restored.count == 3


def test_a_file_whose_name_is_not_utf8_is_passed_over_once_and_reported(tmp_path: Path) -> None:
    watch = FileWatch(ReadyFiles(tmp_path), source=0)
    write(tmp_path / "a.txt", "1 2\n")
    with open(os.fsencode(tmp_path) + b"/\xff.txt", "wb") as file:
        file.write(b"3 4\n")
    assert [p.name for p, _ in watch.fresh(watch.ready.scan(0.0), 0.0)] == ["a.txt"]
    [problem] = watch.problems
    assert problem["event"] == "file_refused"
    assert problem["file"] == f"{tmp_path}/\\xff.txt"
    assert problem["error"] == "its name is not UTF-8"
    watch.problems.clear()
    assert watch.fresh(watch.ready.scan(1.0), 1.0) == []
    assert watch.problems == []  # reported once


def test_a_file_moved_away_and_back_between_two_looks_is_announced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = FileWatch(ReadyFiles(tmp_path), source=0)
    path = write(tmp_path / "a.txt", "1 2\n")
    assert len(watch.fresh(watch.ready.scan(0.0), 0.0)) == 1
    (tmp_path / "done").mkdir()
    path.rename(tmp_path / "done" / "a.txt")  # processed and moved away...
    (tmp_path / "done" / "a.txt").rename(path)  # ...and moved back before the next look
    # A rename changes the inode's ctime; here, where two renames may fall in one tick of
    # the file system's clock, the change is made plain.
    seen = identify(path)
    moved = attrs.evolve(seen, ctime_ns=seen.ctime_ns + 1)
    monkeypatch.setattr(files_module, "identify", lambda _path: moved)
    assert [p.name for p, _ in watch.fresh(watch.ready.scan(1.0), 1.0)] == ["a.txt"]
    assert watch.fresh(watch.ready.scan(2.0), 2.0) == []  # once


def test_a_processed_file_is_moved_under_a_free_name_deleted_or_kept(tmp_path: Path) -> None:
    done = tmp_path / "done"
    first = write(tmp_path / "a.txt", "1 2\n")
    write(tmp_path / "a.txt.done", "")
    assert settle(first, "move", done) == done / "a.txt"
    assert (done / "a.txt.done").exists()  # its marker went with it
    second = write(tmp_path / "a.txt", "3 4\n")
    assert settle(second, "move", done) == done / "a.txt.1"
    assert (done / "a.txt").read_text() == "1 2\n"
    kept = write(tmp_path / "b.txt", "1 2\n")
    assert settle(kept, "keep", done) == kept
    assert kept.exists()
    gone = write(tmp_path / "c.txt", "1 2\n")
    assert settle(gone, "delete", done) is None
    assert not gone.exists()
    assert settle(gone, "move", done) is None  # gone already: nothing to do


@pytest.mark.parametrize(
    ("producer", "message"),
    [
        ({"files": {"dir": "in"}}, "$.producers.files-in.topic: required"),
        (
            {"files": {"dir": "in"}, "topic": "files", "events": 5},
            "$.producers.files-in.events: not for a 'files' producer",
        ),
        (
            {"files": {"dir": "in"}, "topic": "files", "instances": 2},
            "$.producers.files-in.instances: a folder is watched by one instance",
        ),
        (
            {"files": {"dir": "in", "ready": "soon"}, "topic": "files"},
            "$.producers.files-in.files.ready",
        ),
        (
            {"files": {"dir": "in"}, "workload": "video_site", "topic": "files"},
            "$.producers.files-in.files: give either 'workload' or 'files', not both",
        ),
        ({"topic": "files", "events": 5}, "$.producers.files-in.workload: required"),
        (
            {"files": {"dir": "in", "done": "."}, "topic": "files"},
            "$.producers.files-in.files.done: must be another folder than 'dir'",
        ),
        (
            {"files": {"dir": "data/in", "done": "../in"}, "topic": "files"},
            "$.producers.files-in.files.done: must be another folder than 'dir'",
        ),
    ],
)
def test_a_files_producer_is_checked(producer: dict[str, object], message: str) -> None:
    data = {
        "name": "t",
        "topics": {"files": {"allow_unconsumed": True}},
        "producers": {"files-in": producer},
    }
    with pytest.raises(TopologyError) as caught:
        Topology.from_dict(data)
    assert message in str(caught.value)
