"""The proxy's aiohttp application: HTTP request in, ``HandleRequest`` to the
sender, HTTP answer out.

The handler stays thin: everything between the request message and the
replica's reply (traffic choice, admission, retries, deadlines, shadows,
counters) is ``turnout._sending.Sender``'s, the same one handles use; message
conversion is ``http_codec``'s.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import re
import time
from collections.abc import Coroutine, Hashable
from typing import Any

import grpc
from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from turnout._internal import auth
from turnout._internal.proxy_args import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_READ_TIMEOUT_S,
)
from turnout._internal.rpc import Security
from turnout._sending import failures, streams
from turnout._sending.replica_link import ReplicaLink
from turnout._sending.route_table import EndpointRoute
from turnout._sending.sender import Sender
from turnout._sending.streams import ChunkStream
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2

from . import cors_answers, http_codec, metrics, streaming
from .front_door import SERVED, ConnectionLimits, FrontDoor, Served
from .workers import SharedCounters

logger = logging.getLogger(__name__)

# What one gRPC message from a replica may hold: several answers may travel
# together on a stream, and their headers with them. A larger message ends
# the stream before it is buffered whole.
RECEIVE_ANSWERS = 4
RECEIVE_SLACK_BYTES = 1024 * 1024
SYSTEM_PREFIX = "/-/"
SYSTEM_PATHS = frozenset({"/-/routes", "/-/routing", "/-/healthz", "/-/metrics"})
# What --protect-system-paths guards: they reveal topology and traffic weights.
# /-/healthz stays open for probes.
PROTECTED_SYSTEM_PATHS = frozenset({"/-/routes", "/-/routing", "/-/metrics"})
SHARD_KEY_HEADER = "X-Serve-Shard-Key"
CALL_METHOD_HEADER = "X-Serve-Call-Method"
TIMEOUT_HEADER = "X-Serve-Timeout-Ms"
# Seconds an overloaded (or a starting proxy's) client is asked to wait
# before it tries again.
RETRY_AFTER_S = "1"
# A client's X-Request-Id is used only when it is this safe; else the proxy
# makes one, so no client can fill the logs or forge their fields with it.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def connect(address: str, security: Security, max_response_bytes: int | None = None) -> ReplicaLink:
    receive = None
    if max_response_bytes is not None:
        receive = max_response_bytes * RECEIVE_ANSWERS + RECEIVE_SLACK_BYTES
    return ReplicaLink(address, max_receive_bytes=receive, security=security)


class HttpAnswers:
    """How the proxy reads a replica's reply: as the HTTP answer it passes on."""

    def __init__(self, max_response_bytes: int) -> None:
        self.max_response_bytes = max_response_bytes

    def read(
        self, reply: replica_pb2.HandleResponse, request_id: str, backend: str, replica_id: str
    ) -> tuple[web.StreamResponse, Hashable | None, bool]:
        """The answer, what shadows compare with (status and body; None for the
        proxy's own error), and whether it counts as failed (a 5xx); stamped
        with who answered, for the access log."""
        answer = self._read(reply, request_id, backend, replica_id)
        answer[0][SERVED] = Served(backend, replica_id, reply.handler_seconds)
        return answer

    def _read(
        self, reply: replica_pb2.HandleResponse, request_id: str, backend: str, replica_id: str
    ) -> tuple[web.StreamResponse, Hashable | None, bool]:
        if reply.WhichOneof("result") != "http" or not http_codec.valid_status(reply.http.status):
            return _failed(
                502,
                "BadGateway",
                f"replica {replica_id} of backend {backend!r} sent no valid HTTP answer",
                request_id,
            )
        # Read out of the message once: each read of a bytes field is a copy.
        body = reply.http.body
        if len(body) > self.max_response_bytes:
            return _failed(*self.too_large(backend), request_id)
        try:
            response = http_codec.from_proto(reply.http, request_id, body)
        except http_codec.BadResponse as exc:
            logger.warning("replica %s answered request %s: %s", replica_id, request_id, exc)
            return _failed(
                502,
                "BadResponse",
                f"backend {backend!r} sent an answer HTTP cannot carry: {exc}",
                request_id,
            )
        # The body is not copied again: the answer's is the reply's.
        return response, (response.status, response.body), response.status >= 500

    def read_stream(
        self, stream: ChunkStream, request_id: str, backend: str, replica_id: str
    ) -> web.StreamResponse:
        """The head of a streamed answer (``streaming.send`` writes its body),
        or a 502 when the head cannot be sent; stamped like ``read``'s."""
        streamed = streaming.answer(stream, request_id, replica_id)
        if isinstance(streamed, http_codec.BadResponse):
            message = f"backend {backend!r} sent an answer HTTP cannot carry: {streamed}"
            streamed = _failed(502, "BadResponse", message, request_id)[0]
        streamed[SERVED] = Served(backend, replica_id)
        return streamed

    def key(self, reply: replica_pb2.HandleResponse) -> Hashable | None:
        """What two answers must share to count as the same (status and body)."""
        return (reply.http.status, reply.http.body)

    def too_large(self, backend: str) -> tuple[int, str, str]:
        return (
            502,
            "ResponseTooLarge",
            f"backend {backend!r} answered with more than the limit of "
            f"{self.max_response_bytes} bytes",
        )


