"""A small HTTP/1.1 server on Trio: httptools parses, a handler answers, connections stay open.

ringflow's HTTP endpoints take many small requests (one event per POST at thousands a
second) and answer with small JSON bodies. A framework's cost per request (routing layers,
ASGI scopes, middleware) is most of the time of such a request, so this is HTTP/1.1 on
httptools (the llhttp parser of Node.js, in C) directly: keep-alive, pipelining,
``Expect: 100-continue``, bodies by length or chunked, bounded in size and in time, and
nothing else. Routing is the handler's business.

A handler is an ``async`` function from :class:`Request` to :class:`Response`. It is called
once per request, in the connection's task; requests of one connection are answered in
order. An exception escaping a handler is answered with ``500`` and reported to ``on_error``;
it never takes the server down.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import httptools
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
    414: "URI Too Long",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_REQUEST_LINE = re.compile(rb"(?:^|\n)[A-Z][A-Z-]* \S+ HTTP/1\.[01]\r?\n")
"""A request line, whatever its method."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


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
    """The most bytes of a request line and headers; more is answered ``431`` (a head
    still arriving, once it is over this by more than one read)."""
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


class _Refused(Exception):
    # Raised in a parser callback to stop reading a request that is refused as it comes in.
    pass


class _Reader:
    # The requests of one connection, from the bytes it sends: httptools calls back as it
    # parses, and whole requests (with whether the connection stays open after each) queue
    # up in ``ready``. A request refused as it came in (malformed, too large) queues as a
    # Response, the last thing the connection will answer.

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.ready: collections.deque[tuple[Request | Response, bool]] = collections.deque()
        self.begun = False  # a request has begun and is not whole yet
        self.head_done = False
        self.head_size = 0  # bytes of the request line, headers and trailers parsed whole
        self.pending = 0  # bytes read for the request in progress (from the read after its
        # first byte: a request begun within a read is counted from the next one)
        self.messages = 0  # requests begun
        self.continue_wanted = False
        self.ended = False  # nothing more is read: the last request closes the connection
        self._target = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def feed(self, data: bytes) -> None:
        """Parse ``data``; whole or refused requests are appended to ``ready``."""
        in_head, messages = self.begun and not self.head_done, self.messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.ended = True  # what follows is another protocol: answer, then close
        except httptools.HttpParserCallbackError as error:
            refusal = error.__context__
            if not isinstance(refusal, _Refused):
                raise
            self._refuse(refusal.args[0])
        except httptools.HttpParserInvalidMethodError as error:
            if _REQUEST_LINE.search(data):  # a request of a method llhttp does not know
                self._refuse(
                    Response.error(501, "the request's method is not one this server knows")
                )
            else:
                self._refuse(Response.error(400, f"malformed request: {error}"))
        except httptools.HttpParserError as error:
            message = str(error)[:200] or type(error).__name__
            self._refuse(Response.error(400, f"malformed request: {message}"))
        if not self.begun or self.messages != messages:
            return
        # All of data belongs to the request in progress: what it may take in all is bound,
        # whatever piece of it never ends (a header, a chunk's extension, a trailer).
        self.pending += len(data)
        limits = self.limits
        if in_head and not self.head_done:
            if self.pending > limits.max_header:
                self._refuse(Response.error(431, "request line and headers too large"))
        elif self.pending > 2 * (limits.max_body + limits.max_header) + READ_SIZE:
            self._refuse(
                Response.error(413, f"the request is over {self.pending:,} bytes with its framing")
            )

    def _refuse(self, response: Response) -> None:
        if not self.ended:
            self.ready.append((response, False))
            self.ended = True

    def _grow_head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > self.limits.max_header:
            raise _Refused(Response.error(431, "request line and headers too large"))

    # httptools' callbacks

    def on_message_begin(self) -> None:
        self.begun, self.head_done, self.continue_wanted = True, False, False
        self.head_size, self.pending = 0, 0
        self.messages += 1
        self._target, self._headers, self._body = b"", {}, bytearray()

    def on_url(self, url: bytes) -> None:
        if self.head_size + len(url) > self.limits.max_header:
            raise _Refused(Response.error(414, "the request target is too long"))
        self._grow_head(len(url))
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value) + 4)
        if self.head_done:
            return  # a trailer: counted, not taken (no header may arrive after the body)
        key = name.decode("ascii", "replace").lower()
        text = value.decode("latin-1").strip()
        headers = self._headers
        if key in headers:
            if key == "host":
                raise _Refused(Response.error(400, "a request may have one Host header"))
            text = f"{headers[key]}, {text}"
        headers[key] = text

    def on_headers_complete(self) -> None:
        self.head_done = True
        try:
            _split_target(self._target.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise _Refused(Response.error(400, "malformed request target")) from None
        headers, parser = self._headers, self.parser
        if parser.get_http_version() not in ("1.0", "1.1"):
            raise _Refused(Response.error(505, "this server speaks HTTP/1.1 and HTTP/1.0 only"))
        if "host" not in headers and parser.get_http_version() == "1.1":
            raise _Refused(Response.error(400, "an HTTP/1.1 request needs a Host header"))
        coding = headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            raise _Refused(
                Response.error(
                    501,
                    f"transfer-encoding {coding[:100]!r} is not taken: send the body as it is, "
                    "with Content-Length or chunked",
                )
            )
        length = int(headers.get("content-length", 0))  # llhttp checked it is a number
        if parser.should_upgrade() and (length or coding is not None):
            # httptools would take what follows the head for the other protocol's bytes.
            raise _Refused(
                Response.error(
                    400,
                    "this server switches to no other protocol: send the request without Upgrade",
                )
            )
        if length > self.limits.max_body:
            raise _Refused(
                Response.error(
                    413, f"the body is {length:,} bytes; at most {self.limits.max_body:,} are taken"
                )
            )
        # An HTTP/1.0 client is never sent 100 Continue (RFC 9110, 10.1.1).
        self.continue_wanted = (
            headers.get("expect", "").lower() == "100-continue"
            and parser.get_http_version() == "1.1"
        )

    def on_body(self, data: bytes) -> None:
        self.continue_wanted = False
        self._body += data
        if len(self._body) > self.limits.max_body:
            raise _Refused(
                Response.error(
                    413, f"the body is over {self.limits.max_body:,} bytes, the most taken"
                )
            )

    def on_message_complete(self) -> None:
        self.begun, self.continue_wanted = False, False
        method = self.parser.get_method().decode("ascii", "replace").upper()
        request = Request(
            method, self._target.decode("ascii", "replace"), self._headers, bytes(self._body)
        )
        keep_alive = self.parser.should_keep_alive()
        self.ready.append((request, keep_alive))
        if not keep_alive:
            self.ended = True


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
        try:
            if self._connections > self.limits.max_connections:
                self._turned_away += 1
                busy = Response.error(
                    503,
                    f"{self.limits.max_connections:,} connections are open, the most taken; "
                    "retry later",
                    headers=[("retry-after", "1")],
                )
                await self._send(stream, busy, close=True)
                return
            reader = _Reader(self.limits)
            while True:
                if not reader.ready and not await self._read(stream, reader):
                    return
                request, keep_alive = reader.ready.popleft()
                if isinstance(request, Response):  # the request was refused as it came in
                    await self._send(stream, request, close=True)
                    await _drain(stream)
                    return
                response, head = await self._answer(request)
                close = not keep_alive or (reader.ended and not reader.ready)
                if request.method == "HEAD":  # the headers a GET would have, and no body
                    response = attrs.evolve(response, body=b"")
                await self._send(stream, response, head, close=close)
                if close:
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

    async def _read(self, stream: trio.abc.Stream, reader: _Reader) -> bool:
        # Read until a request is whole or refused (True), or the client closed or stayed
        # idle between requests (False). A request still arriving when its time is up is
        # refused with 408: the read deadline runs from the request's first byte, so a
        # client trickling bytes cannot hold a connection forever.
        limits = self.limits
        begun = reader.begun
        deadline = trio.current_time() + (limits.read_timeout if begun else limits.idle_timeout)
        while not reader.ready:
            if reader.ended:
                return False
            if reader.continue_wanted:
                reader.continue_wanted = False
                await self._send_bytes(stream, b"HTTP/1.1 100 Continue\r\n\r\n")
            data: bytes | bytearray | None = None
            with trio.move_on_at(deadline):
                data = await stream.receive_some(READ_SIZE)
            if data is None:
                if not reader.begun:
                    return False  # idle between requests: close quietly
                reader.ready.append(
                    (Response.error(408, "the request took too long to arrive"), False)
                )
                return True
            if not data:
                return False  # the client closed (mid-request: nobody to answer)
            if not begun:
                begun = True
                deadline = trio.current_time() + limits.read_timeout
            reader.feed(bytes(data))
        return True

    async def _answer(self, request: Request) -> tuple[Response, bytes]:
        # The handler's response and its head (status line and headers).
        try:
            response = await self.handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"the handler answered {response!r}, not a Response")
            # A status or a header that cannot be sent is the handler's bug too.
            return response, _head(response)
        except Exception as error:  # a bug in a handler: answer it, keep serving
            self._handler_errors += 1
            self.on_error(error)
            response = Response.error(500, "internal error")
            return response, _head(response)

    async def _send(
        self,
        stream: trio.abc.Stream,
        response: Response,
        head: bytes | None = None,
        *,
        close: bool = False,
    ) -> None:
        self._by_status[response.status] = self._by_status.get(response.status, 0) + 1
        if head is None:
            head = _head(response)
        if close:
            head = head[:-2] + b"connection: close\r\n\r\n"
        await self._send_bytes(stream, head + response.body)

    async def _send_bytes(self, stream: trio.abc.Stream, data: bytes) -> None:
        with trio.move_on_after(self.limits.send_timeout) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("the client did not read its response")


def _head(response: Response) -> bytes:
    # The response's status line and headers. ValueError for a status or a header that
    # cannot be sent (not a final status, a name not a token, a value with a line break).
    status = response.status
    if not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"{status!r} is not a final HTTP status")
    headers = [("content-type", response.content_type), *response.headers]
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"{name!r}: {value!r} is not a header that can be sent")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"content-length: {len(response.body)}\r\n\r\n")
    return "".join(lines).encode("latin-1")


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
