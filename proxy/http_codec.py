"""aiohttp requests to ``HttpRequest`` protos, ``HttpResponse`` protos to aiohttp
responses, and the JSON error bodies the proxy answers itself."""

from __future__ import annotations

import json

from aiohttp import web
from multidict import CIMultiDict

from turnout.v1 import http_pb2

# Set by aiohttp from the body it writes, or meaningless across a hop.
_SKIPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive"}
)


def to_proto(request: web.BaseRequest, body: bytes) -> http_pb2.HttpRequest:
    url = request.rel_url
    peer = request.transport.get_extra_info("peername") if request.transport else None
    remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
    return http_pb2.HttpRequest(
        method=request.method,
        scheme=request.scheme,
        host=request.host,
        path=url.raw_path,
        query_string=url.raw_query_string,
        headers=[
            http_pb2.Header(name=name.decode("latin-1"), value=value.decode("latin-1"))
            for name, value in request.raw_headers
        ],
        body=body,
        remote_addr=remote,
    )


def valid_status(status: int) -> bool:
    """Whether a replica's status code can be sent as a final HTTP answer."""
    return 200 <= status <= 599


def from_proto(reply: http_pb2.HttpResponse, request_id: str) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    for header in reply.headers:
        if header.name.lower() not in _SKIPPED_RESPONSE_HEADERS:
            headers.add(header.name, header.value)
    headers["X-Request-Id"] = request_id
    return web.Response(status=reply.status, headers=headers, body=reply.body)


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
