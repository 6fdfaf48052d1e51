"""Health checks of replicas, each child's over one channel kept for it.

A channel per check costs a TCP connect and an HTTP/2 handshake (a TLS one
too when TLS is on) for every check of every replica, each period. The
local launcher keeps one here per child, and the Ray launcher asks the
local launcher for its checks, so both share this one rule.

A channel is made on a child's first check and kept while its checks pass.
It goes when the child's launcher forgets the child (it exited), when the
launcher stops, and after a check that got no answer (an error, the
deadline): the next check then connects afresh, as every check did before,
rather than inheriting gRPC's reconnect backoff (up to two minutes) from a
connection that failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from turnout._internal import auth
from turnout._internal.rpc import Security, aio_channel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Kept:
    # What the channel was made for: a child that now reports another
    # address, or a launcher given other TLS material, gets a new one.
    address: str
    security: Security
    channel: grpc.aio.Channel


class HealthChannels:
    """One channel per child (the child object, by identity), for its
    grpc.health.v1 checks. The token is not part of a channel: it goes with
    each call (``auth.metadata``), so a changed token needs no new one."""

    def __init__(self) -> None:
        self._kept: dict[object, _Kept] = {}

    def __len__(self) -> int:
        """How many channels are open."""
        return len(self._kept)

    async def check(
        self,
        child: object,
        address: str,
        security: Security,
        token: str | None,
        timeout: float,
    ) -> bool:
        """True when the replica's grpc.health.v1 service says SERVING within
        ``timeout``. ``token`` (the controller's) makes the replica run its
        backend's check_health(); a probe without one gets the last result."""
        kept = await self._channel(child, address, security)
        stub = health_pb2_grpc.HealthStub(kept.channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=timeout,
                # A kept channel whose connection broke reconnects within the
                # deadline, as a new one connects.
                wait_for_ready=True,
                metadata=auth.metadata(token),
            )
        except grpc.aio.AioRpcError as exc:
            logger.warning("health check of %s failed: %s", address, exc.details())
            await self._drop(child, kept)
            return False
        # NOT_SERVING came over a working connection: the channel stays.
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def forget(self, child: object) -> None:
        """Close the child's channel, if it has one (it exited)."""
        kept = self._kept.pop(child, None)
        if kept is not None:
            await kept.channel.close()

    async def close(self) -> None:
        """Close every channel (the launcher stops)."""
        kept, self._kept = list(self._kept.values()), {}
        for each in kept:
            await each.channel.close()

    async def _channel(self, child: object, address: str, security: Security) -> _Kept:
        kept = self._kept.get(child)
        if kept is not None and (kept.address, kept.security) == (address, security):
            return kept
        # Stored before any await: two checks of one child at once never
        # make two channels.
        made = _Kept(address, security, aio_channel(address, security))
        self._kept[child] = made
        if kept is not None:
            await kept.channel.close()
        return made

    async def _drop(self, child: object, kept: _Kept) -> None:
        # Only that channel: another check may have made the child a new one.
        if self._kept.get(child) is kept:
            del self._kept[child]
        await kept.channel.close()
