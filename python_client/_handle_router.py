"""The routing half of handles: one per controller address and process.

It follows the controller's routing snapshots on a daemon thread and applies
the same ``Router`` as the HTTP proxy, then calls replicas directly with
blocking gRPC stubs' futures, so a handle works from any thread and any event
loop (or none) without a loop of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
import grpc

from turnout._grpc import CHANNEL_OPTIONS
from turnout.errors import (
    BackendError,
    MethodNotFoundError,
    NotFoundError,
    TurnoutError,
    UnavailableError,
)
from turnout.proxy.replica_pool import ReplicaConn
from turnout.proxy.route_table import EndpointRoute
from turnout.proxy.router import Router
from turnout.proxy.stats import compare
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc, http_pb2, replica_pb2, replica_pb2_grpc

if TYPE_CHECKING:
    from turnout.v1.controller_pb2_grpc import ControllerServiceStub
    from turnout.v1.replica_pb2_grpc import ReplicaServiceStub

logger = logging.getLogger(__name__)

# How long a call waits for its endpoint to show up in the routing snapshot
# (a handle made with missing_ok=True, or right after create_endpoint).
ENDPOINT_WAIT_S = 30.0
DRAIN_GRACE_S = 30.0
SHADOW_TIMEOUT_S = 30.0
BACKOFF_MAX_S = 2.0
REPORT_INTERVAL_S = 1.0

Conn = ReplicaConn["ReplicaServiceStub"]


@dataclass(frozen=True)
class CallOptions:
    """What ``handle.options()`` sets."""

    method_name: str = ""
    shard_key: str = ""
    http_method: str = "GET"
    http_headers: tuple[tuple[str, str], ...] = ()


def _connect(conn: Conn) -> None:
    channel = grpc.insecure_channel(conn.address, options=CHANNEL_OPTIONS)
    conn.stub = replica_pb2_grpc.ReplicaServiceStub(channel)

    def close(grace: float | None) -> None:
        # A blocking channel's close() cancels calls in flight: give them time.
        timer = threading.Timer(grace or 0.0, channel.close)
        timer.daemon = True
        timer.start()

    conn.close = close


def _answer_key(reply: replica_pb2.HandleResponse) -> Hashable:
    """What two answers must share to count as the same."""
    if reply.WhichOneof("result") == "error":
        return ("error", reply.error.type, reply.error.message)
    return ("result", reply.pickled)


def _decode(reply: replica_pb2.HandleResponse, endpoint: str) -> Any:
    kind = reply.WhichOneof("result")
    if kind == "pickled":
        return cloudpickle.loads(reply.pickled)
    if kind == "error":
        error = reply.error
        if error.kind == replica_pb2.ERROR_KIND_METHOD_NOT_FOUND:
            raise MethodNotFoundError(error.message)
        raise BackendError(error.type, error.message, error.traceback)
    raise TurnoutError(f"a replica of endpoint {endpoint!r} sent no answer to a Python call")


class HandleRouter:
    _lock = threading.Lock()
    _routers: dict[tuple[int, str], HandleRouter] = {}

    @classmethod
    def for_address(cls, address: str) -> HandleRouter:
        """The process's router for this controller, started on first use."""
        # Keyed by pid too: after a fork the child needs threads of its own.
        key = (os.getpid(), address)
        with cls._lock:
            router = cls._routers.get(key)
            if router is None:
                router = cls._routers[key] = cls(address)
            return router

    @classmethod
    def flush_local(cls, address: str) -> None:
        """Report this process's handle counters for ``address`` now, if it has any."""
        with cls._lock:
            router = cls._routers.get((os.getpid(), address))
        if router is not None:
            router.flush_stats()

    def __init__(self, address: str) -> None:
        self.address = address
        self.reporter_id = f"handles-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._router: Router[ReplicaServiceStub] = Router(_connect)
        self._changed = threading.Condition()
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._controller: ControllerServiceStub = controller_pb2_grpc.ControllerServiceStub(
            self._channel
        )
        self._reported = 0
        for target, name in ((self._watch, "routes"), (self._report_loop, "stats")):
            threading.Thread(target=target, name=f"turnout-handles-{name}", daemon=True).start()

    # ---- following the controller ------------------------------------------

    def _watch(self) -> None:
        backoff = 0.1
        while True:
            try:
                for reply in self._controller.WatchRoutes(pb.WatchRoutesRequest()):
                    with self._changed:
                        gone = self._router.apply(reply.snapshot)
                        self._changed.notify_all()
                    for conn in gone:
                        if conn.close is not None:
                            conn.close(DRAIN_GRACE_S)
                    backoff = 0.1
            except grpc.RpcError as exc:
                logger.debug("handle routing stream ended: %s", exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _report_loop(self) -> None:
        while True:
            time.sleep(REPORT_INTERVAL_S)
            self.flush_stats()

    def flush_stats(self) -> None:
        """Send the counters now if they changed since the last report."""
        stats = self._router.stats
        changes = stats.changes
        if changes == self._reported:
            return
        request = pb.ReportStatsRequest(reporter_id=self.reporter_id, endpoints=stats.to_proto())
        try:
            self._controller.ReportStats(request, timeout=5)
        except grpc.RpcError as exc:
            logger.debug("stats report failed: %s", exc)
            return
        self._reported = changes

    def _endpoint(self, name: str) -> EndpointRoute:
        deadline = time.monotonic() + ENDPOINT_WAIT_S
        with self._changed:
            while (route := self._router.table.endpoint(name)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotFoundError(f"endpoint {name!r} does not exist")
                self._changed.wait(remaining)
            return route

    # ---- calls -------------------------------------------------------------

    def submit(
        self, endpoint: str, options: CallOptions, data: Any, kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Send one call; the future holds the handler's result or a turnout error."""
        result: Future[Any] = Future()
        message = replica_pb2.HandleRequest(
            request_id=uuid.uuid4().hex,
            method_name=options.method_name,
            call=replica_pb2.PythonCall(
                pickled_data=b"" if data is None else cloudpickle.dumps(data),
                pickled_kwargs=cloudpickle.dumps(kwargs) if kwargs else b"",
                http_method=options.http_method,
                headers=[http_pb2.Header(name=n, value=v) for n, v in options.http_headers],
            ),
        )
        route = self._endpoint(endpoint)
        with self._changed:
            backend, conn = self._router.choose(route, options.shard_key)
            shadows = self._router.shadow_targets(route) if route.shadows else []
            if conn is not None:
                conn.outstanding += 1
        if backend is None or conn is None or conn.stub is None:
            self._router.stats.failed_unrouted(endpoint)
            what = (
                f"endpoint {endpoint!r} has no backend"
                if backend is None
                else (f"backend {backend!r} has no running replica")
            )
            result.set_exception(UnavailableError(what))
            return result
        primary: Future[Hashable | None] = Future()
        for shadow_backend, shadow_conn in shadows:
            self._shadow(endpoint, shadow_backend, shadow_conn, message, primary)
        call = conn.stub.Handle.future(message)
        call.add_done_callback(
            lambda done: self._finish(done, result, primary, conn, endpoint, backend)
        )
        return result

    def _finish(
        self,
        call: grpc.Future[replica_pb2.HandleResponse],
        result: Future[Any],
        primary: Future[Hashable | None],
        conn: Conn,
        endpoint: str,
        backend: str,
    ) -> None:
        with self._changed:
            conn.outstanding -= 1
        try:
            reply: replica_pb2.HandleResponse = call.result()
        except grpc.RpcError as exc:
            primary.set_result(None)
            self._router.stats.answered(endpoint, backend, failed=True)
            code = exc.code()
            result.set_exception(
                UnavailableError(
                    f"a replica of backend {backend!r} failed the call: {code.name}: "
                    f"{exc.details()}"
                )
            )
            return
        primary.set_result(_answer_key(reply))
        try:
            value = _decode(reply, endpoint)
        except TurnoutError as exc:
            self._router.stats.answered(endpoint, backend, failed=True)
            result.set_exception(exc)
        else:
            self._router.stats.answered(endpoint, backend, failed=False)
            result.set_result(value)

    def _shadow(
        self,
        endpoint: str,
        backend: str,
        conn: Conn | None,
        message: replica_pb2.HandleRequest,
        primary: Future[Hashable | None],
    ) -> None:
        stats = self._router.stats
        stats.shadow_sent(endpoint, backend)

        def settle(key: Hashable | None) -> None:
            primary.add_done_callback(
                lambda done: stats.shadow_outcome(endpoint, backend, compare(done.result(), key))
            )

        if conn is None or conn.stub is None:
            settle(None)
            return
        copy = replica_pb2.HandleRequest()
        copy.CopyFrom(message)
        copy.request_id = message.request_id + "-shadow"
        with self._changed:
            conn.outstanding += 1

        def done(call: grpc.Future[replica_pb2.HandleResponse]) -> None:
            with self._changed:
                conn.outstanding -= 1
            try:
                settle(_answer_key(call.result()))
            except grpc.RpcError:
                settle(None)

        conn.stub.Handle.future(copy, timeout=SHADOW_TIMEOUT_S).add_done_callback(done)
