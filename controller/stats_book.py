"""Counters reported by every router, summed on demand, and what happened
over a recent window.

Each router reports its cumulative counters; a newer report replaces the older
one of the same reporter, so totals never count a request twice. Reports of a
router that went away stay: what it counted did happen. Beyond
``MAX_REPORTERS`` the least recently reporting routers are folded into one
sum of retired counters, so that reporters (every process with handles has
its own id) cannot grow the book without bound; a folded router that reports
again is counted twice from then on, which needs MAX_REPORTERS others in
between.

**Windows.** The book also keeps each reporter's reports of the last
``MAX_WINDOW_S`` seconds, stamped with the controller's clock when they
arrived, and the last one before. What happened in the window ``(now - s,
now]`` is, per reporter, the sum of the differences between consecutive
reports, starting from the last report at or before ``now - s``. A reporter
that restarted (its counters went down, or it says it started counting later
than before: ``ReportStatsRequest.counting_seconds``) counts from zero from
its first report after the restart. A reporter first seen inside the window
counts from zero if it started counting inside the window, else from its
first report (what it counted before the book saw it is not known: after a
controller restart, a window starts empty). Routers report about once a
second, so a window's edges are as sharp as that. Quantiles are interpolated
within histogram buckets (``turnout._internal.latency``).

Example::

    book = StatsBook()
    book.record("proxy", endpoints, counting_seconds=12.0)
    book.window("model", seconds=60).p99  # seconds, or None without requests
    book.window("model", "model-v2").requests
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from turnout._internal import latency
from turnout._internal.counters import sum_reports
from turnout._internal.latency import MAX_WINDOW_S, WINDOW_S, check_window
from turnout.v1 import controller_pb2 as pb

MAX_REPORTERS = 1024
# A reporter's start (report time less counting_seconds) moves by the delays
# of its reports; beyond this it restarted.
RESTART_SLACK_S = 1.0

_BUCKETS = len(latency.BUCKETS_S) + 1
# A tally of one endpoint and backend: requests, errors, then the end-to-end
# histogram's counts and the handler histogram's, flat so that differences
# and sums are one zip.
_REQUESTS, _ERRORS, _LATENCY, _HANDLER = 0, 1, 2, 2 + _BUCKETS
_WIDTH = 2 + 2 * _BUCKETS
Tally = tuple[int, ...]
_ZERO: Tally = (0,) * _WIDTH
# Key of the failures no backend took (NoBackend, NoReplica): backend "".
Key = tuple[str, str]


@dataclass(frozen=True)
class WindowStats:
    """An endpoint's (or one backend's) requests over a recent window.

    ``p50``..``p99`` are quantiles, in seconds, of the routers' end-to-end
    durations (from the whole request at the router to its answer);
    ``handler_p50``..``handler_p99`` those of the time replicas reported
    spending. Each is None when nothing was counted in the window.
    """

    seconds: float
    requests: int
    errors: int
    p50: float | None
    p95: float | None
    p99: float | None
    handler_p50: float | None
    handler_p95: float | None
    handler_p99: float | None

    @classmethod
    def of(cls, seconds: float, tally: Tally) -> WindowStats:
        total = tally[_LATENCY:_HANDLER]
        handler = tally[_HANDLER:]
        return cls(
            seconds,
            tally[_REQUESTS],
            tally[_ERRORS],
            latency.quantile(total, 0.5),
            latency.quantile(total, 0.95),
            latency.quantile(total, 0.99),
            latency.quantile(handler, 0.5),
            latency.quantile(handler, 0.95),
            latency.quantile(handler, 0.99),
        )


def _tallies(endpoints: Iterable[pb.EndpointStats]) -> dict[Key, Tally]:
    tallies: dict[Key, Tally] = {}
    for stats in endpoints:
        routed_errors = 0
        for backend, requests in stats.requests_by_backend.items():
            errors = stats.errors_by_backend.get(backend, 0)
            routed_errors += errors
            tallies[(stats.endpoint, backend)] = (
                requests,
                errors,
                *_counts(stats.latency_by_backend, backend),
                *_counts(stats.handler_latency_by_backend, backend),
            )
        unrouted = stats.errors - routed_errors
        if unrouted > 0:
            tallies[(stats.endpoint, "")] = (0, unrouted, *([0] * (2 * _BUCKETS)))
    return tallies


def _counts(histograms: Mapping[str, pb.LatencyHistogram], backend: str) -> Tally:
    # ``in`` first: reading a missing key of a protobuf map would add it.
    if backend not in histograms or not latency.fits(histograms[backend]):
        return (0,) * _BUCKETS
    return tuple(histograms[backend].counts)


def _sum(a: dict[Key, Tally], b: dict[Key, Tally]) -> dict[Key, Tally]:
    """``a + b`` key by key."""
    out = dict(a)
    for key, tally in b.items():
        before = out.get(key)
        out[key] = tally if before is None else _total([before, tally])
    return out


def _total(tallies: Iterable[Tally]) -> Tally:
    return tuple(sum(column) for column in zip(_ZERO, *tallies, strict=True))


def _went_down(newer: dict[Key, Tally], older: dict[Key, Tally]) -> bool:
    """Whether any count of ``older`` is higher in it than in ``newer`` (or
    gone): the reporter's counters started again from zero."""
    for key, before in older.items():
        now = newer.get(key)
        if now is None or any(b > n for b, n in zip(before, now, strict=True)):
            return True
    return False


