"""Proxies and the routing snapshot on the two-node test cluster: each
replica's Ray node in the snapshot, proxies that prefer their own node's
replicas (--ray-prefer-local-replicas), a proxy on every node
(--ray-proxy-location EveryNode)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from netns_cluster import HEAD_IP, WORKER_IP, RayCluster, TurnoutOnRay, run_on

import turnout
from turnout import cli
from turnout._internal import controller_args, rpc
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

REQUESTS = 40
WAIT_S = 60.0

NODE_IDS = """
import json, ray
ray.init(address="{address}", log_to_driver=False)
print(json.dumps({{n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}}))
"""


def whoami(request: object) -> dict[str, int]:
    return {"pid": os.getpid()}


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except requests.RequestException:
        return False


def node_ids(cluster: RayCluster) -> dict[str, str]:
    """node address -> Ray node id, as Ray says."""
    found: dict[str, str] = json.loads(
        run_on(cluster, cluster.head, NODE_IDS.format(address=cluster.address))
    )
    return found


def current_snapshot(client: turnout.Client) -> pb.RoutingSnapshot:
    """What a router following the controller gets now (a passive watcher)."""
    security = dataclasses.replace(rpc.security_for(client.controller_address), token=client.token)
    with rpc.channel(client.controller_address, security) as channel:
        stream = controller_pb2_grpc.RouterServiceStub(channel).WatchRoutes(pb.WatchRoutesRequest())
        snapshot: pb.RoutingSnapshot = next(iter(stream)).snapshot
        stream.cancel()
    return snapshot


@pytest.fixture
def client(turnout_on_ray: TurnoutOnRay) -> Iterator[turnout.Client]:
    client = turnout_on_ray.client()
    yield client
    for endpoint in client.list_endpoints():
        client.delete_endpoint(endpoint)
    for backend in client.list_backends():
        client.delete_backend(backend)


def test_the_routing_snapshot_names_each_replicas_ray_node(
    client: turnout.Client, ray_cluster: RayCluster
) -> None:
    client.create_backend("where", whoami, config={"num_replicas": 2})
    ids = node_ids(ray_cluster)
    assert set(ids) == {HEAD_IP, WORKER_IP}
    [targets] = [b for b in current_snapshot(client).backends if b.tag == "where"]
    # Each replica's entry carries the id of the node its address is on.
    assert sorted((t.address.rpartition(":")[0], t.node) for t in targets.replicas) == sorted(
        ids.items()
    )


def pids_through(url: str) -> collections.Counter[int]:
    with requests.Session() as http:
        return collections.Counter(http.get(url, timeout=30).json()["pid"] for _ in range(REQUESTS))


def test_proxies_preferring_local_replicas_answer_from_their_own_node(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    instance = TurnoutOnRay(
        ray_cluster,
        tmp_path / "instance",
        controller_port=50074,
        http_port=8003,
        ray_prefer_local_replicas=True,
    )
    client = instance.start()
    try:
        client.create_backend("near", whoami, config={"num_replicas": 2})
        client.create_endpoint("near", backend="near", route="/near")
        pid_of = {r.node: r.pid for r in client.list_replicas("near")}
        assert set(pid_of) == {HEAD_IP, WORKER_IP}
        worker_url = f"http://{WORKER_IP}:{instance.http_port}/near"
        wait_until(lambda: answers(worker_url), "the worker node's proxy")
        # Without the option each proxy spreads over both nodes' replicas
        # (test_ray_launcher); with it, each answers from its own node's.
        assert set(pids_through(f"{instance.http_address}/near")) == {pid_of[HEAD_IP]}
        assert set(pids_through(worker_url)) == {pid_of[WORKER_IP]}
        # Its node's replica gone, a proxy falls back to the other node's.
        client.create_backend(
            "far", whoami, replica_options={"node_selector": {"node_ip": HEAD_IP}}
        )
        client.create_endpoint("far", backend="far", route="/far")
        [far] = client.list_replicas("far")
        wait_until(
            lambda: answers(f"http://{WORKER_IP}:{instance.http_port}/far"), "/far on the worker"
        )
        assert set(pids_through(f"http://{WORKER_IP}:{instance.http_port}/far")) == {far.pid}
    finally:
        instance.shutdown()


def test_every_node_gets_a_proxy_with_proxy_location_every_node(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    instance = TurnoutOnRay(
        ray_cluster,
        tmp_path / "instance",
        controller_port=50075,
        http_port=8004,
        ray_proxy_location=controller_args.EVERY_NODE,
    )
    client = instance.start()
    try:
        # Every replica on the head: the worker has none, and a proxy anyway.
        client.create_backend(
            "head-only", whoami, replica_options={"node_selector": {"node_ip": HEAD_IP}}
        )
        client.create_endpoint("head-only", backend="head-only", route="/head-only")
        assert [r.node for r in client.list_replicas("head-only")] == [HEAD_IP]
        worker_url = f"http://{WORKER_IP}:{instance.http_port}/head-only"
        wait_until(lambda: answers(worker_url), "a proxy on the worker, which has no replica")
        [replica] = client.list_replicas("head-only")
        assert set(pids_through(worker_url)) == {replica.pid}
    finally:
        instance.shutdown()


def chatty(request: object) -> dict[str, int]:
    print("chatty-marker", flush=True)
    return {"pid": os.getpid()}


def test_turnout_logs_reads_a_remote_replicas_log_through_the_controller(
    client: turnout.Client,
    turnout_on_ray: TurnoutOnRay,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.create_backend("chatty", chatty, config={"num_replicas": 2})
    client.create_endpoint("chatty", backend="chatty", route="/chatty")
    [remote] = [r for r in client.list_replicas("chatty") if r.node == WORKER_IP]
    # Its log is on the worker node, in its actor's folder: not here.
    assert not remote.log_path
    wait_until(
        lambda: (
            remote.pid in pids_through(f"{turnout_on_ray.http_address}/chatty")
            and "chatty-marker" in client.replica_log(remote.replica_id).text
        ),
        "the worker's replica to log what it printed",
    )
    log = client.replica_log(remote.replica_id, offset=0, max_bytes=16)
    assert len(log.data) == 16 and log.next_offset == 16 and log.size > 16
    token = turnout_on_ray.instance_dir / "token"
    capsys.readouterr()
    code = cli.main(
        ["logs", "chatty", "-n", "50", "--address", client.controller_address,
         "--token-file", str(token)]
    )  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith(f"{remote.replica_id} | ") and "chatty-marker" in line for line in lines
    )
