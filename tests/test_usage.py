"""Usage lines (seed 004) parsed a chunk at a time: every kind of bad line, and the same
results as a line-by-line reading of the rules."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from sim.usage import MAX_USER, Sums, explain, parse_lines

VALID = re.compile(rb"([0-9]+) ([0-9]+)\r?")


def by_rule(data: bytes) -> tuple[list[int], list[int], list[int]]:
    """The rules read line by line: valid lines' users and amounts, bad lines' indices."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()  # the newline that ends the data is no line
    users, amounts, bad = [], [], []
    for number, line in enumerate(lines):
        found = VALID.fullmatch(line)
        if found and int(found[1]) <= MAX_USER and int(found[2]) < 1 << 64:
            users.append(int(found[1]))
            amounts.append(int(found[2]))
        else:
            bad.append(number)
    return users, amounts, bad


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        (b"1 2", True),
        (b"3 4\r", True),
        (b"007 0000000000000000000000042", True),
        (b"9223372036854775807 18446744073709551615", True),
        (b"", False),
        (b"\r", False),
        (b"5  6", False),
        (b"7 8 9", False),
        (b"12", False),
        (b"abc", False),
        (b"-1 5", False),
        (b"1 -5", False),
        (b"1 2.5", False),
        (b"1 1e5", False),
        (b"1 +5", False),
        (b" 1 2", False),
        (b"1 2 ", False),
        (b"1\t2", False),
        (b"1 2\r\r", False),
        (b"9223372036854775808 1", False),
        (b"1 18446744073709551616", False),
        (b"1 99999999999999999999", False),
    ],
)
def test_each_kind_of_line_is_valid_or_bad_as_the_rules_say(line: bytes, ok: bool) -> None:
    parsed = parse_lines(b"1 1\n" + line + b"\n2 2\n")
    assert parsed.lines == 3
    assert parsed.bad.tolist() == ([] if ok else [1])
    assert len(parsed.users) == (3 if ok else 2)


def test_the_final_newline_is_no_line_and_a_last_line_without_one_is() -> None:
    assert parse_lines(b"1 2\n").lines == 1
    assert parse_lines(b"1 2").users.tolist() == [1]
    ended_blank = parse_lines(b"1 2\n\n")
    assert (ended_blank.lines, ended_blank.bad.tolist()) == (2, [1])
    assert parse_lines(b"").lines == 0


def test_random_chunks_give_what_the_rules_give_line_by_line() -> None:
    rng = random.Random(4)
    pieces = [b"1", b"23", b"0", b" ", b"\r", b"-", b".", b"x", b"18446744073709551616"]
    for _ in range(300):
        lines = []
        for _ in range(rng.randrange(1, 40)):
            if rng.random() < 0.7:
                line = f"{rng.randrange(10 ** rng.randrange(1, 20))} {rng.randrange(1 << 64)}"
                lines.append(line.encode() + (b"\r" if rng.random() < 0.2 else b""))
            else:
                lines.append(b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 5))))
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        users, amounts, bad = by_rule(data)
        parsed = parse_lines(data)
        assert parsed.users.tolist() == users, data
        assert parsed.amounts.tolist() == amounts, data
        assert parsed.bad.tolist() == bad, data


def test_sums_per_user_are_exact_beyond_64_bits_and_add_up() -> None:
    rng = random.Random(9)
    expected: dict[int, int] = {}
    total = Sums.of(np.empty(0, np.int64), np.empty(0, np.uint64))
    for _ in range(5):
        users = [rng.randrange(50) for _ in range(2000)]
        amounts = [
            rng.choice([rng.randrange(100), (1 << 64) - 1 - rng.randrange(9)]) for _ in users
        ]
        for user, amount in zip(users, amounts, strict=True):
            expected[user] = expected.get(user, 0) + amount
        total = total + Sums.of(np.array(users, np.int64), np.array(amounts, np.uint64))
    assert total.totals() == expected
    assert total.users.tolist() == sorted(expected)
    assert max(expected.values()) > 1 << 70  # far beyond 64 bits, and still exact


def test_numbers_of_more_than_64_digits_are_bad_lines_read_quickly() -> None:
    # A number was read a digit position at a time for every line of its chunk: one of a
    # million digits took seconds. Leading zeros count too.
    data = b"1" * 1_000_000 + b" 5\n" + b"7 " + b"0" * 70 + b"5\n" + b"3 " + b"0" * 60 + b"4\n"
    parsed = parse_lines(data)
    assert parsed.bad.tolist() == [0, 1]
    assert (parsed.users.tolist(), parsed.amounts.tolist()) == ([3], [4])


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"", "a blank line"),
        (b" \r", "a blank line"),
        (b"42", "1 field, not 2 ('USER AMOUNT')"),
        (b"1 2 3", "3 fields, not 2 ('USER AMOUNT')"),
        (b"1  2", "fields not separated by exactly one space"),
        (b"1\t2", "fields not separated by exactly one space"),
        (b"-1 2", "the user id has a sign"),
        (b"1 +2", "the amount has a sign"),
        (b"1 2.5", "the amount is not a base-10 integer"),
        (b"1 1e3", "the amount is not a base-10 integer"),
        ("\u0661 2".encode(), "the user id is not a base-10 integer"),
        (b"9223372036854775808 1", "the user id is too large (at most 9,223,372,036,854,775,807)"),
        (b"1 18446744073709551616", "the amount is too large (at most 18,446,744,073,709,551,615)"),
        (b"1 " + b"0" * 65, "the amount has more than 64 digits"),
    ],
)
def test_a_bad_line_is_explained(line: bytes, why: str) -> None:
    assert len(parse_lines(line + b"\n").bad) == 1
    assert explain(line) == why
