"""``GET /-/metrics``: the router's counters in Prometheus text format.

A custom collector reads the counters at scrape time, so they have one source
of truth (``RouterStats``, summed over the proxy's workers when there are
several: ``turnout.proxy.workers``), and the registry is the app's own (no
module globals).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from turnout.v1 import controller_pb2 as pb

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# What a scrape shows: the counters by endpoint, and requests queued by backend.
Counters = tuple[list[pb.EndpointStats], dict[str, int]]


class RouterCollector(Collector):
    def __init__(self, counters: Callable[[], Counters], routes_version: Callable[[], int]) -> None:
        self._counters = counters
        self._routes_version = routes_version

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
        endpoints, queued_by_backend = self._counters()
        for counts in endpoints:
            endpoint = counts.endpoint
            for backend, n in sorted(counts.requests_by_backend.items()):
                requests.add_metric([endpoint, backend], n)
            errors.add_metric([endpoint], counts.errors)
            for shadow in counts.shadows:
                sent.add_metric([endpoint, shadow.backend], shadow.sent)
                for result in ("matched", "differed", "failed"):
                    compared.add_metric([endpoint, shadow.backend, result], getattr(shadow, result))
        version = GaugeMetricFamily(
            "turnout_routes_version", "Version of the routing snapshot being served."
        )
        version.add_metric([], self._routes_version())
        queued = GaugeMetricFamily(
            "turnout_queued_requests",
            "Requests waiting for a free replica, by backend.",
            labels=["backend"],
        )
        for backend, count in sorted(queued_by_backend.items()):
            queued.add_metric([backend], count)
        yield from (requests, errors, sent, compared, version, queued)


def registry_for(
    counters: Callable[[], Counters], routes_version: Callable[[], int]
) -> CollectorRegistry:
    """A registry whose one collector reads ``counters()`` and
    ``routes_version()`` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(counters, routes_version))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
