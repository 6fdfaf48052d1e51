"""The test cluster itself: two Ray nodes that know each other only by their
own addresses, with token authentication on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from netns_cluster import DRIVER_TIMEOUT_S, HEAD_IP, WORKER_IP, RayCluster, run_on

NODES = f"""
import json, ray
ray.init(address="{HEAD_IP}:6379", log_to_driver=False)
print(json.dumps(sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])))
"""


def test_both_nodes_joined_the_cluster(ray_cluster: RayCluster) -> None:
    assert json.loads(run_on(ray_cluster, ray_cluster.head, NODES)) == [HEAD_IP, WORKER_IP]


def test_a_driver_without_the_token_is_refused(ray_cluster: RayCluster) -> None:
    env = ray_cluster.env()
    del env["RAY_AUTH_TOKEN"]
    done = subprocess.run(
        ray_cluster.head.exec_argv([sys.executable, "-c", NODES]),
        env=env,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
    )
    assert done.returncode != 0
    assert "AuthenticationError" in done.stderr


LISTEN = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_a_nodes_loopback_is_its_own(ray_cluster: RayCluster) -> None:
    """What the advertise tests rely on: a port bound to the worker's loopback
    is not reachable at 127.0.0.1 from elsewhere (here, the test's host); one
    bound to the worker's address is reachable at that address."""
    worker = ray_cluster.worker
    for bind, reachable in (("127.0.0.1", False), (WORKER_IP, True)):
        with subprocess.Popen(
            worker.exec_argv([sys.executable, "-c", LISTEN, bind]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as server:
            try:
                assert server.stdout is not None
                port = int(server.stdout.readline())
                with socket.socket() as probe:
                    probe.settimeout(5)
                    assert (probe.connect_ex((bind, port)) == 0) is reachable
            finally:
                server.kill()
