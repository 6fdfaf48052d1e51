"""The proxy's aiohttp application: match, choose, forward, answer.

The handler stays thin: routing lives in ``RouteTable``, replica choice in
``ReplicaPool``, message conversion in ``http_codec``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import grpc
from aiohttp import web

from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2

from . import http_codec
from .replica_pool import ReplicaPool, close_channels
from .route_table import RouteTable

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# How long requests already sent to a replica that left the snapshot may take
# before its channel is closed under them.
DRAIN_GRACE_S = 30.0
SYSTEM_PREFIX = "/-/"


class ProxyState:
    """What the handler reads on every request; replaced, never mutated, per snapshot."""

    def __init__(self, pool: ReplicaPool, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.table = RouteTable.empty()
        self.max_body_bytes = max_body_bytes
        self.pool = pool
        self.rng = random.Random()
        self.first_snapshot = asyncio.Event()
        self._draining: set[asyncio.Task[None]] = set()

    def apply(self, snapshot: pb.RoutingSnapshot) -> None:
        gone = self.pool.update(snapshot)
        self.table = RouteTable.from_snapshot(snapshot)
        if gone:
            task = asyncio.create_task(close_channels(gone, DRAIN_GRACE_S))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        self.first_snapshot.set()
        logger.info("serving routing version %d", snapshot.version)

    async def close(self) -> None:
        for task in list(self._draining):
            task.cancel()
        await self.pool.close()


STATE = web.AppKey("state", ProxyState)


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    path = request.path
    if path.startswith(SYSTEM_PREFIX):
        return _system(state, path)
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    route = state.table.match(path)
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
    backend = route.choose_backend(state.rng)
    if backend is None:
        return http_codec.json_error(
            503, "NoBackend", f"endpoint {route.name!r} has no backend", request_id
        )
    conn = state.pool.pick(backend, state.rng)
    if conn is None or conn.stub is None:
        return http_codec.json_error(
            503, "NoReplica", f"backend {backend!r} has no running replica", request_id
        )
    message = replica_pb2.HandleRequest(
        request_id=request_id,
        method_name=request.headers.get("X-Serve-Call-Method", ""),
        http=http_codec.to_proto(request, body),
    )
    conn.outstanding += 1
    try:
        reply = await conn.stub.Handle(message)
    except grpc.aio.AioRpcError as exc:
        return _rpc_error(exc, backend, conn.replica_id, request_id)
    finally:
        conn.outstanding -= 1
    if reply.WhichOneof("result") != "http":
        return http_codec.json_error(
            502, "BadGateway", f"replica {conn.replica_id} sent no HTTP answer", request_id
        )
    return http_codec.from_proto(reply.http, request_id)


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


def _system(state: ProxyState, path: str) -> web.Response:
    if path == "/-/routes":
        return web.json_response(state.table.describe())
    if path == "/-/healthz":
        return web.json_response({"status": "ok", "routes_version": state.table.version})
    return http_codec.json_error(404, "NotFound", f"no system path {path}")


def build_app(state: ProxyState) -> web.Application:
    app = web.Application(client_max_size=state.max_body_bytes)
    app[STATE] = state
    app.router.add_route("*", "/{path:.*}", handle)

    async def close_state(app: web.Application) -> None:
        await app[STATE].close()

    app.on_cleanup.append(close_state)
    return app
