"""Switches that break one guarantee each, for the tests that prove ``ringflow chaos`` finds
the break. Nothing in a topology file or on the command line reaches them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

GUARANTEES: tuple[str, ...] = (
    "capture_buffered",
    "sequence_check",
    "durable_commits",
    "hold_back",
    "resend_after_reconnect",
    "deliver_before_commit",
    "commit_with_output",
)
"""What can be broken:

- ``capture_buffered``: a producer instance's epoch holds the records it made that no
  partition has accepted yet (else the epoch counts events as made that neither a partition
  nor the producer holds, and a restore from it loses them);
- ``sequence_check``: a partition skips the records of a producer on another node that it
  already has (else a resend after a reconnect stores them twice);
- ``durable_commits``: a member on another node commits to its group only offsets that an
  epoch of its own node holds (else a restart of its node finds records freed that it has
  not processed);
- ``hold_back``: a partition whose readers are on other nodes hands them only records an
  epoch holds (else a restart of its node gives offsets they saw to other records);
- ``resend_after_reconnect``: a producer on another node sends again, after a reconnect, the
  records the node does not have yet (else they are lost);
- ``deliver_before_commit``: a sink's consumer commits a batch only once its sink has it
  (else a batch whose delivery failed is committed, and lost to the other system);
- ``commit_with_output``: a consumer that writes what it reads into another topic commits
  it in the same step as the records enter that topic (else an epoch taken between finds
  them in both, and a restore from it writes them twice).
"""

broken: set[str] = set()
"""The guarantees broken now; empty except inside :func:`breaking`."""


def kept(guarantee: str) -> bool:
    """Whether ``guarantee`` (one of :data:`GUARANTEES`) is kept: true but inside
    :func:`breaking`."""
    return guarantee not in broken


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
