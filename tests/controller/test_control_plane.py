"""The controller's core against a fake launcher: what an admin caller sees
(the call's answer or error, the routing snapshot, which replicas exist) when
backends are created, scaled, rolled, reconfigured, refused, crash and are
rolled back. Milliseconds each: no process, no socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from fake_launcher import FakeLauncher

from turnout._internal import validation
from turnout._internal.readiness import Readiness
from turnout.controller import replica_set
from turnout.controller.control_plane import ControlPlane, replica_digest
from turnout.controller.routing import RoutePublisher
from turnout.controller.store import REPLICA, BackendRecord, ChildRecord, MemoryStore
from turnout.errors import (
    AlreadyExistsError,
    CapacityError,
    InUseError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TurnoutError,
)
from turnout.v1 import controller_pb2 as pb

RUNNING = pb.REPLICA_STATE_RUNNING
FAILED = pb.REPLICA_STATE_FAILED
Scenario = Callable[[ControlPlane, FakeLauncher], Awaitable[None]]


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(replica_set, "RESTART_BACKOFF_INITIAL_S", 0.001)
    monkeypatch.setattr(replica_set, "RESTART_BACKOFF_MAX_S", 0.004)
    yield


def run(scenario: Scenario, store: MemoryStore | None = None) -> FakeLauncher:
    """Run ``scenario`` on a fresh control plane; every replica is stopped after."""
    launcher = FakeLauncher(store)

    async def main() -> None:
        plane = ControlPlane(launcher.store, launcher, RoutePublisher())
        try:
            await asyncio.wait_for(scenario(plane, launcher), 10)
        finally:
            await plane.stop()

    asyncio.run(main())
    assert launcher.live() == []
    return launcher


def create(
    tag: str, replicas: int = 1, path: str = "app:Model", **config: object
) -> pb.CreateBackendRequest:
    return pb.CreateBackendRequest(
        tag=tag,
        spec=pb.BackendSpec(import_path=path),
        config=pb.BackendConfig(num_replicas=replicas, **config),  # type: ignore[arg-type]
    )


def states(plane: ControlPlane, tag: str) -> dict[str, int]:
    return {r.replica_id: r.state for r in plane.list_replicas(tag)}


def targets(plane: ControlPlane, tag: str) -> list[str]:
    """The addresses the routing snapshot sends ``tag``'s requests to."""
    _, backends = plane.snapshot_parts()
    return sorted(r.address for b in backends if b.tag == tag for r in b.replicas)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_create_starts_the_replicas_and_routes_to_them() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        backend = await plane.create_backend(create("a", replicas=2))
        assert [r.state for r in backend.replicas] == [RUNNING, RUNNING]
        assert targets(plane, "a") == ["fake:1", "fake:2"]
        # Each replica got the backend's whole request as bytes, nothing on disk.
        assert {c.spec.tag for c in launcher.live()} == {"a"}
        assert launcher.live()[0].spec.spec.import_path == "app:Model"
        # A retry of the same call changes nothing.
        await plane.create_backend(create("a", replicas=2))
        assert len(launcher.children) == 2

    run(scenario)


def test_the_routing_snapshot_says_which_node_each_replica_runs_on() -> None:
    # What proxies preferring their own node's replicas go by.
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=1))
        launcher.node_id = "node-b"
        await plane.update_backend_config("a", pb.BackendConfig(num_replicas=2))
        _, backends = plane.snapshot_parts()
        assert [(t.replica_id, t.node) for t in backends[0].replicas] == [
            ("a#1", ""),
            ("a#2", "node-b"),
        ]

    run(scenario)


def test_scale_up_and_down_keeps_the_oldest_replicas() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=1))
        await plane.update_backend_config("a", pb.BackendConfig(num_replicas=3))
        assert states(plane, "a") == {"a#1": RUNNING, "a#2": RUNNING, "a#3": RUNNING}
        await plane.update_backend_config("a", pb.BackendConfig(num_replicas=1))
        assert list(states(plane, "a")) == ["a#1"]
        assert targets(plane, "a") == ["fake:1"]
        assert [c.name for c in launcher.live()] == ["a#1"]
        assert plane.get_backend("a").config.num_replicas == 1

    run(scenario)


def test_new_code_replaces_every_replica() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=2))
        await plane.update_backend("a", pb.BackendSpec(import_path="app:Better"))
        assert list(states(plane, "a")) == ["a#3", "a#4"]
        assert targets(plane, "a") == ["fake:3", "fake:4"]
        assert {c.spec.spec.import_path for c in launcher.live()} == {"app:Better"}
        assert plane.get_backend("a").spec.import_path == "app:Better"

    run(scenario)


def test_allowing_no_http_methods_at_all_replaces_the_replicas() -> None:
    # Unset (every public method) and an empty list (none) differ: the
    # replicas read it at start, so going from one to the other rolls them.
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a"))
        none = pb.BackendConfig(http_call_methods=pb.MethodNames(names=[]))
        await plane.update_backend_config("a", none)
        assert list(states(plane, "a")) == ["a#2"]
        assert launcher.live()[0].spec.config.HasField("http_call_methods")

    run(scenario)


