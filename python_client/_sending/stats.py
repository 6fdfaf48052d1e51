"""Request and shadow-comparison counters of one router (the proxy, or the
handles of one process), with latency histograms, reported to the controller
and shown as metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterator
from typing import Literal

from turnout._internal.counters import EndpointCounts, ShadowCounts
from turnout._internal.latency import Histogram
from turnout.v1 import controller_pb2 as pb

Outcome = Literal["matched", "differed", "failed"]


def compare(primary: Hashable | None, shadow: Hashable | None) -> Outcome:
    """How a shadow's answer compares with the primary's (None: no answer, so
    nothing to compare)."""
    if primary is None or shadow is None:
        return "failed"
    return "matched" if shadow == primary else "differed"


class RouterStats:
    """Cumulative counters; safe to update from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, EndpointCounts] = {}
        # Bumped on every change, so a reporter can skip unchanged reports.
        self.changes = 0
        # When counting started, for ReportStatsRequest.counting_seconds.
        self._started = time.monotonic()

    def counting_seconds(self) -> float:
        """Seconds since these counters started from zero."""
        return time.monotonic() - self._started

    def _counts(self, endpoint: str) -> EndpointCounts:
        counts = self._endpoints.get(endpoint)
        if counts is None:
            counts = self._endpoints[endpoint] = EndpointCounts()
        return counts

    def answered(
        self,
        endpoint: str,
        backend: str,
        failed: bool,
        seconds: float | None = None,
        handler_seconds: float = 0.0,
    ) -> None:
        """A request ``backend`` took: ``seconds`` end to end (None: not
        measured), ``handler_seconds`` on the replica (0: not reported)."""
        with self._lock:
            counts = self._counts(endpoint)
            counts.requests_by_backend[backend] = counts.requests_by_backend.get(backend, 0) + 1
            counts.errors += failed
            if failed:
                counts.errors_by_backend[backend] = counts.errors_by_backend.get(backend, 0) + 1
            if seconds is not None:
                _histogram(counts.latency_by_backend, backend).observe(seconds)
            if handler_seconds > 0:
                _histogram(counts.handler_latency_by_backend, backend).observe(handler_seconds)
            self.changes += 1

    def failed_unrouted(self, endpoint: str) -> None:
        """A request that failed before any backend took it (no replica)."""
        with self._lock:
            self._counts(endpoint).errors += 1
            self.changes += 1

    def shadow_sent(self, endpoint: str, backend: str) -> None:
        with self._lock:
            shadows = self._counts(endpoint).shadows
            shadows.setdefault(backend, ShadowCounts()).sent += 1
            self.changes += 1

    def shadow_outcome(self, endpoint: str, backend: str, outcome: Outcome) -> None:
        with self._lock:
            counts = self._counts(endpoint).shadows.setdefault(backend, ShadowCounts())
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            self.changes += 1

    def items(self) -> Iterator[tuple[str, EndpointCounts]]:
        with self._lock:
            snapshot = [
                (
                    name,
                    EndpointCounts(
                        dict(c.requests_by_backend),
                        c.errors,
                        {b: ShadowCounts(**vars(s)) for b, s in c.shadows.items()},
                        dict(c.errors_by_backend),
                        {b: h.copy() for b, h in c.latency_by_backend.items()},
                        {b: h.copy() for b, h in c.handler_latency_by_backend.items()},
                    ),
                )
                for name, c in self._endpoints.items()
            ]
        return iter(snapshot)

    def to_proto(self) -> list[pb.EndpointStats]:
        return [
            pb.EndpointStats(
                endpoint=name,
                requests_by_backend=counts.requests_by_backend,
                errors=counts.errors,
                shadows=[
                    pb.ShadowStats(backend=backend, **vars(shadow))
                    for backend, shadow in counts.shadows.items()
                ],
                errors_by_backend=counts.errors_by_backend,
                latency_by_backend={b: h.to_proto() for b, h in counts.latency_by_backend.items()},
                handler_latency_by_backend={
                    b: h.to_proto() for b, h in counts.handler_latency_by_backend.items()
                },
            )
            for name, counts in self.items()
        ]


def _histogram(histograms: dict[str, Histogram], backend: str) -> Histogram:
    histogram = histograms.get(backend)
    if histogram is None:
        histogram = histograms[backend] = Histogram()
    return histogram
