"""The files source: a producer instance that watches a folder and announces each complete
file once on its topic (see :mod:`topology.folder` for the readiness rules and identities).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import trio

from .errors import TopologyError
from .folder import After, FileIdentity, ReadyFiles, announcement, identify
from .plan import ProducerPlan
from .registry import State, Workload
from .sections import FilesSpec
from .snapshot import ProducerPart
from .source import SourceStatistics, WorkloadSource


class FilesState(State, frozen=True, tag=1):
    """Where a files source is, for an epoch: the files it announced, by name and identity
    key (a file copied in again under a name it had is announced again; the parsers' ledger
    knows it)."""

    announced: list[tuple[str, str]]


@attrs.define(eq=False)
class FileWatch:
    """The files of one folder, announced as they become complete.

    Args:
        ready: Which files are complete.
        source: The producer instance's number (events carry it).
        poll: Seconds between looks at the folder.
        idle: Seconds without a new file after which the watch ends; None: never.
    """

    ready: ReadyFiles
    source: int
    poll: float = 0.5
    idle: float | None = None
    after: After = "move"
    done: str = ""
    """Where processed files go (``after: move``)."""
    announced: dict[str, str] = attrs.field(factory=dict)
    """By name, the identity key of each file announced."""
    refused: dict[str, str] = attrs.field(factory=dict)
    """By name, files that could not be read (not announced; other files go on)."""
    problems: list[dict[str, Any]] = attrs.field(factory=list)
    """Each file refused since last taken (``event``, ``file``, ``error``), for the log."""
    count: int = 0
    """Files announced so far (across resumes): the next one's ``seq``."""
    last_new: float | None = None
    """The run's clock when a file last became ready (or the watch started)."""
    changed: dict[str, int] = attrs.field(factory=dict)
    """By name, when the inode of each file announced last changed, as seen here (not kept in
    epochs): a file moved away and back between two looks is announced again."""

    def fresh(self, paths: Iterable[Path], now: float) -> list[tuple[Path, FileIdentity]]:
        """Which of the complete files ``paths`` to announce (blocking: hashes them), each
        with its identity; they count as announced from now on. Names no longer among them
        (moved away once processed) are forgotten: a file moved back is announced again (and
        found in the parsers' ledger), and so is one moved away and back between two looks
        (its inode changed: renamed)."""
        paths = list(paths)
        here = {path.name for path in paths}
        self.announced = {n: k for n, k in self.announced.items() if n in here}
        self.changed = {n: c for n, c in self.changed.items() if n in here}
        found = []
        for path in paths:
            if path.name in self.refused:
                continue
            try:
                path.name.encode()
                identity = identify(path)
            except FileNotFoundError:
                continue  # moved away meanwhile
            except (OSError, UnicodeError) as exc:  # unreadable, or a name not UTF-8
                why = (
                    "its name is not UTF-8"
                    if isinstance(exc, UnicodeError)
                    else f"{type(exc).__name__}: {exc}"
                )
                self.refused[path.name] = why
                shown = os.fsencode(path).decode(errors="backslashreplace")
                self.problems.append({"event": "file_refused", "file": shown, "error": why})
                continue
            changed = self.changed.setdefault(path.name, identity.ctime_ns)
            if self.announced.get(path.name) == identity.key and changed == identity.ctime_ns:
                continue
            self.announced[path.name] = identity.key
            self.changed[path.name] = identity.ctime_ns
            found.append((path, identity))
        if found or self.last_new is None:
            self.last_new = now
        return found

    def idle_for(self, now: float) -> float:
        """Seconds since a file last became ready."""
        return 0.0 if self.last_new is None else now - self.last_new

    def capture(self) -> FilesState:
        """The announced files, for an epoch."""
        return FilesState(sorted(self.announced.items()))

    def restore(self, state: FilesState, count: int) -> None:
        """Take an epoch's announced files back (``count`` of them announced in all)."""
        self.announced = dict(state.announced)
        self.count = count


