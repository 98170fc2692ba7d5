"""Resuming: a run's checkpoints opened, and its pipeline rebuilt from the newest intact
epoch there (at the start of a run, and on every rollback)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from topology import CheckpointError, CheckpointSettings, CheckpointSpec, CheckpointStore, Pipeline


def open_checkpoints(
    pipeline: Pipeline, state: Path | None
) -> tuple[CheckpointSettings | None, Pipeline]:
    """Set up checkpoints for ``pipeline`` and resume from its newest epoch if there is one.

    Checkpoints are on when the topology has a ``checkpoint`` section or ``state`` is given.
    The folder is the section's ``path``, else ``state``, else ``state/NAME``.

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
    name = pipeline.topology.name
    node = None if pipeline.placement is None else pipeline.placement.node
    if node is None:
        folder = Path(spec.path) if spec.path else state or Path("state") / name
    else:  # each node of a split topology keeps its own part
        folder = state or (
            Path(spec.path) / node if spec.path else Path("state") / f"{name}-{node}"
        )
    store = CheckpointStore.open(
        folder, pipeline.fingerprint, keep=spec.keep, name=pipeline.topology.name
    )
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
