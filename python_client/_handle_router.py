"""The handles' shell around the one sender: Python call in, Python value out.

One ``HandleRouter`` per controller address, token and process follows the
controller's routes with the same ``turnout._sending.Sender`` as the HTTP
proxy, on the process's handle loop (``turnout._sending.loop_thread``), so
a handle works from any thread and any event loop (or none). This module only
turns a call into a ``HandleRequest``, and the reply or the sender's failure
into the handler's value or a ``turnout.errors`` exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import cloudpickle
import grpc

from turnout._internal import auth, rpc, subscribers
from turnout._internal.errors import (
    BackendError,
    DeadlineExceededError,
    MethodNotFoundError,
    NotFoundError,
    OverloadedError,
    TurnoutError,
    UnavailableError,
)
from turnout._internal.rpc import Security
from turnout._sending import failures, loop_thread, streams
from turnout._sending.controller_link import StatsReporter, watch_routes
from turnout._sending.replica_link import ReplicaLink
from turnout._sending.sender import Sender
from turnout._sending.streams import ChunkStream
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc, http_pb2, replica_pb2

logger = logging.getLogger(__name__)

# How long a call waits for its endpoint to show up in the routing snapshot
# (a handle made with missing_ok=True, or right after create_endpoint).
ENDPOINT_WAIT_S = 30.0
# How long ``flush_local`` waits for the report to be sent.
FLUSH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CallOptions:
    """What ``handle.options()`` sets."""

    method_name: str = ""
    shard_key: str = ""
    http_method: str = "GET"
    http_headers: tuple[tuple[str, str], ...] = ()
    # Seconds the call may take, queueing included; None = no limit.
    timeout: float | None = None
    # Whether remote() gives an iterator of a streamed answer's items.
    stream: bool = False


class PythonAnswers:
    """How handles read a replica's reply: the reply itself (decoded by the
    caller's future), compared by its pickled value or its error."""

    def read(
        self, reply: replica_pb2.HandleResponse, request_id: str, backend: str, replica_id: str
    ) -> tuple[replica_pb2.HandleResponse | ChunkStream, Hashable | None, bool]:
        return reply, self.key(reply), reply.WhichOneof("result") != "pickled"

    def read_stream(
        self, stream: ChunkStream, request_id: str, backend: str, replica_id: str
    ) -> replica_pb2.HandleResponse | ChunkStream:
        """A streamed answer: the stream itself (a ``HandleStream`` reads it)."""
        return stream

    def key(self, reply: replica_pb2.HandleResponse) -> Hashable | None:
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


def _error(failure: failures.SendFailure) -> TurnoutError:
    """The turnout error a handle raises for what the sender says."""
    backend = failure.backend
    if isinstance(failure, failures.EndpointMissing):
        if failure.before_deadline:
            return DeadlineExceededError(
                f"endpoint {failure.endpoint!r} did not appear before the deadline"
            )
        return NotFoundError(
            f"endpoint {failure.endpoint!r} does not exist "
            f"(waited {ENDPOINT_WAIT_S:g} s for it to be created)"
        )
    if isinstance(failure, failures.TooManyAwaiting):
        return OverloadedError(failure.detail)
    if isinstance(failure, failures.NoBackend):
        return UnavailableError(f"endpoint {failure.endpoint!r} has no backend")
    if isinstance(failure, failures.NoReplica):
        what = "could be reached" if failure.tried else "is running"
        return UnavailableError(f"no replica of backend {backend!r} {what}")
    if isinstance(failure, failures.Overloaded):
        if failure.expired:
            return OverloadedError(f"no replica of backend {backend!r} was free in time")
        return OverloadedError(f"backend {backend!r} is overloaded")
    if isinstance(failure, failures.QueueDeadline):
        return DeadlineExceededError(
            f"no replica of backend {backend!r} was free before the deadline"
        )
    if isinstance(failure, failures.CallFailed):
        if failure.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceededError(f"backend {backend!r} did not answer before the deadline")
        return UnavailableError(
            f"a replica of backend {backend!r} failed the call: {failure.detail}"
        )
    return UnavailableError(f"sending to backend {backend!r} failed")


def _settle(future: Future[Any], done: Future[Any]) -> None:
    """Give a call's future the outcome of its work on the loop, unless its
    caller cancelled it: a future awaited (``await handle.remote()``) in a
    task that is cancelled is cancelled too, and the call goes on."""
    if future.done():
        return
    try:
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result())
    except InvalidStateError:  # cancelled between the check and the set
        pass


