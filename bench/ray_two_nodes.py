"""No-op throughput of Turnout on the two-node Ray test cluster: one node
(one replica, its proxy) against two nodes (a replica and a proxy on each,
the load split across both proxies), side by side; then, on two nodes,
proxies that spread over both nodes' replicas (the default) against proxies
that prefer their own node's (``--ray-prefer-local-replicas``, a second
instance), in alternating short rounds.

Run as root from the repository root, in the project's virtualenv (with the
dev extra, which brings ray and the cluster fixture)::

    python bench/ray_two_nodes.py [--duration SECONDS] [--connections N] [--rounds N]

The "nodes" are network namespaces of this one machine (tests/ray/netns_cluster.py):
both share its cores, so this measures what crossing nodes costs, not what a
second machine adds. Needs ``wrk`` on PATH.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "ray"))

from netns_cluster import (  # noqa: E402
    HEAD_IP,
    HTTP_PORT,
    WORKER_IP,
    RayCluster,
    TurnoutOnRay,
)

WAIT_S = 60.0


def noop(request: object) -> str:
    return "ok"


def wrk(urls: list[str], connections: int, duration: float) -> float:
    """Requests/s of ``wrk`` runs against each URL at once (connections split), summed."""
    each = max(1, connections // len(urls))
    runs = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{each}", f"-d{duration:g}s", url],
            stdout=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    total = 0.0
    for run in runs:
        out, _ = run.communicate(timeout=duration + 60)
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        assert match, out
        total += float(match.group(1))
    return total


def wait_ok(url: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while subprocess.run(["curl", "-sf", "-o", "/dev/null", url]).returncode != 0:
        assert time.monotonic() < deadline, f"{url} never answered"
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="of spread against prefer-local")
    args = parser.parse_args()
    cluster = RayCluster().start()
    instance = TurnoutOnRay(cluster, cluster.root / "turnout")
    local = TurnoutOnRay(
        cluster,
        cluster.root / "turnout-local",
        controller_port=50076,
        http_port=HTTP_PORT + 10,
        ray_prefer_local_replicas=True,
    )
    try:
        client = instance.start()
        head, worker = f"http://{HEAD_IP}:{HTTP_PORT}", f"http://{WORKER_IP}:{HTTP_PORT}"
        client.create_backend("one", noop)
        client.create_endpoint("one", backend="one", route="/one")
        [replica] = client.list_replicas("one")
        assert replica.address.startswith(HEAD_IP), replica.address
        wrk([f"{head}/one"], args.connections, 2)  # warm-up
        one = wrk([f"{head}/one"], args.connections, args.duration)
        client.delete_endpoint("one")
        client.delete_backend("one")
        client.create_backend("two", noop, config={"num_replicas": 2})
        client.create_endpoint("two", backend="two", route="/two")
        hosts = sorted(r.address.rpartition(":")[0] for r in client.list_replicas("two"))
        assert hosts == [HEAD_IP, WORKER_IP], hosts
        wait_ok(f"{worker}/two")
        urls = [f"{head}/two", f"{worker}/two"]
        wrk(urls, args.connections, 2)  # warm-up
        two = wrk(urls, args.connections, args.duration)
        head_only = wrk([f"{head}/two"], args.connections, args.duration)
        print(f"cluster start {cluster.start_s:.1f} s; {args.connections} connections")
        print(f"one node (1 replica, 1 proxy):            {one:8.0f} req/s")
        print(f"two nodes, head proxy only (2 replicas):  {head_only:8.0f} req/s")
        print(f"two nodes, both proxies (2 replicas):     {two:8.0f} req/s")
        preferring = local.start()
        preferring.create_backend("two", noop, config={"num_replicas": 2})
        preferring.create_endpoint("two", backend="two", route="/two")
        local_urls = [f"http://{ip}:{local.http_port}/two" for ip in (HEAD_IP, WORKER_IP)]
        wait_ok(local_urls[1])
        wrk(local_urls, args.connections, 2)  # warm-up
        spread, near = [], []
        for _ in range(args.rounds):
            spread.append(wrk(urls, args.connections, args.duration / 2))
            near.append(wrk(local_urls, args.connections, args.duration / 2))
        ratios = " ".join(f"{n / s:.2f}" for n, s in zip(near, spread, strict=True))
        print(
            f"two nodes, both proxies, spread / prefer-local (median of {args.rounds} "
            f"alternating rounds): {statistics.median(spread):8.0f} / "
            f"{statistics.median(near):8.0f} req/s; prefer-local / spread per round: {ratios}"
        )
    finally:
        local.shutdown()
        instance.shutdown()
        cluster.close()


if __name__ == "__main__":
    main()
