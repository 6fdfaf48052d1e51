"""The dashboard's aiohttp app: the page, its assets and the JSON API, behind
a login token and checks that keep other web sites out.

Every request needs the dashboard's token: in the URL once (``/?token=...``,
which sets an HttpOnly cookie and redirects), then the cookie, or an
``Authorization: Bearer`` header. A change also needs a JSON body and, when
the browser sends one, an ``Origin`` equal to the dashboard's own, so a page
of another site can neither read the API nor post to it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from turnout.errors import (
    AlreadyExistsError,
    CapacityError,
    InUseError,
    NotFoundError,
    NotRunningError,
    PermissionDeniedError,
    TurnoutError,
    UnauthenticatedError,
)

from .operations import LOG_LINES, Operations

COOKIE = "turnout_dashboard"
_ASSETS = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/app.css": ("app.css", "text/css"),
}
# Nothing but the dashboard's own files runs or loads in the page.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# An error's HTTP status, the most specific class first; the rest are 400
# (ValueError, TypeError) or 500.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (InUseError, 409),
    (CapacityError, 409),
    (NotRunningError, 503),
    (UnauthenticatedError, 502),
    (PermissionDeniedError, 403),
    (ValueError, 400),
    (TypeError, 400),
)

OPERATIONS = web.AppKey("operations", Operations)
TOKEN = web.AppKey("token", str)
SECURE = web.AppKey("secure", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_for(exc: BaseException) -> int:
    """The HTTP status the API answers ``exc`` with."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"error": kind, "message": message}, status=status, headers=_SECURITY_HEADERS
    )


def _presented(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :]
    return request.cookies.get(COOKIE, "")


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    given = request.query.get("token")
    if given is not None and request.method == "GET" and not request.path.startswith("/api/"):
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(401, "UnauthenticatedError", "wrong dashboard token in the URL")
        # The token leaves the address bar (and history) at once.
        reply = web.Response(status=303, headers={"Location": request.path})
        reply.set_cookie(
            COOKIE, token, httponly=True, samesite="Strict", secure=request.app[SECURE], path="/"
        )
        return reply
    if not hmac.compare_digest(_presented(request).encode(), token.encode()):
        return _error(
            401,
            "UnauthenticatedError",
            "open the dashboard with the URL that `turnout dashboard` (or serve_dashboard) "
            "printed: it carries the dashboard's token",
        )
    if request.method != "GET":
        if not _same_origin(request):
            return _error(403, "PermissionDeniedError", "changes are only taken from this page")
        if request.content_type != "application/json":
            return _error(415, "TypeError", "a change must be a JSON body (application/json)")
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (TurnoutError, ValueError, TypeError) as exc:
        return _error(status_for(exc), type(exc).__name__, str(exc))


async def _asset(request: web.Request) -> web.Response:
    name, content_type = _ASSETS[request.path]
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=content_type, headers=_SECURITY_HEADERS)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as exc:
        raise TypeError(f"the request body is not JSON: {exc}") from None


def _reply(value: Any) -> web.Response:
    return web.json_response(value, headers=_SECURITY_HEADERS)


async def _overview(request: web.Request) -> web.Response:
    return _reply(await asyncio.to_thread(request.app[OPERATIONS].overview))


def _count(request: web.Request, name: str, default: int | None) -> int | None:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise TypeError(f"{name} must be an integer >= 0, got {text!r}")
    return int(text)


async def _log(request: web.Request) -> web.Response:
    replica = request.query.get("replica", "")
    lines = _count(request, "lines", LOG_LINES)
    assert lines is not None
    offset = _count(request, "offset", None)
    operations = request.app[OPERATIONS]
    return _reply(await asyncio.to_thread(operations.log, replica, lines, offset))


def _change(name: str) -> Handler:
    async def change(request: web.Request) -> web.Response:
        body = await _json_body(request)
        method = getattr(request.app[OPERATIONS], name)
        return _reply(await asyncio.to_thread(method, body))

    return change


def make_app(operations: Operations, token: str, *, secure: bool = False) -> web.Application:
    """The dashboard app for ``operations``, opened with ``token``.

    Example::

        app = make_app(Operations(client), secrets.token_urlsafe(24))
        web.run_app(app, host="127.0.0.1", port=8265)
    """
    app = web.Application(middlewares=[_guard])
    app[OPERATIONS] = operations
    app[TOKEN] = token
    app[SECURE] = secure
    for path in _ASSETS:
        app.router.add_get(path, _asset)
    app.router.add_get("/api/overview", _overview)
    app.router.add_get("/api/log", _log)
    app.router.add_post("/api/traffic", _change("set_traffic"))
    app.router.add_post("/api/scale", _change("scale"))
    app.router.add_post("/api/shadow/remove", _change("remove_shadow"))
    for action in ("pause", "resume", "abort"):
        app.router.add_post(f"/api/rollout/{action}", _change(f"{action}_rollout"))
    return app
