"""The proxy's aiohttp application: match, choose, forward, answer.

The handler stays thin: traffic policy lives in ``Router``, message conversion
in ``http_codec``, counters in ``RouterStats``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Coroutine, Hashable
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web

from turnout._grpc import CHANNEL_OPTIONS
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2, replica_pb2_grpc

from . import http_codec, metrics
from .replica_pool import ReplicaConn
from .route_table import EndpointRoute
from .router import Router
from .stats import compare

if TYPE_CHECKING:
    from turnout.v1.replica_pb2_grpc import ReplicaServiceAsyncStub

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# How long requests already sent to a replica that left the snapshot may take
# before its channel is closed under them.
DRAIN_GRACE_S = 30.0
# A shadow gets this long to answer before it counts as failed.
SHADOW_TIMEOUT_S = 30.0
# Copies in flight at once; beyond this a copy is not sent (counted as failed),
# so a slow shadow backend cannot pile up memory in the proxy.
MAX_SHADOWS_IN_FLIGHT = 1000
SYSTEM_PREFIX = "/-/"
SYSTEM_PATHS = frozenset({"/-/routes", "/-/healthz", "/-/metrics"})
SHARD_KEY_HEADER = "X-Serve-Shard-Key"
CALL_METHOD_HEADER = "X-Serve-Call-Method"

Conn = ReplicaConn["ReplicaServiceAsyncStub"]


def connect(conn: Conn) -> None:
    channel = grpc.aio.insecure_channel(conn.address, options=CHANNEL_OPTIONS)
    conn.stub = replica_pb2_grpc.ReplicaServiceStub(channel)
    conn.close = channel.close


def response_key(reply: replica_pb2.HandleResponse) -> Hashable:
    """What two answers must share to count as the same (status and body)."""
    return (reply.http.status, reply.http.body)


class ProxyState:
    """The router and the background work hanging off it."""

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.router: Router[ReplicaServiceAsyncStub] = Router(connect)
        self.max_body_bytes = max_body_bytes
        self.first_snapshot = asyncio.Event()
        self.registry = metrics.registry_for(self.router.stats, lambda: self.router.table.version)
        self._background: set[asyncio.Task[None]] = set()
        # Replicas that left the snapshot, their channels closing with a grace.
        self._draining: set[Conn] = set()
        self.shadows_in_flight = 0

    def apply(self, snapshot: pb.RoutingSnapshot) -> None:
        """Serve ``snapshot`` from now on; must run on the event loop."""
        gone = self.router.apply(snapshot)
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


STATE = web.AppKey("state", ProxyState)


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    path = request.path
    if path.startswith(SYSTEM_PREFIX):
        return _system(state, path, request.method)
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
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
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return http_codec.json_error(
            413,
            "PayloadTooLarge",
            f"request body is larger than the limit of {state.max_body_bytes} bytes",
            request_id,
        )
    backend, conn = state.router.choose(route, request.headers.get(SHARD_KEY_HEADER, ""))
    if backend is None or conn is None or conn.stub is None:
        state.router.stats.failed_unrouted(route.name)
        if backend is None:
            return http_codec.json_error(
                503, "NoBackend", f"endpoint {route.name!r} has no backend", request_id
            )
        return http_codec.json_error(
            503, "NoReplica", f"backend {backend!r} has no running replica", request_id
        )
    message = replica_pb2.HandleRequest(
        request_id=request_id,
        method_name=request.headers.get(CALL_METHOD_HEADER, ""),
        http=http_codec.to_proto(request, body),
    )
    primary: asyncio.Future[Hashable | None] | None = None
    if route.shadows:
        primary = _send_shadows(state, route, message)
    response: web.Response | None = None
    conn.outstanding += 1
    try:
        # wait_for_ready=False: a replica that cannot be reached fails the
        # call at once (UNAVAILABLE, answered 503) instead of holding it.
        reply = await conn.stub.Handle(message, wait_for_ready=False)
        if reply.WhichOneof("result") == "http" and http_codec.valid_status(reply.http.status):
            response = http_codec.from_proto(reply.http, request_id)
            if primary is not None:
                primary.set_result(response_key(reply))
        else:
            response = http_codec.json_error(
                502,
                "BadGateway",
                f"replica {conn.replica_id} of backend {backend!r} sent no valid HTTP answer",
                request_id,
            )
    except grpc.aio.AioRpcError as exc:
        response = _rpc_error(exc, backend, conn.replica_id, request_id)
    except Exception:
        # Anything else (a channel closed under the call, a malformed answer)
        # is still answered, and in JSON like every other error.
        logger.exception("forwarding request %s to %s failed", request_id, conn.replica_id)
        response = http_codec.json_error(
            502, "BadGateway", f"forwarding to backend {backend!r} failed", request_id
        )
    finally:
        conn.outstanding -= 1
        if primary is not None and not primary.done():
            # No answer to compare with: the shadows count as failed.
            primary.set_result(None)
        state.router.stats.answered(
            route.name, backend, failed=response is None or response.status >= 500
        )
    return response


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
        conn.outstanding += 1
        try:
            reply = await conn.stub.Handle(message, timeout=SHADOW_TIMEOUT_S)
            key = response_key(reply)
        except grpc.aio.AioRpcError as exc:
            logger.info("shadow %s of %s failed: %s", backend, endpoint, exc.code().name)
        except Exception:
            logger.exception("shadow %s of %s failed", backend, endpoint)
        finally:
            conn.outstanding -= 1
            state.shadows_in_flight -= 1
    stats.shadow_outcome(endpoint, backend, compare(await primary, key))


def _rpc_error(
    exc: grpc.aio.AioRpcError, backend: str, replica_id: str, request_id: str
) -> web.Response:
    code = exc.code()
    logger.warning("replica %s failed request %s: %s", replica_id, request_id, code.name)
    if code == grpc.StatusCode.UNAVAILABLE:
        return http_codec.json_error(
            503,
            "ReplicaUnavailable",
            f"a replica of backend {backend!r} could not be reached",
            request_id,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return http_codec.json_error(
            504, "GatewayTimeout", f"backend {backend!r} did not answer in time", request_id
        )
    return http_codec.json_error(
        502,
        "BadGateway",
        f"backend {backend!r} failed: {code.name}: {exc.details()}",
        request_id,
    )


SYSTEM_METHODS = frozenset({"GET", "HEAD"})
SYSTEM_ALLOW = "GET, HEAD"


def _system(state: ProxyState, path: str, method: str) -> web.Response:
    if path not in SYSTEM_PATHS:
        return http_codec.json_error(404, "NotFound", f"no system path {path}")
    if method not in SYSTEM_METHODS:
        return http_codec.json_error(
            405,
            "MethodNotAllowed",
            f"{method} is not allowed on {path}; allowed: {SYSTEM_ALLOW}",
            Allow=SYSTEM_ALLOW,
        )
    if path == "/-/routes":
        return web.json_response(state.router.table.describe())
    if path == "/-/healthz":
        return web.json_response({"status": "ok", "routes_version": state.router.table.version})
    return web.Response(
        body=metrics.render(state.registry), headers={"Content-Type": metrics.CONTENT_TYPE}
    )


def build_app(state: ProxyState) -> web.Application:
    app = web.Application(client_max_size=state.max_body_bytes)
    app[STATE] = state
    app.router.add_route("*", "/{path:.*}", handle)

    async def close_state(app: web.Application) -> None:
        await app[STATE].close()

    app.on_cleanup.append(close_state)
    return app
