"""Follows the controller's routing snapshots, and acknowledges each one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from turnout._grpc import CHANNEL_OPTIONS
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

logger = logging.getLogger(__name__)

SUBSCRIBER_ID = "proxy"
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 2.0
ACK_TIMEOUT_S = 5.0


async def watch_routes(
    controller_address: str, apply: Callable[[pb.RoutingSnapshot], None]
) -> None:
    """Apply every snapshot the controller streams; reconnect forever.

    While the controller is unreachable nothing is applied, so the proxy keeps
    serving on the last snapshot it had.
    """
    backoff = BACKOFF_INITIAL_S
    while True:
        try:
            async with grpc.aio.insecure_channel(
                controller_address, options=CHANNEL_OPTIONS
            ) as channel:
                stub = controller_pb2_grpc.ControllerServiceStub(channel)
                stream = stub.WatchRoutes(pb.WatchRoutesRequest(subscriber_id=SUBSCRIBER_ID))
                # Versions only grow within one stream; a new stream (a
                # restarted controller) starts its own sequence.
                seen = -1
                async for reply in stream:
                    snapshot = reply.snapshot
                    if snapshot.version <= seen:
                        continue
                    seen = snapshot.version
                    apply(snapshot)
                    backoff = BACKOFF_INITIAL_S
                    await stub.AckRoutes(
                        pb.AckRoutesRequest(subscriber_id=SUBSCRIBER_ID, version=seen),
                        timeout=ACK_TIMEOUT_S,
                    )
        except grpc.aio.AioRpcError as exc:
            logger.info("routing stream from %s ended: %s", controller_address, exc.code().name)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX_S)
