"""Resuming: a run's checkpoints opened, and its pipeline rebuilt from the newest intact
epoch there (at the start of a run, and on every rollback)."""

from __future__ import annotations

import fcntl
import functools
import os
from pathlib import Path
from typing import IO, Any

from topology import (
    CheckpointError,
    CheckpointSettings,
    CheckpointSpec,
    CheckpointStore,
    Pipeline,
    Topology,
)


def open_checkpoints(
    pipeline: Pipeline, state: Path | None
) -> tuple[CheckpointSettings | None, Pipeline]:
    """Set up checkpoints for ``pipeline`` and resume from its newest epoch if there is one.

    Checkpoints are on when the topology has a ``checkpoint`` section or ``state`` is given.
    The folder is ``state``, else the section's ``path``, else ``state/NAME``.

    An epoch that is damaged (a part that does not match its checksum or does not decode)
    is passed over for the next older one; ``settings.store.damaged`` lists those.

    Returns:
        The settings (None when checkpoints are off) and the pipeline to run: a new one
        restored from the newest intact epoch, or the one given.

    Raises:
        CheckpointError: The folder cannot be used (another topology, another schema, a
            damaged database, epochs none of which is intact, no permission); nothing in it
            was changed.
    """
    spec = pipeline.topology.checkpoint
    if spec is None and state is None:
        return None, pipeline
    spec = spec or CheckpointSpec()
    node = None if pipeline.placement is None else pipeline.placement.node
    folder = state_folder(pipeline.topology, state, node)
    store = CheckpointStore.open(  # checks the folder first: a refused one is left as it is
        folder, pipeline.fingerprint, keep=spec.keep, name=pipeline.topology.name
    )
    try:
        hold(folder)
    except CheckpointError:
        store.close()
        raise
    settings = CheckpointSettings(
        store,
        every=spec.every,
        every_records=spec.every_records,
        in_thread=pipeline.topology.clock == "real" or node is not None,
    )
    try:
        restored = store.load_intact(functools.partial(rebuild, pipeline))
    except CheckpointError:
        store.close()
        raise
    return settings, restored or pipeline


def state_folder(topology: Topology, state: Path | None, node: str | None = None) -> Path:
    """The state folder of ``topology`` (of its ``node``): ``state`` (``--state``), else the
    section's ``path``, else ``state/NAME``; a node keeps its own (``path/NODE``,
    ``state/NAME-NODE``), and ``state`` names it whole."""
    spec = topology.checkpoint or CheckpointSpec()
    name = topology.name
    if node is None:
        return state or (Path(spec.path) if spec.path else Path("state") / name)
    return state or (Path(spec.path) / node if spec.path else Path("state") / f"{name}-{node}")


_HELD: dict[Path, IO[str]] = {}
"""The state folders this process holds, with their locked files."""


def hold(folder: Path) -> None:
    """Take ``folder`` for this process until :func:`let_go` (or the process ends): two
    processes writing epochs to one folder would interleave them, and each would stop the
    other's embedded Redis as stale.

    Raises:
        CheckpointError: Another process holds it, or it cannot be created.
    """
    key = folder.resolve()
    if key in _HELD:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / "lock", "a+")  # noqa: SIM115 - held until let go
    except OSError as exc:
        raise CheckpointError(
            f"cannot use the state folder {folder}: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip()
        handle.close()
        raise CheckpointError(
            f"the state folder {folder} is in use by another ringflow process"
            + (f" (pid {pid})" if pid else "")
            + ": stop it, or give this one another --state"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle


def let_go(folder: Path) -> None:
    """Release a folder :func:`hold` took (nothing if this process does not hold it)."""
    handle = _HELD.pop(folder.resolve(), None)
    if handle is not None:
        handle.close()


def rebuild(pipeline: Pipeline, loaded: Any) -> Pipeline:
    """A pipeline like ``pipeline``, built anew from ``loaded`` (an epoch and its parts, or
    None to start over), served and stored as it was."""
    rebuilt = Pipeline.build(
        pipeline.topology,
        pipeline.registry,
        seed=pipeline.seed,
        events=pipeline.events_override,
        restore=loaded,
        placement=pipeline.placement,
    )
    rebuilt.serving = pipeline.serving
    rebuilt.state_folder = pipeline.state_folder
    if rebuilt.intake is not None and pipeline.intake is not None:
        rebuilt.intake.on_listening = pipeline.intake.on_listening
        rebuilt.intake.on_error = pipeline.intake.on_error
    return rebuilt


def completes(pipeline: Pipeline) -> bool:
    """Whether a run of ``pipeline`` that completed has nothing left to do when run again:
    a served topology, or one that watches folders, never completes (run again, it takes
    the events or files that came since)."""
    watching = any(spec.files is not None for spec in pipeline.topology.producers.values())
    return pipeline.intake is None and not watching
