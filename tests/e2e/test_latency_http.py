"""Latency you can see: the proxy's histograms at /-/metrics (end to end and
the replicas' handler time), in-flight and queue gauges, and stat()'s
quantiles over a recent window, through real processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Deploy, wait_until
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import turnout
from turnout._internal.latency import BUCKETS_S
from turnout.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

SLOW_S = 0.6


def noop(request: Any) -> str:
    return "ok"


def sleepy(request: Any) -> str:
    time.sleep(SLOW_S)
    return "slept"


class Gated:
    """Sleeps, then waits for a file: with one slot, the requests after the
    first queue in the proxy until the test opens the gate."""

    def __init__(self, gate: str) -> None:
        self.gate = Path(gate)

    def __call__(self, request: Any) -> str:
        time.sleep(0.3)
        for _ in range(3000):
            if self.gate.exists():
                break
            time.sleep(0.01)
        return "through"


def scrape(url: str) -> dict[str, list[Sample]]:
    """Every family of /-/metrics, parsed by prometheus-client's own parser."""
    text = requests.get(url + "/-/metrics", timeout=30).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def histogram(
    families: dict[str, list[Sample]], name: str, endpoint: str, backend: str
) -> tuple[list[tuple[float, float]], float, float]:
    """(le, cumulative count) per bucket, the count and the sum of one series."""
    labels = {"endpoint": endpoint, "backend": backend}
    samples = [s for s in families[name] if {k: s.labels[k] for k in labels} == labels]
    buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name == f"{name}_bucket"]
    (count,) = [s.value for s in samples if s.name == f"{name}_count"]
    (total,) = [s.value for s in samples if s.name == f"{name}_sum"]
    return buckets, count, total


def lowest_bucket_with(buckets: list[tuple[float, float]], share: float, count: float) -> float:
    """The smallest bound at or below which at least ``share`` of the requests fall."""
    return next(le for le, cumulative in buckets if cumulative >= share * count)


def test_histograms_count_every_request_into_its_bucket(
    client: turnout.Client, deploy: Deploy
) -> None:
    fast, slow = deploy(noop), deploy(sleepy)
    for _ in range(20):
        assert requests.get(fast.url, timeout=30).status_code == 200
    for _ in range(3):
        assert requests.get(slow.url, timeout=30).text == "slept"
    families = scrape(client.http_address)
    (requests_total,) = [
        s.value
        for s in families["turnout_requests"]
        if s.name == "turnout_requests_total" and s.labels["endpoint"] == fast.backend
    ]
    for name in ("turnout_request_duration_seconds", "turnout_handler_duration_seconds"):
        buckets, count, _ = histogram(families, name, fast.backend, fast.backend)
        # Every bound of the build, in order, cumulative, ending at the count.
        assert [le for le, _ in buckets] == [*BUCKETS_S, float("inf")]
        assert [n for _, n in buckets] == sorted(n for _, n in buckets)
        assert buckets[-1][1] == count == requests_total == 20
        slow_buckets, slow_count, _ = histogram(families, name, slow.backend, slow.backend)
        assert slow_count == 3
        # Each slow request slept SLOW_S: none is at or below the bound under it...
        below = max(b for b in BUCKETS_S if b < SLOW_S)
        assert dict(slow_buckets)[below] == 0
        # ... and the fast ones' median bucket is lower than any slow one's.
        fast_median = lowest_bucket_with(buckets, 0.5, count)
        slowest_start = lowest_bucket_with(slow_buckets, 1 / 3, slow_count)
        assert fast_median < slowest_start


