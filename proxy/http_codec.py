"""aiohttp requests to ``HttpRequest`` protos, ``HttpResponse`` protos to aiohttp
responses, and the JSON error bodies the proxy answers itself."""

from __future__ import annotations

import json
import re
from typing import cast

from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict

from turnout._internal import wire
from turnout.v1 import http_pb2, replica_pb2

# Set by aiohttp from the body it writes, or meaningless across a hop.
_SKIPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive"}
)


_HTTP = wire.tag(replica_pb2.HandleRequest, "http")
_REQUEST_ID = wire.tag(replica_pb2.HandleRequest, "request_id")
_METHOD_NAME = wire.tag(replica_pb2.HandleRequest, "method_name")
_METHOD = wire.tag(http_pb2.HttpRequest, "method")
_SCHEME = wire.tag(http_pb2.HttpRequest, "scheme")
_HOST = wire.tag(http_pb2.HttpRequest, "host")
_PATH = wire.tag(http_pb2.HttpRequest, "path")
_QUERY = wire.tag(http_pb2.HttpRequest, "query_string")
_HEADERS = wire.tag(http_pb2.HttpRequest, "headers")
_BODY = wire.tag(http_pb2.HttpRequest, "body")
_REMOTE_ADDR = wire.tag(http_pb2.HttpRequest, "remote_addr")
_SCRIPT_NAME = wire.tag(http_pb2.HttpRequest, "script_name")
_HEADER_NAME_TAG = wire.tag(http_pb2.Header, "name")
_HEADER_VALUE_TAG = wire.tag(http_pb2.Header, "value")


# Requests repeat their headers (User-Agent, Accept, ...) and their method,
# scheme and Host: each short one is framed once and kept, up to this many
# (about 1 MiB at most; past that, and for longer ones, framed every time).
_FRAMED_MAX = 4096
_FRAMED_MAX_BYTES = 256
_framed: dict[tuple[bytes, bytes] | tuple[str, str, str], bytes] = {}


def _field(tag: bytes, value: bytes) -> bytes:
    """A length-delimited field, left out (b"") when empty as protobuf does."""
    return b"".join((tag, wire.varint(len(value)), value)) if value else b""


def _keep(key: tuple[bytes, bytes] | tuple[str, str, str], framed: bytes) -> bytes:
    if len(_framed) < _FRAMED_MAX and len(framed) <= _FRAMED_MAX_BYTES:
        _framed[key] = framed
    return framed


def _frame_header(name: bytes, value: bytes) -> bytes:
    """A header as an ``HttpRequest.headers`` field, tag and length included."""
    pair = (name, value)
    # Header bytes are Latin-1 to HTTP and UTF-8 strings to protobuf: ASCII
    # (nearly every header) is the same bytes either way.
    if not name.isascii():
        name = name.decode("latin-1").encode()
    if not value.isascii():
        value = value.decode("latin-1").encode()
    header = _field(_HEADER_NAME_TAG, name) + _field(_HEADER_VALUE_TAG, value)
    return _keep(pair, b"".join((_HEADERS, wire.varint(len(header)), header)))


def _frame_start(method: str, scheme: str, host: str) -> bytes:
    """``HttpRequest``'s first fields: method, scheme and Host."""
    framed = b"".join(
        (
            _field(_METHOD, method.encode()),
            _field(_SCHEME, scheme.encode()),
            _field(_HOST, host.encode()),
        )
    )
    return _keep((method, scheme, host), framed)


def encode(
    request: web.BaseRequest,
    body: bytes,
    request_id: str,
    method_name: str | None = None,
    script_name: str = "",
) -> wire.Request:
    """``request`` as the ``HandleRequest`` the sender sends, framed by hand
    (``wire``): the same bytes protobuf would write, without a message per
    header, and ``body`` a piece of its own, never copied into a message.
    Raises UnicodeEncodeError when the target, Host or the method name holds
    bytes that were not UTF-8 (aiohttp keeps them as surrogates)."""
    # The request target exactly as sent; a yarl URL would be built only to be
    # taken apart again.
    target = request.raw_path
    if not target.startswith("/"):  # absolute-form ("GET http://host/x"): let yarl split it
        url = request.rel_url
        target = url.raw_path + (f"?{url.raw_query_string}" if url.raw_query_string else "")
    path, _, query = target.partition("?")
    start = (method, scheme, host) = (request.method, request.scheme, request.host)
    http = [_framed.get(start) or _frame_start(method, scheme, host)]
    http.append(_field(_PATH, path.partition("#")[0].encode()))
    if query:
        http.append(_field(_QUERY, query.partition("#")[0].encode()))
    framed = _framed
    for pair in request.raw_headers:
        http.append(framed.get(pair) or _frame_header(*pair))
    if body:
        http.append(b"".join((_BODY, wire.varint(len(body)))))
    tail = []
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        tail.append(_field(_REMOTE_ADDR, f"{peer[0]}:{peer[1]}".encode()))
    if script_name:
        tail.append(_field(_SCRIPT_NAME, script_name.encode()))
    before = b"".join(http)
    after = b"".join(tail)
    size = len(before) + len(body) + len(after)
    # HandleRequest's fields in number order: request_id, method_name, http
    # (present even when empty, as the oneof's choice).
    head = b"".join(
        (
            _field(_REQUEST_ID, request_id.encode()),
            _field(_METHOD_NAME, method_name.encode()) if method_name else b"",
            _HTTP,
            wire.varint(size),
            before,
        )
    )
    if not body:
        data = head + after
        return wire.Request(request_id, ([data], len(data)))
    # The body is passed on as it is, between the fields around it.
    return wire.Request(request_id, ([head, body, after], len(head) + len(body) + len(after)))


