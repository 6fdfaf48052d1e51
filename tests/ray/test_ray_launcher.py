"""Replicas as Ray actors (controller/launchers/ray.py) on the two-node test
cluster: placed on both nodes, each bound to and advertising its own node's
address, answering through the proxy; a replica no node can hold is refused."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator

import pytest
import requests
from netns_cluster import HEAD_IP, WORKER_IP, TurnoutOnRay

import turnout
from turnout.errors import InvalidArgumentError

REQUESTS = 60


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


def hosts_of(client: turnout.Client, backend: str) -> list[str]:
    return sorted(r.address.rpartition(":")[0] for r in client.list_replicas(backend))


def test_replicas_land_on_both_nodes_and_answer_through_the_proxy(
    client: turnout.Client, turnout_on_ray: TurnoutOnRay
) -> None:
    client.create_backend("who", whoami, config={"num_replicas": 2})
    client.create_endpoint("who", backend="who", route="/who")
    # Each replica advertises its own node's address (never 0.0.0.0 or loopback).
    assert hosts_of(client, "who") == [HEAD_IP, WORKER_IP]
    by_pid = {r.pid: r.address.rpartition(":")[0] for r in client.list_replicas("who")}
    seen: collections.Counter[str] = collections.Counter()
    with requests.Session() as http:
        for _ in range(REQUESTS):
            reply = http.get(f"{turnout_on_ray.http_address}/who", timeout=30)
            assert reply.status_code == 200, reply.text
            seen[by_pid[reply.json()["pid"]]] += 1
    # The proxy on the head reaches the worker's replica at its advertised address.
    assert set(seen) == {HEAD_IP, WORKER_IP}


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


def test_a_backend_bigger_than_every_node_is_refused(client: turnout.Client) -> None:
    with pytest.raises(InvalidArgumentError, match="more than any"):
        client.create_backend("huge", whoami, replica_options={"num_cpus": 64})
    assert "huge" not in client.list_backends()
