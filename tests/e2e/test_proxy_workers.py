"""An instance whose proxy runs as two processes on one port (``proxy_workers=2``):
both serve, both apply every change before the admin call returns, the
counters add up whichever worker is asked, a worker that dies comes back, and
nothing is left running after shutdown."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import processes_mentioning, wait_until

from turnout import Client
from turnout.instance import LocalInstance


def hello(request: Any) -> str:
    return "hello"


@pytest.fixture(scope="module")
def two_workers() -> Iterator[Client]:
    instance = LocalInstance.start("127.0.0.1", 0, proxy_workers=2)
    client = Client(instance.address, _instance=instance)
    try:
        yield client
    finally:
        client.shutdown()


def fresh_get(url: str) -> requests.Response:
    """A GET on a new connection, so the kernel may hand it to either worker."""
    return requests.get(url, headers={"Connection": "close"}, timeout=30)


def workers_seen(client: Client, tries: int = 60) -> dict[int, dict[str, Any]]:
    """worker index -> its /-/healthz answer, over ``tries`` new connections."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(tries):
        health = fresh_get(client.http_address + "/-/healthz").json()
        seen[health["worker"]] = health
    return seen


def test_both_workers_serve_on_one_port_and_apply_changes_before_the_call_returns(
    two_workers: Client,
) -> None:
    seen = workers_seen(two_workers)
    assert set(seen) == {0, 1}
    assert seen[0]["pid"] != seen[1]["pid"]

    two_workers.create_backend("w-hello", hello)
    two_workers.create_endpoint("w-hello", "w-hello", route="/w-hello")
    # No waiting: create_endpoint returned, so every worker routes /w-hello.
    answers = [fresh_get(two_workers.http_address + "/w-hello") for _ in range(40)]
    assert [a.status_code for a in answers] == [200] * 40
    assert {a.text for a in answers} == {"hello"}
    versions = {h["routes_version"] for h in workers_seen(two_workers).values()}
    assert len(versions) == 1


def test_metrics_and_stats_count_the_requests_of_every_worker(two_workers: Client) -> None:
    two_workers.create_backend("w-count", hello)
    two_workers.create_endpoint("w-count", "w-count", route="/w-count")
    for _ in range(30):
        assert fresh_get(two_workers.http_address + "/w-count").status_code == 200
    line = 'turnout_requests_total{backend="w-count",endpoint="w-count"} 30.0'

    def every_worker_shows_30() -> bool:
        texts = [fresh_get(two_workers.http_address + "/-/metrics").text for _ in range(10)]
        return all(line in text.splitlines() for text in texts)

    wait_until(every_worker_shows_30, timeout=15)
    wait_until(
        lambda: two_workers.endpoint_stats().get("w-count", {}).get("requests") == {"w-count": 30},
        timeout=15,
    )


def test_a_worker_that_dies_is_restarted_and_logs_to_its_own_file(two_workers: Client) -> None:
    before = workers_seen(two_workers)
    os.kill(before[1]["pid"], signal.SIGKILL)

    def worker_1_is_back() -> bool:
        # Connections the kernel queued on the killed worker's socket are
        # reset: a crash loses those, as it would behind any server.
        try:
            seen = workers_seen(two_workers, tries=20)
        except requests.ConnectionError:
            return False
        return 1 in seen and seen[1]["pid"] != before[1]["pid"]

    wait_until(worker_1_is_back, timeout=30)
    assert workers_seen(two_workers)[0]["pid"] == before[0]["pid"]
    log_dir = Path(two_workers.log_dir)
    log = (log_dir / "proxy-1.log").read_text()
    assert log.count("proxy worker 1 listening") >= 2
    assert "proxy worker 1 exited" in (log_dir / "proxy.log").read_text()


def test_shutdown_leaves_no_worker_running() -> None:
    instance = LocalInstance.start("127.0.0.1", 0, proxy_workers=3)
    client = Client(instance.address, _instance=instance)
    try:
        pids = {h["pid"] for h in workers_seen(client).values()}
        assert len(pids) == 3
    finally:
        client.shutdown()
    assert not [pid for pid in pids if pid in processes_mentioning("turnout.proxy")]


def test_workers_die_with_their_lead_and_the_restarted_proxy_has_workers_again(
    two_workers: Client,
) -> None:
    two_workers.create_backend("w-after", hello)
    two_workers.create_endpoint("w-after", "w-after", route="/w-after")
    before = workers_seen(two_workers)
    os.kill(before[0]["pid"], signal.SIGKILL)
    wait_until(lambda: before[1]["pid"] not in processes_mentioning("turnout.proxy"), timeout=30)

    def both_workers_are_back() -> bool:
        try:
            seen = workers_seen(two_workers, tries=20)
        except requests.ConnectionError:
            return False
        return set(seen) == {0, 1} and seen[0]["pid"] != before[0]["pid"]

    wait_until(both_workers_are_back, timeout=60)
    assert fresh_get(two_workers.http_address + "/w-after").text == "hello"
