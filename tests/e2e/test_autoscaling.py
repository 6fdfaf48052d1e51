"""Autoscaling with real processes and real load: a step from one to eight
concurrent slow clients scales a backend up within its delays, and back down
once the load stops, with no failed request; min and max hold; a restarted
controller keeps the config and the count it had decided."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import requests
from conftest import wait_until
from test_recovery import Durable

import turnout
from turnout._internal import rpc
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

# Load: at most this many clients, each for at most this long.
CLIENTS = 8
LOAD_LIMIT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


class Load:
    """``clients`` threads GETting ``url`` back to back until stopped (or
    ``LOAD_LIMIT_S`` passed); keeps who answered and every failure."""

    def __init__(self, url: str, clients: int = CLIENTS) -> None:
        self.url = url
        self.answers: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        give_up = time.monotonic() + LOAD_LIMIT_S
        with requests.Session() as session:
            while not self._stop.is_set() and time.monotonic() < give_up:
                try:
                    reply = session.get(self.url, timeout=REQUEST_TIMEOUT_S)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    continue
                if reply.status_code != 200:
                    self.failures.append(f"{reply.status_code} {reply.text[:200]}")
                else:
                    self.answers.append(int(reply.text))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 5)


def _slow_pid(seconds: float) -> Callable[[], int]:
    def slow() -> int:
        time.sleep(seconds)
        return os.getpid()

    return slow


def _gauge(client: turnout.Client, name: str, backend: str) -> float | None:
    text = requests.get(f"{client.http_address}/-/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{backend="{backend}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_load_step_scales_up_within_the_delays_and_back_down_without_failures(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    name = unique("scaled")
    rules = {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        "look_back_period_s": 2,
    }
    client.create_backend(name, _slow_pid(0.25), config={"autoscaling_config": rules})
    client.create_endpoint(name, name, route=f"/{name}")
    status = client.autoscaling_status(name)
    assert status is not None
    assert (status["desired_replicas"], status["running_replicas"]) == (1, 1)
    assert status["last_decision"] is None
    seen: list[int] = []

    def desired() -> int:
        status = client.autoscaling_status(name)
        assert status is not None
        seen.append(status["desired_replicas"])
        return int(status["running_replicas"])

    with Load(f"{client.http_address}/{name}") as load:
        # 8 in flight at a target of 2 asks for 4: max_replicas caps it at 3.
        wait_until(lambda: desired() == 3, timeout=45, interval=0.25)
        assert _gauge(client, "turnout_backend_desired_replicas", name) == 3
        served_by = len(load.answers)
        wait_until(lambda: len(set(load.answers[served_by:])) == 3, timeout=20)
        status = client.autoscaling_status(name)
        assert status is not None and status["last_decision"] == "up"
        assert "-> 3" in (status["last_reason"] or "")
    assert max(seen) == 3
    # No load: after downscale_delay_s, back to min_replicas, drained first.
    wait_until(lambda: desired() == 1, timeout=45, interval=0.25)
    status = client.autoscaling_status(name)
    assert status is not None and status["last_decision"] == "down"
    # The replicas removed leave once drained.
    wait_until(lambda: [r.state for r in client.list_replicas(name)] == ["RUNNING"], timeout=30)
    assert min(seen) == 1
    assert load.failures == []
    assert len(load.answers) > CLIENTS
    client.delete_endpoint(name)
    client.delete_backend(name)


def test_a_restarted_controller_keeps_the_config_and_the_decided_count(tmp_path: Path) -> None:
    durable = Durable(tmp_path)
    try:
        client = durable.start()
        rules = {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0,
            "downscale_delay_s": 3600,
            "look_back_period_s": 1,
        }
        client.create_backend("kept", _slow_pid(0.5), config={"autoscaling_config": rules})
        client.create_endpoint("kept", "kept", route="/kept")

        def running() -> int:
            status = client.autoscaling_status("kept")
            assert status is not None
            return int(status["running_replicas"])

        with Load(f"{client.http_address}/kept", clients=3) as load:
            wait_until(lambda: running() == 2, timeout=45, interval=0.25)
        assert load.failures == []
        pids = sorted(r.pid for r in client.list_replicas("kept"))
        durable.kill_controller()
        client = durable.start()
        config = client.get_backend_config("kept")
        assert config.autoscaling == {**rules, "target_ongoing_requests": 1.0}
        assert config.num_replicas is None
        status = client.autoscaling_status("kept")
        assert status is not None
        assert (status["desired_replicas"], status["running_replicas"]) == (2, 2)
        assert sorted(r.pid for r in client.list_replicas("kept")) == pids
    finally:
        durable.cleanup()


def test_load_through_handles_scales_too(
    client: turnout.Client, unique: Callable[[str], str]
) -> None:
    name = unique("handled")
    rules = {"max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0.5}
    client.create_backend(name, _slow_pid(0.25), config={"autoscaling_config": rules})
    client.create_endpoint(name, name)  # no route: handles only
    handle = client.get_handle(name)
    stop = threading.Event()
    failures: list[str] = []
    give_up = time.monotonic() + LOAD_LIMIT_S

    def call() -> None:
        while not stop.is_set() and time.monotonic() < give_up:
            try:
                handle.remote().result(timeout=REQUEST_TIMEOUT_S)
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=call, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:

        def running() -> int:
            status = client.autoscaling_status(name)
            assert status is not None
            return int(status["running_replicas"])

        wait_until(lambda: running() == 2, timeout=45, interval=0.25)
    finally:
        stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
    assert failures == []
    client.delete_endpoint(name)
    client.delete_backend(name)


def test_bad_autoscaling_configs_are_refused_over_grpc_and_in_python(
    client: turnout.Client,
) -> None:
    config = pb.BackendConfig(
        num_replicas=2, autoscaling=pb.AutoscalingConfig(min_replicas=1, max_replicas=3)
    )
    cases = {
        "mutually exclusive": config,
        "must be >= min_replicas": pb.BackendConfig(
            autoscaling=pb.AutoscalingConfig(min_replicas=3, max_replicas=2)
        ),
        "target_ongoing_requests must be a number > 0": pb.BackendConfig(
            autoscaling=pb.AutoscalingConfig(target_ongoing_requests=-1)
        ),
    }
    spec = pb.BackendSpec(import_path="importable_backends:shout")
    with rpc.channel(
        client.controller_address, rpc.security_for(client.controller_address)
    ) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        for message, wrong in cases.items():
            request = pb.CreateBackendRequest(tag="never-made", spec=spec, config=wrong)
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateBackend(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (caught.value.details() or "")
    with pytest.raises(turnout.InvalidArgumentError, match="mutually exclusive"):
        client.create_backend(
            "never-made",
            _slow_pid(0),
            config={"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}},
        )
    assert "never-made" not in client.list_backends()
