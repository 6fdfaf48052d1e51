"""Connections to replicas, and the choice of replica for each request."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from turnout._internal.backend_fields import SenderLimits, sender_limits
from turnout.v1 import controller_pb2 as pb

from .replica_link import ReplicaLink
from .route_table import stable_fraction


@dataclass(eq=False)
class ReplicaConn:
    """One replica as a sender sees it: its link and what is in flight on it."""

    replica_id: str
    address: str
    # The node it runs on (the snapshot's ReplicaTarget.node; "" = the controller's machine).
    node: str = ""
    # None only where the pool was made without a way to connect (tests of the choice).
    link: ReplicaLink | None = None
    outstanding: int = 0

    async def close(self, grace: float | None) -> None:
        """Close the link, letting calls in flight finish within ``grace``
        seconds (None = at once)."""
        if self.link is not None:
            await self.link.close(grace)


# Opens the link to the replica at an address.
Connect = Callable[[str], ReplicaLink]


class ReplicaPool:
    """The replicas of every backend, with one connection to each.

    ``prefer_node``: a node id (a proxy's own, on a Ray cluster); ``pick``
    then takes a replica on that node while one there has room, and any
    other only when none has. "" (the default) = no preference.

    Example::

        pool = ReplicaPool(prefer_node="node-a")
    """

    def __init__(self, connect: Connect | None = None, prefer_node: str = "") -> None:
        self._connect = connect
        self.prefer_node = prefer_node
        self._backends: dict[str, list[ReplicaConn]] = {}
        self._by_address: dict[str, ReplicaConn] = {}
        self._limits: dict[str, SenderLimits] = {}

    def limits(self, backend: str) -> SenderLimits:
        return self._limits.get(backend) or SenderLimits()

    def replicas(self, backend: str) -> list[ReplicaConn]:
        return self._backends.get(backend, [])

    def update(self, snapshot: pb.RoutingSnapshot) -> list[ReplicaConn]:
        """Follow a snapshot; returns the replicas that left (their channels to close).

        A replica that stays keeps its connection and its in-flight count.
        """
        backends: dict[str, list[ReplicaConn]] = {}
        by_address: dict[str, ReplicaConn] = {}
        self._limits = {t.tag: sender_limits(t) for t in snapshot.backends}
        for targets in snapshot.backends:
            conns = []
            for target in targets.replicas:
                conn = self._by_address.get(target.address) or by_address.get(target.address)
                if conn is None:
                    link = None if self._connect is None else self._connect(target.address)
                    conn = ReplicaConn(target.replica_id, target.address, target.node, link)
                by_address[target.address] = conn
                conns.append(conn)
            backends[targets.tag] = conns
        gone = [c for a, c in self._by_address.items() if a not in by_address]
        self._backends = backends
        self._by_address = by_address
        return gone

    def pick(
        self,
        backend: str,
        rng: random.Random,
        shard_key: str = "",
        exclude: frozenset[str] = frozenset(),
    ) -> ReplicaConn | None:
        """The replica for one request, or None when every replica is full
        (``max_concurrent_queries`` in flight from this sender) or there is none.

        Without a shard key: the one with the fewest requests in flight (ties
        at random). With one: rendezvous hashing, so a key stays on its replica
        while the replica set is unchanged, and adding a replica moves only the
        keys that the new one wins. ``exclude`` names replicas not to use (ones
        a retry already failed on).

        With ``prefer_node`` (and no shard key: a key stays on its replica,
        wherever that is), the choice is made among the replicas on that node
        that have room, if there are any: crossing to another node costs a
        network hop, but a full or missing local replica does not hold a
        request back while another node has room.
        """
        conns = self._backends.get(backend)
        if exclude and conns:
            conns = [c for c in conns if c.replica_id not in exclude]
        if not conns:
            return None
        limit = self.limits(backend).max_concurrent_queries
        if shard_key:
            pinned = max(conns, key=lambda c: stable_fraction(shard_key, backend, c.replica_id))
            return pinned if pinned.outstanding < limit else None
        if self.prefer_node:
            local = [c for c in conns if c.node == self.prefer_node and c.outstanding < limit]
            if local:
                conns = local
        least = min(c.outstanding for c in conns)
        if least >= limit:
            return None
        if len(conns) == 1:
            return conns[0]
        return rng.choice([c for c in conns if c.outstanding == least])

    def in_flight(self) -> dict[tuple[str, str], int]:
        """Requests sent and not answered yet, by backend and replica id, for
        every replica of the snapshot (zeros included)."""
        return {
            (backend, conn.replica_id): conn.outstanding
            for backend, conns in self._backends.items()
            for conn in conns
        }

    def clear(self) -> list[ReplicaConn]:
        """Forget every replica; returns them so their channels can be closed."""
        conns = list(self._by_address.values())
        self._backends = {}
        self._by_address = {}
        return conns
