"""Bearer tokens (JWT) of the people a service delivers to: each way one is refused."""

from __future__ import annotations

import time

import jwt
import pytest

from actors import ConfigurationError, TokenCheck, TokenRefused

SECRET = "a-test-secret-" + "x" * 51  # 64 bytes: enough for HS512 too
OTHER = "another-secret-" + "y" * 49
FUTURE = 10**10  # expiries fixed in time: the same whenever the test runs
PAST = 1_000_000_000


def test_a_token_minted_for_a_user_lets_that_user_in() -> None:
    check = TokenCheck(SECRET)
    token = check.mint("42")
    assert check.verify(token, "42") == "42"
    assert check.verify(token) == "42"  # whoever it names
    assert check.verify(f"{token}") == "42"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "no token: give ?token=JWT or an Authorization: Bearer header"),
        ("", "no token: give ?token=JWT or an Authorization: Bearer header"),
        ("not.a.token", "not a valid token: "),
        (
            jwt.encode({"sub": "42", "exp": FUTURE}, OTHER),
            "bad token signature",
        ),
        (jwt.encode({"sub": "42", "exp": PAST}, SECRET), "token expired"),
        (jwt.encode({"sub": "42"}, SECRET), "token without 'exp'"),
        (jwt.encode({"exp": FUTURE}, SECRET), "token without 'sub'"),
        (
            jwt.encode({"sub": "7", "exp": FUTURE}, SECRET),
            "token for another user than 42",
        ),
        (
            jwt.encode({"sub": "42", "exp": FUTURE}, SECRET, algorithm="HS512"),
            "token not signed with HS256",
        ),
        (
            jwt.encode({"sub": "42", "exp": FUTURE}, None, algorithm="none"),
            "token not signed with HS256",
        ),
    ],
)
def test_a_bad_token_is_refused_saying_why(token: str | None, reason: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        TokenCheck(SECRET).verify(token, "42")
    assert refused.value.reason.startswith(reason)
    assert len(refused.value.reason.encode()) <= 120  # fits a websocket close frame


def test_a_token_just_expired_is_taken_within_the_leeway() -> None:
    token = TokenCheck(SECRET).mint("42", lifetime=60, now=time.time() - 70)
    with pytest.raises(TokenRefused, match="token expired"):
        TokenCheck(SECRET).verify(token, "42")
    assert TokenCheck(SECRET, leeway=3600).verify(token, "42") == "42"


def test_a_check_without_a_secret_or_with_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="the token secret is empty"):
        TokenCheck("")
    with pytest.raises(ConfigurationError, match="expected one of HS256, HS384, HS512"):
        TokenCheck(SECRET, algorithm="none")
    with pytest.raises(ConfigurationError, match="the token secret has 10 bytes; HS256 needs"):
        TokenCheck("0123456789")
    assert SECRET not in repr(TokenCheck(SECRET))
