"""A nursery that lets a lone exception through as itself rather than in an exception group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    """Open a trio nursery; when exactly one exception escapes it, raise that exception alone.

    Users of ``async with open_producer(...)`` should see the ``ValueError`` their own block
    raised, not an ``ExceptionGroup`` wrapping it. Several exceptions still come as a group.
    ``trio.Cancelled`` beside one other exception (the block failed while an outer scope
    was cancelling the tasks) is dropped: the task unwinds with that exception anyway.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        errors = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(errors) == 1 or len(group.exceptions) == 1:
            (error,) = errors or group.exceptions
            raise error from error.__cause__
        raise