def _fingerprint(token: str | None) -> str | None:
    """What tells tokens apart in ``HandleRouter._routers``: a digest, so the
    token itself is not kept (or shown in a dump of the table) twice."""
    return None if token is None else hashlib.sha256(token.encode()).hexdigest()


class HandleRouter:
    _lock = threading.Lock()
    # By (pid, controller address, fingerprint of the token): one router per
    # identity, since a router presents its token on every call (routes, data
    # token, reports). A second client of the same instance with another
    # token (another role, a rotated token) gets a router of its own instead
    # of acting as the first one; clients with the same token share one.
    # Also under the fingerprint of None: handles given no token, and the
    # router their token was found for when first used.
    _routers: dict[tuple[int, str, str | None], HandleRouter] = {}

    @classmethod
    def for_address(cls, address: str, token: str | None = None) -> HandleRouter:
        """The process's router for this controller and ``token``, started on
        first use (None: the token found as ``turnout.auth.find_token`` says,
        when the first such handle is used)."""
        # Keyed by pid too: after a fork the child needs a loop of its own.
        pid = os.getpid()
        key = (pid, address, _fingerprint(token))
        with cls._lock:
            router = cls._routers.get(key)
            if router is None:
                known = rpc.security_for(address).token
                used = token or known or auth.find_token(address=address)
                # The router of the token actually used, when one runs already.
                used_key = (pid, address, _fingerprint(used))
                router = cls._routers.get(used_key)
                if router is None:
                    router = cls._routers[used_key] = cls(address, used)
                cls._routers[key] = router
            return router

    @classmethod
    def flush_local(cls, address: str) -> None:
        """Report this process's handle counters for ``address`` now, those of
        each of its tokens, if it has any."""
        pid = os.getpid()
        with cls._lock:
            routers = {
                id(router): router
                for (owner, at, _), router in cls._routers.items()
                if owner == pid and at == address
            }
        for router in routers.values():
            router.flush_stats()

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.subscriber = subscribers.handles()
        self._security = dataclasses.replace(rpc.security_for(address), token=token)
        # What replicas are shown, asked of the controller before the first
        # snapshot: an admin token is never sent to a replica.
        self._replica_security: Security | None = None
        self._thread = loop_thread.shared()
        self._sender, self._reporter = self._thread.submit(self._start()).result()
        self._thread.on_stop(self._sender.close)

    async def _start(
        self,
    ) -> tuple[Sender[replica_pb2.HandleResponse | ChunkStream], StatsReporter]:
        answers = PythonAnswers()
        sender: Sender[replica_pb2.HandleResponse | ChunkStream] = Sender(
            self._connect, answers, answers
        )
        reporter = StatsReporter(
            self.address, sender.stats, self.subscriber, self._security, sender.load
        )
        sender.spawn(
            watch_routes(
                self.address,
                sender.apply,
                self.subscriber,
                self._security,
                prepare=self._data_token,
                # Routes lost with the controller are the proxy's to report.
                lost_level=logging.DEBUG,
            )
        )
        sender.spawn(reporter.run())
        return sender, reporter

    def _connect(self, address: str) -> ReplicaLink:
        return ReplicaLink(address, security=self._replica_security or Security())

    async def _data_token(self, stub: controller_pb2_grpc.RouterServiceAsyncStub) -> None:
        if self._replica_security is None:
            data = await stub.GetDataToken(
                pb.GetDataTokenRequest(), timeout=5, metadata=auth.metadata(self._security.token)
            )
            self._replica_security = dataclasses.replace(self._security, token=data.token or None)

    def flush_stats(self) -> None:
        """Send the counters now if they changed since the last report."""
        try:
            self._thread.submit(self._reporter.flush()).result(FLUSH_TIMEOUT_S)
        except TimeoutError:
            logger.debug("stats report of %s took too long", self.address)

    def submit(
        self, endpoint: str, options: CallOptions, data: Any, kwargs: dict[str, Any]
    ) -> Future[Any]:
        """Send one call; the future holds the handler's result or a turnout error.

        Never blocks: a call to an endpoint not in the routing snapshot yet waits
        in the future (up to ``ENDPOINT_WAIT_S``) and leaves when the snapshot
        has it; a call to a full backend waits in the sender's bounded queue
        and is sent when a replica has a free slot.
        """
        message = _message(options, data, kwargs)
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        work = self._thread.submit(self._call(endpoint, options.shard_key, deadline, message))
        result: Future[Any] = Future()
        work.add_done_callback(lambda done: _settle(result, done))
        return result

    def submit_stream(
        self, endpoint: str, options: CallOptions, data: Any, kwargs: dict[str, Any]
    ) -> HandleStream:
        """Send one call whose answer streams; never blocks (as ``submit``)."""
        message = _message(options, data, kwargs)
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        opened = self._thread.submit(self._open(endpoint, options.shard_key, deadline, message))
        return HandleStream(self._thread, opened, endpoint)

    async def _open(
        self,
        endpoint: str,
        shard_key: str,
        deadline: float | None,
        message: replica_pb2.HandleRequest,
    ) -> replica_pb2.HandleResponse | ChunkStream:
        sender = self._sender
        try:
            route = await sender.route_named(endpoint, ENDPOINT_WAIT_S, deadline)
            return await sender.send(route, message, shard_key, deadline, streams.DEFAULT_WINDOW)
        except failures.SendFailure as failure:
            raise _error(failure) from None

    async def _call(
        self,
        endpoint: str,
        shard_key: str,
        deadline: float | None,
        message: replica_pb2.HandleRequest,
    ) -> Any:
        sender = self._sender
        try:
            route = await sender.route_named(endpoint, ENDPOINT_WAIT_S, deadline)
            reply = await sender.send(route, message, shard_key, deadline)
        except failures.SendFailure as failure:
            raise _error(failure) from None
        return _decode(reply, endpoint)  # type: ignore[arg-type]


