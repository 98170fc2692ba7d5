"""Usage lines (``"<user_id> <amount>"``, seed 004) parsed a chunk at a time into arrays.

A valid line is two base-10 integers separated by one space: the user id (0 to 2**63 - 1,
PostgreSQL's ``bigint``) and the amount (0 to 2**64 - 1), optionally followed by ``\\r``
(files with CRLF endings are valid). Everything else is a bad line: text, one or three
fields, a sign, a fraction or an exponent, a number too large (or of more than 64 digits,
leading zeros included), a blank line. The newline
that ends a file is not a line; a last line without one is a line like any other.

A chunk's lines are parsed with a few numpy passes over its bytes (classes of characters,
running counts, then the digits of every number at once, position by position), never line
by line in Python.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

MAX_USER = (1 << 63) - 1
"""The largest user id (PostgreSQL's ``bigint``)."""

MAX_DIGITS = 64
"""A number of more digits than this is a bad line, even with leading zeros."""

_DIGIT, _SPACE, _OTHER = 0, 1, 2
_CLASSES = np.full(256, _OTHER, np.uint8)
_CLASSES[ord("0") : ord("9") + 1] = _DIGIT
_CLASSES[ord(" ")] = _SPACE
_CLASSES[ord("\n")] = _DIGIT  # ends a line; never inside one

_TENTH = np.uint64((1 << 64) // 10)
"""A value above this times ten overflows 64 bits (and one equal to it, plus more than 5)."""


@attrs.frozen
class Parsed:
    """The lines of one chunk: the valid ones as arrays, and where the bad ones are."""

    users: npt.NDArray[np.int64]
    amounts: npt.NDArray[np.uint64]
    bad: npt.NDArray[np.int64]
    """The bad lines' indices in the chunk (0: its first line), ascending."""
    lines: int
    """Lines in the chunk."""


def parse_lines(data: bytes) -> Parsed:
    """Parse ``data``: whole lines, each ended by ``\\n`` (a last line without one is
    taken as one too)."""
    if not data:
        return Parsed(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.int64), 0)
    if not data.endswith(b"\n"):
        data += b"\n"
    raw = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    starts = np.empty(len(ends), np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    classes = _CLASSES[raw]
    crlf = (ends > starts) & (raw[np.maximum(ends - 1, 0)] == ord("\r"))
    ends = ends - crlf  # a line's \r is no part of it
    classes[ends[crlf]] = _DIGIT  # (counted as no character: the counts stop before it)
    others = _running(classes == _OTHER)
    is_space = classes == _SPACE
    spaces = _running(is_space)
    good = (others[ends] == others[starts]) & (spaces[ends] - spaces[starts] == 1)
    where = np.flatnonzero(good)
    begin, end = starts[where], ends[where]
    space = np.flatnonzero(is_space)[spaces[begin]]
    user_digits, amount_digits = space - begin, end - space - 1
    # Longer numbers are refused unread (leading zeros included): the digits are read a
    # position at a time, and one very long number would make every position slow.
    short = (user_digits <= MAX_DIGITS) & (amount_digits <= MAX_DIGITS)
    if not short.all():
        good[where[~short]] = False
        where, begin, end, space = where[short], begin[short], end[short], space[short]
        user_digits, amount_digits = user_digits[short], amount_digits[short]
    users, user_over = _numbers(raw, begin, user_digits)
    amounts, amount_over = _numbers(raw, space + 1, amount_digits)
    fits = (
        (user_digits > 0)
        & (amount_digits > 0)
        & ~user_over
        & ~amount_over
        & (users <= np.uint64(MAX_USER))
    )
    good[where[~fits]] = False
    return Parsed(
        users[fits].astype(np.int64),
        amounts[fits],
        np.flatnonzero(~good),
        len(ends),
    )


LONG_LINE = b"(a line longer than chunk_bytes)\n"
"""What stands for a line too long to read in one chunk (a bad line)."""


def explain(line: bytes) -> str:
    """Why ``line`` (without its newline) is a bad line, for people (it is one)."""
    if line == LONG_LINE[:-1]:
        return "a line longer than chunk_bytes"
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return "a blank line"
    fields = line.split(b" ")
    if len(fields) != 2:
        if len(line.split()) == 2:
            return "fields not separated by exactly one space"
        count = len(fields)
        return f"{count} field{'s' if count != 1 else ''}, not 2 ('USER AMOUNT')"
    for name, field, most in (("user id", fields[0], MAX_USER), ("amount", fields[1], 2**64 - 1)):
        if field.startswith((b"-", b"+")):
            return f"the {name} has a sign"
        if not field.isdigit() or not field.isascii():
            return f"the {name} is not a base-10 integer"
        if len(field) > MAX_DIGITS:
            return f"the {name} has more than {MAX_DIGITS} digits"
        if int(field) > most:
            return f"the {name} is too large (at most {most:,})"
    return "not 'USER AMOUNT'"


def _running(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    # counts[i]: how many of flags[:i] are set (so a range's count is a difference).
    counts = np.zeros(len(flags) + 1, np.int64)
    np.cumsum(flags, out=counts[1:])
    return counts


def _numbers(
    raw: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    # The values of the digit runs at ``starts``, a digit position at a time for every run
    # still that long (Horner's rule), and which overflowed 64 bits.
    values = np.zeros(len(starts), np.uint64)
    over = np.zeros(len(starts), np.bool_)
    longest = int(lengths.max()) if len(lengths) else 0
    for k in range(longest):
        live = np.flatnonzero(lengths > k)
        digit = (raw[starts[live] + k] - ord("0")).astype(np.uint64)
        value = values[live]
        over[live] |= (value > _TENTH) | ((value == _TENTH) & (digit > 5))
        values[live] = value * np.uint64(10) + digit  # wraps where it overflowed: refused
    return values, over


@attrs.frozen
class Sums:
    """Amounts summed per user, exactly: each sum kept as the sums of the amounts' high and
    low 32 bits (exact for up to 2**32 lines a user), users ascending."""

    users: npt.NDArray[np.int64]
    high: npt.NDArray[np.uint64]
    low: npt.NDArray[np.uint64]

    @classmethod
    def of(cls, users: npt.NDArray[np.int64], amounts: npt.NDArray[np.uint64]) -> Sums:
        """The sums of ``amounts`` per user in ``users`` (parallel arrays)."""
        if not len(users):
            return cls(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint64))
        order = np.argsort(users, kind="stable")
        ordered = users[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        taken = amounts[order]
        return cls(
            ordered[starts],
            np.add.reduceat(taken >> np.uint64(32), starts, dtype=np.uint64),
            np.add.reduceat(taken & np.uint64(0xFFFFFFFF), starts, dtype=np.uint64),
        )

    def __len__(self) -> int:
        return len(self.users)

    def __add__(self, other: Sums) -> Sums:
        users = np.concatenate([self.users, other.users])
        merged, where = np.unique(users, return_inverse=True)
        high = np.zeros(len(merged), np.uint64)
        low = np.zeros(len(merged), np.uint64)
        np.add.at(high, where, np.concatenate([self.high, other.high]))
        np.add.at(low, where, np.concatenate([self.low, other.low]))
        return Sums(merged, high, low)

    def totals(self) -> dict[int, int]:
        """Each user's sum, as a Python integer (of any size)."""
        return {
            user: (high << 32) + low
            for user, high, low in zip(
                self.users.tolist(), self.high.tolist(), self.low.tolist(), strict=True
            )
        }
