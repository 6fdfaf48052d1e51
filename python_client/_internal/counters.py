"""The counters routers keep and report (``ReportStats``), and their sum.

Routers (``turnout._sending``) count; the controller adds up what they
report (``controller/stats_book.py``) and the proxy adds up its workers'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from turnout.v1 import controller_pb2 as pb

from .latency import Histogram, add_into


@dataclass
class ShadowCounts:
    sent: int = 0
    matched: int = 0
    differed: int = 0
    failed: int = 0


@dataclass
class EndpointCounts:
    requests_by_backend: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    shadows: dict[str, ShadowCounts] = field(default_factory=dict)
    # The failed ones among requests_by_backend.
    errors_by_backend: dict[str, int] = field(default_factory=dict)
    # How long the requests of requests_by_backend took, end to end as the
    # router saw them, and on the replica as it reported.
    latency_by_backend: dict[str, Histogram] = field(default_factory=dict)
    handler_latency_by_backend: dict[str, Histogram] = field(default_factory=dict)


def sum_reports(reports: Iterable[list[pb.EndpointStats]]) -> list[pb.EndpointStats]:
    """The counters of several routers added up, by endpoint (sorted by name)."""
    merged: dict[str, pb.EndpointStats] = {}
    shadows: dict[tuple[str, str], pb.ShadowStats] = {}
    for report in reports:
        for stats in report:
            total = merged.setdefault(stats.endpoint, pb.EndpointStats(endpoint=stats.endpoint))
            for backend, n in stats.requests_by_backend.items():
                total.requests_by_backend[backend] += n
            total.errors += stats.errors
            for backend, n in stats.errors_by_backend.items():
                total.errors_by_backend[backend] += n
            for backend, histogram in stats.latency_by_backend.items():
                add_into(total.latency_by_backend[backend], histogram)
            for backend, histogram in stats.handler_latency_by_backend.items():
                add_into(total.handler_latency_by_backend[backend], histogram)
            for shadow in stats.shadows:
                key = (stats.endpoint, shadow.backend)
                if key not in shadows:
                    shadows[key] = total.shadows.add(backend=shadow.backend)
                summed = shadows[key]
                summed.sent += shadow.sent
                summed.matched += shadow.matched
                summed.differed += shadow.differed
                summed.failed += shadow.failed
    return [merged[name] for name in sorted(merged)]
