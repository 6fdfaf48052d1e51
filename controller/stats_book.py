"""Counters reported by every router, summed on demand.

Each router reports its cumulative counters; a newer report replaces the older
one of the same reporter, so totals never count a request twice. Reports of a
router that went away stay: what it counted did happen. Beyond
``MAX_REPORTERS`` the least recently reporting routers are folded into one
sum of retired counters, so that reporters (every process with handles has
its own id) cannot grow the book without bound; a folded router that reports
again is counted twice from then on, which needs MAX_REPORTERS others in
between.
"""

from __future__ import annotations

from turnout._internal.counters import sum_reports
from turnout.v1 import controller_pb2 as pb

MAX_REPORTERS = 1024


class StatsBook:
    def __init__(self, max_reporters: int = MAX_REPORTERS) -> None:
        # Least recently reported first.
        self._reports: dict[str, list[pb.EndpointStats]] = {}
        self._retired: list[pb.EndpointStats] = []
        self._max_reporters = max_reporters

    def record(self, reporter_id: str, endpoints: list[pb.EndpointStats]) -> None:
        self._reports.pop(reporter_id, None)
        self._reports[reporter_id] = endpoints
        while len(self._reports) > self._max_reporters:
            oldest = self._reports.pop(next(iter(self._reports)))
            self._retired = sum_reports([self._retired, oldest])

    def totals(self) -> list[pb.EndpointStats]:
        return sum_reports([self._retired, *self._reports.values()])