def test_user_config_and_limits_change_running_replicas_in_place() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=2))
        update = pb.BackendConfig(user_config_json='{"threshold": 3}', max_concurrent_queries=7)
        await plane.update_backend_config("a", update)
        assert list(states(plane, "a")) == ["a#1", "a#2"]  # no restart
        assert sorted(name for name, _ in launcher.reconfigured) == ["a#1", "a#2"]
        request = launcher.reconfigured[0][1]
        assert (request.user_config_json, request.max_concurrent_queries) == ('{"threshold": 3}', 7)
        _, backends = plane.snapshot_parts()
        assert backends[0].max_concurrent_queries == 7
        # The running replicas are recorded as running the new config.
        digests = {c.record.digest for c in launcher.live()}
        assert len(digests) == 1 and digests != {""}

    run(scenario)


def test_a_backend_whose_replica_fails_to_start_is_refused_with_its_reason() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        launcher.refusals["app:Broken"] = Readiness.failed(
            "INVALID_ARGUMENT", "ZeroDivisionError in __init__"
        )
        with pytest.raises(InvalidArgumentError, match="cannot start: ZeroDivisionError"):
            await plane.create_backend(create("a", replicas=2, path="app:Broken"))
        with pytest.raises(NotFoundError):
            plane.get_backend("a")
        assert plane.list_replicas() == []
        assert plane.snapshot_parts() == ([], [])
        assert launcher.store.children() == {}

    run(scenario)


def test_a_crashed_replica_is_restarted_under_its_id() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=1))
        launcher.live()[0].exit(3)
        await until(lambda: len(launcher.live()) == 1 and states(plane, "a") == {"a#1": RUNNING})
        assert targets(plane, "a") == ["fake:2"]

    run(scenario)


def test_a_replica_that_cannot_start_again_stays_failed_with_its_reason_and_is_retried() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=1))
        launcher.refusals["app:Model"] = Readiness.failed("INTERNAL", "out of disk")
        launcher.live()[0].exit(1)
        await until(lambda: len(launcher.children) >= 4)  # retried, with backoff
        replica = plane.list_replicas("a")[0]
        assert (replica.replica_id, replica.state, replica.error) == ("a#1", FAILED, "out of disk")
        assert targets(plane, "a") == []
        del launcher.refusals["app:Model"]
        await until(lambda: states(plane, "a") == {"a#1": RUNNING})

    run(scenario)


def test_a_replica_failing_its_health_checks_is_replaced() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(
            create("a", health_check_period=0.1, health_check_failure_threshold=2)
        )
        launcher.live()[0].healthy = False
        await until(lambda: targets(plane, "a") == ["fake:2"])
        assert launcher.children[0].exited.result() == -9

    run(scenario)


def test_new_code_that_cannot_start_leaves_the_old_replicas_serving() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        launcher.refusals["app:Broken"] = Readiness.failed("INVALID_ARGUMENT", "SyntaxError")
        await plane.create_backend(create("a", replicas=2))
        with pytest.raises(InvalidArgumentError, match="SyntaxError"):
            await plane.update_backend("a", pb.BackendSpec(import_path="app:Broken"))
        assert list(states(plane, "a")) == ["a#1", "a#2"]
        assert targets(plane, "a") == ["fake:1", "fake:2"]
        assert plane.get_backend("a").spec.import_path == "app:Model"
        # Replicas started later still load the old code.
        await plane.update_backend_config("a", pb.BackendConfig(num_replicas=3))
        assert {c.spec.spec.import_path for c in launcher.live()} == {"app:Model"}

    run(scenario)


def test_a_refused_reconfigure_keeps_the_old_config() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=1))
        launcher.reconfigure_refusals["a#1"] = "ValueError: threshold must be > 0"
        with pytest.raises(InvalidArgumentError, match="threshold must be > 0"):
            await plane.update_backend_config("a", pb.BackendConfig(user_config_json='{"t": 0}'))
        assert not plane.get_backend("a").config.HasField("user_config_json")
        # Replicas started later do not load it either.
        await plane.update_backend_config("a", pb.BackendConfig(num_replicas=2))
        assert [c.spec.config.user_config_json for c in launcher.live()] == ["", ""]

    run(scenario)


def test_an_internal_start_failure_is_no_user_error() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        launcher.refusals["app:Model"] = Readiness.crashed()
        with pytest.raises(TurnoutError, match="a replica failed to start") as info:
            await plane.create_backend(create("a"))
        assert not isinstance(info.value, InvalidArgumentError)

    run(scenario)


def test_deleting_a_backend_stops_its_replicas() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a", replicas=2))
        await plane.delete_backend("a")
        assert launcher.live() == [] and plane.list_replicas() == []
        assert plane.snapshot_parts() == ([], [])

    run(scenario)


