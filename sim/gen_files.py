"""The generator of seed 004: files of ``"<user_id> <amount>"`` lines written into a folder
with the ``rename`` rule (each written under a hidden temporary name, then renamed into
place), reproducibly from a seed.

Lines are made as arrays and formatted with a few numpy passes (digits position by
position), so a gigabyte takes seconds rather than minutes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import numpy.typing as npt

BAD_LINES = (
    b"abc def",
    b"42",
    b"1 2 3",
    b"7 -5",
    b"7 2.5",
    b"7 1e3",
    b"",
    b"99999999999999999999 1",
    b"5 18446744073709551616",
    b" 5 6",
    b"5  6",
)
"""Kinds of bad line a file may hold (``--bad-lines``): text, one or three fields, a
negative, fractional or exponent amount, a blank line, numbers too large, extra spaces."""

MAX_AMOUNT = 1_000_000
"""Amounts are drawn below this (a total stays exact in awk's doubles for a long time)."""

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``64MB``, ``1G``, ``500k``, ``1048576`` (binary units).

    Raises:
        ValueError: It is not a size.
    """
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a size (such as 64MB, 1G or 500k)")
    size = int(float(found.group(1)) * _UNITS[found.group(2).lower()])
    if size < 1:
        raise ValueError(f"{text!r}: a file must hold at least one byte")
    return size


@attrs.frozen
class Generated:
    """What :func:`generate_files` wrote."""

    files: int
    bytes: int
    lines: int
    bad_lines: int


def _digits(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    count = np.ones(len(values), np.int64)
    bound = 10
    while True:
        more = values >= bound
        if not more.any():
            return count
        count += more
        bound *= 10


def _put_numbers(
    buffer: npt.NDArray[np.uint8],
    values: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    digits: npt.NDArray[np.int64],
) -> None:
    # Writes each value's decimal digits ending just before ``ends``.
    rest = values.copy()
    for place in range(int(digits.max())):
        live = digits > place
        buffer[(ends - 1 - place)[live]] = (rest[live] % 10 + 48).astype(np.uint8)
        rest //= 10


def format_lines(
    users: npt.NDArray[np.int64], amounts: npt.NDArray[np.int64]
) -> tuple[bytes, npt.NDArray[np.int64]]:
    """``users[i] amounts[i]\\n`` for every i (non-negative numbers), as bytes, and where
    each line starts."""
    user_digits, amount_digits = _digits(users), _digits(amounts)
    lengths = user_digits + amount_digits + 2
    ends = np.cumsum(lengths)
    starts = ends - lengths
    buffer = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
    _put_numbers(buffer, users, starts + user_digits, user_digits)
    buffer[starts + user_digits] = ord(" ")
    _put_numbers(buffer, amounts, ends - 1, amount_digits)
    buffer[ends - 1] = ord("\n")
    return buffer.tobytes(), starts


def make_file(
    rng: np.random.Generator, size: int, users: int, bad_fraction: float
) -> tuple[bytes, int, int]:
    """About ``size`` bytes of lines (whole lines), with about ``bad_fraction`` of them bad;
    returns the bytes, the lines and the bad lines."""
    per_line = 2 + len(str(users - 1)) + len(str(MAX_AMOUNT - 1))
    count = max(1, size // per_line)
    ids = rng.integers(0, users, count, dtype=np.int64)
    amounts = rng.integers(0, MAX_AMOUNT, count, dtype=np.int64)
    data, starts = format_lines(ids, amounts)
    bad = int(rng.binomial(count, bad_fraction)) if bad_fraction > 0 else 0
    if bad:  # each before a good line, spliced in
        where = np.sort(rng.choice(count, bad, replace=False))
        kinds = rng.integers(len(BAD_LINES), size=bad)
        parts, last = [], 0
        for line, kind in zip(starts[where].tolist(), kinds.tolist(), strict=True):
            parts += [data[last:line], BAD_LINES[kind], b"\n"]
            last = line
        parts.append(data[last:])
        data = b"".join(parts)
    return data, count + bad, bad


def generate_files(
    folder: Path,
    *,
    files: int,
    size: int,
    users: int,
    seed: int,
    rate: float | None = None,
    bad_fraction: float = 0.0,
    on_file: Callable[[Path], None] | None = None,
) -> Generated:
    """Write ``files`` files of about ``size`` bytes into ``folder``, each under a hidden
    temporary name renamed into place once complete (the ``rename`` rule), ``rate`` files a
    second at most. The same seed gives the same files, byte for byte.

    Raises:
        ValueError: A count, size or fraction is out of range.
        OSError: The folder cannot be written.
    """
    if files < 1 or users < 1:
        raise ValueError("files and users must be at least 1")
    if not 0 <= bad_fraction <= 1:
        raise ValueError(f"the fraction of bad lines must be between 0 and 1, got {bad_fraction}")
    folder.mkdir(parents=True, exist_ok=True)
    written = Generated(0, 0, 0, 0)
    started = time.monotonic()
    for index in range(files):
        if rate is not None:
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        rng = np.random.default_rng([seed, index])
        data, lines, bad = make_file(rng, size, users, bad_fraction)
        name = f"usage-{seed}-{index:06d}.txt"
        temporary = folder / f".{name}.tmp"
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temporary.rename(folder / name)
        written = Generated(
            written.files + 1,
            written.bytes + len(data),
            written.lines + lines,
            written.bad_lines + bad,
        )
        if on_file is not None:
            on_file(folder / name)
    return written
