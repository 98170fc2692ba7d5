"""Bearer tokens of the people a service delivers to: JSON Web Tokens (PyJWT), signed with a
shared secret (HS256 by default), naming their user in ``sub`` and expiring at ``exp``.

A connection is checked before anything is sent on it: :meth:`TokenCheck.verify` returns the
user the token is for, or raises :exc:`TokenRefused` with a reason short enough for a
websocket close frame (close code :data:`TOKEN_REFUSED`, 4001).
"""

from __future__ import annotations

import time

import attrs
import jwt

from .errors import ConfigurationError, RingflowError

TOKEN_REFUSED = 4001
"""The websocket close code of a connection whose token is missing, bad, expired or for
another user."""

ALGORITHMS = ("HS256", "HS384", "HS512")
"""The signatures a shared secret makes."""


class TokenRefused(RingflowError):
    """A token that does not let its bearer in; ``reason`` says why (at most 120 bytes, as a
    close frame's reason must fit in 123)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason.encode()[:120].decode(errors="ignore")


@attrs.frozen
class TokenCheck:
    """Verifies tokens signed with ``secret``.

    Raises:
        ConfigurationError: The secret is empty or the algorithm not one of :data:`ALGORITHMS`.
    """

    secret: str = attrs.field(repr=False)
    algorithm: str = "HS256"
    leeway: float = 0.0
    """Seconds a token is still taken after its ``exp`` (clocks of two machines differ)."""

    def __attrs_post_init__(self) -> None:
        if not self.secret:
            raise ConfigurationError("the token secret is empty: set it (auth.secret_env)")
        if self.algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"token algorithm {self.algorithm!r}: expected one of {', '.join(ALGORITHMS)}"
            )
        least = int(self.algorithm[2:]) // 8  # as many bytes as the hash (RFC 7518)
        if len(self.secret.encode()) < least:
            raise ConfigurationError(
                f"the token secret has {len(self.secret.encode())} bytes; {self.algorithm} "
                f"needs at least {least}"
            )

    def verify(self, token: str | None, user: str | None = None) -> str:
        """The user ``token`` is for (its ``sub``), which must be ``user`` when given.

        Raises:
            TokenRefused: No token, not a token, a bad signature, no or a past ``exp``, no
                ``sub``, or a ``sub`` other than ``user``.
        """
        if not token:
            raise TokenRefused("no token: give ?token=JWT or an Authorization: Bearer header")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[self.algorithm],
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"token without '{exc.claim}'") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("bad token signature") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRefused(f"token not signed with {self.algorithm}") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(f"not a valid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str):  # PyJWT checks its type, if it is there: be sure
            raise TokenRefused("token 'sub' is not a string")
        if user is not None and subject != user:
            raise TokenRefused(f"token for another user than {user[:40]}")
        return subject

    def mint(self, user: str, lifetime: float = 3600.0, now: float | None = None) -> str:
        """A token for ``user`` expiring ``lifetime`` seconds after ``now`` (Unix seconds;
        by default the current time): for tests, load generators and tools."""
        issued = time.time() if now is None else now
        claims = {"sub": user, "iat": int(issued), "exp": int(issued + lifetime)}
        return jwt.encode(claims, self.secret, algorithm=self.algorithm)
