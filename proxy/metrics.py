"""``GET /-/metrics``: the router's counters in Prometheus text format.

A custom collector reads ``RouterStats`` at scrape time, so the counters have
one source of truth, and the registry is the app's own (no module globals).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .stats import RouterStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterCollector(Collector):
    def __init__(
        self,
        stats: RouterStats,
        routes_version: Callable[[], int],
        queued: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._stats = stats
        self._routes_version = routes_version
        self._queued = queued

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "turnout_requests", "Requests answered, by endpoint and backend.",
            labels=["endpoint", "backend"],
        )  # fmt: skip
        errors = CounterMetricFamily(
            "turnout_request_errors",
            "Requests that failed (HTTP status >= 500 or no replica), by endpoint.",
            labels=["endpoint"],
        )
        sent = CounterMetricFamily(
            "turnout_shadow_requests", "Copies sent to shadow backends.",
            labels=["endpoint", "backend"],
        )  # fmt: skip
        compared = CounterMetricFamily(
            "turnout_shadow_comparisons",
            "Shadow answers compared with the primary's: matched, differed or failed.",
            labels=["endpoint", "backend", "result"],
        )
        for endpoint, counts in self._stats.items():
            for backend, n in counts.requests_by_backend.items():
                requests.add_metric([endpoint, backend], n)
            errors.add_metric([endpoint], counts.errors)
            for backend, shadow in counts.shadows.items():
                sent.add_metric([endpoint, backend], shadow.sent)
                for result in ("matched", "differed", "failed"):
                    compared.add_metric([endpoint, backend, result], getattr(shadow, result))
        version = GaugeMetricFamily(
            "turnout_routes_version", "Version of the routing snapshot being served."
        )
        version.add_metric([], self._routes_version())
        queued = GaugeMetricFamily(
            "turnout_queued_requests",
            "Requests waiting for a free replica, by backend.",
            labels=["backend"],
        )
        for backend, count in sorted(self._queued().items()):
            queued.add_metric([backend], count)
        yield from (requests, errors, sent, compared, version, queued)


def registry_for(
    stats: RouterStats,
    routes_version: Callable[[], int],
    queued: Callable[[], dict[str, int]] = dict,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(stats, routes_version, queued))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