def _message(options: CallOptions, data: Any, kwargs: dict[str, Any]) -> replica_pb2.HandleRequest:
    return replica_pb2.HandleRequest(
        request_id=uuid.uuid4().hex,
        method_name=options.method_name,
        call=replica_pb2.PythonCall(
            pickled_data=b"" if data is None else cloudpickle.dumps(data),
            pickled_kwargs=cloudpickle.dumps(kwargs) if kwargs else b"",
            http_method=options.http_method,
            headers=[http_pb2.Header(name=n, value=v) for n, v in options.http_headers],
        ),
    )


# What HandleStream.next returns after the last item.
END = object()


class HandleStream:
    """The loop side of a ``HandleIterator``: the opened call, its stream
    (or its one answer, when the handler did not stream), items decoded."""

    def __init__(
        self,
        thread: loop_thread.LoopThread,
        opened: Future[replica_pb2.HandleResponse | ChunkStream],
        endpoint: str,
    ) -> None:
        self.thread = thread
        self._opened = opened
        self._endpoint = endpoint
        self._stream: ChunkStream | None = None
        self._over = False

    async def next(self) -> Any:
        """The next item, ``END`` after the last; raises the turnout error of
        the call (``BackendError`` when the handler raised mid-stream)."""
        if self._over:
            return END
        if self._stream is None:
            try:
                reply = await asyncio.wrap_future(self._opened)
            except BaseException:
                self._over = True
                raise
            if type(reply) is not ChunkStream:
                # The handler did not stream: its one value is the one item.
                self._over = True
                return _decode(reply, self._endpoint)  # type: ignore[arg-type]
            self._stream = reply
        try:
            chunk = await self._stream.next()
        except streams.StreamFailed as exc:
            self._over = True
            if exc.by_reader:
                return END
            raise _stream_error(exc, self._endpoint) from None
        if chunk is None:
            self._over = True
            return END
        return cloudpickle.loads(chunk)

    async def close(self) -> None:
        """Stop reading: the replica cancels the handler if it still runs."""
        self._over = True
        if self._stream is not None:
            self._stream.cancel()
        elif not self._opened.cancel():
            with contextlib.suppress(BaseException):
                reply = await asyncio.wrap_future(self._opened)
                if type(reply) is ChunkStream:
                    reply.cancel()


def _stream_error(exc: streams.StreamFailed, endpoint: str) -> TurnoutError:
    if exc.error is not None:
        return BackendError(exc.error.type, exc.error.message, exc.error.traceback)
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(f"the stream of endpoint {endpoint!r} did not end in time")
    return UnavailableError(f"the stream of endpoint {endpoint!r} broke: {exc.message}")
