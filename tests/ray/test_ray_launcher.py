"""Replicas as Ray actors (controller/launchers/ray.py) on the two-node test
cluster: placed on both nodes, each bound to and advertising its own node's
address, answering through the proxy; a replica no node can hold is refused."""

from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from netns_cluster import (
    HEAD_IP,
    HTTP_PORT,
    WORKER_IP,
    WORKER_LABEL,
    WORKER_RESOURCE,
    RayCluster,
    TurnoutOnRay,
    cluster_tls,
)

import turnout
from turnout._cli_render import Snapshot, to_text
from turnout.errors import InvalidArgumentError

REQUESTS = 60
WORKER_PROXY = f"http://{WORKER_IP}:{HTTP_PORT}"
WAIT_S = 60.0


def whoami(request: object) -> dict[str, int]:
    return {"pid": os.getpid()}


@pytest.fixture
def client(turnout_on_ray: TurnoutOnRay) -> Iterator[turnout.Client]:
    client = turnout_on_ray.client()
    yield client
    for endpoint in client.list_endpoints():
        client.delete_endpoint(endpoint)
    for backend in client.list_backends():
        client.delete_backend(backend)


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def answers(url: str, expect: str | None = None) -> bool:
    try:
        reply = requests.get(url, timeout=10)
    except requests.RequestException:
        return False
    return reply.status_code == 200 and (expect is None or reply.text == expect)


def hosts_of(client: turnout.Client, backend: str) -> list[str]:
    return sorted(r.address.rpartition(":")[0] for r in client.list_replicas(backend))


def test_replicas_land_on_both_nodes_and_answer_through_the_proxy(
    client: turnout.Client, turnout_on_ray: TurnoutOnRay
) -> None:
    client.create_backend("who", whoami, config={"num_replicas": 2})
    client.create_endpoint("who", backend="who", route="/who")
    # Each replica advertises its own node's address (never 0.0.0.0 or loopback).
    assert hosts_of(client, "who") == [HEAD_IP, WORKER_IP]
    # list_replicas() and `turnout status` say which node each one runs on.
    assert sorted(r.node for r in client.list_replicas("who")) == [HEAD_IP, WORKER_IP]
    status = to_text(Snapshot.read(client))
    assert "NODE" in status and WORKER_IP in status
    by_pid = {r.pid: r.address.rpartition(":")[0] for r in client.list_replicas("who")}
    seen: collections.Counter[str] = collections.Counter()
    with requests.Session() as http:
        for _ in range(REQUESTS):
            reply = http.get(f"{turnout_on_ray.http_address}/who", timeout=30)
            assert reply.status_code == 200, reply.text
            seen[by_pid[reply.json()["pid"]]] += 1
    # The proxy on the head reaches the worker's replica at its advertised address.
    assert set(seen) == {HEAD_IP, WORKER_IP}
    # The worker node has replicas, so it has a proxy of its own, which
    # reaches the head's replica as well.
    wait_until(lambda: answers(f"{WORKER_PROXY}/who"), "the worker node's proxy")
    with requests.Session() as http:
        pids = {http.get(f"{WORKER_PROXY}/who", timeout=30).json()["pid"] for _ in range(REQUESTS)}
    assert {by_pid[pid] for pid in pids} == {HEAD_IP, WORKER_IP}


