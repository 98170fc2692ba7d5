"""A small HTTP/1.1 server on Trio: h11 parses, a handler answers, connections stay open.

ringflow's HTTP endpoints take many small requests (one event per POST at thousands a
second) and answer with small JSON bodies. A framework's cost per request (routing layers,
ASGI scopes, middleware) is most of the time of such a request, so this is HTTP/1.1 on h11
directly: keep-alive, ``Expect: 100-continue``, bodies by length or chunked, bounded in size
and in time, and nothing else. Routing is the handler's business.

A handler is an ``async`` function from :class:`Request` to :class:`Response`. It is called
once per request, in the connection's task; requests of one connection are answered in
order. An exception escaping a handler is answered with ``500`` and reported to ``on_error``;
it never takes the server down.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import msgspec
import trio

READ_SIZE = 65536
"""Bytes read from a socket at a time."""

REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@attrs.frozen
class Request:
    """One HTTP request, read whole."""

    method: str
    """``GET``, ``POST``..., upper case."""
    target: str
    """The request target as sent: path and query string."""
    headers: dict[str, str]
    """Header values by lower-case name (repeated headers joined with ``, ``)."""
    body: bytes = b""

    @functools.cached_property
    def path(self) -> str:
        """The target's path, without the query string."""
        return _split_target(self.target)[0]

    @functools.cached_property
    def query(self) -> dict[str, list[str]]:
        """The query string's parameters, each with every value given."""
        return parse_qs(_split_target(self.target)[1], keep_blank_values=True)


@attrs.frozen
class Response:
    """What a handler answers: a status, a body and its type, and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def json(cls, status: int, data: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
        """A JSON response of ``data`` (anything msgspec encodes)."""
        return cls(status, msgspec.json.encode(data), "application/json", headers)

    @classmethod
    def error(
        cls, status: int, message: str, headers: Sequence[tuple[str, str]] = (), **more: Any
    ) -> Response:
        """A JSON error: ``{"error": message, ...more}``."""
        return cls.json(status, {"error": message, **more}, headers)


Handler = Callable[[Request], Awaitable[Response]]


@attrs.frozen
class HttpLimits:
    """What clients may send, how long they may take, and how many may be connected."""

    max_body: int = 1 << 20
    """The largest request body in bytes; a larger one is answered ``413`` and the
    connection closed."""
    max_header: int = 16 << 10
    """The most bytes of a request line and headers; more is answered ``431``."""
    idle_timeout: float = 75.0
    """Seconds a kept-alive connection may wait for its next request before it is closed."""
    read_timeout: float = 30.0
    """Seconds to receive a whole request once it has begun; a slower one is answered
    ``408`` and the connection closed."""
    send_timeout: float = 30.0
    """Seconds to send a response to a client that does not read it; then the connection
    is closed."""
    max_connections: int = 1000
    """Connections open at once; one more is answered ``503`` (with ``Retry-After``) and
    closed, so idle clients cannot take every file descriptor."""


@attrs.frozen
class HttpStatistics:
    """A snapshot of an :class:`HttpServer`."""

    connections: int
    """Connections open now."""
    connections_total: int
    """Connections accepted so far."""
    requests: int
    """Requests answered so far (every status)."""
    by_status: dict[int, int]
    """Responses sent so far, per status."""
    handler_errors: int
    """Requests whose handler raised (answered ``500``)."""
    turned_away: int
    """Connections closed at once because :attr:`HttpLimits.max_connections` were open."""


@attrs.define(eq=False)
class HttpServer:
    """Serves ``handler`` on every connection it is given; make one with :func:`serve_http`.

    Args:
        handler: Answers each request.
        limits: What a connection may send and how long it may take.
        on_error: Told of every exception a handler raised (after ``500`` was answered).
    """

    handler: Handler
    limits: HttpLimits = attrs.field(factory=HttpLimits)
    on_error: Callable[[BaseException], None] = lambda _: None
    port: int = 0
    """The port it listens on, once serving."""
    _connections: int = 0
    _connections_total: int = 0
    _by_status: dict[int, int] = attrs.field(factory=dict)
    _handler_errors: int = 0
    _turned_away: int = 0

    def statistics(self) -> HttpStatistics:
        """Return a snapshot of the server's counters."""
        return HttpStatistics(
            connections=self._connections,
            connections_total=self._connections_total,
            requests=sum(self._by_status.values()),
            by_status=dict(self._by_status),
            handler_errors=self._handler_errors,
            turned_away=self._turned_away,
        )

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """Answer the requests of one connection until either side closes it."""
        self._connections += 1
        self._connections_total += 1
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header)
        try:
            if self._connections > self.limits.max_connections:
                self._turned_away += 1
                busy = Response.error(
                    503,
                    f"{self.limits.max_connections:,} connections are open, the most taken; "
                    "retry later",
                    headers=[("retry-after", "1")],
                )
                await self._send(stream, connection, busy, close=True)
                return
            while True:
                request = await self._read_request(stream, connection)
                if request is None:
                    return
                if isinstance(request, Response):  # the request was refused as it came in
                    await self._send(stream, connection, request, close=True)
                    await _drain(stream)
                    return
                response = await self._answer(request)
                await self._send(stream, connection, response, head_only=request.method == "HEAD")
                if connection.our_state is h11.MUST_CLOSE:
                    return
                try:
                    connection.start_next_cycle()
                except h11.LocalProtocolError:  # the client did not finish its request
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away
        except Exception as error:  # a bug here must not take the other connections down
            self.on_error(error)
            return
        finally:
            self._connections -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _answer(self, request: Request) -> Response:
        try:
            response = await self.handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"the handler answered {response!r}, not a Response")
            _head(response)  # a status or header h11 refuses is the handler's bug too
        except Exception as error:  # a bug in a handler: answer it, keep serving
            self._handler_errors += 1
            self.on_error(error)
            return Response.error(500, "internal error")
        return response

    async def _read_request(
        self, stream: trio.abc.Stream, connection: h11.Connection
    ) -> Request | Response | None:
        # The next request whole; None when the client closed or stayed idle between
        # requests; a Response when it must be refused before it is read whole (too large,
        # malformed, too slow). The read deadline runs from the request's first byte, so a
        # client trickling bytes cannot hold a connection forever.
        limits = self.limits
        head: h11.Request | None = None
        body = bytearray()
        # Bytes of the next request that came with the last one have begun it already.
        begun = bool(connection.trailing_data[0])
        deadline = trio.current_time() + (limits.read_timeout if begun else limits.idle_timeout)
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as error:
                if connection.trailing_data[1]:
                    return None  # the client closed mid-request: nobody to answer
                if error.error_status_hint == 431:
                    return Response.error(431, "request line and headers too large")
                return Response.error(400, f"malformed request: {str(error)[:200]}")
            if event is h11.NEED_DATA:
                if connection.they_are_waiting_for_100_continue:
                    await self._send_events(
                        stream, connection, h11.InformationalResponse(status_code=100, headers=[])
                    )
                data: bytes | bytearray | None = None
                with trio.move_on_at(deadline):
                    data = await stream.receive_some(READ_SIZE)
                if data is None:
                    if not begun:
                        return None  # idle between requests: close quietly
                    return Response.error(408, "the request took too long to arrive")
                if not begun:
                    begun = True
                    deadline = trio.current_time() + limits.read_timeout
                connection.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                head = event
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > limits.max_header:  # h11 checks only heads that come in pieces
                    return Response.error(431, "request line and headers too large")
                fields = dict(event.headers)
                if b"content-length" in fields and b"transfer-encoding" in fields:
                    # Framing two ways is how requests are smuggled past proxies (RFC 9112).
                    return Response.error(
                        400, "a request may not have both Content-Length and Transfer-Encoding"
                    )
                try:
                    _split_target(event.target.decode("ascii"))
                except (ValueError, UnicodeDecodeError):
                    return Response.error(400, "malformed request target")
                length = int(fields.get(b"content-length", 0))  # h11 checked it is a number
                if length > limits.max_body:
                    return Response.error(
                        413, f"the body is {length:,} bytes; at most {limits.max_body:,} are taken"
                    )
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limits.max_body:
                    return Response.error(
                        413, f"the body is over {limits.max_body:,} bytes, the most taken"
                    )
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(
                    head.method.decode("ascii", "replace").upper(),
                    head.target.decode("ascii", "replace"),
                    _headers(head.headers),
                    bytes(body),
                )
            else:  # ConnectionClosed, or PAUSED (never, since each request is read whole)
                return None

    async def _send(
        self,
        stream: trio.abc.Stream,
        connection: h11.Connection,
        response: Response,
        *,
        close: bool = False,
        head_only: bool = False,
    ) -> None:
        self._by_status[response.status] = self._by_status.get(response.status, 0) + 1
        head = _head(response, close=close)
        if head_only:  # HEAD: the headers a GET would have, and no body
            await self._send_events(stream, connection, head, h11.EndOfMessage())
        else:
            await self._send_events(
                stream, connection, head, h11.Data(data=response.body), h11.EndOfMessage()
            )

    async def _send_events(
        self, stream: trio.abc.Stream, connection: h11.Connection, *events: Any
    ) -> None:
        try:
            data = b"".join(connection.send(event) or b"" for event in events)
        except h11.LocalProtocolError:  # the client broke the protocol too early to answer
            raise trio.BrokenResourceError("the client cannot be answered") from None
        with trio.move_on_after(self.limits.send_timeout) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("the client did not read its response")


