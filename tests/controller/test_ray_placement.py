"""The Ray launcher's placement rules (choose_node, check_placement) with the
per-backend options: custom resources, node selector, max_replicas_per_node.
Plain data, no Ray: the real cluster runs in tests/ray."""

from __future__ import annotations

import pytest

from turnout.controller.launchers.base import SpawnError
from turnout.controller.launchers.ray import (
    NodeInfo,
    Request,
    check_placement,
    choose_node,
)
from turnout.controller.resources import ResourcePool
from turnout.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb


def node(
    name: str, cpus: float = 4, labels: dict[str, str] | None = None, **custom: float
) -> NodeInfo:
    total = {"CPU": cpus, **custom}
    return NodeInfo(
        node_id=name, ip=f"10.0.0.{name[-1]}", total=total, free=dict(total), labels=labels or {}
    )


HEAD, WORKER = node("n1", labels={"zone": "a"}), node("n2", labels={"zone": "b"}, accel=2)


def test_a_custom_resource_places_the_replica_on_the_node_that_has_it() -> None:
    request = Request(resources={"accel": 1})
    assert choose_node(request, [HEAD, WORKER], placed={"n2": 5}) is WORKER


def test_a_custom_resource_no_node_has_is_refused() -> None:
    with pytest.raises(SpawnError, match="accel=3") as caught:
        choose_node(Request(resources={"accel": 3}), [HEAD, WORKER], placed={})
    assert caught.value.code == "INVALID_ARGUMENT"


def test_a_node_selector_matches_labels_or_the_node_ip() -> None:
    assert choose_node(Request(node_selector={"zone": "a"}), [HEAD, WORKER], {"n1": 9}) is HEAD
    by_ip = Request(node_selector={"node_ip": "10.0.0.2"})
    assert choose_node(by_ip, [HEAD, WORKER], {"n2": 9}) is WORKER
    with pytest.raises(SpawnError, match="matches none") as caught:
        choose_node(Request(node_selector={"zone": "c"}), [HEAD, WORKER], {})
    assert caught.value.code == "INVALID_ARGUMENT"


def test_max_replicas_per_node_skips_full_nodes_and_refuses_when_all_are() -> None:
    request = Request(max_per_node=1)
    # The instance's other replicas are on n2, but n1 already has one of this backend's.
    assert choose_node(request, [HEAD, WORKER], {"n2": 3}, mine={"n1": 1}) is WORKER
    with pytest.raises(SpawnError, match="max_replicas_per_node=1") as caught:
        choose_node(request, [HEAD, WORKER], {}, mine={"n1": 1, "n2": 1})
    assert caught.value.code == "RESOURCE_EXHAUSTED"


def test_check_placement_refuses_what_the_cluster_can_never_take() -> None:
    check_placement(Request(max_per_node=1), [HEAD, WORKER], 2)
    with pytest.raises(SpawnError, match="3 replicas with max_replicas_per_node=1 need 3 nodes"):
        check_placement(Request(max_per_node=1), [HEAD, WORKER], 3)
    # Only the worker has the resource: one node's worth.
    with pytest.raises(SpawnError, match="has 1 that can take them"):
        check_placement(Request(resources={"accel": 1}, max_per_node=1), [HEAD, WORKER], 2)


def test_a_one_machine_instance_refuses_the_ray_options() -> None:
    pool = ResourcePool(cpus=[0, 1], gpus=[])
    for options in (
        pb.ReplicaOptions(resources={"accel": 1}),
        pb.ReplicaOptions(node_selector={"zone": "a"}),
        pb.ReplicaOptions(runtime_env_json='{"pip": ["six"]}'),
        pb.ReplicaOptions(max_replicas_per_node=1),
    ):
        with pytest.raises(InvalidArgumentError, match="need a Ray instance"):
            pool.check_placement(options, total=2)
    # At most as many per node as there are replicas changes nothing on one machine.
    pool.check_placement(pb.ReplicaOptions(max_replicas_per_node=2), total=2)
