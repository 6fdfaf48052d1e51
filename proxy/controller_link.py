"""The proxy's two conversations with the controller: routing snapshots in,
counters out. Both outlive a controller that is down or restarting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from turnout._internal import auth
from turnout._internal.rpc import Security, aio_channel
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

from .stats import RouterStats

logger = logging.getLogger(__name__)

SUBSCRIBER_ID = "proxy"
BACKOFF_INITIAL_S = 0.1
# Also how long a restarted controller may wait for the proxy to come back.
BACKOFF_MAX_S = 1.0
ACK_TIMEOUT_S = 5.0
REPORT_INTERVAL_S = 1.0


def subscriber_id(worker_index: int, base: str = SUBSCRIBER_ID) -> str:
    """The name a proxy process follows routes and reports counters under:
    ``base`` ("proxy" for the one the controller started) for a lead,
    "<base>-<n>" for its workers."""
    return f"{base}-{worker_index}" if worker_index else base


async def watch_routes(
    controller_address: str,
    apply: Callable[[pb.RoutingSnapshot], None],
    subscriber: str = SUBSCRIBER_ID,
    security: Security | None = None,
) -> None:
    """Apply every snapshot the controller streams; reconnect forever.

    While the controller is unreachable nothing is applied, so the proxy keeps
    serving on the last snapshot it had.
    """
    security = security or Security()
    backoff = BACKOFF_INITIAL_S
    # Once the link broke, each failed retry is logged at DEBUG only, so a
    # controller that is down for hours does not flood the proxy log.
    lost = False
    while True:
        try:
            async with aio_channel(controller_address, security) as channel:
                stub = controller_pb2_grpc.RouterServiceStub(channel)
                stream = stub.WatchRoutes(
                    pb.WatchRoutesRequest(subscriber_id=subscriber),
                    metadata=auth.metadata(security.token),
                )
                # Versions only grow within one stream; a new stream (a
                # restarted controller) starts its own sequence.
                seen = -1
                async for reply in stream:
                    snapshot = reply.snapshot
                    if snapshot.version <= seen:
                        continue
                    seen = snapshot.version
                    apply(snapshot)
                    if lost:
                        logger.warning("controller at %s is back", controller_address)
                        lost = False
                    backoff = BACKOFF_INITIAL_S
                    await stub.AckRoutes(
                        pb.AckRoutesRequest(subscriber_id=subscriber, version=seen),
                        timeout=ACK_TIMEOUT_S,
                        metadata=auth.metadata(security.token),
                    )
        except grpc.aio.AioRpcError as exc:
            logger.log(
                logging.DEBUG if lost else logging.WARNING,
                "routing stream from %s ended (%s); serving on the last snapshot, reconnecting",
                controller_address,
                exc.code().name,
            )
            lost = True
        except Exception:
            # A snapshot that could not be applied must not end the watch: the
            # proxy goes on serving the last good one and tries again.
            logger.exception("following routes from %s failed", controller_address)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX_S)


async def report_stats(
    controller_address: str, stats: RouterStats, reporter_id: str, security: Security
) -> None:
    """Send the counters to the controller about once a second when they changed."""
    async with aio_channel(controller_address, security) as channel:
        stub = controller_pb2_grpc.RouterServiceStub(channel)
        reported = 0
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            changes = stats.changes
            if changes == reported:
                continue
            request = pb.ReportStatsRequest(reporter_id=reporter_id, endpoints=stats.to_proto())
            try:
                await stub.ReportStats(
                    request, timeout=ACK_TIMEOUT_S, metadata=auth.metadata(security.token)
                )
            except grpc.aio.AioRpcError as exc:
                logger.debug("stats report failed: %s", exc.code().name)
                continue
            except Exception:
                logger.exception("stats report failed")
                continue
            reported = changes
