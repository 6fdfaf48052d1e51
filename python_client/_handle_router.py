"""The routing half of handles: one per controller address and process.

It follows the controller's routing snapshots on a daemon thread and applies
the same ``Router`` as the HTTP proxy, then calls replicas directly with
blocking gRPC stubs' futures, so a handle works from any thread and any event
loop (or none) without a loop of its own.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle
import grpc

from turnout._internal import auth, rpc
from turnout._internal.rpc import Security, never_delivered
from turnout.errors import (
    BackendError,
    DeadlineExceededError,
    MethodNotFoundError,
    NotFoundError,
    OverloadedError,
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
    from turnout.v1.controller_pb2_grpc import RouterServiceStub
    from turnout.v1.replica_pb2_grpc import ReplicaServiceStub

logger = logging.getLogger(__name__)


def _settle(future: Future[Any], *, error: BaseException | None = None, value: Any = None) -> None:
    """Give a call's future its outcome, unless its caller cancelled it: a
    future awaited (``await handle.remote()``) in a task that is cancelled is
    cancelled too, and setting it then would raise in a router thread."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:  # cancelled between the check and the set
        pass


# Other replicas a call may be retried on when one cannot be connected to.
MAX_CONNECT_RETRIES = 2
# How long a call waits for its endpoint to show up in the routing snapshot
# (a handle made with missing_ok=True, or right after create_endpoint).
ENDPOINT_WAIT_S = 30.0
# Calls that may wait for their endpoints at once, per process and controller.
MAX_AWAITING_CALLS = 10_000
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
    # Seconds the call may take, queueing included; None = no limit.
    timeout: float | None = None


@dataclass(eq=False)
class _Call:
    """One handle call on its way: queued, sent, or retried elsewhere."""

    endpoint: str
    backend: str
    shard_key: str
    message: replica_pb2.HandleRequest
    deadline: float | None
    tried: frozenset[str] = frozenset()
    queued_until: float = 0.0
    result: Future[Any] = field(default_factory=Future)
    # What shadows compare their answers with; None = no answer.
    primary: Future[Hashable | None] = field(default_factory=Future)

    def due(self) -> float:
        """When it must leave the queue."""
        if self.deadline is None:
            return self.queued_until
        return min(self.deadline, self.queued_until)


def _connect(conn: Conn, security: Security) -> None:
    channel = rpc.channel(conn.address, security)
    conn.stub = replica_pb2_grpc.ReplicaServiceStub(channel)

    def close(grace: float | None) -> None:
        # A blocking channel's close() cancels calls in flight: give them time.
        timer = threading.Timer(grace or 0.0, channel.close)
        timer.daemon = True
        timer.start()

    conn.close = close


