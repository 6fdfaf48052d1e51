"""`python -m turnout.replica` as a real process on a real port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from turnout._internal import readiness, rpc
from turnout._internal.readiness import Readiness
from turnout.v1 import controller_pb2, http_pb2, replica_pb2, replica_pb2_grpc

READY_TIMEOUT = 60.0


def model_class() -> type:
    """A class defined in a function, so cloudpickle sends it by value."""

    class Model:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix
            self.calls = 0

        def __call__(self, request: Any) -> Any:
            self.calls += 1
            if request.args.get("sleep"):
                # Tells the test the call is in flight (the cwd is its tmp_path).
                Path("started").touch()
                time.sleep(float(request.args["sleep"]))
            if request.args.get("fail"):
                raise RuntimeError("handler failed on purpose")
            return {"reply": f"{self.prefix} {request.path}", "calls": self.calls}

        def predict(self, request: Any) -> Any:
            return {"data": request.data, "args": dict(request.args), "method": request.method}

    return Model


def broken_class() -> type:
    class RequestHandler:
        def __init__(self) -> None:
            1 / 0  # noqa: B018

    return RequestHandler


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    report: Readiness
    log: Path

    def log_text(self) -> str:
        return self.log.read_text()


def start_replica(
    tmp_path: Path, backend: type, init_args: tuple[Any, ...] = (), ready_fd: bool = True
) -> Replica:
    spec_file = tmp_path / "spec.pb"
    spec_file.write_bytes(
        controller_pb2.CreateBackendRequest(
            tag="model",
            spec=controller_pb2.BackendSpec(
                pickled_callable=cloudpickle.dumps(backend),
                pickled_init_args=cloudpickle.dumps(init_args),
            ),
        ).SerializeToString()
    )
    argv = [sys.executable, "-m", "turnout.replica", "--spec-file", str(spec_file)]
    argv += ["--replica-id", "model#1", "--parent-pid", str(os.getpid())]
    log = tmp_path / "replica.log"
    read_fd, write_fd = os.pipe()
    if ready_fd:
        argv += ["--ready-fd", str(write_fd)]
    with log.open("wb") as stderr:
        process = subprocess.Popen(argv, pass_fds=(write_fd,), stderr=stderr, cwd=tmp_path)
    os.close(write_fd)
    # Without --ready-fd the pipe closes when the process exits: still a report.
    report = readiness.read(read_fd, READY_TIMEOUT)
    return Replica(process, report, log)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    started = start_replica(tmp_path, model_class(), ("hello",))
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
        started.process.wait(timeout=30)


@pytest.fixture
def channel(replica: Replica) -> Iterator[grpc.Channel]:
    assert replica.report.ok, replica.log_text()
    with rpc.channel(replica.report.address, rpc.Security()) as channel:
        yield channel


def test_replica_reports_its_address_and_pid(replica: Replica) -> None:
    assert replica.report.ok is True, replica.log_text()
    host, port = replica.report.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert replica.report.pid == replica.process.pid


def test_health_says_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "turnout.v1.ReplicaService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_handle_http_and_python_calls(channel: grpc.Channel, replica: Replica) -> None:
    stub = replica_pb2_grpc.ReplicaServiceStub(channel)
    http = http_pb2.HttpRequest(method="GET", scheme="http", host="localhost:8000", path="/a%20b")
    answer = stub.Handle(replica_pb2.HandleRequest(request_id="r1", http=http), timeout=10)
    assert answer.http.status == 200
    assert json.loads(answer.http.body) == {"reply": "hello /a b", "calls": 1}

    call = replica_pb2.PythonCall(
        pickled_data=cloudpickle.dumps({"x": {1, 2}}),
        pickled_kwargs=cloudpickle.dumps({"k": 3}),
        http_method="POST",
    )
    answer = stub.Handle(
        replica_pb2.HandleRequest(request_id="r2", method_name="predict", call=call), timeout=10
    )
    assert cloudpickle.loads(answer.pickled) == {
        "data": {"x": {1, 2}},
        "args": {"k": 3},
        "method": "POST",
    }

    # The instance is the same one: its state carried over.
    answer = stub.Handle(replica_pb2.HandleRequest(request_id="r3", http=http), timeout=10)
    assert json.loads(answer.http.body)["calls"] == 2


def test_handler_error_is_json_and_its_traceback_is_in_the_log(
    channel: grpc.Channel, replica: Replica
) -> None:
    stub = replica_pb2_grpc.ReplicaServiceStub(channel)
    http = http_pb2.HttpRequest(method="GET", path="/", query_string="fail=1")
    answer = stub.Handle(replica_pb2.HandleRequest(request_id="req-42", http=http), timeout=10)
    assert answer.http.status == 500
    assert json.loads(answer.http.body) == {
        "error": "RuntimeError",
        "message": "handler failed on purpose",
        "request_id": "req-42",
    }
    replica.process.send_signal(signal.SIGTERM)
    replica.process.wait(timeout=30)
    log = replica.log_text()
    assert "req-42" in log
    assert "Traceback" in log
    assert "model#1" in log


def test_grpcurl_lists_services_through_reflection(replica: Replica) -> None:
    # grpcurl comes with the dev dependencies, next to this interpreter.
    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
    listed = subprocess.run(
        [grpcurl, "-plaintext", replica.report.address, "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    services = listed.stdout.split()
    assert "turnout.v1.ReplicaService" in services
    assert "grpc.health.v1.Health" in services


def test_sigterm_stops_it_with_status_0(channel: grpc.Channel, replica: Replica) -> None:
    replica.process.send_signal(signal.SIGTERM)
    assert replica.process.wait(timeout=30) == 0
    assert "shutting down" in replica.log_text()


def start_slow_call(channel: grpc.Channel, tmp_path: Path, seconds: float) -> Any:
    stub = replica_pb2_grpc.ReplicaServiceStub(channel)
    http = http_pb2.HttpRequest(method="GET", path="/slow", query_string=f"sleep={seconds}")
    future = stub.Handle.future(replica_pb2.HandleRequest(request_id="slow", http=http))
    deadline = time.monotonic() + READY_TIMEOUT
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the slow call never started"
        time.sleep(0.01)
    return future


def test_sigterm_lets_an_in_flight_request_finish(
    channel: grpc.Channel, replica: Replica, tmp_path: Path
) -> None:
    future = start_slow_call(channel, tmp_path, 0.5)
    replica.process.send_signal(signal.SIGTERM)
    answer = future.result(timeout=30)
    assert answer.http.status == 200
    assert json.loads(answer.http.body)["reply"] == "hello /slow"
    assert replica.process.wait(timeout=30) == 0


def test_calls_that_come_while_a_stopping_replica_drains_are_still_answered(
    channel: grpc.Channel, replica: Replica, tmp_path: Path
) -> None:
    # A sender that has not applied the routing change yet (or a stream that
    # was on its way) still reaches a replica told to stop: while calls are
    # open it keeps accepting new ones, instead of cancelling them.
    future = start_slow_call(channel, tmp_path, 2.0)
    replica.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + READY_TIMEOUT
    while "shutting down" not in replica.log_text():
        assert time.monotonic() < deadline, "the replica never began to shut down"
        time.sleep(0.01)
    stub = replica_pb2_grpc.ReplicaServiceStub(channel)
    http = http_pb2.HttpRequest(method="GET", path="/late")
    late = stub.Handle(replica_pb2.HandleRequest(request_id="late", http=http), timeout=30)
    assert json.loads(late.http.body)["reply"] == "hello /late"
    assert future.result(timeout=30).http.status == 200
    assert replica.process.wait(timeout=30) == 0


def test_sigterm_does_not_wait_forever_for_a_hung_handler(
    channel: grpc.Channel, replica: Replica, tmp_path: Path
) -> None:
    future = start_slow_call(channel, tmp_path, 3600)
    replica.process.send_signal(signal.SIGTERM)
    # The grace period (5 s) passes, then the process goes without the handler.
    assert replica.process.wait(timeout=60) == 0
    with pytest.raises(grpc.RpcError):
        future.result(timeout=30)
    assert "still running" in replica.log_text()


def test_constructor_error_is_reported_and_the_process_exits(tmp_path: Path) -> None:
    started = start_replica(tmp_path, broken_class())
    try:
        assert started.report.ok is False
        assert started.report.code == "INVALID_ARGUMENT"
        assert started.report.message == (
            "RequestHandler.__init__ raised ZeroDivisionError: division by zero"
        )
        assert "ZeroDivisionError" in started.report.traceback
        assert started.process.wait(timeout=30) == 1
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait()


def test_load_error_without_ready_fd_goes_to_stderr(tmp_path: Path) -> None:
    started = start_replica(tmp_path, broken_class(), ready_fd=False)
    assert started.process.wait(timeout=30) == 1
    assert "RequestHandler.__init__ raised ZeroDivisionError" in started.log_text()