def valid_status(status: int) -> bool:
    """Whether a replica's status code can be sent as a final HTTP answer."""
    return 200 <= status <= 599


class BadResponse(ValueError):
    """A replica's answer that cannot be sent as HTTP (a header holding CR or LF)."""


# RFC 9110: a field name is a token; a field value has no control characters
# but tab (a CR or LF would end the header, and with it the answer).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Bodies at least this large are written in slices (``write_body``), so the
# socket's buffer never holds a second copy of the whole body.
STREAM_MIN_BYTES = 1024 * 1024
_SLICE_BYTES = 256 * 1024


# Answers repeat their headers (a Content-Type above all): each short pair
# is checked once and its verdict kept, up to this many pairs; past that, and
# for longer ones, every time (a replica sending new values each time could
# otherwise fill the proxy's memory: at most about 1 MiB here).
_CHECKED_MAX = 4096
_CHECKED_MAX_CHARS = 256
_checked: dict[tuple[str, str], bool] = {}


def _check(name: str, value: str) -> bool:
    """Whether the header is passed on (False: aiohttp sets it); raises
    ``BadResponse`` when HTTP cannot carry it."""
    if not _HEADER_NAME.fullmatch(name) or _BAD_VALUE.search(value):
        raise BadResponse(f"the replica sent an invalid header {name[:64]!r}")
    passed = name.lower() not in _SKIPPED_RESPONSE_HEADERS
    if len(_checked) < _CHECKED_MAX and len(name) + len(value) <= _CHECKED_MAX_CHARS:
        _checked[(name, value)] = passed
    return passed


class Answer(web.Response):
    """A replica's whole answer, which ``send`` writes: head and body in one
    write, the head built from headers checked already. aiohttp's own
    ``prepare`` and ``write_eof`` build and write a head through a dozen
    Python calls, several of them coroutines (bench/RESULTS.md). Anywhere
    else it is an aiohttp ``Response`` like any other."""


def from_proto(reply: http_pb2.HttpResponse, request_id: str, body: bytes | None = None) -> Answer:
    """The answer to send, with ``body`` (``reply.body`` when None: pass it
    when read already, since each read is a copy); raises ``BadResponse`` for
    a header that HTTP cannot carry."""
    pairs = []
    for header in reply.headers:
        pair = (header.name, header.value)
        passed = _checked.get(pair)
        if passed is None:
            passed = _check(*pair)
        if passed:
            pairs.append(pair)
    pairs.append(("X-Request-Id", request_id))
    return Answer(
        status=reply.status,
        headers=CIMultiDict(pairs),
        body=reply.body if body is None else body,
    )


# Answers aiohttp writes itself: no body (HEAD, 204, 304) or another HTTP version.
_NO_BODY_STATUSES = frozenset({204, 304})


async def send(response: web.StreamResponse, request: web.BaseRequest) -> web.StreamResponse:
    """``response`` as the handler's return value. A replica's ``Answer`` is
    written now: a large body in slices, each once the socket has taken the
    last; any other with its head in one write. What is left (the proxy's own
    answers, HEAD, 204, 304, HTTP/1.0) aiohttp sends."""
    if type(response) is not Answer:
        return response
    body = cast(bytes, response.body)  # an Answer's always is
    if (
        request.method == "HEAD"
        or response.status in _NO_BODY_STATUSES
        or request.version != HttpVersion11
    ):
        return response
    if len(body) >= STREAM_MIN_BYTES:
        return await _send_in_slices(response, body, request)
    headers = response.headers
    headers[hdrs.CONTENT_LENGTH] = str(len(body))
    # As aiohttp's Response sets them (RFC 9110 8.3, 6.6.1; aiohttp's Server).
    if body:
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    keep_alive = response.keep_alive
    if keep_alive is None:
        keep_alive = request.keep_alive
    if not keep_alive and hdrs.CONNECTION not in headers:
        headers[hdrs.CONNECTION] = "close"
    head = _serialize_headers(f"HTTP/1.1 {response.status} {response.reason}", headers)
    writer = request._payload_writer
    try:
        await writer.write_eof(head + body if body else head)
    except ConnectionError:
        keep_alive = False  # the client left; aiohttp closes the connection
    # Sent: aiohttp's prepare and write_eof do nothing more, its access log
    # reads what was written.
    response._eof_sent = True
    response._body_length = writer.output_size
    response._keep_alive = keep_alive
    return response


async def _send_in_slices(
    response: Answer, body: bytes, request: web.BaseRequest
) -> web.StreamResponse:
    streamed = web.StreamResponse(status=response.status, headers=response.headers)
    streamed.update(response)
    streamed.content_length = len(body)
    view = memoryview(body)
    try:
        await streamed.prepare(request)
        for start in range(0, len(view), _SLICE_BYTES):
            await streamed.write(view[start : start + _SLICE_BYTES])
    except ConnectionError:
        pass  # the client left; aiohttp notes it when it finishes the answer
    return streamed


def json_error(
    status: int, error: str, message: str, request_id: str = "", **headers: str
) -> web.Response:
    """Every error the proxy produces: ``{"error": Name, "message": sentence}``."""
    body: dict[str, str] = {"error": error, "message": message}
    if request_id:
        body["request_id"] = request_id
        headers["X-Request-Id"] = request_id
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )
