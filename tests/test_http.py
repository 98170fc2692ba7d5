"""The HTTP/1.1 server: keep-alive, bodies, limits, timeouts and handler errors, over real
sockets on 127.0.0.1 (and in-memory streams where time must be virtual)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import pytest
import trio
import trio.testing

from actors import HttpLimits, HttpServer, Request, Response, serve_http


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("a bug in the handler")
    return Response.json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "header": request.headers.get("x-test"),
            "body": request.body.decode(),
        },
    )


class Client:
    """One connection to the server, speaking HTTP/1.1 through h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                await self.stream.send_all(data)

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        heads = [("host", "test"), ("content-length", str(len(body))), *(headers or [])]
        await self.send(
            h11.Request(method=method, target=target, headers=heads), h11.Data(data=body)
        )
        await self.send(h11.EndOfMessage())
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = 0, {}, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return status, headers, body
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def raw(self, data: bytes) -> bytes:
        """Send raw bytes; return everything the server sends until it closes."""
        await self.stream.send_all(data)
        received = b""
        while chunk := await self.stream.receive_some(65536):
            received += chunk
        return received


async def started(nursery: trio.Nursery, **kwargs: Any) -> HttpServer:
    server: HttpServer = await nursery.start(
        lambda task_status: serve_http(echo, "127.0.0.1", 0, task_status=task_status, **kwargs)
    )
    return server


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[HttpServer], Awaitable[Client]]]:
    """Opens connections to a server, each closed at the end of the test."""
    opened: list[trio.SocketStream] = []

    async def open_client(server: HttpServer) -> Client:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        opened.append(stream)
        return Client(stream)

    yield open_client
    for stream in opened:
        await stream.aclose()


Connect = Callable[[HttpServer], Awaitable[Client]]


async def test_one_connection_answers_requests_in_order(
    nursery: trio.Nursery, connect: Connect
) -> None:
    server = await started(nursery)
    client = await connect(server)
    status, headers, body = await client.request(
        "POST", "/events?type=click&type=view&limit=", b'{"a": 1}', [("X-Test", "yes")]
    )
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body == (
        b'{"method":"POST","path":"/events","query":{"type":["click","view"],"limit":[""]},'
        b'"header":"yes","body":"{\\"a\\": 1}"}'
    )
    status, _, body = await client.request("GET", "/second")
    assert status == 200
    assert b'"path":"/second"' in body
    stats = server.statistics()
    assert (stats.connections, stats.connections_total, stats.requests) == (1, 1, 2)
    assert stats.by_status == {200: 2}


async def test_a_chunked_body_is_read_whole(nursery: trio.Nursery, connect: Connect) -> None:
    client = await connect(await started(nursery))
    await client.send(
        h11.Request(
            method="POST", target="/", headers=[("host", "t"), ("transfer-encoding", "chunked")]
        ),
        h11.Data(data=b"hello "),
        h11.Data(data=b"world"),
        h11.EndOfMessage(),
    )
    status, _, body = await client.response()
    assert status == 200
    assert b'"body":"hello world"' in body


async def test_a_body_over_the_limit_is_refused_before_it_is_read(
    nursery: trio.Nursery, connect: Connect
) -> None:
    client = await connect(await started(nursery, limits=HttpLimits(max_body=10)))
    await client.send(
        h11.Request(method="POST", target="/", headers=[("host", "t"), ("content-length", "11")])
    )
    status, headers, body = await client.response()
    assert status == 413
    assert headers["connection"] == "close"
    assert body == b'{"error":"the body is 11 bytes; at most 10 are taken"}'


async def test_a_chunked_body_growing_over_the_limit_is_refused(
    nursery: trio.Nursery, connect: Connect
) -> None:
    client = await connect(await started(nursery, limits=HttpLimits(max_body=10)))
    await client.send(
        h11.Request(
            method="POST", target="/", headers=[("host", "t"), ("transfer-encoding", "chunked")]
        ),
        h11.Data(data=b"123456"),
        h11.Data(data=b"78901"),
    )
    status, _, body = await client.response()
    assert status == 413
    assert b"over 10 bytes" in body


async def test_garbage_is_answered_400_and_the_connection_closed(
    nursery: trio.Nursery, connect: Connect
) -> None:
    client = await connect(await started(nursery))
    answer = await client.raw(b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"malformed request" in answer


async def test_headers_too_large_are_answered_431(nursery: trio.Nursery, connect: Connect) -> None:
    client = await connect(await started(nursery, limits=HttpLimits(max_header=1024)))
    answer = await client.raw(b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 2000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_handler_that_raises_is_answered_500_and_the_server_goes_on(
    nursery: trio.Nursery, connect: Connect
) -> None:
    errors: list[BaseException] = []
    server = await started(nursery, on_error=errors.append)
    client = await connect(server)
    status, _, body = await client.request("GET", "/boom")
    assert (status, body) == (500, b'{"error":"internal error"}')
    assert [str(e) for e in errors] == ["a bug in the handler"]
    assert (await client.request("GET", "/fine"))[0] == 200
    assert (await (await connect(server)).request("GET", "/again"))[0] == 200
    assert server.statistics().handler_errors == 1


async def test_expect_100_continue_gets_a_go_ahead(nursery: trio.Nursery, connect: Connect) -> None:
    client = await connect(await started(nursery))
    await client.send(
        h11.Request(
            method="POST",
            target="/",
            headers=[("host", "t"), ("content-length", "2"), ("expect", "100-continue")],
        )
    )
    client.h11.receive_data(await client.stream.receive_some(65536))
    go_ahead = client.h11.next_event()
    assert isinstance(go_ahead, h11.InformationalResponse)
    assert go_ahead.status_code == 100
    await client.send(h11.Data(data=b"ok"), h11.EndOfMessage())
    status, _, body = await client.response()
    assert status == 200
    assert b'"body":"ok"' in body


# -- timeouts, on in-memory streams and virtual time -------------------------------------------


async def serve_in_memory(
    nursery: trio.Nursery, limits: HttpLimits
) -> tuple[HttpServer, Client, trio.Event]:
    server = HttpServer(echo, limits)
    client_end, server_end = trio.testing.memory_stream_pair()
    closed = trio.Event()

    async def serve() -> None:
        await server.serve_connection(server_end)
        closed.set()

    nursery.start_soon(serve)
    return server, Client(client_end), closed


async def test_a_slow_request_is_answered_408_when_its_time_is_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, client, closed = await serve_in_memory(nursery, HttpLimits(read_timeout=5))
    start = trio.current_time()
    await client.stream.send_all(b"POST / HTTP/1.1\r\nhost: t\r\n")  # and nothing more
    answer = await client.raw(b"")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert trio.current_time() - start == pytest.approx(5)
    await closed.wait()


async def test_trickling_bytes_does_not_extend_the_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, client, closed = await serve_in_memory(nursery, HttpLimits(read_timeout=5))
    start = trio.current_time()

    async def trickle() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in b"GET / HTTP/1.1\r\nhost: aaaaaaaaa":
                await client.stream.send_all(bytes([byte]))
                await trio.sleep(1)

    nursery.start_soon(trickle)
    answer = await client.stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - start == pytest.approx(5)
    await closed.wait()


async def test_an_idle_kept_alive_connection_is_closed_quietly(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, client, closed = await serve_in_memory(nursery, HttpLimits(idle_timeout=60))
    assert (await client.request("GET", "/"))[0] == 200
    answered = trio.current_time()
    await closed.wait()
    assert trio.current_time() - answered == pytest.approx(60)
    assert await client.stream.receive_some(10) == b""  # closed, no 408 sent
    assert server.statistics().by_status == {200: 1}


async def test_a_client_that_leaves_mid_request_is_not_answered(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server, client, closed = await serve_in_memory(nursery, HttpLimits())
    await client.stream.send_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nabc")
    await client.stream.aclose()
    await closed.wait()
    assert server.statistics().requests == 0
    assert server.statistics().connections == 0


# -- what an attack found ------------------------------------------------------------------------


async def test_head_gets_the_headers_of_a_get_and_no_body(
    nursery: trio.Nursery, connect: Connect
) -> None:
    client = await connect(await started(nursery))
    await client.send(
        h11.Request(method="HEAD", target="/x", headers=[("host", "t")]), h11.EndOfMessage()
    )
    await client.stream.send_all(b"GET /after HTTP/1.1\r\nhost: t\r\n\r\n")
    client.h11.receive_data(await client.stream.receive_some(65536))
    head = client.h11.next_event()
    assert isinstance(head, h11.Response)
    assert head.status_code == 200
    assert int(dict(head.headers)[b"content-length"]) > 0
    assert isinstance(client.h11.next_event(), h11.EndOfMessage)  # no body
    client.h11.start_next_cycle()
    status, _, body = await client.response()
    assert (status, b'"path":"/after"' in body) == (200, True)


@pytest.mark.parametrize(
    "bad",
    [Response(200, headers=[("x-bad", "a\nb")]), Response(100), None],
    ids=["header", "status", "none"],
)
async def test_a_handler_answering_nonsense_gets_500_and_the_server_goes_on(
    nursery: trio.Nursery, connect: Connect, bad: Any
) -> None:
    async def nonsense(request: Request) -> Response:
        return bad  # type: ignore[no-any-return]

    errors: list[BaseException] = []
    server: HttpServer = await nursery.start(
        lambda task_status: serve_http(
            nonsense, "127.0.0.1", 0, on_error=errors.append, task_status=task_status
        )
    )
    for _ in range(2):
        status, _, body = await (await connect(server)).request("GET", "/")
        assert (status, body) == (500, b'{"error":"internal error"}')
    assert len(errors) == 2


async def test_a_refused_large_body_is_read_by_the_client_not_reset(
    nursery: trio.Nursery, connect: Connect
) -> None:
    client = await connect(await started(nursery, limits=HttpLimits(max_body=1000)))
    size = 5_000_000

    async def upload() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await client.stream.send_all(
                b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % size
            )
            await client.stream.send_all(b"x" * size)

    nursery.start_soon(upload)
    answer = await client.stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n"
            b"transfer-encoding: chunked\r\n\r\n",
            b"Transfer-Encoding can't be present with Content-Length",
        ),
        (b"GET http://[::1/health HTTP/1.1\r\nhost: t\r\n\r\n", b"malformed request target"),
    ],
    ids=["smuggling", "target"],
)
async def test_ambiguous_framing_and_bad_targets_are_answered_400_and_closed(
    nursery: trio.Nursery, connect: Connect, head: bytes, said: bytes
) -> None:
    answer = await (await connect(await started(nursery))).raw(head)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert said in answer
    assert b"connection: close" in answer


def test_targets_are_paths_or_absolute_urls() -> None:
    assert Request("GET", "//health?x=1", {}).path == "//health"
    assert Request("GET", "http://host/events?limit=5", {}).query == {"limit": ["5"]}


async def test_connections_beyond_the_most_are_turned_away_with_503(
    nursery: trio.Nursery, connect: Connect
) -> None:
    server = await started(nursery, limits=HttpLimits(max_connections=1))
    first = await connect(server)
    assert (await first.request("GET", "/"))[0] == 200  # it stays open
    answer = await (await connect(server)).raw(b"")
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1\r\n" in answer
    assert b"1 connections are open" in answer
    assert (await first.request("GET", "/still"))[0] == 200
    assert server.statistics().turned_away == 1


async def test_a_partial_request_behind_a_whole_one_gets_its_408(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, client, closed = await serve_in_memory(nursery, HttpLimits(read_timeout=5, idle_timeout=100))
    await client.stream.send_all(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /b HTT")
    start = trio.current_time()
    answer = await client.raw(b"")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 408 " in answer
    assert trio.current_time() - start == pytest.approx(5)
    await closed.wait()  # after a second of lingering close
    assert trio.current_time() - start == pytest.approx(6)


@pytest.mark.parametrize(
    ("head", "status", "said"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400, b"needs a Host header"),
        (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400, b"one Host header"),
        (
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            501,
            b"transfer-encoding 'gzip, chunked' is not taken",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
            b"content-length: 2\r\n\r\nok",
            400,
            b"send the request without Upgrade",
        ),
    ],
    ids=["no-host", "two-hosts", "transfer-coding", "upgrade-with-body"],
)
async def test_requests_this_server_cannot_answer_as_meant_are_refused_and_closed(
    nursery: trio.Nursery, connect: Connect, head: bytes, status: int, said: bytes
) -> None:
    answer = await (await connect(await started(nursery))).raw(head)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert said in answer
    assert b"connection: close" in answer


async def test_trailers_are_not_taken_for_headers(nursery: trio.Nursery, connect: Connect) -> None:
    client = await connect(await started(nursery))
    await client.stream.send_all(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nx-test: from-a-trailer\r\n\r\n"
    )
    status, _, body = await client.response()
    assert status == 200
    assert b'"header":null' in body
    assert b'"body":"ok"' in body


async def test_a_trailer_that_never_ends_is_refused_after_a_bounded_read(
    nursery: trio.Nursery, connect: Connect
) -> None:
    limits = HttpLimits(max_body=1000, max_header=2000)
    client = await connect(await started(nursery, limits=limits))
    sent = 0

    async def endless() -> None:
        nonlocal sent
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await client.stream.send_all(
                b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: "
            )
            while sent < 50_000_000:
                await client.stream.send_all(b"a" * 65536)
                sent += 65536

    nursery.start_soon(endless)
    answer = await client.stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"with its framing" in answer
    assert sent < 5_000_000  # read until the bound and one read past it, then refused


async def test_an_http_1_0_client_is_not_asked_to_continue(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, client, closed = await serve_in_memory(nursery, HttpLimits(read_timeout=5))
    await client.stream.send_all(
        b"POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    )
    answer = await client.raw(b"")
    assert answer.startswith(b"HTTP/1.1 408 ")  # not 100 first: the body never came
    await closed.wait()


async def test_a_long_target_an_unknown_method_and_another_version_get_their_statuses(
    nursery: trio.Nursery, connect: Connect
) -> None:
    server = await started(nursery, limits=HttpLimits(max_header=1024))
    for request, status in (
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nhost: t\r\n\r\n", b"414"),
        (b"BREW / HTTP/1.1\r\nhost: t\r\n\r\n", b"501"),
        (b"GET / HTTP/2.0\r\nhost: t\r\n\r\n", b"505"),
    ):
        client = await connect(server)
        answer = await client.raw(request)
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
