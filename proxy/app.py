"""The proxy's aiohttp application: match, choose, forward, answer.

The handler stays thin: traffic policy lives in ``Router``, message conversion
in ``http_codec``, counters in ``RouterStats``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import os
import re
import time
from collections.abc import Coroutine, Hashable
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from turnout._internal import auth
from turnout._internal.rpc import Security, never_delivered
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2

from . import http_codec, metrics
from .admission import Admission, NoReplica, Overloaded
from .front_door import DEFAULT_READ_TIMEOUT_S, ConnectionLimits, FrontDoor
from .replica_link import ReplicaCallError, ReplicaLink
from .replica_pool import ReplicaConn
from .route_table import EndpointRoute
from .router import Router
from .stats import compare
from .workers import SharedCounters

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Largest answer body passed on; a larger one is a 502 ResponseTooLarge.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# What one gRPC message from a replica may hold: several answers may travel
# together on a stream, and their headers with them. A larger message ends
# the stream before it is buffered whole.
RECEIVE_ANSWERS = 4
RECEIVE_SLACK_BYTES = 1024 * 1024
# How long requests already sent to a replica that left the snapshot may take
# before its channel is closed under them.
DRAIN_GRACE_S = 30.0
# A shadow gets this long to answer before it counts as failed.
SHADOW_TIMEOUT_S = 30.0
# Copies in flight at once; beyond this a copy is not sent (counted as failed),
# so a slow shadow backend cannot pile up memory in the proxy.
MAX_SHADOWS_IN_FLIGHT = 1000
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
# Other replicas a request may be retried on when one cannot be connected to.
MAX_CONNECT_RETRIES = 2

Conn = ReplicaConn[ReplicaLink]


def connect(conn: Conn, security: Security, max_response_bytes: int | None = None) -> None:
    receive = None
    if max_response_bytes is not None:
        receive = max_response_bytes * RECEIVE_ANSWERS + RECEIVE_SLACK_BYTES
    link = ReplicaLink(conn.address, max_receive_bytes=receive, security=security)
    conn.stub = link
    conn.close = link.close


def response_key(reply: replica_pb2.HandleResponse) -> Hashable:
    """What two answers must share to count as the same (status and body)."""
    return (reply.http.status, reply.http.body)


def _key_of(response: web.Response) -> Hashable:
    """``response_key`` of the answer built from a reply (its body not copied again)."""
    return (response.status, response.body)


class ProxyState:
    """The router and the background work hanging off it."""

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
        self.router: Router[ReplicaLink] = Router(
            functools.partial(
                connect, security=self.security, max_response_bytes=max_response_bytes
            )
        )
        self.admission = Admission(self.router)
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        # Seconds a request body may take to arrive (0 = no limit).
        self.read_timeout = read_timeout
        # Which of the proxy's processes this is (0 unless --workers N).
        self.worker_index = worker_index
        self.first_snapshot = asyncio.Event()
        self.registry = metrics.registry_for(self._own_counters, self._routes_version)
        self._background: set[asyncio.Task[None]] = set()
        # Replicas that left the snapshot, their channels closing with a grace.
        self._draining: set[Conn] = set()
        self.shadows_in_flight = 0

    def _routes_version(self) -> int:
        return self.router.table.version

    def _own_counters(self) -> metrics.Counters:
        return self.router.stats.to_proto(), self.admission.queued()

    def count_with(self, counters: SharedCounters) -> None:
        """Show ``counters`` (every worker's, summed) at /-/metrics."""
        self.registry = metrics.registry_for(counters.read, self._routes_version)

    def apply(self, snapshot: pb.RoutingSnapshot) -> None:
        """Serve ``snapshot`` from now on; must run on the event loop."""
        gone = self.router.apply(snapshot)
        self.admission.replicas_changed()
        if gone:
            self.spawn(self._drain(gone))
        self.first_snapshot.set()
        logger.info("serving routing version %d", snapshot.version)

    async def _drain(self, conns: list[Conn]) -> None:
        self._draining.update(conns)
        try:
            await _close(conns, DRAIN_GRACE_S)
        finally:
            self._draining.difference_update(conns)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it ends."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop the background work and close every replica channel at once."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        conns = [*self._draining, *self.router.pool.clear()]
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(conns, None)


async def _close(conns: list[Conn], grace: float | None) -> None:
    closing = [c.close(grace) for c in conns if c.close is not None]
    await asyncio.gather(*(c for c in closing if inspect.isawaitable(c)), return_exceptions=True)


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
    message = replica_pb2.HandleRequest()
    message.request_id = request_id
    try:
        shard_key = _utf8(request.headers.get(SHARD_KEY_HEADER, ""))
        method_name = request.headers.get(CALL_METHOD_HEADER)
        if method_name:
            message.method_name = method_name
        http_codec.fill(message.http, request, body)
    except UnicodeEncodeError:
        return http_codec.json_error(
            400,
            "BadRequest",
            "the request's target, Host or a header the proxy reads is not valid UTF-8",
            request_id,
        )
    backend = route.choose_backend(state.router.rng, shard_key)
    if backend is None:
        state.router.stats.failed_unrouted(route.name)
        return http_codec.json_error(
            503, "NoBackend", f"endpoint {route.name!r} has no backend", request_id
        )
    primary: asyncio.Future[Hashable | None] | None = None
    if route.shadows:
        primary = _send_shadows(state, route, message)
    response: web.Response | None = None
    try:
        response, replied = await _forward(state, backend, shard_key, deadline, message)
        if primary is not None:
            primary.set_result(_key_of(response) if replied else None)
    finally:
        if primary is not None and not primary.done():
            # No answer to compare with: the shadows count as failed.
            primary.set_result(None)
        state.router.stats.answered(
            route.name, backend, failed=response is None or response.status >= 500
        )
    return await http_codec.send(response, request)


async def _read_body(state: ProxyState, request: web.BaseRequest) -> bytes:
    """The whole body, within the read timeout; as sent (a gzip body stays
    gzip, with its Content-Encoding: the handler decides)."""
    if not state.read_timeout:
        return await request.read()
    async with asyncio.timeout(state.read_timeout):
        return await request.read()


def _utf8(text: str) -> str:
    """``text``, or UnicodeEncodeError when it holds bytes that were not UTF-8
    (aiohttp keeps them as surrogates)."""
    text.encode()
    return text


def _request_id(sent: str | None) -> str:
    if sent is not None and _CLIENT_REQUEST_ID.fullmatch(sent):
        return sent
    return _new_request_id()


async def _forward(
    state: ProxyState,
    backend: str,
    shard_key: str,
    deadline: float | None,
    message: replica_pb2.HandleRequest,
) -> tuple[web.Response, bool]:
    """Send the request to a replica of ``backend``: queue if all are full,
    retry elsewhere if a replica cannot be connected to.

    Returns the response and whether it is the replica's answer (what shadows
    compare with) rather than the proxy's error.
    """
    rid = message.request_id
    tried: frozenset[str] = frozenset()
    while True:
        try:
            conn = await state.admission.acquire(backend, shard_key, deadline, tried)
        except NoReplica:
            if tried:
                return _error(
                    503, "ReplicaUnavailable", f"no replica of {backend!r} could be reached", rid
                )
            return _error(503, "NoReplica", f"backend {backend!r} has no running replica", rid)
        except Overloaded as exc:
            message_ = f"backend {backend!r} is overloaded: {exc}"
            return _error(503, "Overloaded", message_, rid, **{"Retry-After": RETRY_AFTER_S})
        except TimeoutError:
            return _error(504, "GatewayTimeout", f"no replica of {backend!r} was free in time", rid)
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                raise ReplicaCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "timed out in queue")
            reply = await conn.stub.handle(message, remaining)  # type: ignore[union-attr]
        except ReplicaCallError as exc:
            if _never_delivered(exc) and len(tried) < MAX_CONNECT_RETRIES:
                logger.info("replica %s unreachable; retrying request %s", conn.replica_id, rid)
                tried |= {conn.replica_id}
                continue
            return _rpc_error(state, exc, backend, conn.replica_id, rid), False
        except Exception:
            # Anything else (a channel closed under the call, a malformed
            # answer) is still answered, and in JSON like every other error.
            logger.exception("forwarding request %s to %s failed", rid, conn.replica_id)
            return _error(502, "BadGateway", f"forwarding to backend {backend!r} failed", rid)
        finally:
            state.admission.release(backend, conn)
        if reply.WhichOneof("result") != "http" or not http_codec.valid_status(reply.http.status):
            return _error(
                502,
                "BadGateway",
                f"replica {conn.replica_id} of backend {backend!r} sent no valid HTTP answer",
                rid,
            )
        if len(reply.http.body) > state.max_response_bytes:
            return _too_large(state, backend, rid)
        try:
            return http_codec.from_proto(reply.http, rid), True
        except http_codec.BadResponse as exc:
            logger.warning("replica %s answered request %s: %s", conn.replica_id, rid, exc)
            return _error(
                502,
                "BadResponse",
                f"backend {backend!r} sent an answer HTTP cannot carry: {exc}",
                rid,
            )