def test_recovery_adopts_live_recorded_replicas_and_starts_the_missing() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        # What a crashed controller left: its desired state and records of two
        # replicas, one of them still alive.
        record = BackendRecord(
            "a",
            pb.BackendSpec(import_path="app:Model"),
            validation.full_config(pb.BackendConfig(num_replicas=2)),
        )
        launcher.store.put_backend(record)
        spec = pb.CreateBackendRequest(tag="a", spec=record.spec).SerializeToString()
        for name in ("a#1", "a#2"):
            replica = ChildRecord(name, REPLICA, backend="a", digest=replica_digest(record))
            await launcher.start_replica(replica, spec, {})
        launcher.children[1].exit(None)
        await plane.recover(adopt=True)
        await until(lambda: list(states(plane, "a").values()) == [RUNNING, RUNNING])
        assert targets(plane, "a") == ["fake:1", "fake:3"]  # the live one adopted as it was
        assert len(launcher.live()) == 2

    run(scenario)


def test_endpoints_route_to_their_backends_and_a_used_backend_stays() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("a"))
        await plane.create_backend(create("b"))
        request = pb.CreateEndpointRequest(name="e", route="/e", backend="a", methods=["GET"])
        await plane.create_endpoint(request)
        await plane.create_endpoint(request)  # a retry: same answer
        with pytest.raises(AlreadyExistsError, match="already taken"):
            await plane.create_endpoint(pb.CreateEndpointRequest(name="f", route="/e", backend="a"))
        weights = [
            pb.TrafficWeight(backend="a", weight=0.75),
            pb.TrafficWeight(backend="b", weight=0.25),
        ]
        endpoint = await plane.set_traffic("e", weights)
        assert {t.backend: t.weight for t in endpoint.traffic} == {"a": 0.75, "b": 0.25}
        with pytest.raises(InUseError, match="used by endpoint"):
            await plane.delete_backend("b")
        await plane.set_traffic("e", [pb.TrafficWeight(backend="a", weight=1.0)])
        with pytest.raises(InvalidArgumentError, match="cannot shadow"):
            await plane.shadow_traffic("e", "a", 0.5)
        endpoint = await plane.shadow_traffic("e", "b", 0.5)
        assert [(s.backend, s.proportion) for s in endpoint.shadows] == [("b", 0.5)]
        endpoints, _ = plane.snapshot_parts()
        assert [(e.name, e.route, list(e.methods)) for e in endpoints] == [("e", "/e", ["GET"])]
        updated = await plane.update_endpoint(pb.UpdateEndpointRequest(name="e", route="/f"))
        assert updated.route == "/f" and plane.get_endpoint("e").route == "/f"
        await plane.delete_endpoint("e")
        assert plane.list_endpoints() == []
        await plane.delete_backend("b")
        assert [b.tag for b in plane.list_backends()] == ["a"]

    run(scenario)


def test_replicas_beyond_the_instance_limit_are_refused_and_nothing_starts() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        plane.max_replicas = 3
        await plane.create_backend(create("a", replicas=2))
        with pytest.raises(CapacityError, match="at most 3 replicas"):
            await plane.create_backend(create("b", replicas=2))
        with pytest.raises(CapacityError):
            await plane.update_backend_config("a", pb.BackendConfig(num_replicas=4))
        assert len(launcher.children) == 2

    run(scenario)


def test_config_the_code_cannot_honour_is_refused() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        launcher.capabilities = {"reconfigure": False, "batch_methods": []}
        await plane.create_backend(create("a"))
        with pytest.raises(InvalidArgumentError, match="accept_batch"):
            await plane.update_backend_config("a", pb.BackendConfig(max_batch_size=4))
        with pytest.raises(InvalidArgumentError, match="no reconfigure"):
            await plane.update_backend_config("a", pb.BackendConfig(user_config_json="{}"))

    run(scenario)


def test_pickled_code_is_refused_when_the_instance_takes_none() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        plane.allow_pickled_code = False
        request = pb.CreateBackendRequest(
            tag="a", spec=pb.BackendSpec(pickled_callable=b"\x80\x04N.")
        )
        with pytest.raises(PermissionDeniedError, match="does not accept pickled code"):
            await plane.create_backend(request)
        assert launcher.children == []

    run(scenario)


def test_an_endpoint_serves_an_app_when_a_backend_of_its_traffic_is_one() -> None:
    async def scenario(plane: ControlPlane, launcher: FakeLauncher) -> None:
        await plane.create_backend(create("handler"))
        app = create("app")
        app.spec.interface = pb.BACKEND_INTERFACE_WSGI
        await plane.create_backend(app)
        launcher.capabilities = {**launcher.capabilities, "interface": "asgi"}
        await plane.create_backend(create("detected"))
        request = pb.CreateEndpointRequest(name="e", route="/e", backend="handler")
        assert not (await plane.create_endpoint(request)).serves_app
        # A shadow answers no client: the route stays exact.
        assert not (await plane.shadow_traffic("e", "app", 0.5)).serves_app
        traffic = [pb.TrafficWeight(backend="handler", weight=0.5)]
        traffic.append(pb.TrafficWeight(backend="app", weight=0.5))
        assert (await plane.set_traffic("e", traffic)).serves_app
        only = [pb.TrafficWeight(backend="detected", weight=1)]
        assert (await plane.set_traffic("e", only)).serves_app
        endpoints, _ = plane.snapshot_parts()
        assert [e.serves_app for e in endpoints] == [True]

    run(scenario)
