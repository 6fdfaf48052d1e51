"""The proxy's HTTP connections: how long a client may take, how many may be
open, and an access log no client can forge (text lines, or JSON objects).

aiohttp's low-level server has a keep-alive idle timeout (``keepalive_timeout``)
and bounds on the request line and header sizes, but no limit on how long a
request's head may take to arrive and no connection limit. ``FrontDoor``
adds those two on its connections; the handler (``app.handle``) bounds the
body's read.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from turnout._internal.proxy_args import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
    FD_RESERVE,
)

from . import http_codec

logger = logging.getLogger(__name__)

# How long a connection refused at the limit stays open after its 503, so
# that the client reads the answer before the socket goes away.
REFUSED_LINGER_S = 1.0
# "No limit" for aiohttp's keep-alive timer: about 30 years.
_NEVER_S = 1e9
# An fd shortage is logged at most once per this many seconds.
ACCEPT_ERROR_INTERVAL_S = 60.0


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may cost the proxy.

    ``read_timeout``: seconds a request's head may take from its first byte
    (and its body from the end of its head); ``idle_timeout``: seconds a
    connection may wait for its next request, or for its first; both 0 = no
    limit. ``max_connections``: open client connections at once; past it, a
    new connection is answered 503 and closed.
    """

    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def default_max_connections() -> int:
    """``DEFAULT_MAX_CONNECTIONS``, or fewer when the open-file limit (raised
    to its hard limit first) leaves less room."""
    return max(1, min(DEFAULT_MAX_CONNECTIONS, raise_fd_limit() - FD_RESERVE))


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


# The proxy's names for the statuses aiohttp answers malformed requests with.
_ERROR_NAMES = {400: "BadRequest", 413: "PayloadTooLarge", 431: "HeadersTooLarge"}


