"""Figures of a running pipeline, as :meth:`~topology.Pipeline.statistics` gives them."""

from __future__ import annotations

import attrs

from .epochs import FinalEpoch


@attrs.frozen
class PipelineStatistics:
    """A snapshot of a :class:`Pipeline`'s progress."""

    events_planned: int
    """Events all producers running here make in the whole run."""
    events_produced: int
    """Events accepted into topics so far, over all producers and topics."""
    events_consumed: int
    """Records every consumer has processed: the smallest count over consumers."""
    lag: int
    """Records accepted but not yet committed, over the groups whose offsets live here."""
    epochs_written: int
    """Epochs written by this pipeline (and the ones it was rolled back from)."""
    last_epoch: int | None
    """The number of the newest epoch written, if any."""
    write_seconds: float
    """Seconds those epochs took to write, in total."""
    restored_from: int | None
    """The epoch the pipeline was built from; None when it started fresh."""
    final_epoch: FinalEpoch
    """What became of the final epoch (see :class:`~topology.epochs.CheckpointerStatistics`)."""
