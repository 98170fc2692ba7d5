"""Choosing a partition for a record: by key with a stable hash, round robin without one."""

from __future__ import annotations

import itertools
import zlib

from .errors import ConfigurationError
from .record import Key


def stable_hash(key: str | int) -> int:
    """Return a hash of ``key`` that is the same in every process and every Python run.

    Python's built-in ``hash`` of a string is salted per process, so two nodes would disagree on
    where a key lives. This is CRC-32 of the key's UTF-8 text (an int is hashed as its decimal
    text, so ``7`` and ``"7"`` land together).

    Example:
        >>> stable_hash("video-42")
        4087966632
    """
    if isinstance(key, int):
        key = str(key)
    return zlib.crc32(key.encode())


class Partitioner:
    """Maps records to the partitions of a topic.

    A record with a key goes to ``stable_hash(key) % partitions``, so every record of a key
    lands in one partition and keeps its order. A record without a key goes to the next
    partition in round-robin order.

    Args:
        partitions: How many partitions the topic has (at least 1).

    Raises:
        ConfigurationError: ``partitions`` is less than 1.
    """

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ConfigurationError(
                f"a topic needs at least 1 partition, got {partitions}; set partitions >= 1"
            )
        self.partitions = partitions
        self._round_robin = itertools.cycle(range(partitions))
        self.cache: dict[str | int, int] = {}
        """Partitions of keys seen so far (up to 100,000 keys)."""

    def partition_for(self, key: Key) -> int:
        """Return the partition index for a record with this key."""
        if key is None:
            return next(self._round_robin)
        partition = self.cache.get(key)
        if partition is None:
            partition = stable_hash(key) % self.partitions
            if len(self.cache) < 100_000:
                self.cache[key] = partition
        return partition
