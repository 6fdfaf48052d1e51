"""Route table and replica pool of the sender, without sockets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from turnout._sending.replica_pool import ReplicaPool
from turnout._sending.route_table import RouteTable
from turnout.v1 import controller_pb2 as pb


def snapshot(
    version: int = 1,
    traffic: dict[str, float] | None = None,
    replicas: dict[str, list[str]] | None = None,
) -> pb.RoutingSnapshot:
    traffic = {"a": 1.0} if traffic is None else traffic
    replicas = {"a": ["127.0.0.1:1"]} if replicas is None else replicas
    return pb.RoutingSnapshot(
        version=version,
        endpoints=[
            pb.Endpoint(
                name="model",
                route="/model",
                methods=["GET", "POST"],
                traffic=[pb.TrafficWeight(backend=b, weight=w) for b, w in traffic.items()],
            ),
            pb.Endpoint(name="internal", methods=["GET"]),
        ],
        backends=[
            pb.BackendTargets(
                tag=tag,
                replicas=[
                    pb.ReplicaTarget(replica_id=f"{tag}#{i}", address=a)
                    for i, a in enumerate(addresses)
                ],
            )
            for tag, addresses in replicas.items()
        ],
    )


def test_routes_match_exactly() -> None:
    table = RouteTable.from_snapshot(snapshot())
    route = table.match("/model")
    assert route is not None and route.name == "model"
    for path in ("/model/", "/model/x", "/mode", "/", "/Model"):
        assert table.match(path) is None
    # HEAD comes with GET, as in Flask.
    assert route.allow == "GET, POST, HEAD"
    assert "HEAD" in route.methods and "DELETE" not in route.methods


def test_endpoints_without_route_are_not_on_http() -> None:
    table = RouteTable.from_snapshot(snapshot())
    assert set(table.describe()["routes"]) == {"/model"}
    assert table.ray_routes() == {"/model": ["model", ["GET", "POST"]]}


def test_weighted_choice_is_statistically_right() -> None:
    table = RouteTable.from_snapshot(snapshot(traffic={"a": 0.2, "b": 0.8}))
    route = table.match("/model")
    assert route is not None
    rng = random.Random(7)
    counts = Counter(route.choose_backend(rng) for _ in range(10_000))
    assert set(counts) == {"a", "b"}
    assert abs(counts["a"] / 10_000 - 0.2) < 0.02


def test_zero_weight_backends_get_nothing_and_no_traffic_means_none() -> None:
    route = RouteTable.from_snapshot(snapshot(traffic={"a": 0.0, "b": 1.0})).match("/model")
    assert route is not None
    rng = random.Random(1)
    assert {route.choose_backend(rng) for _ in range(1000)} == {"b"}
    empty = RouteTable.from_snapshot(snapshot(traffic={})).match("/model")
    assert empty is not None and empty.choose_backend(rng) is None


def test_pool_picks_the_least_loaded_replica() -> None:
    pool: ReplicaPool = ReplicaPool()
    pool.update(snapshot(replicas={"a": ["h:1", "h:2", "h:3"]}))
    one, two, three = pool.replicas("a")
    one.outstanding, two.outstanding, three.outstanding = 3, 1, 2
    rng = random.Random(0)
    assert {pool.pick("a", rng) for _ in range(50)} == {two}
    two.outstanding = 3
    assert {pool.pick("a", rng) for _ in range(200)} == {three}
    three.outstanding = 3
    # All equal: every replica gets its turn.
    assert {pool.pick("a", rng) for _ in range(200)} == {one, two, three}


def test_pool_follows_snapshots_and_keeps_live_connections() -> None:
    pool: ReplicaPool = ReplicaPool()
    pool.update(snapshot(replicas={"a": ["h:1", "h:2"]}))
    kept = pool.replicas("a")[0]
    kept.outstanding = 4
    gone = pool.update(snapshot(version=2, replicas={"a": ["h:1", "h:3"], "b": ["h:4"]}))
    assert [c.address for c in gone] == ["h:2"]
    assert pool.replicas("a")[0] is kept and kept.outstanding == 4
    assert [c.address for c in pool.replicas("a")] == ["h:1", "h:3"]
    assert pool.pick("b", random.Random()) is not None
    assert pool.pick("missing", random.Random()) is None


@pytest.mark.parametrize("backends", [{}, {"a": []}])
def test_no_replicas_means_none(backends: dict[str, list[str]]) -> None:
    pool: ReplicaPool = ReplicaPool()
    pool.update(snapshot(replicas=backends))
    assert pool.pick("a", random.Random()) is None


def test_shard_keys_pick_backends_by_weight_and_stably() -> None:
    route = RouteTable.from_snapshot(snapshot(traffic={"a": 0.25, "b": 0.75})).match("/model")
    assert route is not None
    rng = random.Random(3)
    first = {f"k{i}": route.choose_backend(rng, f"k{i}") for i in range(4000)}
    again = {f"k{i}": route.choose_backend(random.Random(9), f"k{i}") for i in range(4000)}
    assert first == again
    share_a = sum(1 for b in first.values() if b == "a") / len(first)
    assert abs(share_a - 0.25) < 0.03


def test_rendezvous_hashing_moves_only_keys_won_by_a_new_replica() -> None:
    pool: ReplicaPool = ReplicaPool()
    pool.update(snapshot(replicas={"a": ["h:1", "h:2", "h:3"]}))
    rng = random.Random()
    keys = [f"user-{i}" for i in range(3000)]
    before = {k: pool.pick("a", rng, k).replica_id for k in keys}  # type: ignore[union-attr]
    assert len(set(before.values())) == 3
    pool.update(snapshot(version=2, replicas={"a": ["h:1", "h:2", "h:3", "h:4"]}))
    after = {k: pool.pick("a", rng, k).replica_id for k in keys}  # type: ignore[union-attr]
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "a#3" for k in moved)
    assert abs(len(moved) / len(keys) - 0.25) < 0.05


def test_shadow_selection_follows_proportions() -> None:
    endpoint = pb.Endpoint(
        name="m",
        route="/m",
        methods=["GET"],
        shadows=[pb.ShadowTarget(backend="s1", proportion=1.0),
                 pb.ShadowTarget(backend="s2", proportion=0.1)],
    )  # fmt: skip
    route = RouteTable.from_snapshot(pb.RoutingSnapshot(endpoints=[endpoint])).match("/m")
    assert route is not None
    rng = random.Random(5)
    draws = [route.choose_shadows(rng) for _ in range(5000)]
    assert all("s1" in d for d in draws)
    assert abs(sum("s2" in d for d in draws) / 5000 - 0.1) < 0.02
