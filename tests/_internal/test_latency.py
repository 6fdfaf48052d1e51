"""Latency histograms: bucket choice, exact sums, quantiles read from buckets."""

from __future__ import annotations

import pytest

from turnout._internal import latency
from turnout._internal.counters import sum_reports
from turnout._internal.latency import BUCKETS_S, Histogram, quantile
from turnout.v1 import controller_pb2 as pb


def test_buckets_go_from_sub_millisecond_to_seconds_in_small_steps() -> None:
    assert BUCKETS_S[0] <= 0.0001 and BUCKETS_S[-1] >= 30
    steps = [b / a for a, b in zip(BUCKETS_S, BUCKETS_S[1:], strict=False)]
    assert all(2 <= step <= 3 for step in steps)


def test_a_duration_on_a_bound_counts_in_that_bucket_and_above_the_last_in_the_extra_one() -> None:
    h = Histogram()
    h.observe(0.001)  # exactly the 1 ms bound: le="0.001"
    h.observe(0.0011)
    h.observe(60.0)
    assert h.counts[BUCKETS_S.index(0.001)] == 1
    assert h.counts[BUCKETS_S.index(0.0025)] == 1
    assert h.counts[-1] == 1
    assert h.count == 3
    assert h.sum_seconds == pytest.approx(60.0021)
    assert latency.cumulative(h.counts)[-1] == 3


def test_quantiles_interpolate_within_the_bucket_the_rank_falls_in() -> None:
    h = Histogram()
    for _ in range(90):
        h.observe(0.003)  # (2.5 ms, 5 ms]
    for _ in range(10):
        h.observe(0.2)  # (100 ms, 250 ms]
    p50 = quantile(h.counts, 0.5)
    p95 = quantile(h.counts, 0.95)
    p99 = quantile(h.counts, 0.99)
    assert p50 is not None and p95 is not None and p99 is not None
    assert 0.0025 < p50 <= 0.005
    assert 0.1 < p95 <= p99 <= 0.25
    # Rank 50 of 90 in a bucket of width 2.5 ms starting at 2.5 ms.
    assert p50 == pytest.approx(0.0025 + 0.0025 * 50 / 90)


def test_no_requests_no_quantile_and_above_the_last_bound_is_the_last_bound() -> None:
    assert quantile(Histogram().counts, 0.5) is None
    h = Histogram()
    h.observe(100.0)
    assert quantile(h.counts, 0.99) == BUCKETS_S[-1]


def test_reports_add_histograms_bucket_by_bucket_and_leave_out_other_buckets() -> None:
    a, b = Histogram(), Histogram()
    a.observe(0.001)
    b.observe(0.001)
    b.observe(1.0)
    foreign = pb.LatencyHistogram(upper_bounds=[1.0], counts=[5, 5], sum_seconds=9)

    def report(h: pb.LatencyHistogram) -> list[pb.EndpointStats]:
        return [pb.EndpointStats(endpoint="e", latency_by_backend={"v1": h})]

    (total,) = sum_reports([report(a.to_proto()), report(b.to_proto()), report(foreign)])
    summed = total.latency_by_backend["v1"]
    assert list(summed.upper_bounds) == list(BUCKETS_S)
    assert sum(summed.counts) == 3
    assert summed.counts[BUCKETS_S.index(0.001)] == 2
    assert summed.sum_seconds == pytest.approx(1.002)
