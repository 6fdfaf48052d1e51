"""The one sender: a call to an endpoint, from traffic choice to the answer.

The HTTP proxy and Python handles are thin shells around it: each turns its
caller's request into a ``HandleRequest``, calls ``Sender.send`` and turns
the reply (or the ``SendFailure``) into its own kind of answer. So each rule
of the way between them is written once:

- the backend by the endpoint's weights (or shard key), shadows drawn by
  their proportions, with at most ``MAX_SHADOWS_IN_FLIGHT`` copies at once;
- admission: at most ``max_concurrent_queries`` per replica, then a bounded
  queue (``Admission``), within the call's deadline;
- a call that never reached its replica is tried on another (at most
  ``MAX_CONNECT_RETRIES`` others);
- counters: every call answered or failed, how long it took (end to end,
  and on the replica as it reports), every shadow sent and compared.

It runs on one event loop: the proxy's, or the handles' private loop thread
(``turnout._sending.loop_thread``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Hashable
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc

from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2

from .admission import Admission
from .failures import CallFailed, EndpointMissing, ForwardFailed, NoBackend, TooManyAwaiting
from .replica_link import Outgoing, ReplicaCallError
from .replica_pool import Connect, ReplicaConn
from .route_table import EndpointRoute
from .router import Router
from .stats import compare
from .streams import ChunkStream, OnEnd

logger = logging.getLogger(__name__)

# Other replicas a call may be retried on when one cannot be connected to.
MAX_CONNECT_RETRIES = 2
# How long calls already sent to a replica that left the snapshot may take
# before its channel is closed under them.
DRAIN_GRACE_S = 30.0
# A shadow gets this long to answer before it counts as failed.
SHADOW_TIMEOUT_S = 30.0
# Copies in flight at once; beyond this a copy is not sent (counted as failed),
# so a slow shadow backend cannot pile up memory in the sender.
MAX_SHADOWS_IN_FLIGHT = 1000
# Calls that may wait at once for their endpoints to appear in the snapshot.
MAX_AWAITING_CALLS = 10_000

Answer = TypeVar("Answer")
Answer_co = TypeVar("Answer_co", covariant=True)


class Reader(Protocol[Answer_co]):
    """How a shell reads a replica's reply."""

    def read(
        self, reply: replica_pb2.HandleResponse, request_id: str, backend: str, replica_id: str
    ) -> tuple[Answer_co, Hashable | None, bool]:
        """The shell's answer, what shadows compare with (None: no answer to
        compare), and whether the call counts as failed."""
        ...

    def key(self, reply: replica_pb2.HandleResponse) -> Hashable | None:
        """What a shadow's reply is compared by (None: no answer)."""
        ...


class StreamReader(Protocol[Answer_co]):
    """How a shell reads a streamed answer (``send`` with a stream window)."""

    def read_stream(
        self, stream: ChunkStream, request_id: str, backend: str, replica_id: str
    ) -> Answer_co:
        """The shell's answer to stream. It is counted when the stream ends;
        a shell that cannot send it must ``cancel`` the stream."""
        ...


