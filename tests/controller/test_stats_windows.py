"""Recent-window numbers of the stats book: differences of cumulative reports
per reporter, restarts, reporters first seen late, quantiles from buckets."""

from __future__ import annotations

import pytest

from turnout._internal.errors import InvalidArgumentError
from turnout._internal.latency import MAX_WINDOW_S
from turnout._sending.stats import RouterStats
from turnout.controller.stats_book import StatsBook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(
    stats: RouterStats, n: int, seconds: float, backend: str = "v1", failed: bool = False
) -> None:
    for _ in range(n):
        stats.answered("e", backend, failed, seconds, handler_seconds=seconds / 2)


def test_a_window_counts_only_what_happened_in_it() -> None:
    clock = Clock()
    book = StatsBook(clock=clock)
    proxy = RouterStats()
    answer(proxy, 100, 0.003)
    book.record("proxy", proxy.to_proto(), counting_seconds=500)
    clock.now += 100
    answer(proxy, 10, 0.2, failed=True)
    book.record("proxy", proxy.to_proto(), counting_seconds=600)
    recent = book.window("e", seconds=60)
    assert (recent.requests, recent.errors) == (10, 10)
    assert recent.p50 is not None and 0.1 < recent.p50 <= 0.25
    assert recent.handler_p50 is not None and 0.05 < recent.handler_p50 <= 0.1
    whole = book.window("e", seconds=MAX_WINDOW_S)
    # The first report is the reporter's start of counting in the book: it
    # began long before the window, so its 100 requests are not known to be in it.
    assert whole.requests == 10
    # Nothing reported since: a later window that no longer reaches the change is empty.
    clock.now += 61
    assert book.window("e", seconds=60).requests == 0
    assert book.window("e", seconds=60).p99 is None


def test_quantiles_are_ordered_and_per_backend_windows_split_the_endpoint() -> None:
    clock = Clock()
    book = StatsBook(clock=clock)
    book.record("proxy", RouterStats().to_proto(), counting_seconds=1)
    stats = RouterStats()
    clock.now += 1
    answer(stats, 95, 0.001, backend="fast")
    answer(stats, 5, 2.0, backend="slow")
    book.record("proxy", stats.to_proto(), counting_seconds=2)
    both = book.window("e")
    fast = book.window("e", "fast")
    slow = book.window("e", "slow")
    assert (both.requests, fast.requests, slow.requests) == (100, 95, 5)
    assert both.p50 is not None and both.p95 is not None and both.p99 is not None
    assert both.p50 <= both.p95 <= both.p99
    assert fast.p99 is not None and slow.p50 is not None and fast.p99 < slow.p50
    listed = book.windows()
    assert [(e, b) for e, b, _ in listed] == [("e", ""), ("e", "fast"), ("e", "slow")]
    assert listed[0][2] == both


def test_reporters_add_up_and_a_restarted_one_counts_from_zero() -> None:
    clock = Clock()
    book = StatsBook(clock=clock)
    proxy, handles = RouterStats(), RouterStats()
    answer(proxy, 50, 0.01)
    book.record("proxy", proxy.to_proto(), counting_seconds=300)
    book.record("handles-1", handles.to_proto(), counting_seconds=300)
    clock.now += 10
    answer(proxy, 5, 0.01)
    answer(handles, 3, 0.01)
    book.record("proxy", proxy.to_proto(), counting_seconds=310)
    book.record("handles-1", handles.to_proto(), counting_seconds=310)
    assert book.window("e").requests == 8
    # The proxy restarts: its counters start again from zero, below the last report's.
    clock.now += 10
    restarted = RouterStats()
    answer(restarted, 2, 0.01)
    book.record("proxy", restarted.to_proto(), counting_seconds=1)
    assert book.window("e").requests == 10
    # Totals keep the latest of each reporter, as before.
    (total,) = book.totals()
    assert dict(total.requests_by_backend) == {"v1": 2 + 3}


def test_a_restart_that_already_passed_the_old_counts_is_told_by_its_start() -> None:
    clock = Clock()
    book = StatsBook(clock=clock)
    old = RouterStats()
    answer(old, 1, 0.01)
    book.record("proxy", old.to_proto(), counting_seconds=100)
    clock.now += 5
    new = RouterStats()
    answer(new, 4, 0.01)  # more than the old run counted: no count went down
    book.record("proxy", new.to_proto(), counting_seconds=2)
    assert book.window("e").requests == 4


def test_a_reporter_that_started_inside_the_window_counts_from_zero() -> None:
    clock = Clock()
    book = StatsBook(clock=clock)
    handles = RouterStats()
    answer(handles, 7, 0.01)
    book.record("handles-9", handles.to_proto(), counting_seconds=3)
    assert book.window("e", seconds=10).requests == 7
    # Old builds say nothing of their start: their first report is where counting begins.
    book.record("handles-old", handles.to_proto())
    assert book.window("e", seconds=10).requests == 7


def test_unrouted_failures_count_as_endpoint_errors_only() -> None:
    clock = Clock()
    book = StatsBook(clock=clock)
    stats = RouterStats()
    book.record("proxy", stats.to_proto(), counting_seconds=1)
    clock.now += 1
    stats.failed_unrouted("e")
    answer(stats, 1, 0.01)
    book.record("proxy", stats.to_proto(), counting_seconds=2)
    assert (book.window("e").requests, book.window("e").errors) == (1, 1)
    assert book.window("e", "v1").errors == 0


def test_old_reports_are_dropped_but_the_start_of_the_longest_window_is_kept() -> None:
    clock = Clock()
    book = StatsBook(clock=clock)
    stats = RouterStats()
    for n in range(50):
        answer(stats, 1, 0.01)
        book.record("proxy", stats.to_proto(), counting_seconds=10_000 + 30 * n)
        clock.now += 30
    # Memory stays bounded: the reports of the last MAX_WINDOW_S, and one before.
    assert len(book._timelines["proxy"]._times) <= MAX_WINDOW_S / 30 + 1
    assert book.window("e", seconds=MAX_WINDOW_S).requests == MAX_WINDOW_S / 30 - 1


@pytest.mark.parametrize("seconds", [0, -1, MAX_WINDOW_S + 1, float("nan")])
def test_a_window_the_book_cannot_answer_for_is_refused(seconds: float) -> None:
    with pytest.raises(InvalidArgumentError, match="window seconds"):
        StatsBook().window("e", seconds=seconds)
    with pytest.raises(InvalidArgumentError, match="window seconds"):
        StatsBook().windows(seconds)


@pytest.mark.parametrize("seconds", [True, "60", None])
def test_a_window_that_is_no_number_is_a_type_error(seconds: object) -> None:
    with pytest.raises(TypeError, match="window seconds must be a number"):
        StatsBook().window("e", seconds=seconds)  # type: ignore[arg-type]
