"""What the processors share: the slots of the video site's counts, and helpers for state
kept in numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from topology import State

Array = npt.NDArray[Any]

_VIEW, _LIKE, _DISLIKE, _COMMENT, _WATCH, _WATCH_MS = range(6)
_VIDEO_SLOT = {
    "view": _VIEW,
    "like": _LIKE,
    "dislike": _DISLIKE,
    "comment": _COMMENT,
    "watch": _WATCH,
}


def grown(array: Array, size: int) -> Array:
    # ``array`` with at least ``size`` rows (doubling), new rows zero.
    if size <= len(array):
        return array
    grown = np.zeros((max(size, 2 * len(array), 64), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def same_lengths(state: State, *names: str) -> None:
    # Columns of one table: a row is the same index in each, so they must be as long.
    lengths = {name: len(getattr(state, name)) for name in names}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            "columns of different lengths: "
            + ", ".join(f"{name} {length}" for name, length in lengths.items())
        )