def proxy_pids_on(node_ip: str) -> list[int]:
    """The pids of proxy processes bound to ``node_ip`` (their command line says)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"turnout.proxy" in args and node_ip.encode() in args:
                found.append(int(entry))
    return found


def test_a_nodes_proxy_that_dies_is_replaced_and_admin_calls_go_on(
    client: turnout.Client,
) -> None:
    client.create_backend("far", answer("far"), config={"num_replicas": 2})
    client.create_endpoint("far", backend="far", route="/far")
    wait_until(lambda: answers(f"{WORKER_PROXY}/far", "far"), "the worker node's proxy")
    [pid] = proxy_pids_on(WORKER_IP)
    os.kill(pid, signal.SIGKILL)
    # A change made while it is down is served by its successor.
    client.create_endpoint("near", backend="far", route="/near")
    wait_until(lambda: answers(f"{WORKER_PROXY}/near", "far"), "a new proxy on the worker")
    assert proxy_pids_on(WORKER_IP) != [pid]


def answer(name: str):  # type: ignore[no-untyped-def]
    def handler(request: object) -> str:
        return name

    return handler


def test_weighted_traffic_across_backends_on_different_nodes(
    client: turnout.Client, turnout_on_ray: TurnoutOnRay
) -> None:
    client.create_backend("left", answer("left"))
    client.create_backend("right", answer("right"))
    # Spread: the second backend's one replica goes to the node without one.
    assert {*hosts_of(client, "left"), *hosts_of(client, "right")} == {HEAD_IP, WORKER_IP}
    client.create_endpoint("split", backend="left", route="/split")
    client.set_traffic("split", {"left": 0.7, "right": 0.3})
    with requests.Session() as http:
        got = collections.Counter(
            http.get(f"{turnout_on_ray.http_address}/split", timeout=30).text
            for _ in range(REQUESTS * 2)
        )
    # 120 draws at 0.3: the mean is 36, these bounds are more than 4 sigma away.
    assert 15 <= got["right"] <= 60 and got["left"] + got["right"] == REQUESTS * 2


NODE_REPLICA = Path(__file__).resolve().parents[2] / "examples" / "node-replica"
NPM_CI_TIMEOUT_S = 300.0


def node_replica() -> Path:
    """examples/node-replica with its dependencies (`npm ci`, once), as
    tests/e2e installs it: the nodes share this machine's disk."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "the command backend test needs node and npm on PATH (Node 18 or later)"
    installed = NODE_REPLICA / "node_modules" / ".package-lock.json"
    if (
        not installed.exists()
        or installed.stat().st_mtime < (NODE_REPLICA / "package-lock.json").stat().st_mtime
    ):
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_REPLICA,
            check=True,
            timeout=NPM_CI_TIMEOUT_S,
            capture_output=True,
        )
    return NODE_REPLICA


def test_a_command_backend_runs_on_both_nodes(
    client: turnout.Client, turnout_on_ray: TurnoutOnRay
) -> None:
    """A replica in another language (the Node.js example): each replica's
    actor starts the program on its node, bound to the node's address."""
    program = turnout.Command(["node", "replica.js"], cwd=node_replica())
    client.create_backend("program", program, config={"num_replicas": 2})
    client.create_endpoint("program", backend="program", route="/program", methods=["POST"])
    assert hosts_of(client, "program") == [HEAD_IP, WORKER_IP]
    for proxy in (turnout_on_ray.http_address, WORKER_PROXY):
        wait_until(functools.partial(answers_post, f"{proxy}/program"), f"/program via {proxy}")
        with requests.Session() as http:
            for _ in range(10):
                reply = http.post(f"{proxy}/program", data=b"across", timeout=30)
                assert reply.content == b"across" and reply.headers["X-Seen-Method"] == "POST"
    # What the program writes is the log GetReplicaLog (`turnout logs`) reads.
    [remote] = [r for r in client.list_replicas("program") if r.node == WORKER_IP]
    assert "serving on " + remote.address in client.replica_log(remote.replica_id).text
    # A program that is not on the node is the backend's error, with the reason.
    with pytest.raises(InvalidArgumentError, match="cannot start the command"):
        client.create_backend("missing", turnout.Command(["/no/such/program"]))
    assert "missing" not in client.list_backends()


def answers_post(url: str) -> bool:
    try:
        return requests.post(url, data=b"x", timeout=10).status_code == 200
    except requests.RequestException:
        return False


def test_a_backend_bigger_than_every_node_is_refused(client: turnout.Client) -> None:
    with pytest.raises(InvalidArgumentError, match="more than any"):
        client.create_backend("huge", whoami, replica_options={"num_cpus": 64})
    assert "huge" not in client.list_backends()


def test_max_replicas_per_node_spreads_one_per_node_and_refuses_a_third(
    client: turnout.Client,
) -> None:
    options = {"max_replicas_per_node": 1, "num_cpus": 0.5}
    client.create_backend("one-each", whoami, config={"num_replicas": 2}, replica_options=options)
    assert hosts_of(client, "one-each") == [HEAD_IP, WORKER_IP]
    # Refused at create time, before any replica starts: not left pending.
    with pytest.raises(InvalidArgumentError, match="max_replicas_per_node=1 need 3 nodes"):
        client.create_backend("three", whoami, config={"num_replicas": 3}, replica_options=options)
    assert "three" not in client.list_backends()
    with pytest.raises(InvalidArgumentError, match="need 3 nodes"):
        client.update_backend_config("one-each", {"num_replicas": 3})
    assert hosts_of(client, "one-each") == [HEAD_IP, WORKER_IP]