class Sender(Generic[Answer]):
    """Routes, admission, replica links, retries, shadows and counters of one
    router (the proxy process, or the handles of one process)."""

    def __init__(
        self,
        connect: Connect,
        reader: Reader[Answer],
        stream_reader: StreamReader[Answer] | None = None,
    ) -> None:
        self._stream_reader = stream_reader
        self.router = Router(connect)
        self.admission = Admission(self.router)
        self.stats = self.router.stats
        self._reader = reader
        self.first_snapshot = asyncio.Event()
        # Set and replaced on every snapshot, for calls waiting for an endpoint.
        self._changed = asyncio.Event()
        self._awaiting = 0
        self.shadows_in_flight = 0
        self._background: set[asyncio.Task[None]] = set()
        # Replicas that left the snapshot, their channels closing with a grace.
        self._draining: set[ReplicaConn] = set()

    # ---- routes ---------------------------------------------------------

    def apply(self, snapshot: pb.RoutingSnapshot) -> None:
        """Serve ``snapshot`` from now on; must run on the sender's loop."""
        gone = self.router.apply(snapshot)
        self.admission.replicas_changed()
        if gone:
            self.spawn(self._drain(gone))
        self.first_snapshot.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def route_named(
        self, endpoint: str, wait: float, deadline: float | None
    ) -> EndpointRoute:
        """The endpoint's route; if the snapshot does not have it yet, waits
        for it (``wait`` seconds at most, and not past ``deadline``).

        Raises EndpointMissing, or TooManyAwaiting when ``MAX_AWAITING_CALLS``
        calls already wait.
        """
        route = self.router.table.endpoint(endpoint)
        if route is not None:
            return route
        if self._awaiting >= MAX_AWAITING_CALLS:
            raise TooManyAwaiting("", "too many calls are waiting for endpoints to appear")
        give_up = time.monotonic() + wait
        before_deadline = deadline is not None and deadline <= give_up
        if deadline is not None and before_deadline:
            give_up = deadline
        self._awaiting += 1
        try:
            while route is None:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    raise EndpointMissing(endpoint, before_deadline=before_deadline)
                changed = self._changed
                try:
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                except TimeoutError:
                    pass
                route = self.router.table.endpoint(endpoint)
        finally:
            self._awaiting -= 1
        return route

    # ---- calls ------------------------------------------------------------

    async def send(
        self,
        route: EndpointRoute,
        message: Outgoing,
        shard_key: str = "",
        deadline: float | None = None,
        stream_window: int = 0,
    ) -> Answer:
        """Send ``message`` to the endpoint of ``route``; the reader's answer.

        ``deadline`` (``time.monotonic``) bounds the wait for a free replica
        and the call, a streamed answer's whole stream included. Raises a
        ``SendFailure`` when no replica answered. With a ``stream_window``
        (chunks), an answer that streams reaches the reader as a
        ``ChunkStream``; its replica slot and its counts are held until the
        stream is over.
        """
        started = time.monotonic()
        backend = route.choose_backend(self.router.rng, shard_key)
        if backend is None:
            self.stats.failed_unrouted(route.name)
            raise NoBackend(route.name)
        primary: asyncio.Future[Hashable | None] | None = None
        if route.shadows:
            primary = self._send_shadows(route, message)
        failed = True
        handler_seconds = 0.0
        streamed: ChunkStream | None = None
        try:
            # Inline, not a coroutine of its own: this is every request's path.
            rid = message.request_id
            tried: frozenset[str] = frozenset()
            while True:
                # Queue for a replica if all are full ...
                conn = await self.admission.acquire(backend, shard_key, deadline, tried)
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    if remaining is not None and remaining <= 0:
                        raise ReplicaCallError(
                            grpc.StatusCode.DEADLINE_EXCEEDED, "timed out in queue"
                        )
                    if stream_window and self._stream_reader is not None:
                        reply = await conn.link.handle_streamed(  # type: ignore[union-attr]
                            message, remaining, stream_window
                        )
                        if type(reply) is ChunkStream:
                            streamed = reply
                            streamed.when_done(
                                self._stream_done(route.name, backend, conn, started)
                            )
                    else:
                        reply = await conn.link.handle(message, remaining)  # type: ignore[union-attr]
                except ReplicaCallError as exc:
                    failure = CallFailed(backend, conn.replica_id, exc.code, exc.details)
                    if failure.never_delivered and len(tried) < MAX_CONNECT_RETRIES:
                        # ... and retry on another if one cannot be connected to
                        # (or its stream ended before the call was sent: the
                        # details say what ended it).
                        logger.info(
                            "replica %s unreachable; retrying request %s: %s",
                            conn.replica_id,
                            rid,
                            exc.details,
                        )
                        tried |= {conn.replica_id}
                        continue
                    raise failure from None
                except Exception:
                    # Anything else (a channel closed under the call, a malformed
                    # answer) is still answered, by the shell, like every failure.
                    logger.exception("forwarding request %s to %s failed", rid, conn.replica_id)
                    raise ForwardFailed(backend) from None
                finally:
                    if streamed is None:
                        self.admission.release(backend, conn)
                break
            if streamed is not None:
                assert self._stream_reader is not None
                failed = False
                return self._stream_reader.read_stream(streamed, rid, backend, conn.replica_id)
            reply = cast(replica_pb2.HandleResponse, reply)
            handler_seconds = reply.handler_seconds
            answer, key, failed = self._reader.read(reply, rid, backend, conn.replica_id)
            if primary is not None:
                primary.set_result(key)
            return answer
        finally:
            if primary is not None and not primary.done():
                # No answer to compare with: the shadows count as failed.
                primary.set_result(None)
            if streamed is None:
                seconds = time.monotonic() - started
                self.stats.answered(route.name, backend, failed, seconds, handler_seconds)

    def _stream_done(self, endpoint: str, backend: str, conn: ReplicaConn, started: float) -> OnEnd:
        """What ends a streamed answer's call: its slot freed, and it counted
        (a stream that ended in an error as failed) with its whole time."""

        def done(failed: bool, handler_seconds: float) -> None:
            self.admission.release(backend, conn)
            seconds = time.monotonic() - started
            self.stats.answered(endpoint, backend, failed, seconds, handler_seconds)

        return done

    # ---- shadows ------------------------------------------------------------

    def _send_shadows(
        self, route: EndpointRoute, message: Outgoing
    ) -> asyncio.Future[Hashable | None] | None:
        targets = self.router.shadow_targets(route)
        if not targets:
            return None
        primary: asyncio.Future[Hashable | None] = asyncio.get_running_loop().create_future()
        if isinstance(message, replica_pb2.HandleRequest):
            copy = replica_pb2.HandleRequest()
            copy.CopyFrom(message)
        else:
            copy = message.message()
        copy.request_id = message.request_id + "-shadow"
        for backend, conn in targets:
            self.spawn(self._shadow(route.name, backend, conn, copy, primary))
        return primary

    async def _shadow(
        self,
        endpoint: str,
        backend: str,
        conn: ReplicaConn | None,
        message: replica_pb2.HandleRequest,
        primary: asyncio.Future[Hashable | None],
    ) -> None:
        self.stats.shadow_sent(endpoint, backend)
        key: Hashable | None = None
        if (
            conn is not None
            and conn.link is not None
            and self.shadows_in_flight < MAX_SHADOWS_IN_FLIGHT
        ):
            self.shadows_in_flight += 1
            conn.outstanding += 1  # a shadow takes a slot like any call
            try:
                key = self._reader.key(await conn.link.handle(message, SHADOW_TIMEOUT_S))
            except ReplicaCallError as exc:
                logger.info("shadow %s of %s failed: %s", backend, endpoint, exc.code.name)
            except Exception:
                logger.exception("shadow %s of %s failed", backend, endpoint)
            finally:
                self.admission.release(backend, conn)
                self.shadows_in_flight -= 1
        self.stats.shadow_outcome(endpoint, backend, compare(await primary, key))

    # ---- background work -------------------------------------------------

    async def _drain(self, conns: list[ReplicaConn]) -> None:
        self._draining.update(conns)
        try:
            await _close(conns, DRAIN_GRACE_S)
        finally:
            self._draining.difference_update(conns)

    def load(self) -> list[pb.BackendLoad]:
        """What this sender has at each backend now: requests in flight by
        replica, and queued (the autoscaler's signal; backends with none are
        left out)."""
        loads: dict[str, pb.BackendLoad] = {}
        for (backend, replica_id), count in self.router.pool.in_flight().items():
            if count:
                entry = loads.setdefault(backend, pb.BackendLoad(backend=backend))
                entry.in_flight_by_replica[replica_id] = count
        for backend, count in self.admission.queued().items():
            if count:
                loads.setdefault(backend, pb.BackendLoad(backend=backend)).queued = count
        return list(loads.values())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it ends."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop the background work and close every replica link at once."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        conns = [*self._draining, *self.router.pool.clear()]
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(conns, None)


async def _close(conns: list[ReplicaConn], grace: float | None) -> None:
    await asyncio.gather(*(c.close(grace) for c in conns), return_exceptions=True)
