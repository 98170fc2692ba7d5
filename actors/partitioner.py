"""Choosing a partition for a record: by key with a stable hash, round robin without one."""

from __future__ import annotations

import itertools
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigurationError
from .record import Key

TABLE_KEYS = 1 << 22
"""Int keys below this have their partition kept in a table, looked up for a whole array at
once; others are hashed one distinct key at a time."""


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


def _crc_table() -> npt.NDArray[np.uint32]:
    # The table of the reflected CRC-32 polynomial that zlib uses, one entry per byte value.
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1)
    return table.astype(np.uint32)


_CRC_TABLE = _crc_table()
_POWERS = 10 ** np.arange(19, dtype=np.int64)


def stable_hash_array(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.uint32]:
    """Return :func:`stable_hash` of every key of an array of non-negative ints at once.

    CRC-32 of each key's decimal text, computed a digit position at a time for the whole
    array (a key stops changing once its last digit is in), without a Python step per key.
    """
    keys = np.asarray(keys, dtype=np.int64)
    digits = np.ones(len(keys), dtype=np.int64)
    for power in _POWERS[1:]:
        digits += keys >= power
    crc = np.full(len(keys), 0xFFFFFFFF, dtype=np.uint32)
    for position in range(int(digits.max(initial=1))):
        going = digits > position
        # The digit at this position, counted from the left of each key's text.
        exponent = np.maximum(digits - 1 - position, 0)
        byte = ((keys // _POWERS[exponent]) % 10 + 0x30).astype(np.uint32)
        step = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        crc = np.where(going, step, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


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

    def partition_array(self, keys: npt.NDArray[np.int64]) -> Any:
        """Return the partition of every key of an int array at once: the same partitions
        as :meth:`partition_for` gives key by key."""
        return partitions_of(keys, self.partitions)


def partitions_of(keys: npt.NDArray[np.int64], partitions: int) -> Any:
    """The partition of every key of an int array among ``partitions`` (``stable_hash(key) %
    partitions``, as :class:`Partitioner` places keyed records), without a Python step per
    key for non-negative keys."""
    if not len(keys):
        return np.zeros(0, dtype=np.intp)
    if partitions == 1:
        return np.zeros(len(keys), dtype=np.intp)
    low, high = int(keys.min()), int(keys.max())
    if low < 0 or high >= TABLE_KEYS:
        distinct, where = np.unique(keys, return_inverse=True)
        if low < 0:
            each = np.array([stable_hash(key) % partitions for key in distinct.tolist()])
        else:
            each = (stable_hash_array(distinct) % np.uint32(partitions)).astype(np.intp)
        return each[where]
    table = _TABLES.get(partitions)
    if table is None or high >= len(table):
        table = _grown_table(table, high + 1, partitions)
    parts: Any = table[keys]
    missing = parts < 0
    if missing.any():
        new = np.unique(keys[missing])
        table[new] = stable_hash_array(new) % partitions
        parts = table[keys]
    return parts


_TABLES: dict[int, Any] = {}
"""Per number of partitions: the partition of each int key below the table's length, or -1
until a key was seen. A key's partition depends on nothing else, so every topic with as many
partitions shares one table (in the UGC example, three topics of two partitions). A table
holds at most :data:`TABLE_KEYS` entries of two bytes (8 MB) and lives as long as the
process."""


def _grown_table(table: Any, size: int, partitions: int) -> Any:
    dtype = np.int16 if partitions < 2**15 else np.int64
    old = np.zeros(0, dtype=dtype) if table is None else table
    grown = np.full(max(size, 2 * len(old), 1024), -1, dtype=dtype)
    grown[: len(old)] = old
    _TABLES[partitions] = grown
    return grown
