"""Request and shadow-comparison counters of one router (the proxy, or the
handles of one process), with latency histograms, reported to the controller
and shown as metrics."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Hashable, Iterator
from typing import Literal

from turnout._internal.counters import EndpointCounts, ShadowCounts
from turnout._internal.latency import Histogram
from turnout.v1 import controller_pb2 as pb

Outcome = Literal["matched", "differed", "failed"]

# Answers ``RouterStats`` holds before counting them in: at most about 100 KiB.
_PENDING_MAX = 1024


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
        # Answers not counted in yet: ``answered`` is on every request's path,
        # and a tuple appended to a deque (thread-safe, no lock) costs a tenth
        # of taking the lock and filling two histograms. They are counted in
        # when the counters are read, or once ``_PENDING_MAX`` wait.
        self._pending: collections.deque[tuple[str, str, bool, float | None, float]] = (
            collections.deque()
        )
        self._changes = 0
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

    @property
    def changes(self) -> int:
        """Bumped on every change, so a reporter can skip unchanged reports."""
        return self._changes + len(self._pending)

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
        pending = self._pending
        pending.append((endpoint, backend, failed, seconds, handler_seconds))
        if len(pending) >= _PENDING_MAX:
            with self._lock:
                self._count_pending()

    def _count_pending(self) -> None:
        """Count the pending answers in; the caller holds the lock."""
        # Taken one by one: another thread may append while this counts. Counted
        # as changes first, so ``changes`` never reads lower than it will be.
        pending = self._pending
        taken = len(pending)
        self._changes += taken
        for _ in range(taken):
            endpoint, backend, failed, seconds, handler_seconds = pending.popleft()
            counts = self._counts(endpoint)
            counts.requests_by_backend[backend] = counts.requests_by_backend.get(backend, 0) + 1
            if failed:
                counts.errors += 1
                counts.errors_by_backend[backend] = counts.errors_by_backend.get(backend, 0) + 1
            if seconds is not None:
                _histogram(counts.latency_by_backend, backend).observe(seconds)
            if handler_seconds > 0:
                _histogram(counts.handler_latency_by_backend, backend).observe(handler_seconds)

    def failed_unrouted(self, endpoint: str) -> None:
        """A request that failed before any backend took it (no replica)."""
        with self._lock:
            self._counts(endpoint).errors += 1
            self._changes += 1

    def shadow_sent(self, endpoint: str, backend: str) -> None:
        with self._lock:
            shadows = self._counts(endpoint).shadows
            shadows.setdefault(backend, ShadowCounts()).sent += 1
            self._changes += 1

    def shadow_outcome(self, endpoint: str, backend: str, outcome: Outcome) -> None:
        with self._lock:
            counts = self._counts(endpoint).shadows.setdefault(backend, ShadowCounts())
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            self._changes += 1

    def items(self) -> Iterator[tuple[str, EndpointCounts]]:
        with self._lock:
            self._count_pending()
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
