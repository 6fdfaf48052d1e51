"""Counters reported by every router, summed on demand.

Each router reports its cumulative counters; a newer report replaces the older
one of the same reporter, so totals never count a request twice. Reports of a
router that went away stay: what it counted did happen.
"""

from __future__ import annotations

from turnout.v1 import controller_pb2 as pb


class StatsBook:
    def __init__(self) -> None:
        self._reports: dict[str, list[pb.EndpointStats]] = {}

    def record(self, reporter_id: str, endpoints: list[pb.EndpointStats]) -> None:
        self._reports[reporter_id] = endpoints

    def totals(self) -> list[pb.EndpointStats]:
        merged: dict[str, pb.EndpointStats] = {}
        shadows: dict[tuple[str, str], pb.ShadowStats] = {}
        for report in self._reports.values():
            for stats in report:
                total = merged.setdefault(stats.endpoint, pb.EndpointStats(endpoint=stats.endpoint))
                for backend, n in stats.requests_by_backend.items():
                    total.requests_by_backend[backend] += n
                total.errors += stats.errors
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
