"""Files: a folder watched for complete files, each announced once on a topic (seed 004).

A file is read only once its writer has finished, by one of three readiness rules:

- ``rename`` (the default): the writer writes under another name (one the pattern does not
  match, such as ``NAME.tmp`` or a hidden ``.NAME``) or in another folder of the same file
  system, and renames the file into place when done, which POSIX makes atomic: a file the
  pattern matches is complete.
- ``marker``: the writer creates ``NAME.done`` once ``NAME`` is complete.
- ``quiet``: the file's size and modification time have not changed for ``quiet`` seconds.
  For writers you do not control; weaker, since a writer that pauses longer than that is
  taken for finished.

Each file is known by its identity: its size and a hash of its first and last blocks (with
its device, inode and modification time kept for the record), so a file renamed, moved back
or copied in again is recognised as one already seen.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import attrs
import msgspec

BLOCK = 64 << 10
"""Bytes hashed at each end of a file for its identity."""

MARKER = ".done"
"""The suffix of a ``marker`` rule's marker files."""

Readiness = Literal["rename", "marker", "quiet"]
After = Literal["move", "delete", "keep"]


class FileAnnounced(msgspec.Struct, frozen=True, tag="file"):
    """A complete file, announced on a topic for a parser to claim."""

    seq: Annotated[int, msgspec.Meta(ge=0)]
    source: int
    timestamp: float
    path: str
    """Where it was when announced (absolute)."""
    size: Annotated[int, msgspec.Meta(ge=0)]
    key: str
    """Its identity: size and a hash of its first and last blocks (see :func:`identify`)."""
    device: int
    inode: int
    mtime_ns: int
    after: After = "move"
    """What becomes of it once processed (see :func:`settle`)."""
    done: str = ""
    """Where it is moved then (with ``after: move``)."""
    kind: ClassVar[str] = "file"


@attrs.frozen
class FileIdentity:
    """What makes a file the same file, wherever it is (see :func:`identify`)."""

    key: str
    size: int
    device: int
    inode: int
    mtime_ns: int
    ctime_ns: int = 0
    """When its inode last changed (a rename changes it): not part of what makes it the same
    file, but says that a name seen before was moved away and back meanwhile."""


def identify(path: Path) -> FileIdentity:
    """The identity of the file at ``path`` (reads at most two blocks; blocking).

    Raises:
        OSError: It cannot be read (gone, no permission).
    """
    with path.open("rb") as file:
        info = os.fstat(file.fileno())
        digest = hashlib.blake2b(digest_size=16)
        digest.update(file.read(BLOCK))
        if info.st_size > BLOCK:
            file.seek(max(BLOCK, info.st_size - BLOCK))
            digest.update(file.read(BLOCK))
    return FileIdentity(
        f"{info.st_size}:{digest.hexdigest()}",
        info.st_size,
        info.st_dev,
        info.st_ino,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )


def announcement(
    path: Path,
    identity: FileIdentity,
    seq: int,
    source: int,
    at: float,
    after: After = "move",
    done: str = "",
) -> FileAnnounced:
    """The announcement of the file at ``path``, saying what becomes of it once processed."""
    return FileAnnounced(
        seq=seq,
        source=source,
        timestamp=at,
        path=str(path),
        size=identity.size,
        key=identity.key,
        device=identity.device,
        inode=identity.inode,
        mtime_ns=identity.mtime_ns,
        after=after,
        done=done,
    )


@attrs.define(eq=False)
class ReadyFiles:
    """Which files of a folder are complete, by a readiness rule (see the module).

    Args:
        folder: The folder watched (files directly in it; not its sub-folders).
        pattern: Names to take (``fnmatch``); hidden files and markers never are.
        rule: The readiness rule.
        quiet: Seconds a file must stay unchanged under the ``quiet`` rule.
    """

    folder: Path
    pattern: str = "*"
    rule: Readiness = "rename"
    quiet: float = 5.0
    _seen: dict[str, tuple[int, int, float]] = attrs.field(factory=dict)
    """Under ``quiet``: per name, its size and mtime when last changed, and since when."""

    def scan(self, now: float) -> list[Path]:
        """The complete files now, by name (blocking: lists the folder).

        Args:
            now: The run's clock (``quiet`` measures unchanged time by it).
        """
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        names = {entry.name: entry for entry in entries}
        ready = []
        for name, entry in sorted(names.items()):
            if not self._candidate(name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if self.rule == "marker" and name + MARKER not in names:
                continue
            if self.rule == "quiet" and not self._quiet(name, info.st_size, info.st_mtime_ns, now):
                continue
            ready.append(Path(entry.path))
        if self.rule == "quiet":
            for gone in set(self._seen) - set(names):
                del self._seen[gone]
        return ready

    def _candidate(self, name: str) -> bool:
        if name.startswith(".") or name.endswith(MARKER):
            return False
        return fnmatch.fnmatchcase(name, self.pattern)

    def _quiet(self, name: str, size: int, mtime_ns: int, now: float) -> bool:
        seen = self._seen.get(name)
        if seen is None or seen[:2] != (size, mtime_ns):
            self._seen[name] = (size, mtime_ns, now)
            return False
        return now - seen[2] >= self.quiet

    def forget(self, names: Iterable[str]) -> None:
        """Stop tracking ``names`` (files taken)."""
        for name in names:
            self._seen.pop(name, None)


def settle(path: Path, after: After, done_folder: Path) -> Path | None:
    """Do with a processed file what ``after`` says: move it into ``done_folder`` (under a
    free name: ``NAME``, else ``NAME.1``, ``NAME.2``...), delete it, or keep it. Its marker,
    if any, goes with it. Returns where it went (None: deleted, or already gone).

    Raises:
        OSError: It could not be moved or deleted (other than being gone already).
    """
    marker = path.with_name(path.name + MARKER)
    if after == "keep":
        return path
    try:
        if after == "delete":
            path.unlink()
            marker.unlink(missing_ok=True)
            return None
        done_folder.mkdir(parents=True, exist_ok=True)
        target = done_folder / path.name
        number = 0
        while target.exists():
            number += 1
            target = done_folder / f"{path.name}.{number}"
        path.rename(target)
        if marker.exists():
            marker.rename(target.with_name(target.name + MARKER))
        return target
    except FileNotFoundError:
        return None
