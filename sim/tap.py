"""The tap client: print a topic's records, live, from the gateway of the node that hosts it
(``ringflow tap``)."""

from __future__ import annotations

import json
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio
from rich.console import Console
from rich.markup import escape
from trio_websocket import ConnectionClosed, HandshakeError

from actors import Backoff, connect

from .exitcode import ExitCode


def tap_url(url: str, start: str, partition: int | None, hold: bool) -> str:
    """Add the tap's query parameters to ``url``; raise ValueError for what is not a tap URL."""
    try:
        parts = urlsplit(url)
        port = parts.port  # read now: a bad port or IPv6 host raises only when read
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a ws://HOST:PORT/tap/TOPIC address: {exc}") from None
    if parts.scheme != "ws" or not parts.hostname or port == 0:
        raise ValueError(f"{url!r} is not a ws://HOST:PORT/tap/TOPIC address")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 2 or segments[0] != "tap":
        raise ValueError(f"{url!r}: the path must be /tap/TOPIC")
    if start not in ("earliest", "latest") and not start.isdigit():
        raise ValueError(f"--from {start!r}: expected earliest, latest or an offset (0 or more)")
    query = dict(parse_qsl(parts.query))
    query["from"] = start
    if partition is not None:
        query["partition"] = str(partition)
    if hold:
        query["hold"] = "true"
    return urlunsplit(parts._replace(query=urlencode(query)))


async def stream(
    url: str,
    out: TextIO,
    err: Console,
    *,
    token: str | None = None,
    limit: int | None = None,
    wait: float = 10.0,
) -> ExitCode:
    """Print the records the tap at ``url`` sends as JSON lines on ``out``; return an exit code.

    A node that cannot be reached is tried again for ``wait`` seconds.
    """
    printed = 0
    async with trio.open_nursery() as nursery:
        backoff = Backoff(most=1.0, give_up=wait)
        while True:
            try:
                connection = await connect(nursery, url, token=token)
                break
            except (OSError, HandshakeError, trio.TooSlowError) as exc:
                if not await backoff.failed():  # the node may be starting: try again
                    err.print(escape(f"cannot reach {url} (tried for {wait:g} s): {exc!r}"))
                    return ExitCode.FAILED
        try:
            while limit is None or printed < limit:
                message: dict[str, Any] = json.loads(await connection.ws.get_message())
                kind = message.get("type")
                if kind == "records":
                    lines = []
                    for record in message["records"][: None if limit is None else limit - printed]:
                        line = {"topic": message["topic"], "partition": message["partition"]}
                        lines.append(json.dumps({**line, **record}, ensure_ascii=False))
                    out.write("\n".join(lines) + "\n")
                    out.flush()
                    printed += len(lines)
                elif kind == "skipped":
                    err.print(
                        f"skipped {message['missed']:,} records of "
                        f"{escape(message['topic'])}[{message['partition']}] "
                        f"(offsets {message['from']:,} to {message['to'] - 1:,}): this tap fell "
                        "behind the ring"
                    )
                elif kind == "end":
                    err.print(escape(f"{message['topic']} ended: every record has been sent"))
                    break
        except ConnectionClosed as exc:
            reason = exc.reason
            if reason is not None and reason.code not in (1000, 1001):
                err.print(escape(f"{url} closed the tap ({reason.code}): {reason.reason or ''}"))
                return ExitCode.FAILED
        finally:
            await connection.close()
    return ExitCode.OK