def test_a_custom_resource_or_a_label_only_the_worker_has_places_replicas_there(
    client: turnout.Client,
) -> None:
    # The instance's proxy is on the head, so spreading alone would put the
    # first replica of a backend anywhere; these must go to the worker.
    client.create_backend(
        "accel",
        whoami,
        config={"num_replicas": 2},
        replica_options={"resources": {WORKER_RESOURCE: 1}, "num_cpus": 0.5},
    )
    assert hosts_of(client, "accel") == [WORKER_IP, WORKER_IP]
    key, value = WORKER_LABEL
    client.create_backend(
        "labelled", whoami, replica_options={"node_selector": {key: value}, "num_cpus": 0.5}
    )
    assert hosts_of(client, "labelled") == [WORKER_IP]
    with pytest.raises(InvalidArgumentError, match="matches none"):
        client.create_backend("nowhere", whoami, replica_options={"node_selector": {key: "gpu"}})
    with pytest.raises(InvalidArgumentError, match="more than any"):
        client.create_backend("nobody", whoami, replica_options={"resources": {"tpu": 1}})
    assert set(client.list_backends()) == {"accel", "labelled"}


SHIPPED = """
import os


def hello(request):
    return "shipped " + os.environ["SHIPPED_GREETING"]
"""


def test_an_import_path_backend_comes_with_the_runtime_envs_working_dir(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """Code that is on no node: Ray ships the working_dir (and py_modules) to
    each replica's node, and the runtime_env's env_vars reach the replica."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "shipped_backend.py").write_text(SHIPPED)
    package = tmp_path / "lib" / "shipped_package"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(SHIPPED.replace('"shipped "', '"packaged "'))
    runtime_env = {
        "working_dir": str(code),
        "py_modules": [str(package)],
        "env_vars": {"SHIPPED_GREETING": "hello"},
    }
    instance = TurnoutOnRay(
        ray_cluster,
        tmp_path / "instance",
        controller_port=50072,
        http_port=8001,
        ray_runtime_env=json.dumps(runtime_env),
    )
    client = instance.start()
    try:
        client.create_backend("shipped", "shipped_backend:hello", config={"num_replicas": 2})
        client.create_endpoint("shipped", backend="shipped", route="/shipped")
        assert hosts_of(client, "shipped") == [HEAD_IP, WORKER_IP]
        with requests.Session() as http:
            got = {
                http.get(f"{instance.http_address}/shipped", timeout=30).text
                for _ in range(REQUESTS // 3)
            }
        assert got == {"shipped hello"}
        # A backend's own runtime_env goes over the instance's: its env_vars
        # win, the instance's working_dir stays (the import still works).
        client.create_backend(
            "own",
            "shipped_backend:hello",
            replica_options={"runtime_env": {"env_vars": {"SHIPPED_GREETING": "own"}}},
        )
        client.create_endpoint("own", backend="own", route="/own")
        assert requests.get(f"{instance.http_address}/own", timeout=30).text == "shipped own"
        # A package of py_modules imports on either node.
        client.create_backend("pkg", "shipped_package:hello", config={"num_replicas": 2})
        client.create_endpoint("pkg", backend="pkg", route="/pkg")
        assert hosts_of(client, "pkg") == [HEAD_IP, WORKER_IP]
        got = {requests.get(f"{instance.http_address}/pkg", timeout=30).text for _ in range(10)}
        assert got == {"packaged hello"}
    finally:
        instance.shutdown()


def test_replicas_and_proxies_on_both_nodes_speak_mutual_tls(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """Every gRPC hop across nodes with the instance's TLS (no --insecure): the
    launcher ships the material to each node, and the certificate names the
    nodes' addresses the replicas advertise."""
    instance = TurnoutOnRay(
        ray_cluster,
        tmp_path / "instance",
        controller_port=50073,
        http_port=8002,
        tls=cluster_tls(tmp_path / "pki"),
    )
    client = instance.start()
    try:
        client.create_backend("sealed", answer("sealed"), config={"num_replicas": 2})
        client.create_endpoint("sealed", backend="sealed", route="/sealed")
        assert hosts_of(client, "sealed") == [HEAD_IP, WORKER_IP]
        worker_proxy = f"http://{WORKER_IP}:{instance.http_port}/sealed"
        wait_until(lambda: answers(worker_proxy, "sealed"), "the worker node's proxy")
        for url in (f"{instance.http_address}/sealed", worker_proxy):
            assert all(answers(url, "sealed") for _ in range(10))
    finally:
        instance.shutdown()
