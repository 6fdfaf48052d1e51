"""Counters reported by every router, summed on demand.

Each router reports its cumulative counters; a newer report replaces the older
one of the same reporter, so totals never count a request twice. Reports of a
router that went away stay: what it counted did happen.
"""

from __future__ import annotations

from turnout.proxy.stats import sum_reports
from turnout.v1 import controller_pb2 as pb


class StatsBook:
    def __init__(self) -> None:
        self._reports: dict[str, list[pb.EndpointStats]] = {}

    def record(self, reporter_id: str, endpoints: list[pb.EndpointStats]) -> None:
        self._reports[reporter_id] = endpoints

    def totals(self) -> list[pb.EndpointStats]:
        return sum_reports(self._reports.values())