def _refused(exc: grpc.RpcError) -> bool:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


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
    def for_address(cls, address: str, token: str | None = None) -> HandleRouter:
        """The process's router for this controller, started on first use with
        ``token`` (None: found as ``turnout._internal.auth.find_token`` says)."""
        # Keyed by pid too: after a fork the child needs threads of its own.
        key = (os.getpid(), address)
        with cls._lock:
            router = cls._routers.get(key)
            if router is None:
                known = rpc.security_for(address).token
                router = cls._routers[key] = cls(
                    address, token or known or auth.find_token(address=address)
                )
            return router

    @classmethod
    def flush_local(cls, address: str) -> None:
        """Report this process's handle counters for ``address`` now, if it has any."""
        with cls._lock:
            router = cls._routers.get((os.getpid(), address))
        if router is not None:
            router.flush_stats()

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.reporter_id = f"handles-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._security = dataclasses.replace(rpc.security_for(address), token=token)
        # What replicas are shown, asked of the controller before the first
        # snapshot: an admin token is never sent to a replica.
        self._replica_security: Security | None = None
        self._router: Router[ReplicaServiceStub] = Router(
            lambda conn: _connect(conn, self._replica_security or Security())
        )
        self._changed = threading.Condition()
        self._channel = rpc.channel(address, self._security)
        self._controller: RouterServiceStub = controller_pb2_grpc.RouterServiceStub(self._channel)
        self._reported = 0
        # backend -> calls waiting for a free replica slot, oldest first
        self._queues: dict[str, collections.deque[_Call]] = {}
        # Calls whose endpoint is not in the routing snapshot yet, oldest first.
        self._awaiting: list[_Call] = []
        threads = ((self._watch, "routes"), (self._report_loop, "stats"), (self._reap, "queue"))
        for target, name in threads:
            threading.Thread(target=target, name=f"turnout-handles-{name}", daemon=True).start()

    # ---- following the controller ------------------------------------------

    def _watch(self) -> None:
        backoff = 0.1
        refused = False
        while True:
            try:
                if self._replica_security is None:
                    data = self._controller.GetDataToken(pb.GetDataTokenRequest(), timeout=5)
                    self._replica_security = dataclasses.replace(
                        self._security, token=data.token or None
                    )
                for reply in self._controller.WatchRoutes(pb.WatchRoutesRequest()):
                    with self._changed:
                        gone = self._router.apply(reply.snapshot)
                        self._changed.notify_all()
                    self._route_awaiting()
                    self._retry_queued()
                    for conn in gone:
                        if conn.close is not None:
                            conn.close(DRAIN_GRACE_S)
                    backoff = 0.1
            except grpc.RpcError as exc:
                if not refused and _refused(exc):
                    # Calls wait for routes that never come: say why, once.
                    logger.warning("handles cannot follow %s: %s", self.address, exc)
                    refused = True
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

    # ---- calls -------------------------------------------------------------

    def submit(
        self, endpoint: str, options: CallOptions, data: Any, kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Send one call; the future holds the handler's result or a turnout error.

        Never blocks: a call to an endpoint not in the routing snapshot yet waits
        in the future (up to ``ENDPOINT_WAIT_S``) and leaves when the snapshot
        has it; a call to a full backend waits in this router's bounded queue
        and is sent when a replica has a free slot.
        """
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
        call = _Call(
            endpoint=endpoint,
            backend="",
            shard_key=options.shard_key,
            message=message,
            deadline=None if options.timeout is None else time.monotonic() + options.timeout,
        )
        with self._changed:
            route = self._router.table.endpoint(endpoint)
            if route is None:
                # Parked under the same lock the watch thread applies snapshots
                # under, so a snapshot cannot slip in between look and park.
                if len(self._awaiting) >= MAX_AWAITING_CALLS:
                    _settle(
                        call.result,
                        error=OverloadedError("too many calls are waiting for endpoints to appear"),
                    )
                    return call.result
                call.queued_until = time.monotonic() + ENDPOINT_WAIT_S
                self._awaiting.append(call)
                self._changed.notify_all()  # the reaper may need to wake earlier
                return call.result
        self._route(call, route)
        return call.result

    def _route(self, call: _Call, route: EndpointRoute) -> None:
        """Pick the call's backend by the endpoint's traffic, start its shadows, send it."""
        with self._changed:
            backend = route.choose_backend(self._router.rng, call.shard_key)
            shadows = self._router.shadow_targets(route) if route.shadows else []
        if backend is None:
            self._router.stats.failed_unrouted(call.endpoint)
            _settle(
                call.result, error=UnavailableError(f"endpoint {call.endpoint!r} has no backend")
            )
            return
        call.backend = backend
        for shadow_backend, shadow_conn in shadows:
            self._shadow(call.endpoint, shadow_backend, shadow_conn, call.message, call.primary)
        self._dispatch(call)

    def _route_awaiting(self) -> None:
        """A new snapshot: calls whose endpoint it has can leave."""
        with self._changed:
            if not self._awaiting:
                return
            ready: list[tuple[_Call, EndpointRoute]] = []
            still: list[_Call] = []
            for call in self._awaiting:
                route = self._router.table.endpoint(call.endpoint)
                if route is None:
                    still.append(call)
                else:
                    ready.append((call, route))
            self._awaiting = still
        for call, route in ready:
            self._route(call, route)

    def _dispatch(self, call: _Call) -> None:
        """Send ``call`` now if a replica has room, else queue it (or refuse it)."""
        with self._changed:
            conn = self._router.pool.pick(
                call.backend, self._router.rng, call.shard_key, call.tried
            )
            if conn is None:
                self._queue_or_fail(call)
                return
            conn.outstanding += 1
        remaining = None if call.deadline is None else max(call.deadline - time.monotonic(), 0)
        assert conn.stub is not None
        future = conn.stub.Handle.future(call.message, timeout=remaining, wait_for_ready=False)
        future.add_done_callback(lambda done: self._finish(done, call, conn))

    def _queue_or_fail(self, call: _Call) -> None:
        # Under self._changed.
        pool = self._router.pool
        if not any(c.replica_id not in call.tried for c in pool.replicas(call.backend)):
            what = "could be reached" if call.tried else "is running"
            self._fail(call, UnavailableError(f"no replica of backend {call.backend!r} {what}"))
            return
        limits = pool.limits(call.backend)
        queue = self._queues.setdefault(call.backend, collections.deque())
        if len(queue) >= limits.max_queued_requests:
            self._fail(call, OverloadedError(f"backend {call.backend!r} is overloaded"))
            return
        call.queued_until = time.monotonic() + limits.queue_timeout
        queue.append(call)
        self._changed.notify_all()  # the reaper may need to wake earlier

    def _fail(self, call: _Call, error: TurnoutError) -> None:
        self._router.stats.answered(call.endpoint, call.backend, failed=True)
        if not call.primary.done():
            call.primary.set_result(None)
        _settle(call.result, error=error)

    def _release(self, backend: str, conn: Conn) -> None:
        """A slot of ``conn`` is free: send the oldest queued call that can use it."""
        with self._changed:
            conn.outstanding -= 1
            queue = self._queues.get(backend)
            waiting = queue.popleft() if queue else None
        if waiting is not None:
            self._dispatch(waiting)

    def _reap(self) -> None:
        """Refuse queued calls whose queue timeout or deadline has passed, and
        calls whose endpoint did not appear in time."""
        while True:
            with self._changed:
                now = time.monotonic()
                expired: list[_Call] = []
                next_due = now + 1.0
                for queue in (*self._queues.values(), self._awaiting):
                    for call in list(queue):
                        due = call.due()
                        if due <= now:
                            queue.remove(call)
                            expired.append(call)
                        else:
                            next_due = min(next_due, due)
                if not expired:
                    self._changed.wait(next_due - now)
            for call in expired:
                self._expire(call)

    def _expire(self, call: _Call) -> None:
        before_deadline = call.deadline is not None and call.deadline <= call.queued_until
        if not call.backend:
            # Still waiting for its endpoint: it never reached a backend.
            error: TurnoutError = (
                DeadlineExceededError(
                    f"endpoint {call.endpoint!r} did not appear before the deadline"
                )
                if before_deadline
                else NotFoundError(
                    f"endpoint {call.endpoint!r} does not exist "
                    f"(waited {ENDPOINT_WAIT_S:g} s for it to be created)"
                )
            )
            _settle(call.result, error=error)
        elif before_deadline:
            self._fail(
                call,
                DeadlineExceededError(
                    f"no replica of backend {call.backend!r} was free before the deadline"
                ),
            )
        else:
            self._fail(
                call, OverloadedError(f"no replica of backend {call.backend!r} was free in time")
            )

    def _retry_queued(self) -> None:
        """Replicas changed: queued calls may fit now (or have nowhere to go)."""
        with self._changed:
            waiting = [call for queue in self._queues.values() for call in queue]
            for queue in self._queues.values():
                queue.clear()
        for call in waiting:
            self._dispatch(call)

    def _finish(
        self, done: grpc.Future[replica_pb2.HandleResponse], call: _Call, conn: Conn
    ) -> None:
        self._release(call.backend, conn)
        try:
            reply: replica_pb2.HandleResponse = done.result()
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if never_delivered(code, details) and len(call.tried) < MAX_CONNECT_RETRIES:
                # Never delivered: another replica may take it.
                call.tried |= {conn.replica_id}
                self._dispatch(call)
                return
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                error: TurnoutError = DeadlineExceededError(
                    f"backend {call.backend!r} did not answer before the deadline"
                )
            else:
                error = UnavailableError(
                    f"a replica of backend {call.backend!r} failed the call: {code.name}: {details}"
                )
            self._fail(call, error)
            return
        call.primary.set_result(_answer_key(reply))
        try:
            value = _decode(reply, call.endpoint)
        except TurnoutError as exc:
            self._router.stats.answered(call.endpoint, call.backend, failed=True)
            _settle(call.result, error=exc)
        else:
            self._router.stats.answered(call.endpoint, call.backend, failed=False)
            _settle(call.result, value=value)

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
            self._release(backend, conn)
            try:
                settle(_answer_key(call.result()))
            except grpc.RpcError:
                settle(None)

        conn.stub.Handle.future(copy, timeout=SHADOW_TIMEOUT_S).add_done_callback(done)
