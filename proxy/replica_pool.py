"""Channels to replicas, and the choice of replica for each request."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from turnout._grpc import CHANNEL_OPTIONS
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2_grpc

if TYPE_CHECKING:
    from turnout.v1.replica_pb2_grpc import ReplicaServiceAsyncStub

ChannelFactory = Callable[[str], grpc.aio.Channel]


def _insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


@dataclass(eq=False)
class ReplicaConn:
    """One replica as this proxy sees it: a channel and what is in flight on it."""

    replica_id: str
    address: str
    channel: grpc.aio.Channel | None = None
    stub: ReplicaServiceAsyncStub | None = None
    outstanding: int = field(default=0)


class ReplicaPool:
    """The replicas of every backend, with a pooled channel to each."""

    def __init__(self, channel_factory: ChannelFactory | None = None) -> None:
        self._factory = channel_factory
        self._backends: dict[str, list[ReplicaConn]] = {}
        self._by_address: dict[str, ReplicaConn] = {}

    def replicas(self, backend: str) -> list[ReplicaConn]:
        return self._backends.get(backend, [])

    def update(self, snapshot: pb.RoutingSnapshot) -> list[ReplicaConn]:
        """Follow a snapshot; returns the replicas that left (their channels to close).

        A replica that stays keeps its channel and its in-flight count.
        """
        backends: dict[str, list[ReplicaConn]] = {}
        by_address: dict[str, ReplicaConn] = {}
        for targets in snapshot.backends:
            conns = []
            for target in targets.replicas:
                conn = self._by_address.get(target.address) or by_address.get(target.address)
                if conn is None:
                    conn = ReplicaConn(replica_id=target.replica_id, address=target.address)
                    if self._factory is not None:
                        conn.channel = self._factory(target.address)
                        conn.stub = replica_pb2_grpc.ReplicaServiceStub(conn.channel)
                by_address[target.address] = conn
                conns.append(conn)
            backends[targets.tag] = conns
        gone = [c for a, c in self._by_address.items() if a not in by_address]
        self._backends = backends
        self._by_address = by_address
        return gone

    def pick(self, backend: str, rng: random.Random) -> ReplicaConn | None:
        """The replica with the fewest requests in flight from here (ties at random)."""
        conns = self._backends.get(backend)
        if not conns:
            return None
        if len(conns) == 1:
            return conns[0]
        least = min(c.outstanding for c in conns)
        return rng.choice([c for c in conns if c.outstanding == least])

    async def close(self) -> None:
        await close_channels(list(self._by_address.values()))
        self._backends = {}
        self._by_address = {}


async def close_channels(conns: list[ReplicaConn], grace: float | None = None) -> None:
    await asyncio.gather(
        *(c.channel.close(grace) for c in conns if c.channel is not None),
        return_exceptions=True,
    )


def default_pool() -> ReplicaPool:
    return ReplicaPool(_insecure_channel)