def _failed(
    status: int, error: str, message: str, request_id: str
) -> tuple[web.Response, Hashable | None, bool]:
    return http_codec.json_error(status, error, message, request_id), None, True


class ProxyState:
    """The sender and the proxy's own settings and background work."""

    def __init__(
        self,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        worker_index: int = 0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
        security: Security | None = None,
        system_token: auth.Verifier | None = None,
    ) -> None:
        # How this proxy reaches the controller and replicas.
        self.security = security or Security()
        # The token the protected system paths want (read on each request, so
        # a rotated one applies at once); None = those paths are open.
        self.system_token = system_token
        self.answers = HttpAnswers(max_response_bytes)
        self.sender = Sender(
            functools.partial(
                connect, security=self.security, max_response_bytes=max_response_bytes
            ),
            self.answers,
            self.answers,
        )
        self.router = self.sender.router
        self.admission = self.sender.admission
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        # Seconds a request body may take to arrive (0 = no limit).
        self.read_timeout = read_timeout
        # Which of the proxy's processes this is (0 unless --workers N).
        self.worker_index = worker_index
        self.first_snapshot = self.sender.first_snapshot
        # Backend -> (replicas the controller wants, replicas in the snapshot).
        self.replica_counts: dict[str, tuple[int, int]] = {}
        self.registry = metrics.registry_for(
            self._own_counters, self._routes_version, self._replica_counts
        )

    def _routes_version(self) -> int:
        return self.router.table.version

    def _replica_counts(self) -> dict[str, tuple[int, int]]:
        return self.replica_counts

    def gauges(self) -> metrics.Gauges:
        return self.admission.queued(), self.router.pool.in_flight()

    def _own_counters(self) -> metrics.Counters:
        return metrics.Counters(self.router.stats.to_proto(), *self.gauges())

    def count_with(self, counters: SharedCounters) -> None:
        """Show ``counters`` (every worker's, summed) at /-/metrics."""
        self.registry = metrics.registry_for(
            counters.read, self._routes_version, self._replica_counts
        )

    def apply(self, snapshot: pb.RoutingSnapshot) -> None:
        """Serve ``snapshot`` from now on; must run on the event loop."""
        self.sender.apply(snapshot)
        self.replica_counts = {
            t.tag: (t.desired_replicas, len(t.replicas)) for t in snapshot.backends
        }
        logger.info("serving routing version %d", snapshot.version)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it ends."""
        self.sender.spawn(work)

    async def close(self) -> None:
        """Stop the background work and close every replica channel at once."""
        await self.sender.close()


async def handle(state: ProxyState, request: web.BaseRequest) -> web.StreamResponse:
    path = request.path
    if path.startswith(SYSTEM_PREFIX):
        return _system(state, path, request.method, request.headers.get("Authorization"))
    request_id = _request_id(request.headers.get("X-Request-Id"))
    if not state.first_snapshot.is_set():
        # Not a 404: the routes are not known yet, not absent.
        return http_codec.json_error(
            503,
            "Starting",
            "the proxy is starting and has no routes yet; try again",
            request_id,
            **{"Retry-After": RETRY_AFTER_S},
        )
    route = state.router.table.match(path)
    if route is None:
        return http_codec.json_error(404, "NotFound", f"no endpoint at {path}", request_id)
    if route.cors is None:
        return await _send(await _forward(state, request, route, request_id), request)
    origin = request.headers.get("Origin")
    preflight_method = request.headers.get(cors_answers.REQUEST_METHOD)
    if request.method == "OPTIONS" and origin is not None and preflight_method is not None:
        return cors_answers.preflight(route, origin, preflight_method, request, request_id)
    response = await _forward(state, request, route, request_id)
    cors_answers.add_headers(response, route.cors.headers_for(origin))
    return await _send(response, request)


async def _forward(
    state: ProxyState, request: web.BaseRequest, route: EndpointRoute, request_id: str
) -> web.StreamResponse:
    """The answer of the endpoint's backend (or the proxy's error), not sent yet."""
    path = request.path
    if request.method not in route.methods:
        return http_codec.json_error(
            405,
            "MethodNotAllowed",
            f"{request.method} is not allowed on {path}; allowed: {route.allow}",
            request_id,
            Allow=route.allow,
        )
    try:
        body = await _read_body(state, request)
    except web.HTTPRequestEntityTooLarge:
        return http_codec.json_error(
            413,
            "PayloadTooLarge",
            f"request body is larger than the limit of {state.max_body_bytes} bytes",
            request_id,
        )
    except TimeoutError:
        too_slow = http_codec.json_error(
            408,
            "RequestTimeout",
            f"the request body did not arrive within {state.read_timeout:g} s",
            request_id,
        )
        # The rest of the body may still come: the connection cannot be reused.
        too_slow.force_close()
        return too_slow
    except HttpProcessingError as exc:
        # A body that does not parse (chunked framing, a length that lies).
        problem = (exc.message or "the request body is malformed").splitlines()[0][:200]
        return http_codec.json_error(400, "BadRequest", problem, request_id)
    except ConnectionError:
        # The client left before its body was whole: nobody reads this.
        return http_codec.json_error(
            400, "BadRequest", "the connection closed before the whole body arrived", request_id
        )
    try:
        timeout = _timeout(request, route)
    except ValueError as exc:
        return http_codec.json_error(400, "BadRequest", str(exc), request_id)
    deadline = time.monotonic() + timeout if timeout else None
    try:
        shard_key = _utf8(request.headers.get(SHARD_KEY_HEADER, ""))
        message = http_codec.encode(
            request,
            body,
            request_id,
            request.headers.get(CALL_METHOD_HEADER),
            route.script_name if route.serves_app else "",
        )
    except UnicodeEncodeError:
        return http_codec.json_error(
            400,
            "BadRequest",
            "the request's target, Host or a header the proxy reads is not valid UTF-8",
            request_id,
        )
    try:
        response = await state.sender.send(
            route, message, shard_key, deadline, streams.DEFAULT_WINDOW
        )
    except failures.SendFailure as failure:
        response = _failure_response(state, failure, request_id)
        replica = failure.replica_id if isinstance(failure, failures.CallFailed) else ""
        response[SERVED] = Served(failure.backend, replica)
    served = response[SERVED]
    served.endpoint, served.bytes_in = route.name, len(body)
    return response


async def _send(response: web.StreamResponse, request: web.BaseRequest) -> web.StreamResponse:
    """Send ``response``: a streamed answer chunk by chunk, any other as
    ``http_codec.send`` does."""
    if type(response) is streaming.StreamedAnswer:
        return await streaming.send(response, request)
    return await http_codec.send(response, request)


async def _read_body(state: ProxyState, request: web.BaseRequest) -> bytes:
    """The whole body, within the read timeout; as sent (a gzip body stays
    gzip, with its Content-Encoding: the handler decides)."""
    if not request.body_exists:
        return b""
    content = request.content
    # A body that has arrived whole cannot be late: no timer for it.
    if not state.read_timeout or content.is_eof():
        return await _read_all(content, state.max_body_bytes)
    async with asyncio.timeout(state.read_timeout):
        return await _read_all(content, state.max_body_bytes)


async def _read_all(content: StreamReader, limit: int) -> bytes:
    """The body as it arrives, joined once (``BaseRequest.read`` copies it
    twice: into a bytearray, then into bytes); 413 past ``limit`` bytes
    (0 = no limit), as ``client_max_size`` does."""
    chunks = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if limit and size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    # One chunk (a small body) is returned as it is, not copied.
    return b"".join(chunks)


def _utf8(text: str) -> str:
    """``text``, or UnicodeEncodeError when it holds bytes that were not UTF-8
    (aiohttp keeps them as surrogates)."""
    text.encode()
    return text


def _request_id(sent: str | None) -> str:
    if sent is not None and _CLIENT_REQUEST_ID.fullmatch(sent):
        return sent
    return _new_request_id()


# Request ids: 32 hex digits, a random half per process and a counter, unique
# like uuid4 but without a system call per request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _timeout(request: web.BaseRequest, route: EndpointRoute) -> float | None:
    """Seconds the request may take: the header's, else the endpoint's."""
    header = request.headers.get(TIMEOUT_HEADER)
    if header is None:
        return route.request_timeout or None
    # ASCII digits only: int() would also take "5_000", " 5", "+5" and other
    # scripts' digits.
    millis = int(header) if header.isascii() and header.isdigit() else 0
    if millis <= 0:
        raise ValueError(f"{TIMEOUT_HEADER} must be a positive number of milliseconds")
    return millis / 1000


def _failure_response(
    state: ProxyState, failure: failures.SendFailure, request_id: str
) -> web.Response:
    """The JSON error answer for what the sender says."""
    backend = failure.backend
    error = http_codec.json_error
    if isinstance(failure, failures.NoBackend):
        return error(503, "NoBackend", f"endpoint {failure.endpoint!r} has no backend", request_id)
    if isinstance(failure, failures.NoReplica):
        if failure.tried:
            return error(
                503, "ReplicaUnavailable", f"no replica of {backend!r} could be reached", request_id
            )
        return error(503, "NoReplica", f"backend {backend!r} has no running replica", request_id)
    if isinstance(failure, failures.Overloaded):
        message = f"backend {backend!r} is overloaded: {failure.detail}"
        return error(503, "Overloaded", message, request_id, **{"Retry-After": RETRY_AFTER_S})
    if isinstance(failure, failures.QueueDeadline):
        message = f"no replica of {backend!r} was free in time"
        return error(504, "GatewayTimeout", message, request_id)
    if isinstance(failure, failures.CallFailed):
        return _call_failed(state, failure, request_id)
    return error(502, "BadGateway", f"forwarding to backend {backend!r} failed", request_id)


def _call_failed(state: ProxyState, failure: failures.CallFailed, request_id: str) -> web.Response:
    code, backend = failure.code, failure.backend
    logger.warning("replica %s failed request %s: %s", failure.replica_id, request_id, code.name)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The channel's receive limit (see ``connect``): the answer was not read.
        return http_codec.json_error(*state.answers.too_large(backend), request_id)
    if code == grpc.StatusCode.UNAVAILABLE and failure.never_delivered:
        return http_codec.json_error(
            503,
            "ReplicaUnavailable",
            f"a replica of backend {backend!r} could not be reached",
            request_id,
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        # The connection broke after the request was sent: it may have run,
        # so it is not retried.
        return http_codec.json_error(
            502,
            "ReplicaFailed",
            f"the replica of backend {backend!r} stopped before answering",
            request_id,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return http_codec.json_error(
            504, "GatewayTimeout", f"backend {backend!r} did not answer in time", request_id
        )
    return http_codec.json_error(
        502,
        "BadGateway",
        f"backend {backend!r} failed: {code.name}: {failure.details}",
        request_id,
    )


SYSTEM_METHODS = frozenset({"GET", "HEAD"})
SYSTEM_ALLOW = "GET, HEAD"


def _authorized(state: ProxyState, authorization: str | None) -> bool:
    if state.system_token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return state.system_token.roles(given.strip()) is not None


def _system(
    state: ProxyState, path: str, method: str, authorization: str | None = None
) -> web.Response:
    if path not in SYSTEM_PATHS:
        return http_codec.json_error(404, "NotFound", f"no system path {path}")
    if path in PROTECTED_SYSTEM_PATHS and not _authorized(state, authorization):
        return http_codec.json_error(
            401,
            "Unauthenticated",
            f"{path} needs the instance's token: send 'Authorization: Bearer <token>' "
            "(this proxy runs with --protect-system-paths)",
            **{"WWW-Authenticate": 'Bearer realm="turnout"'},
        )
    if method not in SYSTEM_METHODS:
        return http_codec.json_error(
            405,
            "MethodNotAllowed",
            f"{method} is not allowed on {path}; allowed: {SYSTEM_ALLOW}",
            Allow=SYSTEM_ALLOW,
        )
    if path == "/-/routes":
        return web.json_response(state.router.table.ray_routes())
    if path == "/-/routing":
        return web.json_response(state.router.table.describe())
    if path == "/-/healthz":
        ready = state.first_snapshot.is_set()
        return web.json_response(
            {
                "status": "ok" if ready else "starting",
                "routes_version": state.router.table.version,
                "worker": state.worker_index,
                "pid": os.getpid(),
            },
            status=200 if ready else 503,
        )
    return web.Response(
        body=metrics.render(state.registry), headers={"Content-Type": metrics.CONTENT_TYPE}
    )


def build_server(
    state: ProxyState, limits: ConnectionLimits | None = None, **options: Any
) -> web.Server:
    """aiohttp's low-level server around ``handle``, with ``limits`` on its
    connections; ``options`` go to its connection handler (access_log,
    access_log_class, ...). Call on the loop that will serve it; close
    ``state`` after the server's runner is cleaned up.

    No ``web.Application``: every path is ours, so its router and middleware
    chain would only add work (about 20 % of the proxy's CPU per request in
    bench/RESULTS.md).
    """
    loop = asyncio.get_running_loop()

    def make_request(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=state.max_body_bytes
        )

    # auto_decompress=False: the handler gets the body as sent, with its
    # Content-Encoding, and a malformed gzip body is the handler's to judge.
    return FrontDoor(
        functools.partial(handle, state),
        limits=limits or ConnectionLimits(),
        request_factory=make_request,
        auto_decompress=False,
        **options,
    )
