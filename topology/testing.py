"""Switches that break one guarantee each, for the tests that prove ``ringflow chaos`` finds
the break. Nothing in a topology file or on the command line reaches them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

GUARANTEES: tuple[str, ...] = ("flush_before_snapshot",)
"""What can be broken: ``flush_before_snapshot``, a producer instance hands what it has
buffered to the partitions before it pauses for a snapshot (else an epoch counts events as
made that no partition holds, and a restore from it loses them)."""

broken: set[str] = set()
"""The guarantees broken now; empty except inside :func:`breaking`."""


@contextmanager
def breaking(guarantee: str) -> Iterator[None]:
    """Break ``guarantee`` (one of :data:`GUARANTEES`) inside the block.

    Raises:
        ValueError: ``guarantee`` is not one of :data:`GUARANTEES`.
    """
    if guarantee not in GUARANTEES:
        raise ValueError(f"no guarantee named {guarantee!r}; there are: {', '.join(GUARANTEES)}")
    broken.add(guarantee)
    try:
        yield
    finally:
        broken.discard(guarantee)