def test_queueing_shows_as_end_to_end_time_beyond_handler_time(
    client: turnout.Client, deploy: Deploy, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    app = deploy(Gated, str(gate), config={"max_concurrent_queries": 1})
    answers: list[str] = []
    senders = [
        threading.Thread(target=lambda: answers.append(requests.get(app.url, timeout=60).text))
        for _ in range(3)
    ]
    for sender in senders:
        sender.start()

    def gauges() -> tuple[float, float]:
        families = scrape(client.http_address)
        [queued] = [
            s.value for s in families["turnout_queued_requests"]
            if s.labels["backend"] == app.backend
        ] or [0.0]  # fmt: skip
        in_flight = sum(
            s.value
            for s in families["turnout_replica_in_flight_requests"]
            if s.labels["backend"] == app.backend
        )
        return queued, in_flight

    # One on the replica, two waiting in the proxy for its only slot.
    wait_until(lambda: gauges() == (2, 1), timeout=30)
    gate.touch()
    for sender in senders:
        sender.join(timeout=60)
    assert answers == ["through"] * 3
    families = scrape(client.http_address)
    _, count, end_to_end = histogram(
        families, "turnout_request_duration_seconds", app.backend, app.backend
    )
    _, handler_count, handler = histogram(
        families, "turnout_handler_duration_seconds", app.backend, app.backend
    )
    assert count == handler_count == 3
    # The second waited for the first's handler (>= 0.3 s), the third for both:
    # time the replicas did not count.
    assert end_to_end - handler >= 0.9
    assert gauges() == (0, 0)


def recent(client: turnout.Client, endpoint: str, window: float = 60.0) -> dict[str, Any]:
    return client.endpoint_stats(window=window).get(endpoint, {}).get("recent", {})  # type: ignore[no-any-return]


def test_stat_reports_ordered_quantiles_of_a_recent_window(
    client: turnout.Client, deploy: Deploy
) -> None:
    fast, slow = deploy(noop), deploy(sleepy)
    client.create_backend(f"{fast.backend}-slow", sleepy)
    client.set_traffic(fast.backend, {fast.backend: 0.5, f"{fast.backend}-slow": 0.5})
    for _ in range(3):
        requests.get(slow.url, timeout=30)
    handle = client.get_handle(fast.backend)
    answers = [handle.remote().result(timeout=30) for _ in range(4)]
    # Until both halves of the split answered twice (a bounded number of tries).
    while min(answers.count("ok"), answers.count("slept")) < 2 and len(answers) < 60:
        answers.append(handle.remote().result(timeout=30))
    assert min(answers.count("ok"), answers.count("slept")) >= 2
    # This process's handle calls are flushed by the call itself; the proxy's
    # report comes within about a second.
    wait_until(lambda: recent(client, slow.backend).get("requests") == 3, timeout=30)

    def quantiles(endpoint: str) -> list[float | None]:
        return [
            entry["value"]
            for q in (0.5, 0.95, 0.99)
            for entry in client.stat()
            if entry["info"]
            == {
                "name": "endpoint_latency_seconds",
                "type": "MetricType.GAUGE",
                "endpoint": endpoint,
                "quantile": q,
                "window_s": 60.0,
            }
        ]

    p50, p95, p99 = quantiles(slow.backend)
    assert p50 is not None and p95 is not None and p99 is not None
    # Every request slept SLOW_S: the median is above the bound below it.
    assert max(b for b in BUCKETS_S if b < SLOW_S) < p50 <= p95 <= p99
    # Per backend: the split endpoint's slow half is slower than its fast half.
    both = recent(client, fast.backend)
    assert both["requests"] == len(answers)
    halves = both["backends"]
    assert halves[fast.backend]["requests"] == answers.count("ok")
    assert halves[fast.backend]["p50"] < halves[f"{fast.backend}-slow"]["p50"]
    assert both["p50"] <= both["p95"] <= both["p99"]
    assert both["handler_p50"] <= both["handler_p99"] <= both["p99"]
    # The same over gRPC, for dashboards: one entry for the endpoint, one per backend.
    reply = client._call(client._stub.GetStats, pb.GetStatsRequest(window_seconds=30))
    mine = [w for w in reply.recent if w.endpoint == fast.backend]
    assert {w.backend for w in mine} == {"", *halves}
    assert all(w.window_seconds == 30 for w in mine)

    # A short window forgets them once they are older than it; the long one keeps them.
    wait_until(lambda: recent(client, slow.backend, window=1.0)["requests"] == 0, timeout=30)
    assert recent(client, slow.backend, window=1.0)["p99"] is None
    assert recent(client, slow.backend)["requests"] == 3


@pytest.mark.parametrize("window", [0, -5, 601, float("nan")])
def test_a_window_out_of_range_is_refused(client: turnout.Client, window: float) -> None:
    with pytest.raises(InvalidArgumentError, match="window seconds"):
        client.endpoint_stats(window=window)


def test_a_window_of_the_wrong_type_is_refused(client: turnout.Client) -> None:
    with pytest.raises(TypeError, match="window"):
        client.endpoint_stats(window="60")  # type: ignore[arg-type]
    # Over gRPC the controller checks it too.
    with pytest.raises(InvalidArgumentError, match="window seconds"):
        client._call(client._stub.GetStats, pb.GetStatsRequest(window_seconds=-1))
