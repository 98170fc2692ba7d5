"""Shared helpers for the tests."""

from __future__ import annotations

from actors import Record


def records(count: int, *, start: int = 0, key: object = None) -> list[Record]:
    """Return ``count`` records whose values are ``start, start + 1, ...``."""
    return [Record(key if key is not None else None, start + i) for i in range(count)]  # type: ignore[arg-type]
