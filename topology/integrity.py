"""The integrity of stored epochs: the checksums of parts and epoch records, and the error
for an epoch that cannot be resumed from."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from .errors import CheckpointError


class DamagedEpoch(CheckpointError):
    """An epoch that cannot be resumed from: a part does not match its checksum, or does not
    decode, or the epoch's own record does not match its checksum.

    Attributes:
        epoch: The epoch's number (None while a part is restored, before it is known).
        part: What is damaged: ``kind/name`` of a part, such as ``processor/video-stats``,
            or ``epoch record`` for the epoch's row and its list of parts.
        problem: What was found.
    """

    def __init__(self, epoch: int | None, part: str, problem: str) -> None:
        self.epoch = epoch
        self.part = part
        self.problem = problem
        where = "an epoch" if epoch is None else f"epoch {epoch}"
        super().__init__(f"{where} is damaged: {part} {problem}")

    def of_epoch(self, epoch: int) -> DamagedEpoch:
        """The same damage, naming ``epoch``."""
        return DamagedEpoch(epoch, self.part, self.problem)


def part_checksum(kind: str, name: str, data: bytes) -> str:
    """The checksum of one part: sha256 of its kind, name and bytes."""
    digest = hashlib.sha256(f"{kind}\0{name}\0".encode())
    digest.update(data)
    return digest.hexdigest()


def epoch_checksum(row: Sequence[Any], parts: Sequence[tuple[str, str, str]]) -> str:
    """The checksum of an epoch's record: sha256 over what resuming relies on, its number
    and figures (``row``: epoch, sim_time, events_produced, ring_records, final, completed,
    segments) and every part by kind, name and checksum (so a part lost or added shows too)."""
    epoch, sim_time, events, ring_records, final, completed, segments = row
    text = (
        f"{int(epoch)}\n{float(sim_time)!r}\n{int(events)}\n{int(ring_records)}\n"
        f"{int(final)}\n{int(completed)}\n{segments}\n"
    )
    text += "".join(f"{kind}\0{name}\0{checksum}\n" for kind, name, checksum in sorted(parts))
    return hashlib.sha256(text.encode()).hexdigest()
