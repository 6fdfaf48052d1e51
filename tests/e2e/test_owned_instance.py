"""The instance ``turnout.init()`` owns: it outlives its controller, reaches its
replicas' code (handles inside backends), runs beside other named instances,
echoes replica errors to the owner's terminal and says why it cannot start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Deploy, processes_mentioning

import turnout
from turnout.client import Client
from turnout.errors import TurnoutError
from turnout.instance import LocalInstance


def answer(request: Any) -> str:
    return "from B"


class Composer:
    """Gets a handle to endpoint B in its constructor, with no set-up in the replica."""

    def __init__(self, other: str) -> None:
        self.other = turnout.get_handle(other)

    def __call__(self, request: Any) -> str:
        # A sync handler blocks on the result.
        result: str = self.other.remote().result(timeout=30)
        return f"sync {result}"

    async def call_async(self, request: Any) -> str:
        # An async handler awaits it on the replica's loop.
        result: str = await self.other.remote()
        return f"async {result}"

    def call_connected(self, request: Any) -> str:
        # Ray 1.0's style: connect() inside a replica reaches the replica's instance,
        # and so does init(), without starting a nested one.
        client = turnout.connect()
        assert turnout.init() is client
        result: str = client.get_handle(self.other.endpoint).remote().result(timeout=30)
        return f"connected {result}"


def test_handles_inside_backends_reach_the_replicas_instance(
    client: turnout.Client, deploy: Deploy
) -> None:
    b = deploy(answer)
    a = deploy(Composer, b.backend)
    assert requests.get(a.url, timeout=30).text == "sync from B"
    calls = {"call_async": "async from B", "call_connected": "connected from B"}
    for method, expected in calls.items():
        reply = requests.get(a.url, headers={"X-Serve-Call-Method": method}, timeout=30)
        assert reply.text == expected, reply.text


def hello(request: Any) -> str:
    return "hello"


def test_controller_killed_three_times_comes_back_and_serving_never_stops() -> None:
    """Ray's test_controller_failure, with three kills: every admin call after a
    kill succeeds, and HTTP requests keep being answered throughout."""
    instance = LocalInstance.start("127.0.0.1", 0)
    client = Client(instance.address, _instance=instance)
    try:
        client.create_backend("hello", hello)
        client.create_endpoint("hello", "hello", route="/hello")
        url = client.http_address + "/hello"
        failures: list[str] = []
        answered = [0]
        stop = threading.Event()

        def traffic() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        reply = session.get(url, timeout=10)
                        if reply.status_code == 200:
                            answered[0] += 1
                        else:
                            failures.append(f"{reply.status_code} {reply.text}")
                    except requests.RequestException as exc:
                        failures.append(repr(exc))
                    time.sleep(0.01)

        loop = threading.Thread(target=traffic, daemon=True)
        loop.start()
        controllers = {instance.process.pid}
        for kill in range(3):
            os.kill(instance.process.pid, signal.SIGKILL)
            tag = f"hello-{kill}"
            client.create_backend(tag, hello)
            client.set_traffic("hello", {"hello": 0.5, tag: 0.5})
            client.create_endpoint(tag, tag, route=f"/{tag}")
            assert requests.get(client.http_address + f"/{tag}", timeout=10).text == "hello"
            controllers.add(instance.process.pid)
        stop.set()
        loop.join(30)
        assert failures == []
        assert answered[0] > 0
        assert len(controllers) == 4 and instance.restarts == 3
        assert sorted(client.list_endpoints()) == ["hello", "hello-0", "hello-1", "hello-2"]
        # A shutdown while the controller is down waits for the new one, which stops it all.
        os.kill(instance.process.pid, signal.SIGKILL)
    finally:
        client.shutdown()
    assert processes_mentioning(str(instance.instance_dir)) == []
    assert not instance.instance_dir.exists()


def test_init_on_a_taken_port_says_so_and_suggests_port_zero() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TurnoutError) as caught:
            LocalInstance.start("127.0.0.1", port)
    message = str(caught.value)
    assert f"HTTP port {port}" in message and "already in use" in message
    assert "http_port=0" in message


def test_turnout_start_on_a_taken_http_port_suggests_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken, socket.socket() as grpc_port:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port.bind(("127.0.0.1", 0))
        port, free = taken.getsockname()[1], grpc_port.getsockname()[1]
        grpc_port.close()
        argv = [sys.executable, "-m", "turnout.cli", "start", "--http-port", str(port)]
        argv += ["--grpc-port", str(free), "--instance-dir", str(tmp_path / "instance")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"HTTP port {port} on 127.0.0.1 is already in use" in done.stderr, done.stderr
    assert "--http-port 0" in done.stderr


# Two named instances and Ray 1.0's start()/connect(), each instance with a
# failing backend; only the one with log_to_driver echoes replica output.
NAMED = textwrap.dedent(
    """
    import json, requests
    import turnout as serve
    from turnout.errors import NotRunningError

    def failing_on(request):
        print("printed by the handler")
        raise ValueError("seen by the owner")

    def failing_off(request):
        raise ValueError("kept in the replica log")

    x = serve.init(name="x", http_port=0)
    serve.create_backend("fail-on", failing_on)
    serve.create_endpoint("fail-on", "fail-on", route="/fail")
    y = serve.init(name="y", http_port=0, log_to_driver=False)
    serve.create_backend("fail-off", failing_off)
    serve.create_endpoint("fail-off", "fail-off", route="/fail")
    seen = {"ports": [x.http_address, y.http_address],
            "y_endpoints": sorted(serve.list_endpoints())}
    assert serve.init(name="x") is x
    seen["x_endpoints"] = sorted(serve.list_endpoints())
    seen["codes"] = [requests.get(c.http_address + "/fail").status_code for c in (x, y)]
    serve.shutdown()
    try:
        serve.list_endpoints()
    except NotRunningError:
        seen["after_shutdown"] = "NotRunningError"
    assert serve.init(name="y") is y
    seen["y_still"] = sorted(serve.list_endpoints())
    serve.shutdown()

    client = serve.start(http_port=0)
    client.create_backend("hi", lambda request: "hi")
    client.create_endpoint("hi", backend="hi", route="/hi")
    seen["started"] = requests.get(client.http_address + "/hi").text
    seen["connect_is_current"] = serve.connect() is client
    client.shutdown()
    print(json.dumps(seen))
    """
)


def test_named_instances_start_connect_and_replica_output_in_the_owners_stderr() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NAMED], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["ports"][0] != seen["ports"][1]
    assert seen["y_endpoints"] == ["fail-off"]
    assert seen["x_endpoints"] == ["fail-on"]
    assert seen["codes"] == [500, 500]
    assert seen["after_shutdown"] == "NotRunningError"
    assert seen["y_still"] == ["fail-off"]
    assert seen["started"] == "hi" and seen["connect_is_current"] is True
    lines = done.stderr.splitlines()
    assert "(fail-on#1) printed by the handler" in lines, done.stderr
    assert "(fail-on#1) ValueError: seen by the owner" in lines, done.stderr
    assert "kept in the replica log" not in done.stderr


def test_keep_instance_dir_keeps_it(tmp_path: Path) -> None:
    script = (
        "import turnout\n"
        "client = turnout.init(http_port=0, keep_instance_dir=True)\n"
        "print(client.log_dir)\n"
        "turnout.shutdown()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    log_dir = Path(done.stdout.strip())
    try:
        assert (log_dir / "controller.log").exists()
        assert (log_dir.parent.stat().st_mode & 0o777) == 0o700
        assert (log_dir / "controller.log").stat().st_mode & 0o077 == 0
    finally:
        shutil.rmtree(log_dir.parent, ignore_errors=True)


def test_a_first_argument_without_a_colon_names_the_instance_as_in_ray() -> None:
    # Ray Serve 0.8: serve.init("x") names the instance (there is no address).
    script = (
        "import json, turnout as serve\n"
        "a = serve.init('alpha', http_port=0)\n"
        "same = serve.init('alpha') is a\n"
        "print(json.dumps({'same': same, 'name_ok': serve.init(name='alpha') is a}))\n"
        "serve.shutdown()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"same": True, "name_ok": True}
