"""A sender's two conversations with the controller: routing snapshots in
(acknowledged), counters and load out. Both outlive a controller that is down or
restarting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from turnout._internal import auth, subscribers
from turnout._internal.backoff import Backoff
from turnout._internal.rpc import Security, aio_channel
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

from .stats import RouterStats

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.1
# Also how long a restarted controller may wait for the proxy to come back.
BACKOFF_MAX_S = 1.0
ACK_TIMEOUT_S = 5.0
REPORT_INTERVAL_S = 1.0
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


async def watch_routes(
    controller_address: str,
    apply: Callable[[pb.RoutingSnapshot], None],
    subscriber: str = subscribers.PROXY,
    security: Security | None = None,
    *,
    prepare: Callable[[controller_pb2_grpc.RouterServiceAsyncStub], Awaitable[None]] | None = None,
    lost_level: int = logging.WARNING,
) -> None:
    """Apply every snapshot the controller streams, acknowledge each under
    ``subscriber``; reconnect forever.

    While the controller is unreachable nothing is applied, so the sender
    keeps serving on the last snapshot it had. ``prepare`` runs before each
    stream opens (a handle asks for its data token there). A link that broke
    is logged at ``lost_level`` once, then at DEBUG, so a controller that is
    down for hours floods no log; a refused token is logged as a warning once.
    """
    security = security or Security()
    metadata = auth.metadata(security.token)
    backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
    lost = refused = False
    while True:
        try:
            async with aio_channel(controller_address, security) as channel:
                stub = controller_pb2_grpc.RouterServiceStub(channel)
                if prepare is not None:
                    await prepare(stub)
                stream = stub.WatchRoutes(
                    pb.WatchRoutesRequest(subscriber_id=subscriber), metadata=metadata
                )
                # Versions only grow within one stream; a new stream (a
                # restarted controller) starts its own sequence.
                seen = -1
                acknowledge = bool(subscriber)
                async for reply in stream:
                    snapshot = reply.snapshot
                    if snapshot.version <= seen:
                        continue
                    seen = snapshot.version
                    apply(snapshot)
                    if lost:
                        logger.log(lost_level, "controller at %s is back", controller_address)
                        lost = False
                    backoff.reset()
                    if acknowledge:
                        acknowledge = await _acknowledge(stub, subscriber, seen, metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in _REFUSED and not refused:
                logger.warning("cannot follow routes of %s: %s", controller_address, exc.details())
                refused = True
            logger.log(
                logging.DEBUG if lost else lost_level,
                "routing stream from %s ended (%s); serving on the last snapshot, reconnecting",
                controller_address,
                code.name,
            )
            lost = True
        except Exception:
            # A snapshot that could not be applied must not end the watch: the
            # sender goes on serving the last good one and tries again.
            logger.exception("following routes from %s failed", controller_address)
        await asyncio.sleep(backoff.next())


async def _acknowledge(
    stub: controller_pb2_grpc.RouterServiceAsyncStub,
    subscriber: str,
    version: int,
    metadata: tuple[tuple[str, str], ...],
) -> bool:
    """Say ``version`` is applied; False when this token may not say so.

    Only the proxy's (and an operator's) token names a router that admin calls
    wait for; the controller watches anyone else anonymously and refuses
    their acknowledgements, which are then not sent again on this stream.
    """
    try:
        await stub.AckRoutes(
            pb.AckRoutesRequest(subscriber_id=subscriber, version=version),
            timeout=ACK_TIMEOUT_S,
            metadata=metadata,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        logger.debug("routes are followed anonymously: %s", exc.details())
        return False
    return True


class StatsReporter:
    """Sends a router's counters to the controller when they changed, and its
    load (``load()``: requests in flight and queued) every time while it has
    any, and once more when it has none left, so the autoscaler sees the
    load fall."""

    def __init__(
        self,
        controller_address: str,
        stats: RouterStats,
        reporter_id: str,
        security: Security,
        load: Callable[[], list[pb.BackendLoad]] | None = None,
    ) -> None:
        self._address = controller_address
        self._stats = stats
        self._load = load
        self._had_load = False
        self.reporter_id = reporter_id
        self._security = security
        self._metadata = auth.metadata(security.token)
        self._reported = 0
        self._stub: controller_pb2_grpc.RouterServiceAsyncStub | None = None
        self._channel: grpc.aio.Channel | None = None

    async def run(self) -> None:
        """Report about once a second, until cancelled."""
        try:
            while True:
                await asyncio.sleep(REPORT_INTERVAL_S)
                await self.flush()
        finally:
            if self._channel is not None:
                await self._channel.close()

    async def flush(self) -> None:
        """Report now if the counters changed since the last report."""
        changes = self._stats.changes
        loads = self._load() if self._load is not None else []
        if changes == self._reported and not loads and not self._had_load:
            return
        if self._stub is None:
            self._channel = aio_channel(self._address, self._security)
            self._stub = controller_pb2_grpc.RouterServiceStub(self._channel)
        counters = self._stats.to_proto()
        request = pb.ReportStatsRequest(
            reporter_id=self.reporter_id,
            endpoints=counters,
            counting_seconds=self._stats.counting_seconds(),
            loads=loads,
        )
        try:
            await self._stub.ReportStats(request, timeout=ACK_TIMEOUT_S, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            logger.debug("stats report failed: %s", exc.code().name)
            return
        except Exception:
            logger.exception("stats report failed")
            return
        self._reported = changes
        self._had_load = bool(loads)
