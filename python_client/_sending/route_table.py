"""Which endpoint answers a path or name, and which backend gets a request.

Built once per routing snapshot, then read on every request: lookups are a
dict access and a bisect, nothing is allocated per request.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Any

from turnout._internal.cors import CorsPolicy
from turnout.v1 import controller_pb2 as pb

_UNIT = float(2**64)


def stable_fraction(*parts: str) -> float:
    """A number in [0, 1) that depends only on ``parts``: the same in every
    process and every run (unlike ``hash()``), so affinity survives restarts."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _UNIT


@dataclass(frozen=True)
class EndpointRoute:
    name: str
    route: str
    # What the proxy accepts: the endpoint's methods, and HEAD where GET is one.
    methods: frozenset[str]
    # Value of the Allow header of a 405.
    allow: str
    backends: tuple[str, ...]
    # Running sums of the weights, for a weighted draw by bisection.
    cumulative: tuple[float, ...]
    traffic: dict[str, float]
    # (backend, proportion of requests copied to it)
    shadows: tuple[tuple[str, float], ...]
    # Seconds a request may take; 0 = no limit.
    request_timeout: float = 0.0
    # The endpoint's methods as the controller lists them (no implied HEAD).
    declared: tuple[str, ...] = ()
    # A WSGI/ASGI app: the route is a prefix, sent on as the app's SCRIPT_NAME.
    serves_app: bool = False
    # Cross-origin resource sharing the proxy answers; None = none.
    cors: CorsPolicy | None = None

    @classmethod
    def from_proto(cls, endpoint: pb.Endpoint) -> EndpointRoute:
        weighted = [(t.backend, t.weight) for t in endpoint.traffic if t.weight > 0]
        declared = tuple(endpoint.methods)
        # As Flask does: a route that answers GET answers HEAD (without a body).
        accepted = [*declared, "HEAD"] if "GET" in declared and "HEAD" not in declared else declared
        return cls(
            name=endpoint.name,
            route=endpoint.route,
            methods=frozenset(accepted),
            allow=", ".join(accepted),
            declared=declared,
            backends=tuple(b for b, _ in weighted),
            cumulative=tuple(itertools.accumulate(w for _, w in weighted)),
            traffic={t.backend: t.weight for t in endpoint.traffic},
            shadows=tuple((s.backend, s.proportion) for s in endpoint.shadows),
            request_timeout=endpoint.request_timeout,
            serves_app=endpoint.serves_app,
            cors=CorsPolicy.from_proto(endpoint.cors) if endpoint.HasField("cors") else None,
        )

    @property
    def script_name(self) -> str:
        """What an app sees as its SCRIPT_NAME: the route without a trailing "/"."""
        return self.route.rstrip("/")

    def choose_backend(self, rng: random.Random, shard_key: str = "") -> str | None:
        """A backend drawn by weight; None when the endpoint has no traffic.

        With a shard key the draw is a hash of the key instead of a random
        number, so a key keeps its backend while the weights stay the same.
        """
        if not self.backends:
            return None
        if len(self.backends) == 1:
            return self.backends[0]
        point = stable_fraction(self.name, shard_key) if shard_key else rng.random()
        index = bisect.bisect_right(self.cumulative, point * self.cumulative[-1])
        return self.backends[min(index, len(self.backends) - 1)]

    def choose_shadows(self, rng: random.Random) -> list[str]:
        """The shadow backends that get a copy of this request."""
        return [backend for backend, share in self.shadows if rng.random() < share]


class RouteTable:
    """The endpoints of one snapshot version, by route and by name."""

    def __init__(self, version: int, endpoints: list[EndpointRoute]) -> None:
        self.version = version
        self._by_name = {e.name: e for e in endpoints}
        self._by_route = {e.route: e for e in endpoints if e.route}
        # Routes of apps, which also serve the paths under them: longest first.
        self._prefixes = sorted(
            (e for e in endpoints if e.route and e.serves_app),
            key=lambda e: len(e.route),
            reverse=True,
        )

    @classmethod
    def empty(cls) -> RouteTable:
        return cls(0, [])

    @classmethod
    def from_snapshot(cls, snapshot: pb.RoutingSnapshot) -> RouteTable:
        return cls(snapshot.version, [EndpointRoute.from_proto(e) for e in snapshot.endpoints])

    def match(self, path: str) -> EndpointRoute | None:
        """The endpoint on exactly this HTTP path, else the app whose route is
        the longest prefix of it ("/api" serves "/api/x", not "/apix")."""
        exact = self._by_route.get(path)
        if exact is not None or not self._prefixes:
            return exact
        for endpoint in self._prefixes:
            prefix = endpoint.route.rstrip("/")
            if path.startswith(prefix + "/"):
                return endpoint
        return None

    def endpoint(self, name: str) -> EndpointRoute | None:
        return self._by_name.get(name)

    def describe(self) -> dict[str, Any]:
        """The JSON of ``GET /-/routing``: the version and each route's detail
        (``serves_app`` and ``cors`` only on routes that have them)."""
        return {
            "version": self.version,
            "routes": {
                path: {
                    "endpoint": r.name,
                    "methods": sorted(r.declared),
                    "traffic": r.traffic,
                    "shadows": dict(r.shadows),
                    # Only where set, so the plain shape stays as it was.
                    **({"serves_app": True} if r.serves_app else {}),
                    **({"cors": r.cors.to_dict()} if r.cors else {}),
                }
                for path, r in sorted(self._by_route.items())
            },
        }

    def ray_routes(self) -> dict[str, list[Any]]:
        """The JSON of ``GET /-/routes``, in Ray Serve's shape:
        ``{"/api": ["endpoint_name", ["GET", "POST"]]}``."""
        return {path: [r.name, list(r.declared)] for path, r in sorted(self._by_route.items())}