def _too_many_connections(limit: int) -> bytes:
    body = json.dumps(
        {
            "error": "TooManyConnections",
            "message": f"the proxy has its maximum of {limit} connections open; try again",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class FrontDoor(web.Server):
    """aiohttp's low-level server with ``ConnectionLimits`` on its connections."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        # aiohttp takes a keep-alive timeout of 0 as "close once idle".
        idle = limits.idle_timeout or _NEVER_S
        super().__init__(handler, keepalive_timeout=idle, **kwargs)
        self.limits = limits
        self.open_connections = 0
        self._refusal = _too_many_connections(limits.max_connections)

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class _Connection(RequestHandler):
    """One client connection: refused at the limit, closed when its request's
    head takes longer than the read timeout, or it never sends one."""

    def __init__(self, door: FrontDoor, **kwargs: Any) -> None:
        super().__init__(door, **kwargs)
        self._door = door
        self._counted = False
        self._refused: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        # Called when the client goes away (a streamed answer's disconnect hook).
        self.on_lost: list[Callable[[], None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        door = self._door
        if door.open_connections >= door.limits.max_connections:
            # Answered and closed without reading: a client at the limit
            # costs a socket for a second, nothing else.
            writer: Any = transport
            writer.write(door._refusal)
            if writer.can_write_eof():
                writer.write_eof()
            self._refused = self._loop.call_later(REFUSED_LINGER_S, transport.close)
            return
        door.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        idle = door.limits.idle_timeout
        if idle > 0 and self._keepalive_handle is None:
            # aiohttp before 3.14 arms its idle timer only after a first answer.
            self._next_keepalive_close_time = self._loop.time() + idle
            self._keepalive_handle = self._loop.call_at(
                self._next_keepalive_close_time, self._process_keepalive
            )

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._stop_head_timer()
        elif (
            data
            and self._head_timer is None
            and not self._request_in_progress
            and not self._messages
            and self._door.limits.read_timeout > 0
        ):
            # The first bytes of a request's head: the rest must follow in time.
            self._head_count = count
            self._head_timer = self._loop.call_later(
                self._door.limits.read_timeout, self._head_too_slow
            )

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count and not self._request_in_progress:
            logger.debug("closing a connection whose request head took too long")
            self.force_close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or to a handler
        that raised): JSON like every other error, and a client's malformed
        request logged at DEBUG only, so that no client can fill the log."""
        if status < 500:
            logger.debug("bad request from %s: %s", request.remote, exc)
            error = _ERROR_NAMES.get(status) or HTTPStatus(status).phrase.replace(" ", "")
            if isinstance(exc, HttpProcessingError) and exc.message:
                message = exc.message
            text = (message or HTTPStatus(status).phrase).strip().splitlines()[0][:200]
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            error, text = "InternalError", "the proxy failed to handle the request"
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was being sent already; the connection is broken")
        response = http_codec.json_error(status, error, text)
        response.force_close()
        return response

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused is not None:
            self._refused.cancel()
            return
        self._stop_head_timer()
        if self._counted:
            self._counted = False
            self._door.open_connections -= 1
        callbacks, self.on_lost = self.on_lost, []
        for callback in callbacks:
            callback()
        super().connection_lost(exc)


def on_disconnect(request: web.BaseRequest, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` when the client of ``request`` disconnects (aiohttp
    tells a handler only when it next writes); returns what undoes it."""
    connection = request.protocol
    if not isinstance(connection, _Connection):
        return lambda: None
    connection.on_lost.append(callback)

    def forget() -> None:
        if callback in connection.on_lost:
            connection.on_lost.remove(callback)

    return forget


class AcceptErrors:
    """The event loop's exception handler: a failed accept for want of file
    descriptors (the loop retries it every second) is logged once per
    ``interval`` seconds with a count, not once per try; anything else goes to
    the default handler."""

    _RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(self, interval: float = ACCEPT_ERROR_INTERVAL_S) -> None:
        self._interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in self._RESOURCE_ERRNOS):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        logger.error(
            "cannot accept connections: %s%s; lower --max-connections or raise the "
            "open-file limit (ulimit -n)",
            exc.strerror or exc,
            more,
        )
        self._last = now
        self._suppressed = 0


def _escaped(text: str) -> str:
    """``text`` with quotes, backslashes and anything not printable ASCII
    escaped, so a client cannot start a field or a line in the access log."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


@dataclass
class Served:
    """Who answered a request, for the JSON access log: the handler stamps
    it on the answer (``response[SERVED]``)."""

    backend: str = ""
    replica: str = ""
    # As the replica reported it; 0 = not reported.
    handler_seconds: float = 0.0
    endpoint: str = ""
    # The request body's bytes the proxy read.
    bytes_in: int = 0
    # Why a streamed answer ended in an error after its head went out ("" = it did not).
    stream_error: str = ""


SERVED = web.ResponseKey("turnout.served", Served)


class AccessLog(AbstractAccessLogger):
    """One line per request: time, client address, request line as sent
    (quoted, escaped), status, body bytes, seconds, and the request id
    (always the proxy's own or a checked client id)::

        [01/Dec/2026:22:42:17 +0000] 127.0.0.1 "POST /e HTTP/1.1" 200 1 0.001234 rid=ab12
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        now = datetime.datetime.now(datetime.UTC).astimezone()
        peer = request.remote or "-"
        version = f"{request.version.major}.{request.version.minor}"
        line = f"{request.method} {request.raw_path} HTTP/{version}"
        rid = response.headers.get("X-Request-Id", "-")
        self.logger.info(
            '[%s] %s "%s" %d %d %.6f rid=%s',
            now.strftime("%d/%b/%Y:%H:%M:%S %z"),
            _escaped(peer),
            _escaped(line),
            response.status,
            response.body_length,
            time,
            _escaped(rid),
        )


class JsonAccessLog(AbstractAccessLogger):
    """One JSON object per line and request (``--access-log-format json``)::

        {"time": "2026-12-02T07:30:00.123456+00:00", "request_id": "ab12",
         "client": "127.0.0.1", "method": "POST", "path": "/e?x=1",
         "status": 200, "bytes_in": 12, "bytes_out": 1,
         "duration_seconds": 0.001234, "handler_seconds": 0.000311,
         "endpoint": "e", "backend": "e-v1", "replica": "e-v1#1"}

    ``path`` is the request target as sent; ``endpoint``, ``backend``,
    ``replica`` and ``handler_seconds`` are null where no replica answered
    (a 404, a 503 without replicas). A streamed answer is logged when it
    ends, with every byte it wrote; one that failed after its status went
    out has ``"stream_error"`` too. JSON escapes what a client sends, so no
    request can start a line or a field.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        served = response.get(SERVED) or Served(bytes_in=request.content_length or 0)
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
            "request_id": response.headers.get("X-Request-Id"),
            "client": request.remote,
            "method": request.method,
            "path": request.raw_path,
            "status": response.status,
            "bytes_in": served.bytes_in,
            # The body's length; a streamed answer without one: all it wrote.
            "bytes_out": response.body_length
            if response.content_length is None
            else response.content_length,
            "duration_seconds": round(time, 6),
            "handler_seconds": round(served.handler_seconds, 6) or None,
            "endpoint": served.endpoint or None,
            "backend": served.backend or None,
            "replica": served.replica or None,
        }
        if served.stream_error:
            # A streamed answer whose status went out before it failed.
            entry["stream_error"] = served.stream_error
        self.logger.info("%s", json.dumps(entry))