class _Timeline:
    """One reporter's reports of the last ``MAX_WINDOW_S`` seconds (and the
    last one before), as running totals that never go down: when the
    reporter restarts, what its previous run counted last is carried into
    the totals, so what happened between any two reports is one difference.
    """

    def __init__(self) -> None:
        self._times: list[float] = []
        self._totals: list[dict[Key, Tally]] = []
        # When the reporter of the first report kept started counting (None:
        # not said), for a window that begins before it.
        self._first_started: float | None = None
        self._last: dict[Key, Tally] = {}
        self._last_started: float | None = None
        self._carried: dict[Key, Tally] = {}
        self.keys: set[Key] = set()

    def record(self, at: float, started: float | None, tallies: dict[Key, Tally]) -> None:
        if self._times and self._restarted(started, tallies):
            self._carried = _sum(self._carried, self._last)
        if not self._times:
            self._first_started = started
        self._times.append(at)
        self._totals.append(_sum(self._carried, tallies))
        self._last, self._last_started = tallies, started
        self.keys = set(tallies)
        self._prune(at)

    def _restarted(self, started: float | None, tallies: dict[Key, Tally]) -> bool:
        before = self._last_started
        if started is not None and before is not None and started > before + RESTART_SLACK_S:
            return True
        return _went_down(tallies, self._last)

    def _prune(self, now: float) -> None:
        # Keep the last report at or before the longest window's start.
        drop = bisect_right(self._times, now - MAX_WINDOW_S) - 1
        if drop > 0:
            del self._times[:drop], self._totals[:drop]
            self._first_started = None

    def since(self, start: float, now: float, endpoint: str | None = None) -> dict[Key, Tally]:
        """What the reporter counted after ``start`` (of ``endpoint`` only, if given)."""
        self._prune(now)
        if not self._times:
            return {}
        last = self._totals[-1]
        before = bisect_right(self._times, start) - 1
        if before >= 0:
            base = self._totals[before]
        elif self._first_started is not None and self._first_started > start:
            # First seen inside the window, and it started counting inside it.
            base = {}
        else:
            # First seen inside the window; what it counted before is not known.
            base = self._totals[0]
        return {
            key: tuple(x - y for x, y in zip(tally, base.get(key, _ZERO), strict=True))
            for key, tally in last.items()
            if endpoint is None or key[0] == endpoint
        }


class StatsBook:
    def __init__(
        self, max_reporters: int = MAX_REPORTERS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # Least recently reported first.
        self._reports: dict[str, list[pb.EndpointStats]] = {}
        self._retired: list[pb.EndpointStats] = []
        self._max_reporters = max_reporters
        self._clock = clock
        # Each reporter's recent reports (see the module's docstring).
        self._timelines: dict[str, _Timeline] = {}

    def record(
        self,
        reporter_id: str,
        endpoints: list[pb.EndpointStats],
        counting_seconds: float = 0.0,
    ) -> None:
        """A reporter's cumulative counters, counting for ``counting_seconds``
        (0 = not said)."""
        self._reports.pop(reporter_id, None)
        self._reports[reporter_id] = endpoints
        now = self._clock()
        started = now - counting_seconds if counting_seconds > 0 else None
        timeline = self._timelines.get(reporter_id)
        if timeline is None:
            timeline = self._timelines[reporter_id] = _Timeline()
        timeline.record(now, started, _tallies(endpoints))
        while len(self._reports) > self._max_reporters:
            oldest_id = next(iter(self._reports))
            oldest = self._reports.pop(oldest_id)
            self._timelines.pop(oldest_id, None)
            self._retired = sum_reports([self._retired, oldest])

    def totals(self) -> list[pb.EndpointStats]:
        return sum_reports([self._retired, *self._reports.values()])

    def window(
        self, endpoint: str, backend: str | None = None, seconds: float = WINDOW_S
    ) -> WindowStats:
        """What ``endpoint`` (or only its ``backend``) answered over the last
        ``seconds`` (at most ``MAX_WINDOW_S``), summed over every router:
        requests, errors and latency quantiles (None without requests).

        Example::

            recent = book.window("model", "model-v2", seconds=30)
            if recent.requests and recent.p99 is not None and recent.p99 > 0.2:
                ...
        """
        seconds = check_window(seconds)
        picked = [
            tally
            for (_, taker), tally in self._window_totals(seconds, endpoint).items()
            if backend is None or taker == backend
        ]
        return WindowStats.of(seconds, _total(picked))

    def windows(self, seconds: float = WINDOW_S) -> list[tuple[str, str, WindowStats]]:
        """Every endpoint's window (backend "") and each of its backends', for
        every endpoint and backend that any router still reports, sorted."""
        seconds = check_window(seconds)
        totals = self._window_totals(seconds)
        for key in self._known_keys():
            totals.setdefault(key, _ZERO)
        by_endpoint: dict[str, list[Tally]] = {}
        out: list[tuple[str, str, WindowStats]] = []
        for (endpoint, backend), tally in totals.items():
            by_endpoint.setdefault(endpoint, []).append(tally)
            if backend:
                out.append((endpoint, backend, WindowStats.of(seconds, tally)))
        out += [(e, "", WindowStats.of(seconds, _total(t))) for e, t in by_endpoint.items()]
        out.sort(key=lambda item: (item[0], item[1]))
        return out

    def _known_keys(self) -> set[Key]:
        return {key for timeline in self._timelines.values() for key in timeline.keys}

    def _window_totals(self, seconds: float, endpoint: str | None = None) -> dict[Key, Tally]:
        now = self._clock()
        totals: dict[Key, Tally] = {}
        for timeline in self._timelines.values():
            totals = _sum(totals, timeline.since(now - seconds, now, endpoint))
        return totals
