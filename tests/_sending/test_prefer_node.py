"""A proxy that prefers its own node's replicas (``ReplicaPool.prefer_node``,
``--ray-prefer-local-replicas``), without sockets."""

from __future__ import annotations

import random

from turnout._sending.replica_pool import ReplicaPool
from turnout.v1 import controller_pb2 as pb


def two_nodes(limit: int = 2) -> pb.RoutingSnapshot:
    """Backend "a": a#0 and a#1 on node "n1", a#2 and a#3 on node "n2"."""
    placed = [("h1:1", "n1"), ("h1:2", "n1"), ("h2:1", "n2"), ("h2:2", "n2")]
    return pb.RoutingSnapshot(
        version=1,
        backends=[
            pb.BackendTargets(
                tag="a",
                max_concurrent_queries=limit,
                replicas=[
                    pb.ReplicaTarget(replica_id=f"a#{i}", address=address, node=node)
                    for i, (address, node) in enumerate(placed)
                ],
            )
        ],
    )


def picked(pool: ReplicaPool, times: int = 200, **kwargs: object) -> set[str]:
    rng = random.Random(1)
    chosen = set()
    for _ in range(times):
        conn = pool.pick("a", rng, **kwargs)  # type: ignore[arg-type]
        chosen.add("none" if conn is None else conn.replica_id)
    return chosen


def test_without_a_preference_every_node_gets_requests() -> None:
    pool = ReplicaPool()
    pool.update(two_nodes())
    assert picked(pool) == {"a#0", "a#1", "a#2", "a#3"}


def test_a_preferring_pool_sends_only_to_its_node_while_it_has_room() -> None:
    pool = ReplicaPool(prefer_node="n2")
    pool.update(two_nodes())
    assert {c.node for c in pool.replicas("a")} == {"n1", "n2"}
    assert picked(pool) == {"a#2", "a#3"}
    # Busier than the other node's replicas, but with room: still local.
    one, two, three, four = pool.replicas("a")
    three.outstanding = 1
    assert picked(pool) == {"a#3"}
    four.outstanding = 1
    assert picked(pool) == {"a#2", "a#3"}


def test_full_local_replicas_fall_back_to_the_other_nodes() -> None:
    pool = ReplicaPool(prefer_node="n2")
    pool.update(two_nodes(limit=2))
    _, two, three, four = pool.replicas("a")
    three.outstanding = four.outstanding = 2
    two.outstanding = 1
    # The least loaded of all replicas then, as without a preference.
    assert picked(pool) == {"a#0"}
    one = pool.replicas("a")[0]
    one.outstanding = two.outstanding = 2
    assert picked(pool) == {"none"}


def test_a_node_without_replicas_or_a_failed_local_one_falls_back() -> None:
    pool = ReplicaPool(prefer_node="n3")
    pool.update(two_nodes())
    assert picked(pool) == {"a#0", "a#1", "a#2", "a#3"}
    pool.prefer_node = "n2"
    # A retry excludes the replicas it failed on: the other local one, then others.
    assert picked(pool, exclude=frozenset({"a#2"})) == {"a#3"}
    assert picked(pool, exclude=frozenset({"a#2", "a#3"})) == {"a#0", "a#1"}


def test_shard_keys_keep_their_replica_whatever_its_node() -> None:
    plain, preferring = ReplicaPool(), ReplicaPool(prefer_node="n1")
    plain.update(two_nodes())
    preferring.update(two_nodes())
    rng = random.Random()
    for i in range(200):
        key = f"user-{i}"
        a, b = plain.pick("a", rng, key), preferring.pick("a", rng, key)
        assert a is not None and b is not None and a.replica_id == b.replica_id


def test_a_local_instance_has_no_nodes_and_no_preference() -> None:
    # Replicas of an instance without Ray carry node "": a proxy there has
    # no --node-id, so prefer_node stays "" and nothing changes.
    pool = ReplicaPool()
    snapshot = two_nodes()
    for target in snapshot.backends[0].replicas:
        target.node = ""
    pool.update(snapshot)
    assert pool.prefer_node == ""
    assert picked(pool) == {"a#0", "a#1", "a#2", "a#3"}
