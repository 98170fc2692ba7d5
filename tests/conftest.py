"""Shared helpers for the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import Record


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder, so default paths (state/, reports/) stay out of the
    repository."""
    monkeypatch.chdir(tmp_path)


def records(count: int, *, start: int = 0, key: object = None) -> list[Record]:
    """Return ``count`` records whose values are ``start, start + 1, ...``."""
    return [Record(key if key is not None else None, start + i) for i in range(count)]  # type: ignore[arg-type]
