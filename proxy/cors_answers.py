"""The proxy's side of an endpoint's CORS policy: preflight answers, and the
headers added to every other answer (``turnout._internal.cors`` decides which)."""

from __future__ import annotations

from aiohttp import web

from turnout._internal.cors import CorsRejected
from turnout._sending.route_table import EndpointRoute

from . import http_codec

REQUEST_METHOD = "Access-Control-Request-Method"
REQUEST_HEADERS = "Access-Control-Request-Headers"


def preflight(
    route: EndpointRoute, origin: str, method: str, request: web.BaseRequest, request_id: str
) -> web.Response:
    """The answer to a preflight ``OPTIONS``, without calling a replica: 204
    with the policy's headers, or 400 without any CORS header (the browser
    then refuses the real request) when the policy does not allow it."""
    assert route.cors is not None
    try:
        headers = route.cors.preflight(
            origin, method, request.headers.get(REQUEST_HEADERS, ""), route.declared
        )
    except CorsRejected as exc:
        return http_codec.json_error(
            400, "CorsRejected", f"CORS preflight for {route.route}: {exc}", request_id
        )
    response = web.Response(status=204)
    add_headers(response, headers)
    response.headers["X-Request-Id"] = request_id
    return response


def add_headers(response: web.StreamResponse, headers: list[tuple[str, str]]) -> None:
    """Set ``headers`` on ``response``: the policy's replace what the backend
    sent under the same names; ``Vary`` is added to."""
    for name, value in headers:
        if name == "Vary":
            response.headers.add(name, value)
        else:
            response.headers[name] = value
