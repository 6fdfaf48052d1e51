"""Stats from several routers add up; a router's newer report replaces its older one."""

from __future__ import annotations

import threading

from turnout._sending.stats import RouterStats, compare
from turnout.controller.stats_book import StatsBook
from turnout.v1 import controller_pb2 as pb


def test_router_stats_count_answers_errors_and_shadows() -> None:
    stats = RouterStats()
    stats.answered("e", "v1", failed=False)
    stats.answered("e", "v1", failed=True)
    stats.answered("e", "v2", failed=False)
    stats.failed_unrouted("e")
    stats.shadow_sent("e", "cand")
    stats.shadow_outcome("e", "cand", compare((200, b"x"), (200, b"x")))
    stats.shadow_sent("e", "cand")
    stats.shadow_outcome("e", "cand", compare((200, b"x"), (500, b"x")))
    stats.shadow_sent("e", "cand")
    stats.shadow_outcome("e", "cand", compare(None, (200, b"x")))
    (report,) = stats.to_proto()
    assert dict(report.requests_by_backend) == {"v1": 2, "v2": 1}
    assert report.errors == 2
    assert report.shadows[0] == pb.ShadowStats(
        backend="cand", sent=3, matched=1, differed=1, failed=1
    )


def test_answers_counted_from_several_threads_while_read_are_all_counted_once() -> None:
    stats = RouterStats()
    per_thread = 5_000  # past the pending bound several times over
    reads: list[int] = []

    def answer(backend: str) -> None:
        for _ in range(per_thread):
            stats.answered("e", backend, failed=False, seconds=0.001, handler_seconds=0.0005)

    def read() -> None:
        for _ in range(200):
            reads.append(sum(dict(c.requests_by_backend).get("v1", 0) for _, c in stats.items()))

    threads = [threading.Thread(target=answer, args=(b,)) for b in ("v1", "v2", "v1")]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    (report,) = stats.to_proto()
    assert dict(report.requests_by_backend) == {"v1": 2 * per_thread, "v2": per_thread}
    assert sum(report.latency_by_backend["v1"].counts) == 2 * per_thread
    assert sum(report.handler_latency_by_backend["v2"].counts) == per_thread
    # What readers saw only grew, and the changes count says every answer.
    assert reads == sorted(reads)
    assert stats.changes == 3 * per_thread


def report(requests: int, matched: int) -> list[pb.EndpointStats]:
    return [
        pb.EndpointStats(
            endpoint="e",
            requests_by_backend={"v1": requests},
            errors=1,
            shadows=[pb.ShadowStats(backend="c", sent=matched, matched=matched)],
        )
    ]


def test_totals_sum_reporters_and_keep_only_the_latest_of_each() -> None:
    book = StatsBook()
    book.record("proxy", report(10, 4))
    book.record("handles-1", report(5, 1))
    book.record("proxy", report(12, 6))
    (total,) = book.totals()
    assert dict(total.requests_by_backend) == {"v1": 17}
    assert total.errors == 2
    assert total.shadows[0] == pb.ShadowStats(backend="c", sent=7, matched=7)


def test_the_book_keeps_a_bounded_number_of_reporters_and_every_count() -> None:
    book = StatsBook(max_reporters=3)
    for n in range(10):
        book.record(f"handles-{n}", report(requests=1, matched=1))
    book.record("handles-9", report(requests=2, matched=1))
    (total,) = book.totals()
    assert dict(total.requests_by_backend) == {"v1": 11}
