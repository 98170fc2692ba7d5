"""The exceptions ringflow raises, rooted in one :class:`RingflowError`.

Each is named for whose fault it is. Where one of trio's own exceptions already says what went
wrong, the ringflow exception also derives from it, so ``except trio.ClosedResourceError`` keeps
working for code that does not know about ringflow.
"""

from __future__ import annotations

import trio


class RingflowError(Exception):
    """Base class of every exception that ringflow raises on purpose."""


class ConfigurationError(RingflowError, ValueError):
    """An object was built with impossible settings (a capacity of zero, an unknown strategy).

    Raised at construction, before anything is accepted, so nothing is lost.
    """


class TopicClosedError(RingflowError, trio.ClosedResourceError):
    """A producer sent to a topic or partition that has already been closed.

    The records of the failed call were not accepted; everything accepted before is kept.
    """


class BatchTooLargeError(RingflowError, ValueError):
    """A batch holds more records than its partition can ever hold at once."""


class CommitError(RingflowError, ValueError):
    """A consumer committed an offset it may not commit (never delivered, or going backwards)."""


class SequenceError(RingflowError, ValueError):
    """Numbered records arrived with a gap: the ones before them were never sent.

    Nothing of the failed call was accepted.
    """


class GatewayError(RingflowError):
    """A peer node could not be reached in time, or refused the connection for good.

    The message names the URL (never a token) and, when the peer closed the connection, its
    close code and reason; :attr:`code` is that close code (None when it was not refused).
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SupervisionError(RingflowError):
    """A supervised actor crashed more often than its restart strategy allows.

    ``__cause__`` is the last crash; :attr:`crashes` holds the whole history.
    """

    def __init__(self, message: str, crashes: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.crashes = crashes
