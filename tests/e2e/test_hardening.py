"""What no admin call, replica count or handler can do to an instance: share
another backend's files, fork without bound, hang the controller on a value
exec() refuses, echo unbounded input, crash-loop on a tiny health period, outlive
its replica, or write unrotated output."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import pytest
import requests
from conftest import SMALL_MAX_REPLICAS, wait_until

import turnout
from turnout._internal import rpc
from turnout._internal.processes import start_time
from turnout.instance import LocalInstance
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

MiB = 2**20


@pytest.fixture(scope="module")
def stub(client: turnout.Client) -> Iterator[controller_pb2_grpc.ControllerServiceStub]:
    # The Python client's own channel options: it must be able to send up to
    # the controller's limit.
    with rpc.channel(
        client.controller_address, rpc.security_for(client.controller_address)
    ) as channel:
        yield controller_pb2_grpc.ControllerServiceStub(channel)


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def answering(tag: str) -> Callable[[Any], str]:
    def answer(request: Any) -> str:
        return tag

    return answer


def hello_spec() -> pb.BackendSpec:
    return pb.BackendSpec(pickled_callable=cloudpickle.dumps(answering("hello")))


# ---- 1. every backend has files of its own ------------------------------------


@pytest.mark.parametrize("kind", ["same safe characters", "same first 100 characters"])
def test_tags_alike_as_file_names_keep_their_own_code_after_a_restart(
    client: turnout.Client, unique: Callable[[str], str], kind: str
) -> None:
    base = unique("alike")
    if kind == "same safe characters":
        tags = [f"{base} x", f"{base}_x"]
    else:
        tags = [f"{base}{'a' * 150}1", f"{base}{'a' * 150}2"]
    endpoints = {tag: unique("alike-ep") for tag in tags}
    for tag in tags:
        client.create_backend(tag, answering(tag))
        client.create_endpoint(endpoints[tag], tag)
    first, second = tags
    (old,) = client.list_replicas(first)
    os.kill(old.pid, signal.SIGKILL)

    def restarted() -> bool:
        replicas = client.list_replicas(first)
        return any(r.state == "RUNNING" and r.pid != old.pid for r in replicas)

    wait_until(restarted)

    def answer_of(tag: str) -> str | None:
        try:
            result: str = client.get_handle(endpoints[tag]).remote().result(timeout=30)
            return result
        except turnout.TurnoutError:
            return None  # the handle's routes may still name the killed replica

    wait_until(lambda: answer_of(first) is not None)
    assert answer_of(first) == first
    assert answer_of(second) == second
    logs = {r.log_path for tag in tags for r in client.list_replicas(tag)}
    assert len(logs) == 2


# ---- 2. capacity -------------------------------------------------------------


def test_replicas_beyond_max_replicas_are_refused_before_any_starts(
    small: turnout.Client,
) -> None:
    small.create_backend("cap-a", answering("a"), config={"num_replicas": 2})
    try:
        with pytest.raises(turnout.CapacityError, match="max_replicas"):
            small.create_backend("cap-b", answering("b"), config={"num_replicas": 2})
        with pytest.raises(turnout.CapacityError):
            small.update_backend_config("cap-a", {"num_replicas": SMALL_MAX_REPLICAS + 1})
        with rpc.channel(
            small.controller_address, rpc.security_for(small.controller_address)
        ) as channel:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            request = pb.CreateBackendRequest(
                tag="cap-c", spec=hello_spec(), config=pb.BackendConfig(num_replicas=10000)
            )
            code, details = code_of(lambda: stub.CreateBackend(request, timeout=30))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            instance = stub.GetInstance(pb.GetInstanceRequest(), timeout=30)
            assert instance.max_replicas == SMALL_MAX_REPLICAS
        assert sorted(small.list_backends()) == ["cap-a"]
        assert len(small.list_replicas()) == 2
        # What fits still starts.
        small.update_backend_config("cap-a", {"num_replicas": SMALL_MAX_REPLICAS})
        assert len(small.list_replicas("cap-a")) == SMALL_MAX_REPLICAS
    finally:
        small.delete_backend("cap-a")


class Gated:
    """Its constructor waits (bounded) until the file ``gate`` exists."""

    def __init__(self, gate: str) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __call__(self, request: Any) -> str:
        return "gated"


def test_a_start_in_progress_holds_up_no_change_of_another_backend(
    small: turnout.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    small.create_backend("quick", answering("q"), config={"num_replicas": 2})
    creating = threading.Thread(target=small.create_backend, args=("gated", Gated, str(gate)))
    creating.start()
    try:
        wait_until(lambda: any(r.backend == "gated" for r in small.list_replicas()))
        scaling = threading.Thread(
            target=small.update_backend_config, args=("quick", {"num_replicas": 1})
        )
        scaling.start()
        # Done while the other backend is still starting (its gate is shut).
        wait_until(lambda: not scaling.is_alive())
        assert len(small.list_replicas("quick")) == 1
        assert not gate.exists() and creating.is_alive()
    finally:
        gate.touch()
        creating.join(60)
        for tag in ("quick", "gated"):
            if tag in small.list_backends():
                small.delete_backend(tag)
    assert small.list_backends() == {}


# ---- 3. replica options that exec() refuses fail fast ----------------------------


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"GOOD": "a\0b"}, "NUL"),
        ({"BIG": "x" * (4 * MiB)}, "at most"),
        ({"": "x"}, "not valid"),
        ({"A=B": "x"}, "not valid"),
        ({"NUL\0NAME": "x"}, "not valid"),
        ({f"V{i}": "x" * 30000 for i in range(10)}, "in all"),
    ],
)
def test_environments_exec_refuses_answer_invalid_argument_and_hold_nothing(
    client: turnout.Client,
    stub: controller_pb2_grpc.ControllerServiceStub,
    unique: Callable[[str], str],
    env: dict[str, str],
    reason: str,
) -> None:
    tag = unique("env")
    request = pb.CreateBackendRequest(
        tag=tag, spec=hello_spec(), replica_options=pb.ReplicaOptions(env=env)
    )
    code, details = code_of(lambda: stub.CreateBackend(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in details and len(details) < 1000
    # The admin lock was released and nothing was left behind.
    assert tag not in client.list_backends()
    assert all(r.backend != tag for r in client.list_replicas())


# ---- 4. limits of the admin API --------------------------------------------------


def test_admin_messages_are_read_up_to_64_mib_and_refused_beyond(
    stub: controller_pb2_grpc.ControllerServiceStub,
) -> None:
    def create(size: int) -> tuple[grpc.StatusCode, str]:
        spec = pb.BackendSpec(import_path="not a path", pickled_init_args=b"x" * size)
        request = pb.CreateBackendRequest(tag="big", spec=spec)
        return code_of(lambda: stub.CreateBackend(request, timeout=60))

    # Read whole (and refused for its content): the client's channel sends it.
    code, details = create(60 * MiB)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "import path" in details
    code, _ = create(70 * MiB)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


class Keeps:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self, request: Any) -> int:
        return len(self.data)


def test_a_call_too_large_for_the_controller_is_an_invalid_argument_not_capacity(
    client: turnout.Client,
) -> None:
    with pytest.raises(turnout.InvalidArgumentError, match="too large") as refused:
        client.create_backend("too-big", Keeps, b"x" * 70 * MiB)
    assert not isinstance(refused.value, turnout.CapacityError)
    assert "too-big" not in client.list_backends()


@pytest.mark.parametrize(
    "make",
    [
        lambda: pb.CreateBackendRequest(tag="t" * 201, spec=hello_spec()),
        lambda: pb.CreateEndpointRequest(name="e", route="/" + "r" * 1024),
        lambda: pb.CreateEndpointRequest(name="e", methods=["GET"] * 20),
        lambda: pb.CreateBackendRequest(
            tag="deep-args",
            spec=pb.BackendSpec(
                import_path="importable_backends:Greeter",
                init_args_json="[" * 5000 + "]" * 5000,
            ),
        ),
        lambda: pb.CreateBackendRequest(
            tag="deep-config",
            spec=hello_spec(),
            config=pb.BackendConfig(user_config_json='{"a":' * 5000 + "1" + "}" * 5000),
        ),
        lambda: pb.CreateBackendRequest(
            tag="hc", spec=hello_spec(), config=pb.BackendConfig(health_check_period=1e-6)
        ),
        lambda: pb.CreateBackendRequest(
            tag="hc", spec=hello_spec(), config=pb.BackendConfig(health_check_period=1e9)
        ),
        lambda: pb.CreateBackendRequest(
            tag="gs", spec=hello_spec(), config=pb.BackendConfig(graceful_shutdown_timeout=1e300)
        ),
        lambda: pb.CreateBackendRequest(
            tag="ht", spec=hello_spec(), config=pb.BackendConfig(health_check_timeout=0)
        ),
    ],
    ids=[
        "tag",
        "route",
        "methods",
        "nested-init-args",
        "nested-user-config",
        "tiny-health-period",
        "huge-health-period",
        "huge-grace",
        "zero-health-timeout",
    ],
)
def test_unbounded_values_are_invalid_arguments(
    stub: controller_pb2_grpc.ControllerServiceStub, make: Callable[[], Any]
) -> None:
    request = make()
    method = stub.CreateBackend if isinstance(request, pb.CreateBackendRequest) else None
    call = method or stub.CreateEndpoint
    code, details = code_of(lambda: call(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert len(details) < 400


def test_errors_repeat_at_most_100_characters_of_the_input(
    stub: controller_pb2_grpc.ControllerServiceStub,
) -> None:
    code, details = code_of(
        lambda: stub.GetBackend(pb.GetBackendRequest(tag="n" * 1_000_000), timeout=30)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "…" in details and len(details) < 200


# ---- 5. health checks and shadows ------------------------------------------------


class SlowCheck:
    """Its check takes longer than the check period, within the check timeout."""

    def __init__(self) -> None:
        self.checks = 0

    def check_health(self) -> None:
        self.checks += 1
        time.sleep(0.5)

    def __call__(self, request: Any) -> dict[str, int]:
        return {"checks": self.checks, "pid": os.getpid()}


def test_a_check_longer_than_its_period_passes_within_its_timeout(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    name = unique("slow-check")
    config = {
        "health_check_period": 0.2,
        "health_check_timeout": 5.0,
        "health_check_failure_threshold": 2,
    }
    client.create_backend(name, SlowCheck, config=config)
    client.create_endpoint(name, name)
    handle = client.get_handle(name)
    first = handle.remote().result(timeout=30)
    # A replica whose checks timed out after the period would be replaced
    # after two checks, and its count start again.
    wait_until(lambda: handle.remote().result(timeout=30)["checks"] >= 4)
    assert handle.remote().result(timeout=30)["pid"] == first["pid"]
    assert turnout.BackendConfig.coerce(config).health_check_timeout == 5.0
    assert client.get_backend_config(name).health_check_timeout == 5.0


def test_a_primary_cannot_shadow_its_own_endpoint_and_a_promoted_shadow_is_dropped(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    primary, shadow, endpoint = unique("primary"), unique("shadow"), unique("shadowed")
    client.create_backend(primary, answering("p"))
    client.create_backend(shadow, answering("s"))
    client.create_endpoint(endpoint, primary)
    with pytest.raises(turnout.InvalidArgumentError, match="cannot shadow"):
        client.shadow_traffic(endpoint, primary, 0.5)
    client.shadow_traffic(endpoint, shadow, 0.5)
    assert client.list_endpoints()[endpoint]["shadows"] == {shadow: 0.5}
    # Promoted: it serves its share and no longer gets copies on top.
    client.set_traffic(endpoint, {primary: 0.5, shadow: 0.5})
    assert client.list_endpoints()[endpoint]["shadows"] == {}
    assert client.list_endpoints()[endpoint]["traffic"] == {primary: 0.5, shadow: 0.5}


# ---- 8. memory limit -------------------------------------------------------------

MEMORY_LIMIT = 256 * MiB


def allocate_ten_times_the_limit(request: Any) -> int:
    block = bytearray(10 * MEMORY_LIMIT)
    return len(block)


def test_a_replica_over_its_memory_limit_fails_cleanly_and_comes_back(
    client: turnout.Client, unique: Callable[[str], str], http: requests.Session
) -> None:
    name = unique("hungry")
    client.create_backend(
        name, allocate_ten_times_the_limit, replica_options={"memory": MEMORY_LIMIT}
    )
    client.create_endpoint(name, name, route=f"/{name}")
    (before,) = client.list_replicas(name)
    reply = http.get(f"{client.http_address}/{name}", timeout=60)
    assert reply.status_code in (500, 502)
    assert reply.json()["error"]
    errors: set[str] = set()

    def back() -> bool:
        replicas = client.list_replicas(name)
        errors.update(r.error for r in replicas)
        return any(r.state == "RUNNING" and r.pid != before.pid for r in replicas)

    wait_until(back, interval=0.05)
    assert "exceeded memory limit of 256 MiB" in errors


# ---- 9. a replica's process tree stops with it ------------------------------------


def spawn_sleep(request: Any) -> int:
    return subprocess.Popen(["sleep", "1000"]).pid


def test_processes_a_handler_started_stop_with_its_backend(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    name = unique("spawner")
    client.create_backend(name, spawn_sleep)
    client.create_endpoint(name, name)
    pid = client.get_handle(name).remote().result(timeout=30)
    assert start_time(pid) is not None
    client.delete_endpoint(name)
    client.delete_backend(name)
    wait_until(lambda: start_time(pid) is None)


def test_processes_a_handler_started_stop_with_a_replica_adopted_after_a_crash() -> None:
    # The owner restarts its killed controller, which adopts the replica (it is
    # not its child): stopping it must still stop the group.
    instance = LocalInstance.start("127.0.0.1", 0)
    own = turnout.Client(instance.address, _instance=instance)
    try:
        own.create_backend("spawner", spawn_sleep)
        own.create_endpoint("spawner", "spawner")
        pid = own.get_handle("spawner").remote().result(timeout=30)
        assert start_time(pid) is not None
        os.kill(own.controller_pid, signal.SIGKILL)
        # Admin calls wait for the restarted controller.
        own.delete_endpoint("spawner")
        own.delete_backend("spawner")
        wait_until(lambda: start_time(pid) is None)
    finally:
        own.shutdown()


# ---- 10. output to file descriptors 1 and 2 rotates --------------------------------

LOG_BOUND = 200_000


def write_to_descriptors(request: Any) -> int:
    line = b"x" * 999 + b"\n"
    for _ in range(2500):
        os.write(1, line)
        os.write(2, line)
    return 0


def test_writes_to_descriptors_one_and_two_are_rotated_with_the_log(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    name = unique("chatty")
    client.create_backend(
        name,
        write_to_descriptors,
        replica_options={"env": {"TURNOUT_LOG_MAX_BYTES": str(LOG_BOUND)}},
    )
    client.create_endpoint(name, name)
    client.get_handle(name).remote().result(timeout=60)
    (replica,) = client.list_replicas(name)
    log = Path(replica.log_path)
    # 5 MB written: the log rotated, and rotated files are kept as configured.
    wait_until(lambda: log.with_name(log.name + ".5").exists())
    sizes = {p.name: p.stat().st_size for p in log.parent.iterdir()}
    assert all(size <= LOG_BOUND + 2000 for size in sizes.values()), sizes
