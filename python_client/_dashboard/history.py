"""What the charts draw: each endpoint's recent request rate, error rate and
latency quantiles, one point per sample, for the last minutes."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# One point every SAMPLE_S seconds, each over the SAMPLE_S seconds before it
# (GetStats' window), so points never overlap; ten minutes of them.
SAMPLE_S = 5.0
KEEP_S = 600.0


@dataclass(frozen=True)
class Point:
    """One endpoint over one sample: rates per second, quantiles in seconds
    (None when nothing was answered in it)."""

    t: float
    requests_per_s: float
    errors_per_s: float
    p50: float | None
    p95: float | None
    p99: float | None


class History:
    """Points per endpoint, the oldest dropped after ``keep`` seconds.

    Example::

        history = History()
        history.add(time.time(), 5.0, client.endpoint_stats(window=5.0), ["model"])
        history.series(["model"])["model"][-1]["requests_per_s"]
    """

    def __init__(self, keep: float = KEEP_S) -> None:
        self._keep = keep
        self._points: dict[str, deque[Point]] = {}

    def add(
        self,
        t: float,
        window_s: float,
        stats: Mapping[str, Mapping[str, Any]],
        endpoints: Iterable[str],
    ) -> None:
        """Record ``endpoint_stats(window=window_s)`` at time ``t`` for the
        endpoints that exist (stats keep deleted ones, the charts do not)."""
        alive = set(endpoints)
        for name in list(self._points):
            if name not in alive:
                del self._points[name]
        for name in alive:
            recent = stats.get(name, {}).get("recent", {})
            point = Point(
                t=t,
                requests_per_s=recent.get("requests", 0) / window_s,
                errors_per_s=recent.get("errors", 0) / window_s,
                p50=recent.get("p50"),
                p95=recent.get("p95"),
                p99=recent.get("p99"),
            )
            points = self._points.setdefault(name, deque())
            points.append(point)
            while points and points[0].t < t - self._keep:
                points.popleft()

    def series(self, endpoints: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The points of each endpoint, oldest first, as JSON-ready dicts."""
        return {name: [asdict(p) for p in self._points.get(name, ())] for name in endpoints}
