"""Traffic policy in one place: endpoint → backend → replica, plus shadows.

Used by the HTTP proxy and by Python handles, so both follow the same
snapshot the same way. Knows nothing of HTTP, asyncio or threads.
"""

from __future__ import annotations

import random
from typing import Generic

from turnout.v1 import controller_pb2 as pb

from .replica_pool import Connect, ReplicaConn, ReplicaPool, Stub
from .route_table import EndpointRoute, RouteTable
from .stats import RouterStats


class Router(Generic[Stub]):
    def __init__(self, connect: Connect[Stub] | None = None) -> None:
        self.table = RouteTable.empty()
        self.pool: ReplicaPool[Stub] = ReplicaPool(connect)
        self.stats = RouterStats()
        self.rng = random.Random()

    def apply(self, snapshot: pb.RoutingSnapshot) -> list[ReplicaConn[Stub]]:
        """Follow a new snapshot; returns the replicas that left it."""
        gone = self.pool.update(snapshot)
        self.table = RouteTable.from_snapshot(snapshot)
        return gone

    def choose(
        self, route: EndpointRoute, shard_key: str = ""
    ) -> tuple[str | None, ReplicaConn[Stub] | None]:
        """The backend (by weight) and its replica for one request."""
        backend = route.choose_backend(self.rng, shard_key)
        if backend is None:
            return None, None
        return backend, self.pool.pick(backend, self.rng, shard_key)

    def shadow_targets(self, route: EndpointRoute) -> list[tuple[str, ReplicaConn[Stub] | None]]:
        """The shadow backends that get a copy of this request, with a replica each
        (None when the shadow backend has no running replica)."""
        return [
            (backend, self.pool.pick(backend, self.rng))
            for backend in route.choose_shadows(self.rng)
        ]
