"""Traffic policy in one place: endpoint → backend → replica, plus shadows.

Used by the one sender of the HTTP proxy and of Python handles, so both
follow the same snapshot the same way. Knows nothing of HTTP or asyncio.
"""

from __future__ import annotations

import random

from turnout.v1 import controller_pb2 as pb

from .replica_pool import Connect, ReplicaConn, ReplicaPool
from .route_table import EndpointRoute, RouteTable
from .stats import RouterStats


class Router:
    def __init__(self, connect: Connect | None = None) -> None:
        self.table = RouteTable.empty()
        self.pool: ReplicaPool = ReplicaPool(connect)
        self.stats = RouterStats()
        self.rng = random.Random()

    def apply(self, snapshot: pb.RoutingSnapshot) -> list[ReplicaConn]:
        """Follow a new snapshot; returns the replicas that left it."""
        gone = self.pool.update(snapshot)
        self.table = RouteTable.from_snapshot(snapshot)
        return gone

    def shadow_targets(self, route: EndpointRoute) -> list[tuple[str, ReplicaConn | None]]:
        """The shadow backends that get a copy of this request, with a replica each
        (None when the shadow backend has no running replica)."""
        return [
            (backend, self.pool.pick(backend, self.rng))
            for backend in route.choose_shadows(self.rng)
        ]