# Request ids: 32 hex digits, a random half per process and a counter, unique
# like uuid4 but without a system call per request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _error(
    status: int, error: str, message: str, request_id: str, **headers: str
) -> tuple[web.Response, bool]:
    return http_codec.json_error(status, error, message, request_id, **headers), False


def _too_large(state: ProxyState, backend: str, request_id: str) -> tuple[web.Response, bool]:
    return _error(
        502,
        "ResponseTooLarge",
        f"backend {backend!r} answered with more than the limit of "
        f"{state.max_response_bytes} bytes",
        request_id,
    )


def _never_delivered(exc: ReplicaCallError) -> bool:
    return never_delivered(exc.code, exc.details)


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


def _send_shadows(
    state: ProxyState, route: EndpointRoute, message: replica_pb2.HandleRequest
) -> asyncio.Future[Hashable | None] | None:
    targets = state.router.shadow_targets(route)
    if not targets:
        return None
    primary: asyncio.Future[Hashable | None] = asyncio.get_running_loop().create_future()
    copy = replica_pb2.HandleRequest()
    copy.CopyFrom(message)
    copy.request_id = message.request_id + "-shadow"
    for backend, conn in targets:
        state.spawn(_shadow(state, route.name, backend, conn, copy, primary))
    return primary


async def _shadow(
    state: ProxyState,
    endpoint: str,
    backend: str,
    conn: Conn | None,
    message: replica_pb2.HandleRequest,
    primary: asyncio.Future[Hashable | None],
) -> None:
    stats = state.router.stats
    stats.shadow_sent(endpoint, backend)
    key: Hashable | None = None
    if (
        conn is not None
        and conn.stub is not None
        and state.shadows_in_flight < MAX_SHADOWS_IN_FLIGHT
    ):
        state.shadows_in_flight += 1
        conn.outstanding += 1  # a shadow takes a slot like any request
        try:
            reply = await conn.stub.handle(message, SHADOW_TIMEOUT_S)
            key = response_key(reply)
        except ReplicaCallError as exc:
            logger.info("shadow %s of %s failed: %s", backend, endpoint, exc.code.name)
        except Exception:
            logger.exception("shadow %s of %s failed", backend, endpoint)
        finally:
            state.admission.release(backend, conn)
            state.shadows_in_flight -= 1
    stats.shadow_outcome(endpoint, backend, compare(await primary, key))


def _rpc_error(
    state: ProxyState, exc: ReplicaCallError, backend: str, replica_id: str, request_id: str
) -> web.Response:
    code = exc.code
    logger.warning("replica %s failed request %s: %s", replica_id, request_id, code.name)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The channel's receive limit (see ``connect``): the answer was not read.
        return _too_large(state, backend, request_id)[0]
    if code == grpc.StatusCode.UNAVAILABLE and _never_delivered(exc):
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
        f"backend {backend!r} failed: {code.name}: {exc.details}",
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
