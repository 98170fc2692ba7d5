"""Relays: sinks that pass what they consume on to another system.

``webhook`` POSTs each batch as JSON to a URL, with an ``Idempotency-Key`` naming the batch
(``topic/partition/first-last``) and an ``id`` per record (``topic/partition/offset``), so
a receiver drops what it has already had: a batch delivered again after a retry or a crash
carries the same key and ids. Answers 2xx deliver; 429 and 5xx (with ``Retry-After``
honoured) and connection errors are retried; any other answer refuses the batch for good.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Annotated, Any

import attrs
import httpx
import msgspec

from actors import PermanentError, RecordBatch, RingflowError, TransientError
from topology import SinkContext, State

MAX_QUOTED = 200
"""The most characters of a receiver's answer quoted in an error."""


@attrs.frozen
class WebhookParams:
    """Settings of ``webhook``."""

    url: str
    """Where batches are POSTed (``http://`` or ``https://``)."""
    token_env: str | None = None
    """An environment variable holding a bearer token sent with every request."""
    headers: dict[str, str] = attrs.field(factory=dict)
    """More headers sent with every request."""
    connections: int = 8
    """Connections kept open to the receiver at most."""

    def __attrs_post_init__(self) -> None:
        try:
            parts = httpx.URL(self.url) if "://" in self.url else None
        except httpx.InvalidURL as exc:
            raise ValueError(f"url {self.url!r} is not a URL: {exc}") from None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.host
            or any(c.isspace() for c in self.url)
        ):
            raise ValueError(f"url {self.url!r} is not an http:// or https:// URL")
        if parts.port is not None and not 0 < parts.port < 65536:
            raise ValueError(f"url {self.url!r}: port {parts.port} is not between 1 and 65535")
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")


class RelayError(RingflowError):
    """A relay cannot start (its settings, read when the run starts, are wrong)."""


class WebhookState(State, frozen=True, tag=1):
    """The state of ``webhook``: records delivered per kind, and batches."""

    kinds: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    batches: Annotated[int, msgspec.Meta(ge=0)]
    """Batches delivered (POSTs answered 2xx)."""


_ENCODER = msgspec.json.Encoder()


@attrs.define(eq=False)
class WebhookSink:
    """POSTs the batches it consumes to ``params.url`` (see the module)."""

    params: WebhookParams
    _client: httpx.AsyncClient | None = None
    _kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _batches: int = 0
    _headers: dict[str, str] = attrs.field(factory=dict)

    one_batch_per_write = True
    """Each batch is its own attempt (a POST), retried on its own."""

    @property
    def linger(self) -> float:
        """Batches go as soon as they are ready."""
        return 0.0

    @asynccontextmanager
    async def opened(self, context: SinkContext) -> AsyncIterator[None]:
        """Keep connections to the receiver for the run."""
        headers = {"content-type": "application/json", **self.params.headers}
        if self.params.token_env is not None:
            token = os.environ.get(self.params.token_env)
            if not token:
                raise RelayError(
                    f"webhook of consumer {context.consumer}: the environment variable "
                    f"{self.params.token_env} (params.token_env) is unset or empty; set it to "
                    "the token the receiver expects"
                )
            headers["authorization"] = f"Bearer {token}"
        self._headers = headers
        limits = httpx.Limits(max_connections=self.params.connections)
        # Attempts are timed by the delivery engine (retry.attempt_timeout).
        async with httpx.AsyncClient(limits=limits, timeout=None) as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    async def write(self, batches: Sequence[RecordBatch]) -> None:
        """POST each batch; count its records once every batch is delivered.

        Raises:
            TransientError: The receiver could not be reached, or answered 429 or 5xx.
            PermanentError: It answered another 4xx (or 3xx): the batch is refused.
        """
        client = self._client
        assert client is not None, "the sink is not open"
        for batch in batches:
            await self._post(client, batch)
        for batch in batches:
            self._kinds.update(getattr(v, "kind", type(v).__name__) for v in batch.values)
        self._batches += len(batches)

    async def _post(self, client: httpx.AsyncClient, batch: RecordBatch) -> None:
        last = batch.base_offset + len(batch.values) - 1
        where = f"{batch.topic}/{batch.partition}"
        body = _ENCODER.encode(
            {
                "topic": batch.topic,
                "partition": batch.partition,
                "first_offset": batch.base_offset,
                "last_offset": last,
                "records": [
                    {
                        "id": f"{where}/{batch.base_offset + i}",
                        "key": _plain(key),
                        "timestamp": float(stamp),
                        "value": value,
                    }
                    for i, (key, stamp, value) in enumerate(
                        zip(batch.keys, batch.timestamps, list(batch.values), strict=True)
                    )
                ],
            }
        )
        headers = {**self._headers, "idempotency-key": f"{where}/{batch.base_offset}-{last}"}
        try:
            answer = await client.post(self.params.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientError(f"{self.params.url}: {type(exc).__name__}: {exc}") from None
        status = answer.status_code
        if 200 <= status < 300:
            return
        said = f"{self.params.url} answered {status}: {answer.text[:MAX_QUOTED]}"
        if status == 429 or status >= 500:
            raise TransientError(said, retry_after=_retry_after(answer.headers.get("retry-after")))
        raise PermanentError(said)

    # -- the processor's duties ------------------------------------------------------------

    def process(self, events: Sequence[Any]) -> None:
        """Not used: a sink's consumer calls :meth:`write`."""
        raise TypeError("the webhook relay delivers batches with write(), not process()")

    def result(self) -> dict[str, Any]:
        """Records delivered per kind, and where."""
        return {
            "delivered": dict(sorted(self._kinds.items())),
            "batches": self._batches,
            "url": self.params.url,
        }

    def totals(self) -> dict[str, int]:
        """Records delivered per kind."""
        return dict(self._kinds)

    def snapshot(self) -> WebhookState:
        """Records delivered per kind."""
        return WebhookState(kinds=dict(self._kinds), batches=self._batches)

    def restore(self, state: WebhookState) -> None:
        """Take back the counts of an epoch."""
        self._kinds = collections.Counter(state.kinds)
        self._batches = state.batches

    def live(self) -> list[tuple[str, str]]:
        """Records delivered per kind so far."""
        return [(kind, f"{count:,}") for kind, count in sorted(self._kinds.items())]


def _retry_after(value: str | None) -> float | None:
    # Seconds, or an HTTP date; anything else is ignored.
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 3600.0)


def _plain(key: Any) -> Any:
    if key is None or isinstance(key, str | int):
        return key
    try:
        return int(key)
    except (TypeError, ValueError):
        return str(key)
