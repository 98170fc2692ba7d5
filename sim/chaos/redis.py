"""A simulated Redis for the logger of a chaos schedule, on the virtual clock.

It keeps what the logger writes (streams, hashes, the sorted set of runs) in memory, answers
on Trio without crossing into asyncio, and is unreachable while a ``redis_down`` fault
holds: every pipeline then fails with a connection error, and the first one of an outage
lands half of its commands first, as a pipeline cut off on the wire may. The logger must
lose nothing it did not count as dropped, and write nothing twice.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import redis.exceptions
import trio

from .inject import FaultBox

TARGET = "redis"
"""What a ``redis_down`` fault strikes."""


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@attrs.define(eq=False)
class SimRedis:
    """The logger's Redis; one per schedule (it outlives the processes that log to it)."""

    box: FaultBox
    streams: dict[str, dict[str, dict[str, Any]]] = attrs.field(factory=dict)
    """Per key, entries by id, in the order they were added."""
    hashes: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    zsets: dict[str, dict[str, float]] = attrs.field(factory=dict)
    _outage: float = -math.inf
    """When the outage that cut a pipeline short ends (one per outage is cut short)."""

    def pipeline(self, transaction: bool = False) -> SimPipeline:
        """A pipeline, as redis-py's: with ``transaction``, wrapped in MULTI/EXEC (all of
        it applies, or none)."""
        return SimPipeline(self, transaction)

    def _down_until(self) -> float | None:
        if not self.box.lasting("redis_down", TARGET):
            return None
        return self.box.until("redis_down", TARGET)

    async def run(
        self, commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]], transaction: bool
    ) -> list[Any]:
        await trio.lowlevel.checkpoint()
        until = self._down_until()
        if until is not None:
            # The pipeline in flight as Redis went away lands in part, unless it is a
            # transaction (Redis applies none of it without its EXEC).
            if until != self._outage:
                self._outage = until
                for name, args, kwargs in [] if transaction else commands[: len(commands) // 2]:
                    self._apply(name, args, kwargs)
            raise redis.exceptions.ConnectionError("injected: Redis is unreachable")
        results = []
        for name, args, kwargs in commands:
            try:
                results.append(self._apply(name, args, kwargs))
            except redis.exceptions.ResponseError as exc:
                results.append(exc)
        return results

    def _apply(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = args[0]
        if name == "xadd":
            stream = self.streams.setdefault(key, {})
            entry_id = kwargs["id"]
            if stream and _id(entry_id) <= _id(next(reversed(stream))):
                raise redis.exceptions.ResponseError(
                    "The ID specified in XADD is equal or smaller than the target stream top item"
                )
            stream[entry_id] = dict(args[1])
            maxlen = kwargs.get("maxlen")
            while maxlen is not None and len(stream) > maxlen:
                del stream[next(iter(stream))]
            return entry_id
        if name == "hset":
            self.hashes.setdefault(key, {}).update(kwargs["mapping"])
            return len(kwargs["mapping"])
        if name == "zadd":
            zset = self.zsets.setdefault(key, {})
            for member, score in args[1].items():
                if not (kwargs.get("nx") and member in zset):
                    zset[member] = score
            return len(args[1])
        if name == "hgetall":
            return {k.encode(): str(v).encode() for k, v in self.hashes.get(key, {}).items()}
        if name == "xrevrange":
            stream = self.streams.get(key, {})
            ids = list(stream)[-kwargs.get("count", len(stream)) :][::-1]
            return [(i.encode(), stream[i]) for i in ids]
        raise NotImplementedError(f"the simulated Redis has no {name}")


@attrs.define(eq=False)
class SimPipeline:
    """Commands queued for one round trip."""

    redis: SimRedis
    transaction: bool = False
    commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = attrs.field(factory=list)

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> SimPipeline:
            self.commands.append((name, args, kwargs))
            return self

        return queue

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run the queued commands."""
        results = await self.redis.run(self.commands, self.transaction)
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


async def execute_simulated(pipe: SimPipeline, **options: Any) -> list[Any]:
    """How the logger runs a pipeline of the simulated Redis: on Trio."""
    return await pipe.execute(**options)
