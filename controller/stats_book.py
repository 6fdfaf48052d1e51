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
from collections import deque
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


@dataclass(frozen=True)
class _Report:
    at: float
    # When the reporter started counting, on the book's clock; None = not said.
    started: float | None
    tallies: dict[Key, Tally]


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


def _add(into: dict[Key, list[int]], tallies: dict[Key, Tally]) -> None:
    for key, tally in tallies.items():
        total = into.setdefault(key, [0] * _WIDTH)
        for i, n in enumerate(tally):
            total[i] += n


def _difference(newer: dict[Key, Tally], older: dict[Key, Tally]) -> dict[Key, Tally] | None:
    """``newer - older`` key by key; None when a count went down (a restart)."""
    zero = (0,) * _WIDTH
    out: dict[Key, Tally] = {}
    for key, tally in newer.items():
        before = older.get(key, zero)
        delta = tuple(a - b for a, b in zip(tally, before, strict=True))
        if min(delta) < 0:
            return None
        out[key] = delta
    if any(key not in newer for key in older):
        return None
    return out


def _restarted(newer: _Report, older: _Report) -> bool:
    if newer.started is None or older.started is None:
        return False
    return newer.started > older.started + RESTART_SLACK_S


class StatsBook:
    def __init__(
        self, max_reporters: int = MAX_REPORTERS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # Least recently reported first.
        self._reports: dict[str, list[pb.EndpointStats]] = {}
        self._retired: list[pb.EndpointStats] = []
        self._max_reporters = max_reporters
        self._clock = clock
        # Each reporter's recent reports, oldest first (see the module's docstring).
        self._history: dict[str, deque[_Report]] = {}

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
        history = self._history.pop(reporter_id, None) or deque()
        history.append(_Report(now, started, _tallies(endpoints)))
        self._history[reporter_id] = history
        _prune(history, now)
        while len(self._reports) > self._max_reporters:
            oldest_id = next(iter(self._reports))
            oldest = self._reports.pop(oldest_id)
            self._history.pop(oldest_id, None)
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
        totals = self._window_totals(seconds)
        tally = [0] * _WIDTH
        for (name, taker), counts in totals.items():
            if name != endpoint or (backend is not None and taker != backend):
                continue
            for i, n in enumerate(counts):
                tally[i] += n
        return WindowStats.of(seconds, tuple(tally))

    def windows(self, seconds: float = WINDOW_S) -> list[tuple[str, str, WindowStats]]:
        """Every endpoint's window (backend "") and each of its backends', for
        every endpoint and backend that any router still reports, sorted."""
        seconds = check_window(seconds)
        totals = self._window_totals(seconds)
        for key in self._known_keys():
            totals.setdefault(key, [0] * _WIDTH)
        by_endpoint: dict[str, list[int]] = {}
        out: list[tuple[str, str, WindowStats]] = []
        for (endpoint, backend), counts in sorted(totals.items()):
            whole = by_endpoint.setdefault(endpoint, [0] * _WIDTH)
            for i, n in enumerate(counts):
                whole[i] += n
            if backend:
                out.append((endpoint, backend, WindowStats.of(seconds, tuple(counts))))
        out += [(e, "", WindowStats.of(seconds, tuple(t))) for e, t in by_endpoint.items()]
        out.sort(key=lambda item: (item[0], item[1]))
        return out

    def _known_keys(self) -> set[Key]:
        return {key for h in self._history.values() for key in h[-1].tallies}

    def _window_totals(self, seconds: float) -> dict[Key, list[int]]:
        now = self._clock()
        start = now - seconds
        totals: dict[Key, list[int]] = {}
        for history in self._history.values():
            _prune(history, now)
            _add(totals, _since(history, start))
        return totals


def _since(history: deque[_Report], start: float) -> dict[Key, Tally]:
    """What one reporter counted after ``start``."""
    counted: dict[Key, list[int]] = {}
    previous: _Report | None = None
    for report in history:
        if report.at <= start:
            previous = report
            continue
        if previous is None:
            # First seen inside the window: from zero only if it started in it.
            if report.started is not None and report.started > start:
                _add(counted, report.tallies)
        else:
            delta = None
            if not _restarted(report, previous):
                delta = _difference(report.tallies, previous.tallies)
            # A restart counts from zero: all of the new run's counts are new.
            _add(counted, report.tallies if delta is None else delta)
        previous = report
    return {key: tuple(tally) for key, tally in counted.items()}


def _prune(history: deque[_Report], now: float) -> None:
    """Drop reports no window can need: all but the last one older than
    ``MAX_WINDOW_S`` (a window's starting point)."""
    cutoff = now - MAX_WINDOW_S
    while len(history) > 1 and history[1].at <= cutoff:
        history.popleft()
