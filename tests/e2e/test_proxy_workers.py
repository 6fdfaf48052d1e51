"""An instance whose proxy runs as two processes on one port (``proxy_workers=2``):
both serve, both apply every change before the admin call returns, the
counters and latency histograms add up whichever worker is asked, each writes
its own JSON access log, a worker that dies comes back, and nothing is left
running after shutdown."""

from __future__ import annotations

import datetime
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import processes_mentioning, wait_until
from prometheus_client.parser import text_string_to_metric_families

from turnout import Client
from turnout.instance import LocalInstance


def hello(request: Any) -> str:
    return "hello"


@pytest.fixture(scope="module")
def two_workers() -> Iterator[Client]:
    instance = LocalInstance.start(
        "127.0.0.1", 0, proxy_workers=2, access_log=True, access_log_format="json"
    )
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


def access_entries(client: Client, endpoint: str) -> dict[int, list[dict[str, Any]]]:
    """Worker index -> the JSON access log entries of ``endpoint``'s requests."""
    log_dir = Path(client.log_dir)
    entries: dict[int, list[dict[str, Any]]] = {}
    for index, name in ((0, "proxy-access.log"), (1, "proxy-access-1.log")):
        path = log_dir / name
        lines = path.read_text().splitlines() if path.exists() else []
        entries[index] = [e for e in map(json.loads, lines) if e["endpoint"] == endpoint]
    return entries


def test_histograms_and_gauges_add_up_over_the_workers(two_workers: Client) -> None:
    two_workers.create_backend("w-hist", hello)
    two_workers.create_endpoint("w-hist", "w-hist", route="/w-hist")
    for _ in range(30):
        assert fresh_get(two_workers.http_address + "/w-hist").status_code == 200
    wait_until(lambda: sum(map(len, access_entries(two_workers, "w-hist").values())) == 30)
    # The kernel spread the connections: both workers counted some of them.
    assert all(access_entries(two_workers, "w-hist").values())

    def summed(text: str) -> dict[str, float]:
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("backend") != "w-hist":
                    continue
                if sample.name.endswith("_count") or sample.labels.get("le") == "+Inf":
                    values[f"{sample.name}{sample.labels.get('le', '')}"] = sample.value
                if sample.name == "turnout_replica_in_flight_requests":
                    values[f"{sample.name}{sample.labels['replica']}"] = sample.value
        return values

    want = {
        "turnout_request_duration_seconds_bucket+Inf": 30,
        "turnout_request_duration_seconds_count": 30,
        "turnout_handler_duration_seconds_bucket+Inf": 30,
        "turnout_handler_duration_seconds_count": 30,
        "turnout_replica_in_flight_requestsw-hist#1": 0,
    }

    def every_worker_shows_the_sum() -> bool:
        texts = [fresh_get(two_workers.http_address + "/-/metrics").text for _ in range(10)]
        return all(summed(text) == want for text in texts)

    wait_until(every_worker_shows_the_sum, timeout=15)
    # The controller adds the workers' reports up too, for the recent window.
    wait_until(
        lambda: (
            two_workers.endpoint_stats().get("w-hist", {}).get("recent", {}).get("requests") == 30
        ),
        timeout=15,
    )


def test_each_worker_writes_one_json_object_per_request(two_workers: Client) -> None:
    two_workers.create_backend("w-json", hello)
    two_workers.create_endpoint("w-json", "w-json", route="/w-json", methods=["POST"])
    sent = {}
    for n in range(6):
        reply = requests.post(
            two_workers.http_address + f"/w-json?n={n}",
            data=b"x" * n,
            headers={"Connection": "close", "X-Request-Id": f"json-{n}"},
            timeout=30,
        )
        assert reply.status_code == 200
        sent[reply.headers["X-Request-Id"]] = n
    missing = fresh_get(two_workers.http_address + "/w-json-nowhere")
    assert missing.status_code == 404
    wait_until(lambda: sum(map(len, access_entries(two_workers, "w-json").values())) == 6)
    [replica] = [r.replica_id for r in two_workers.list_replicas("w-json")]
    entries = [e for worker in access_entries(two_workers, "w-json").values() for e in worker]
    assert sorted(e["request_id"] for e in entries) == sorted(sent)
    for entry in entries:
        n = sent[entry["request_id"]]
        assert entry["method"] == "POST"
        assert entry["path"] == f"/w-json?n={n}"
        assert (entry["status"], entry["bytes_in"], entry["bytes_out"]) == (200, n, len("hello"))
        assert (entry["endpoint"], entry["backend"], entry["replica"]) == (
            "w-json", "w-json", replica
        )  # fmt: skip
        # The replica's part is inside the proxy's.
        assert 0 < entry["handler_seconds"] <= entry["duration_seconds"]
        assert entry["client"] == "127.0.0.1"
        assert datetime.datetime.fromisoformat(entry["time"]).tzinfo is not None
    # A request no endpoint took is logged too, without who answered it.
    log_dir = Path(two_workers.log_dir)
    lines = [
        json.loads(line)
        for name in ("proxy-access.log", "proxy-access-1.log")
        for line in (log_dir / name).read_text().splitlines()
    ]
    [nowhere] = [e for e in lines if e["request_id"] == missing.headers["X-Request-Id"]]
    assert nowhere["status"] == 404
    assert nowhere["endpoint"] is nowhere["backend"] is nowhere["handler_seconds"] is None


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
