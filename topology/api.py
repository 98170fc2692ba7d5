"""The HTTP API of a served topology: events in, health and metrics out.

Routes:

- ``POST /events``: one event object or a JSON array of them, each naming its kind in
  ``type``; ``202 {"accepted": n}`` once all are in their rings.
- ``POST /events/KIND``: the same for one kind (``type`` may be left out).
- ``GET /health``: ``200 {"status": "ok", ...}`` while events are taken.
- ``GET /metrics``: counters and gauges in Prometheus's text format.
- ``GET /events``, ``GET /stats``: stored events read back, when a sink can.
- ``GET /openapi.json``, ``GET /docs``: the API described (OpenAPI 3.1, and as a page).

With a token, every route but ``/health``, ``/openapi.json`` and ``/docs`` asks for
``Authorization: Bearer TOKEN`` (401 without it). Errors are JSON objects with an ``error``
message (and ``path`` for a field that failed its checks); see
:class:`~topology.intake.Intake` for what refuses a request.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from actors import HttpStatistics, PartitionStatistics, Request, Response

from .delivering import SinkDelivery
from .intake import Intake, IntakeError
from .openapi import docs_page, openapi_document

JSON_TYPES = ("application/json", "text/json")
"""Content types a POST may declare (or declare none)."""

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@runtime_checkable
class EventStore(Protocol):
    """Where the events taken are stored, read back by ``GET /events`` and ``GET /stats``."""

    async def events(self, query: Mapping[str, str]) -> dict[str, Any]:
        """A page of stored events matching ``query`` (``type``, ``user_id``, ``from``,
        ``to``, ``limit``, ``cursor``): ``{"events": [...], "next_cursor": ...}``.

        Raises:
            IntakeError: A parameter is wrong (400).
        """
        ...

    async def stats(self) -> dict[str, Any]:
        """Counts of stored events per type and per day."""
        ...

    def lag(self) -> Mapping[float, float]:
        """Seconds from acceptance to storage, by quantile (0.5, 0.95, 0.99), of recent
        events; empty before any was stored."""
        ...


@attrs.define(eq=False)
class EventsApi:
    """Answers the requests of the HTTP API (a :data:`~actors.http.Handler`).

    Args:
        intake: Takes the events.
        token: The bearer token every route but ``/health`` asks for (None: no token).
        partitions: The statistics of every partition whose depth ``/metrics`` reports, by
            topic.
        http: The server's statistics, for ``/metrics``.
    """

    intake: Intake
    token: str | None = None
    partitions: Callable[[], dict[str, list[PartitionStatistics]]] = dict
    http: Callable[[], HttpStatistics | None] = lambda: None
    accepting: bool = True
    """False once the service is stopping: events are refused with 503."""
    deliveries: Callable[[], Mapping[str, SinkDelivery]] = dict
    """By consumer with a sink, how its records are delivered, for ``/metrics``."""
    store: EventStore | None = None
    stored_elsewhere: str | None = None
    """Where events are read back when not here (the nodes that store them), for the 404."""
    """Where events are read back from; None: ``GET /events`` and ``GET /stats`` are 404."""
    title: str = "events"
    """The API's name in its OpenAPI document (the topology's name)."""

    async def __call__(self, request: Request) -> Response:
        """Answer one request."""
        path = request.path.rstrip("/") or "/"
        if path == "/health":
            return self._only(request, "GET") or Response.json(
                200 if self.accepting else 503,
                {"status": "ok" if self.accepting else "stopping", "kinds": self.intake.kinds},
            )
        if path in ("/openapi.json", "/docs"):
            refused = self._only(request, "GET")
            if refused is not None:
                return refused
            document = openapi_document(
                self.title,
                self.intake.routes,
                token=self.token is not None,
                store=self.store is not None,
            )
            if path == "/docs":
                return Response(200, docs_page(document).encode(), "text/html; charset=utf-8")
            return Response.json(200, document)
        if self.token is not None and not self._authorized(request):
            if request.method == "POST" and (path == "/events" or path.startswith("/events/")):
                self.intake.refuse(401)
            return Response.error(
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer TOKEN'",
                headers=[("www-authenticate", 'Bearer realm="ringflow"')],
            )
        if path == "/metrics":
            return self._only(request, "GET") or Response(
                200, self.metrics().encode(), PROMETHEUS_TYPE
            )
        reading = request.method in ("GET", "HEAD")
        if path == "/stats":
            return self._only(request, "GET") or await self._read(request, path)
        if path == "/events" and reading:  # answered 404 when no sink stores events
            return await self._read(request, path)
        if path == "/events" or path.startswith("/events/"):
            kind = path.removeprefix("/events").removeprefix("/") or None
            methods = ("GET",) if path == "/events" and self.store is not None else ()
            return self._only(request, "POST", *methods) or await self._events(request, kind)
        return Response.error(404, f"no route {request.path!r}; events go to POST /events")

    @staticmethod
    def _only(request: Request, *methods: str) -> Response | None:
        allowed = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})
        if request.method in allowed:
            return None
        return Response.error(
            405,
            f"{request.method} is not allowed here; use {' or '.join(methods)}",
            headers=[("allow", ", ".join(allowed))],
        )

    def _authorized(self, request: Request) -> bool:
        assert self.token is not None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Header values arrive as latin-1 text: back to their bytes, as the token's UTF-8.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("latin-1"), self.token.encode()
        )

    async def _events(self, request: Request, kind: str | None) -> Response:
        given = request.headers.get("content-type", "").partition(",")[0]  # the first, if repeated
        declared = given.partition(";")[0].strip().lower()
        if declared and declared not in JSON_TYPES:
            self.intake.refuse(415)
            return Response.error(415, f"events are JSON; got content-type {declared!r}")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            self.intake.refuse(415)
            return Response.error(
                415, f"content-encoding {encoding!r} is not taken; send the JSON uncompressed"
            )
        if not self.accepting:
            self.intake.refuse(503)
            return Response.error(
                503, "the service is stopping; nothing was accepted", headers=[("retry-after", "5")]
            )
        try:
            accepted = await self.intake.accept(request.body, kind)
        except IntakeError as refused:
            headers = []
            if "retry_after" in refused.details:
                headers.append(("retry-after", str(refused.details["retry_after"])))
            return Response.error(refused.status, refused.message, headers, **refused.details)
        return Response.json(202, {"accepted": accepted})

    async def _read(self, request: Request, path: str) -> Response:
        if self.store is None:
            where = self.stored_elsewhere
            return Response.error(
                404,
                f"events are not stored on this node: read them back from {where}"
                if where
                else "events are not stored where they can be read back (no sink reads them)",
            )
        try:
            if path == "/stats":
                if request.query:
                    unknown = sorted(request.query)[0]
                    return Response.error(400, f"GET /stats takes no parameters; got {unknown!r}")
                return Response.json(200, await self.store.stats())
            twice = sorted(name for name, given in request.query.items() if len(given) > 1)
            if twice:
                return Response.error(400, f"parameter {twice[0]!r} is given more than once")
            query = {name: given[0] for name, given in request.query.items()}
            return Response.json(200, await self.store.events(query))
        except IntakeError as refused:
            return Response.error(refused.status, refused.message, **refused.details)

    def metrics(self) -> str:
        """The service's figures in Prometheus's text format."""
        taken = self.intake.statistics()
        lines = [
            *_metric(
                "ringflow_events_accepted_total",
                "counter",
                "Events accepted into their rings.",
                [({}, taken.accepted)],
            ),
            *_metric(
                "ringflow_requests_refused_total",
                "counter",
                "Requests of events refused, by status.",
                [({"status": str(s)}, n) for s, n in sorted(taken.refused.items())],
            ),
            *_metric(
                "ringflow_requests_waiting",
                "gauge",
                "Requests waiting for room in a ring.",
                [({}, taken.waiting)],
            ),
        ]
        partitions = self.partitions()
        lines += _metric(
            "ringflow_ring_depth",
            "gauge",
            "Records held in a partition's ring.",
            [
                ({"topic": topic, "partition": str(p.partition)}, p.depth)
                for topic, stats in sorted(partitions.items())
                for p in stats
            ],
        )
        if self.store is not None:
            lag = self.store.lag()
            lines += _metric(
                "ringflow_storage_lag_seconds",
                "summary",
                "Seconds from an event's acceptance to its storage, over recent events.",
                [({"quantile": f"{q:g}"}, f"{v:.6f}") for q, v in sorted(lag.items())],
            )
        lines += _delivery_metrics(self.deliveries())
        http = self.http()
        if http is not None:
            lines += _metric(
                "ringflow_http_responses_total",
                "counter",
                "HTTP responses sent, by status.",
                [({"status": str(s)}, n) for s, n in sorted(http.by_status.items())],
            )
            lines += _metric(
                "ringflow_http_connections",
                "gauge",
                "HTTP connections open.",
                [({}, http.connections)],
            )
        return "\n".join(lines) + "\n"


BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
"""``ringflow_delivery_breaker_state``'s values."""