@attrs.define(eq=False)
class _WatchPosition:
    # The files source's "workload": only its position (what was announced) matters.
    watch: FileWatch

    def generate(self, count: int, start: float, interval: float) -> dict[str, list[Any]]:
        raise NotImplementedError("a files source announces files; it generates nothing")

    def counts(self) -> dict[str, int]:
        return {"file": self.watch.count}

    def position(self) -> FilesState:
        return self.watch.capture()

    def restore(self, position: Any) -> None:
        self.watch.restore(position, self.watch.count)


@attrs.define(eq=False)
class FileSource(WorkloadSource):
    """A producer instance that watches a folder and announces each complete file once on
    its topic (see the module). Between looks at the folder it is at a safe point."""

    watch: FileWatch = attrs.field(kw_only=True)
    on_problem: Callable[[dict[str, Any]], None] | None = attrs.field(kw_only=True, default=None)
    """Told of each file that cannot be read (for the log's ``errors`` stream)."""

    @classmethod
    def of(
        cls,
        plan: ProducerPlan,
        spec: FilesSpec,
        topic: str,
        max_batch: int,
        linger: float,
        **wiring: Any,
    ) -> FileSource:
        """The source of ``plan``'s producer instance; ``wiring`` gives the other fields."""
        if not Path(spec.dir).is_dir():
            raise TopologyError(
                [
                    f"$.producers.{plan.producer}.files.dir: {spec.dir!r} is not a folder "
                    "(create it, or fix the path)"
                ]
            )
        ready = ReadyFiles(Path(spec.dir), spec.pattern, spec.ready, spec.quiet)
        watch = FileWatch(
            ready,
            plan.source,
            spec.poll,
            spec.idle,
            spec.after,
            str(Path(spec.done_folder).resolve()),
        )
        return cls(
            plan,
            lambda: _WatchPosition(watch),
            FilesState,
            {"files": topic},
            {"files": None},
            max_batch,
            linger,
            watch=watch,
            **wiring,
        )

    def restore(self, state: ProducerPart) -> None:
        """Start, when run, from a captured position (the files announced)."""
        super().restore(state)
        self.watch.count = state.done

    def stop(self) -> None:
        """Stop watching (``ringflow serve`` stopped): the files found so far are announced,
        and the producer ends at its next look at the folder."""
        self.watch.idle = 0.0

    def statistics(self) -> SourceStatistics:
        """Files announced so far (``events_made``); none are planned."""
        return SourceStatistics(events_planned=0, events_made=self.done, running=self._running)

    async def _make_all(self, workload: Workload, origin: float) -> None:
        key, watch = self.key, self.watch
        async with AsyncExitStack() as stack:
            producer = (await self._open_producers(stack))["files"]
            while True:
                if self.barrier.pending(key):
                    await self._pause()
                    continue
                now = trio.current_time()
                found = await trio.to_thread.run_sync(self._look, now)
                problems, watch.problems = watch.problems, []
                for problem in problems:
                    if self.on_problem is not None:
                        self.on_problem(problem)
                if found:
                    events = [
                        announcement(
                            path.resolve(),
                            identity,
                            self.done + i,
                            self.plan.source,
                            now - origin,
                            watch.after,
                            watch.done,
                        )
                        for i, (path, identity) in enumerate(found)
                    ]
                    watch.count += len(events)
                    await self._send(producer, self.topic_of["files"], "files", events)
                    self.done += len(events)
                    self.after_chunk()
                    continue
                if watch.idle is not None and watch.idle_for(now) >= watch.idle:
                    break
                with trio.move_on_after(watch.poll):  # or until an epoch is asked for
                    await self.barrier.asked()
            await self._hand_over()

    def _look(self, now: float) -> list[tuple[Path, FileIdentity]]:
        return self.watch.fresh(self.watch.ready.scan(now), now)
