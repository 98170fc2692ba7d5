"""What the processors share: the slots of the video site's counts, their results (the same
for the columnar processors and their per-event references), and helpers for state kept in
numpy arrays."""

from __future__ import annotations

from collections.abc import Iterable
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


def video_result(rows: Iterable[tuple[int, list[int]]]) -> dict[str, Any]:
    """``video_stats``'s result from each video's counts (in slot order, then its blogger), by
    id in order."""
    return {
        "videos": {
            str(video): {
                "blogger": s[6],
                "views": s[_VIEW],
                "likes": s[_LIKE],
                "dislikes": s[_DISLIKE],
                "comments": s[_COMMENT],
                "watches": s[_WATCH],
                "watch_seconds": s[_WATCH_MS] / 1000,
            }
            for video, s in rows
        }
    }


def windows_result(
    windows: Iterable[tuple[tuple[int, int], list[Any]]], window: float, top: int
) -> dict[str, Any]:
    """``blogger_analytics``'s result from each (blogger, window index)'s counts (in slot
    order, then its views per video), in (blogger, window) order."""
    bloggers: dict[str, Any] = {}
    for (blogger, index), state in windows:
        entry = bloggers.setdefault(
            str(blogger),
            {
                "totals": dict.fromkeys(
                    ("views", "likes", "dislikes", "comments", "watches", "watch_seconds"), 0
                ),
                "windows": [],
            },
        )
        totals = entry["totals"]
        for name, slot in (
            ("views", _VIEW),
            ("likes", _LIKE),
            ("dislikes", _DISLIKE),
            ("comments", _COMMENT),
            ("watches", _WATCH),
        ):
            totals[name] += state[slot]
        totals["watch_seconds"] = round(totals["watch_seconds"] + state[_WATCH_MS] / 1000, 3)
        best = sorted(state[6].items(), key=lambda item: (-item[1], item[0]))[:top]
        entry["windows"].append(
            {
                "start": index * window,
                "views": state[_VIEW],
                "likes": state[_LIKE],
                "dislikes": state[_DISLIKE],
                "comments": state[_COMMENT],
                "watch_seconds": state[_WATCH_MS] / 1000,
                "top_videos": [[video, views] for video, views in best],
            }
        )
    return {"window_seconds": window, "bloggers": bloggers}


def count_table(state: Any) -> Array:
    """A state's count columns (views ... watch_ms) as a table with a row per entry."""
    columns = [
        state.views,
        state.likes,
        state.dislikes,
        state.comments,
        state.watches,
        state.watch_ms,
    ]
    table: Array = np.array(columns, dtype=np.int64).reshape(6, -1).T.copy()
    return table


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