def _delivery_metrics(deliveries: Mapping[str, SinkDelivery]) -> list[str]:
    # Per consumer with a sink: attempts, retries, failures, dead letters, the breaker.
    if not deliveries:
        return []
    named = sorted(deliveries.items())
    counters: list[tuple[str, str, Callable[[SinkDelivery], int]]] = [
        ("attempts", "Calls to a consumer's sink.", lambda d: d.statistics.attempts),
        ("retries", "Failed calls to a sink tried again.", lambda d: d.statistics.retries),
        ("failures", "Failed calls to a sink, retried or not.", lambda d: d.statistics.failures),
        (
            "dead_lettered",
            "Records sent to a consumer's dead-letter topic.",
            lambda d: d.dead_lettered,
        ),
    ]
    lines = []
    for name, help_text, figure in counters:
        lines += _metric(
            f"ringflow_delivery_{name}_total",
            "counter",
            help_text,
            [({"consumer": c}, figure(d)) for c, d in named],
        )
    lines += _metric(
        "ringflow_delivery_breaker_state",
        "gauge",
        "A sink's circuit breaker: 0 closed, 1 half-open, 2 open.",
        [({"consumer": c}, BREAKER_STATES[d.breaker.state]) for c, d in named],
    )
    lines += _metric(
        "ringflow_delivery_waiting",
        "gauge",
        "Writes waiting for a sink (retrying, or its breaker open).",
        [({"consumer": c}, d.writing) for c, d in named],
    )
    return lines


def _metric(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], Any]]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{label}}} {value}" if label else f"{name} {value}")
    return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
