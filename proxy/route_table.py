"""Which endpoint answers a path, and which backend gets a request.

Built once per routing snapshot, then read on every request: lookups are a
dict access and a bisect, nothing is allocated per request.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Any

from turnout.v1 import controller_pb2 as pb


@dataclass(frozen=True)
class EndpointRoute:
    name: str
    route: str
    methods: frozenset[str]
    # Value of the Allow header of a 405.
    allow: str
    backends: tuple[str, ...]
    # Running sums of the weights, for a weighted draw by bisection.
    cumulative: tuple[float, ...]
    traffic: dict[str, float]

    @classmethod
    def from_proto(cls, endpoint: pb.Endpoint) -> EndpointRoute:
        weighted = [(t.backend, t.weight) for t in endpoint.traffic if t.weight > 0]
        return cls(
            name=endpoint.name,
            route=endpoint.route,
            methods=frozenset(endpoint.methods),
            allow=", ".join(endpoint.methods),
            backends=tuple(b for b, _ in weighted),
            cumulative=tuple(itertools.accumulate(w for _, w in weighted)),
            traffic={t.backend: t.weight for t in endpoint.traffic},
        )

    def choose_backend(self, rng: random.Random) -> str | None:
        """A backend drawn by weight; None when the endpoint has no traffic."""
        if not self.backends:
            return None
        if len(self.backends) == 1:
            return self.backends[0]
        point = rng.random() * self.cumulative[-1]
        index = bisect.bisect_right(self.cumulative, point)
        return self.backends[min(index, len(self.backends) - 1)]


class RouteTable:
    """Exact-match routes of one snapshot version."""

    def __init__(self, version: int, routes: dict[str, EndpointRoute]) -> None:
        self.version = version
        self._routes = routes

    @classmethod
    def empty(cls) -> RouteTable:
        return cls(0, {})

    @classmethod
    def from_snapshot(cls, snapshot: pb.RoutingSnapshot) -> RouteTable:
        routes = {e.route: EndpointRoute.from_proto(e) for e in snapshot.endpoints if e.route}
        return cls(snapshot.version, routes)

    def match(self, path: str) -> EndpointRoute | None:
        return self._routes.get(path)

    def describe(self) -> dict[str, Any]:
        """The JSON of ``GET /-/routes``."""
        return {
            "version": self.version,
            "routes": {
                path: {
                    "endpoint": r.name,
                    "methods": sorted(r.methods),
                    "traffic": r.traffic,
                }
                for path, r in sorted(self._routes.items())
            },
        }