def _head(response: Response, *, close: bool = False) -> h11.Response:
    # The response's head as h11 sends it; h11.LocalProtocolError for a status or header it
    # refuses.
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        *response.headers,
    ]
    if close:
        headers.append(("connection", "close"))
    return h11.Response(
        status_code=response.status, headers=headers, reason=REASONS.get(response.status, "")
    )


async def _drain(stream: trio.abc.Stream, most: int = 1 << 20, seconds: float = 1.0) -> None:
    # A lingering close: stop sending, then read what the client is still sending for a
    # while, so that closing with unread input does not reset the connection and destroy
    # the refusal before the client has read it.
    with trio.move_on_after(seconds):
        send_eof = getattr(stream, "send_eof", None)
        if send_eof is not None:
            await send_eof()
        read = 0
        while read < most:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            read += len(data)


def _split_target(target: str) -> tuple[str, str]:
    # (path, query) of a request target: origin form (/path?query) as given, absolute form
    # (http://host/path?query) parsed. ValueError for a target that is neither.
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    if target == "*":
        return "*", ""
    parts = urlsplit(target)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"not a request target: {target[:100]!r}")
    return parts.path or "/", parts.query


def _headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("ascii", "replace")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: HttpLimits | None = None,
    on_error: Callable[[BaseException], None] = lambda _: None,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` over HTTP/1.1 on ``host:port`` until cancelled.

    Start it with ``server = await nursery.start(serve_http, handler, host, port)``: once it
    listens, ``server.port`` is the port (useful with port 0) and ``server.statistics()``
    counts what it answered.

    Raises:
        OSError: The address cannot be listened on (in use, not this machine's).
    """
    server = HttpServer(handler, limits or HttpLimits(), on_error)
    listeners = await trio.open_tcp_listeners(port, host=host)
    server.port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(server)
        await trio.serve_listeners(server.serve_connection, listeners, handler_nursery=nursery)
