"""``GET /-/metrics``: the router's counters and latency histograms in
Prometheus text format.

A custom collector reads the counters at scrape time, so they have one source
of truth (``RouterStats``, summed over the proxy's workers when there are
several: ``turnout.proxy.workers``), and the registry is the app's own (no
module globals). The histograms are ``RouterStats``'s too: each request is
counted once, into one bucket, on its way out of the sender, and what a
scrape shows is the same numbers the controller gets for ``stat()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from turnout._internal import latency
from turnout.v1 import controller_pb2 as pb

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The bounds as Prometheus clients write them in `le` ("0.0001", "2.5", "+Inf").
_LE = [repr(b) for b in latency.BUCKETS_S] + ["+Inf"]

# A process's gauges: requests queued by backend, and in flight by backend
# and replica.
Gauges = tuple[dict[str, int], dict[tuple[str, str], int]]


@dataclass
class Counters:
    """What a scrape shows: the counters and histograms by endpoint, requests
    queued by backend, and requests in flight by backend and replica."""

    endpoints: list[pb.EndpointStats]
    queued: dict[str, int] = field(default_factory=dict)
    in_flight: dict[tuple[str, str], int] = field(default_factory=dict)

    def add_gauges(self, queued: dict[str, int], in_flight: dict[tuple[str, str], int]) -> None:
        """Add another process's gauges to these (a gauge of several workers
        is their sum)."""
        for backend, n in queued.items():
            self.queued[backend] = self.queued.get(backend, 0) + n
        for key, n in in_flight.items():
            self.in_flight[key] = self.in_flight.get(key, 0) + n


# Backend -> (replicas the controller wants, replicas routed to), from the
# routing snapshot this process serves.
ReplicaCounts = Callable[[], dict[str, tuple[int, int]]]


class RouterCollector(Collector):
    def __init__(
        self,
        counters: Callable[[], Counters],
        routes_version: Callable[[], int],
        replica_counts: ReplicaCounts | None = None,
    ) -> None:
        self._counters = counters
        self._routes_version = routes_version
        self._replica_counts = replica_counts

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
        durations = HistogramMetricFamily(
            "turnout_request_duration_seconds",
            "Seconds from the whole request at the proxy to its answer from the replica "
            "(waiting for a free replica, retries, the hop and the replica), "
            "by endpoint and backend.",
            labels=["endpoint", "backend"],
        )
        handler = HistogramMetricFamily(
            "turnout_handler_duration_seconds",
            "Seconds the replica spent on each request, as it reported, by endpoint and backend.",
            labels=["endpoint", "backend"],
        )
        counters = self._counters()
        for counts in counters.endpoints:
            endpoint = counts.endpoint
            for backend, n in sorted(counts.requests_by_backend.items()):
                requests.add_metric([endpoint, backend], n)
            errors.add_metric([endpoint], counts.errors)
            for shadow in counts.shadows:
                sent.add_metric([endpoint, shadow.backend], shadow.sent)
                for result in ("matched", "differed", "failed"):
                    compared.add_metric([endpoint, shadow.backend, result], getattr(shadow, result))
            for family, histograms in (
                (durations, counts.latency_by_backend),
                (handler, counts.handler_latency_by_backend),
            ):
                for backend, histogram in sorted(histograms.items()):
                    if latency.fits(histogram):
                        _add_histogram(family, [endpoint, backend], histogram)
        version = GaugeMetricFamily(
            "turnout_routes_version", "Version of the routing snapshot being served."
        )
        version.add_metric([], self._routes_version())
        queued = GaugeMetricFamily(
            "turnout_queued_requests",
            "Requests waiting for a free replica, by backend.",
            labels=["backend"],
        )
        for backend, count in sorted(counters.queued.items()):
            queued.add_metric([backend], count)
        in_flight = GaugeMetricFamily(
            "turnout_replica_in_flight_requests",
            "Requests the proxy sent to a replica and has no answer for yet, "
            "by backend and replica.",
            labels=["backend", "replica"],
        )
        for (backend, replica), count in sorted(counters.in_flight.items()):
            in_flight.add_metric([backend, replica], count)
        yield from (requests, errors, sent, compared, durations, handler, version, queued)
        yield in_flight
        if self._replica_counts is not None:
            yield from _replica_gauges(self._replica_counts())


def _replica_gauges(counts: dict[str, tuple[int, int]]) -> Iterator[Metric]:
    desired = GaugeMetricFamily(
        "turnout_backend_desired_replicas",
        "Replicas the controller wants for the backend (num_replicas, or the "
        "autoscaler's last decision).",
        labels=["backend"],
    )
    running = GaugeMetricFamily(
        "turnout_backend_running_replicas",
        "Replicas of the backend requests are routed to (RUNNING).",
        labels=["backend"],
    )
    for backend, (want, have) in sorted(counts.items()):
        if want:
            desired.add_metric([backend], want)
        running.add_metric([backend], have)
    yield from (desired, running)


def _add_histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: pb.LatencyHistogram
) -> None:
    buckets = list(zip(_LE, latency.cumulative(histogram.counts), strict=True))
    family.add_metric(labels, buckets, histogram.sum_seconds)


def registry_for(
    counters: Callable[[], Counters],
    routes_version: Callable[[], int],
    replica_counts: ReplicaCounts | None = None,
) -> CollectorRegistry:
    """A registry whose one collector reads ``counters()``,
    ``routes_version()`` and ``replica_counts()`` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(counters, routes_version, replica_counts))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
