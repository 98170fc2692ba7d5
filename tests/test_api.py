"""The HTTP API of a served topology: its routes, statuses and metrics."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import trio
import trio.testing

from actors import CircuitBreaker, HttpLimits, Request, Response, RetryPolicy, serve_http
from topology import EventsApi, Intake, SinkDelivery

from .test_http import Client
from .test_intake import CLICK, VIEW, intake


def api(taken: Intake | None = None, token: str | None = None) -> EventsApi:
    taken = taken or intake()
    return EventsApi(
        taken,
        token,
        partitions=lambda: {
            route.topic.name: route.topic.statistics() for route in taken.routes.values()
        },
    )


def post(path: str, body: bytes, **headers: str) -> Request:
    return Request("POST", path, {"content-type": "application/json", **headers}, body)


def answer(response: Response) -> tuple[int, dict[str, object]]:
    return response.status, json.loads(response.body)


async def test_events_are_accepted_on_both_routes() -> None:
    events = api()
    assert answer(await events(post("/events", b"[" + CLICK + b"," + VIEW + b"]"))) == (
        202,
        {"accepted": 2},
    )
    body = b'{"user_id": 1, "page": "/", "element": "x"}'
    assert answer(await events(post("/events/click", body))) == (202, {"accepted": 1})
    assert answer(await events(post("/events/click/", body))) == (202, {"accepted": 1})


async def test_refusals_carry_their_status_message_and_path() -> None:
    events = api()
    status, said = answer(await events(post("/events", b'{"type": "click", "user_id": "x"}')))
    assert status == 422
    assert said["path"] == "$.user_id"
    assert "Expected `int`, got `str`" in str(said["error"])
    status, said = answer(await events(post("/events/purchase", CLICK)))
    assert (status, said["kinds"]) == (404, ["click", "page_view"])
    assert answer(await events(post("/events", b"{")))[0] == 400


async def test_a_full_ring_answers_503_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = api(intake(capacity=1, partitions=1, max_wait=3))
    assert (await events(post("/events", CLICK))).status == 202
    refused = await events(post("/events", CLICK))
    assert refused.status == 503
    assert ("retry-after", "3") in refused.headers
    assert json.loads(refused.body)["retry_after"] == 3


async def test_a_stopping_service_refuses_events_and_says_so_on_health() -> None:
    events = api()
    events.accepting = False
    refused = await events(post("/events", CLICK))
    assert refused.status == 503
    assert ("retry-after", "5") in refused.headers
    assert answer(await events(Request("GET", "/health", {}))) == (
        503,
        {"status": "stopping", "kinds": ["click", "page_view"]},
    )


@pytest.mark.parametrize(
    ("request_", "status", "header"),
    [
        (Request("GET", "/events", {}), 404, None),  # no sink stores events to read back
        (Request("PUT", "/events", {}), 405, ("allow", "POST")),
        (Request("POST", "/health", {}), 405, ("allow", "GET, HEAD")),
        (Request("DELETE", "/metrics", {}), 405, ("allow", "GET, HEAD")),
        (Request("GET", "/nothing", {}), 404, None),
        (post("/events", CLICK, **{"content-type": "text/plain"}), 415, None),
    ],
)
async def test_wrong_methods_routes_and_types_are_refused(
    request_: Request, status: int, header: tuple[str, str] | None
) -> None:
    response = await api()(request_)
    assert response.status == status
    assert "error" in json.loads(response.body)
    if header is not None:
        assert header in response.headers


async def test_a_token_guards_every_route_but_health() -> None:
    events = api(token="s3cret")
    for request in (post("/events", CLICK), Request("GET", "/metrics", {})):
        refused = await events(request)
        assert refused.status == 401
        assert ("www-authenticate", 'Bearer realm="ringflow"') in refused.headers
    wrong = await events(post("/events", CLICK, authorization="Bearer s3cre"))
    assert wrong.status == 401
    right = await events(post("/events", CLICK, authorization="bearer s3cret"))
    assert right.status == 202
    assert (await events(Request("GET", "/health", {}))).status == 200


async def test_metrics_count_what_was_taken_and_refused() -> None:
    events = api()
    await events(post("/events", b"[" + CLICK + b"," + CLICK + b"]"))
    await events(post("/events", b"{"))
    response = await events(Request("GET", "/metrics", {}))
    assert response.status == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    text = response.body.decode()
    assert "ringflow_events_accepted_total 2\n" in text
    assert 'ringflow_requests_refused_total{status="400"} 1\n' in text
    depths = [line for line in text.splitlines() if line.startswith("ringflow_ring_depth{")]
    seven = events.intake.routes["click"].topic.partitioner.partition_for(7)
    assert depths == [
        f'ringflow_ring_depth{{topic="clicks",partition="{p}"}} {2 if p == seven else 0}'
        for p in (0, 1)
    ] + ['ringflow_ring_depth{topic="views",partition="0"} 0']


async def test_metrics_show_each_sinks_deliveries_and_breaker() -> None:
    events = api()
    sink: Any = None  # never called
    delivery = SinkDelivery("relay", sink, RetryPolicy(), CircuitBreaker(1), random.Random(0))
    delivery.statistics.attempts, delivery.statistics.retries = 7, 3
    delivery.statistics.failures, delivery.dead_lettered = 4, 2
    delivery.breaker.failed()  # one failure opens it
    delivery.writing = 1
    events.deliveries = lambda: {"relay": delivery}
    text = (await events(Request("GET", "/metrics", {}))).body.decode()
    for line in (
        'ringflow_delivery_attempts_total{consumer="relay"} 7',
        'ringflow_delivery_retries_total{consumer="relay"} 3',
        'ringflow_delivery_failures_total{consumer="relay"} 4',
        'ringflow_delivery_dead_lettered_total{consumer="relay"} 2',
        'ringflow_delivery_breaker_state{consumer="relay"} 2',
        'ringflow_delivery_waiting{consumer="relay"} 1',
    ):
        assert line + "\n" in text


async def test_the_api_over_real_http(nursery: trio.Nursery) -> None:
    events = api()
    server = await nursery.start(
        lambda task_status: serve_http(
            events, "127.0.0.1", 0, limits=HttpLimits(max_body=200), task_status=task_status
        )
    )
    events.http = server.statistics
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        client = Client(stream)
        status, headers, body = await client.request(
            "POST", "/events", CLICK, [("content-type", "application/json")]
        )
        assert (status, json.loads(body)) == (202, {"accepted": 1})
        assert headers["content-type"] == "application/json"
        status, _, body = await client.request("POST", "/events", b"[" + CLICK * 3 + b"]")
        assert status == 413
        assert "at most 200 are taken" in json.loads(body)["error"]
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        status, _, body = await Client(stream).request("GET", "/metrics")
        assert 'ringflow_http_responses_total{status="202"} 1' in body.decode()
        assert 'ringflow_http_responses_total{status="413"} 1' in body.decode()
