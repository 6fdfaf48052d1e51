"""State and recovery on the Ray cluster: a SIGKILLed controller's successor
re-adopts the live replica actors; a dead worker node's replicas come back on
the head node while endpoints served elsewhere keep answering."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from netns_cluster import HEAD_IP, WORKER_IP, RayCluster, TurnoutOnRay

import turnout

RECOVERY_TIMEOUT_S = 90.0


def hello(request: object) -> str:
    return "hello"


@pytest.fixture
def client(turnout_on_ray: TurnoutOnRay) -> Iterator[turnout.Client]:
    client = turnout_on_ray.client()
    yield client
    client = turnout_on_ray.client()  # the test may have restarted the controller
    for endpoint in client.list_endpoints():
        client.delete_endpoint(endpoint)
    for backend in client.list_backends():
        client.delete_backend(backend)


def wait_until(check: Callable[[], bool], what: str, timeout: float = RECOVERY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


class Caller:
    """Calls one URL in a loop on a thread, counting answers and failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as http:
            while not self._stop.is_set():
                try:
                    reply = http.get(self.url, timeout=30)
                    if reply.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{reply.status_code} {reply.text[:200]}")
                except requests.RequestException as exc:
                    self.failed.append(repr(exc))
                time.sleep(0.02)

    def __enter__(self) -> Caller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_a_restarted_controller_re_adopts_the_replica_actors_by_name(
    client: turnout.Client, turnout_on_ray: TurnoutOnRay
) -> None:
    client.create_backend("kept", hello, config={"num_replicas": 2})
    client.create_endpoint("kept", backend="kept", route="/kept")
    before = {(r.replica_id, r.address, r.pid) for r in client.list_replicas("kept")}
    with Caller(f"{turnout_on_ray.http_address}/kept") as caller:
        turnout_on_ray.kill()
        # Acknowledged before the kill: still there after, served by the same replicas.
        again = turnout_on_ray.start()
        after = {(r.replica_id, r.address, r.pid) for r in again.list_replicas("kept")}
        assert after == before
        assert {r.state for r in again.list_replicas("kept")} == {"RUNNING"}
        served = caller.ok
        wait_until(lambda: caller.ok > served + 5, "requests after the restart")
    assert caller.failed == []


def test_a_dead_worker_nodes_replicas_come_back_on_the_head(
    client: turnout.Client, turnout_on_ray: TurnoutOnRay, ray_cluster: RayCluster
) -> None:
    client.create_backend("here", hello)
    client.create_backend("there", hello)
    placed = {b: client.list_replicas(b)[0].address.rpartition(":")[0] for b in ("here", "there")}
    assert sorted(placed.values()) == [HEAD_IP, WORKER_IP]
    on_head = next(b for b, host in placed.items() if host == HEAD_IP)
    on_worker = next(b for b, host in placed.items() if host == WORKER_IP)
    for backend in (on_head, on_worker):
        client.create_endpoint(backend, backend=backend, route=f"/{backend}")

    def back_on_head() -> bool:
        replicas = client.list_replicas(on_worker)
        return [(r.state, r.address.rpartition(":")[0]) for r in replicas] == [("RUNNING", HEAD_IP)]

    try:
        with Caller(f"{turnout_on_ray.http_address}/{on_head}") as caller:
            ray_cluster.worker.stop_processes()
            wait_until(back_on_head, f"{on_worker}'s replica on the head node")
            reply = requests.get(f"{turnout_on_ray.http_address}/{on_worker}", timeout=30)
            assert reply.status_code == 200 and reply.text == "hello"
        # Endpoints whose replicas were elsewhere never noticed.
        assert caller.failed == [] and caller.ok > 0
    finally:
        ray_cluster.rejoin_worker()
