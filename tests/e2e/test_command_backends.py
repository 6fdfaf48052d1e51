"""Command backends: replicas in any language (here the Node.js one in
examples/node-replica) created from Python, grpcurl and a deploy file,
supervised like Python replicas, and served through the HTTP proxy beside
Python backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_until
from test_grpcurl import grpcurl

import turnout
from turnout.errors import InvalidArgumentError

# Requests the load of a rollout sends at most, and for how long.
LOAD_MAX_REQUESTS = 3000
LOAD_MAX_S = 90.0


def node(node_replica: Path, **options: Any) -> turnout.Command:
    return turnout.Command(["node", "replica.js"], cwd=node_replica, **options)


def python_backend() -> Callable[[Any], str]:
    """A Python backend, defined here so that it travels by value."""

    def answer(request: Any) -> str:
        return "python"

    return answer


def served_by(reply: requests.Response) -> str:
    """Which backend answered: the Node.js echo says what it saw."""
    return "node" if "X-Seen-Method" in reply.headers else reply.text


def test_a_node_backend_serves_http_through_the_proxy(
    client: turnout.Client,
    unique: Callable[[str], str],
    node_replica: Path,
    http: requests.Session,
) -> None:
    name = unique("node")
    client.create_backend(name, node(node_replica), config={"user_config": {"greeting": "hi"}})
    client.create_endpoint(name, name, route=f"/{name}", methods=["POST"])
    client.create_endpoint(f"{name}-config", name, route=f"/{name}/config")
    client.create_endpoint(f"{name}-fail", name, route=f"/{name}/fail")
    body = bytes(range(256)) * 100
    reply = http.post(
        f"{client.http_address}/{name}", data=body, headers={"X-Echo-Trace": "t1"}, timeout=30
    )
    assert reply.status_code == 200
    assert reply.content == body
    assert reply.headers["X-Echo-Trace"] == "t1"
    assert reply.headers["X-Seen-Method"] == "POST"

    config_url = f"{client.http_address}/{name}/config"
    assert http.get(config_url, timeout=30).json() == {"user_config": {"greeting": "hi"}}
    # A live change reaches the running Node.js replica (Reconfigure, with the
    # controller's own token).
    pid = client.list_replicas(name)[0].pid
    client.update_backend_config(name, {"user_config": {"greeting": "hello"}})
    assert http.get(config_url, timeout=30).json() == {"user_config": {"greeting": "hello"}}
    assert client.list_replicas(name)[0].pid == pid

    # A Python handle's call gets the replica's RemoteError as a BackendError.
    with pytest.raises(turnout.BackendError, match="NotImplementedError: .* HTTP requests only"):
        client.get_handle(name).remote(1).result(30)

    failed = http.get(f"{client.http_address}/{name}/fail", timeout=30)
    assert failed.status_code == 500
    assert failed.json()["request_id"] == failed.headers["X-Request-Id"]
    assert failed.json()["message"] == "the conformance handler failed on purpose"
    for endpoint in (name, f"{name}-config", f"{name}-fail"):
        client.delete_endpoint(endpoint)
    client.delete_backend(name)


def test_grpcurl_creates_a_command_backend(
    client: turnout.Client,
    unique: Callable[[str], str],
    node_replica: Path,
    http: requests.Session,
) -> None:
    name = unique("node-grpcurl")
    command = {"argv": ["node", "replica.js"], "cwd": str(node_replica), "readyTimeout": 60}
    grpcurl(
        client,
        "turnout.v1.ControllerService/CreateBackend",
        data={"tag": name, "spec": {"command": command}},
    )
    grpcurl(
        client,
        "turnout.v1.ControllerService/CreateEndpoint",
        data={"name": name, "backend": name, "route": f"/{name}"},
    )
    reply = http.get(f"{client.http_address}/{name}", params={"q": "1"}, timeout=30)
    assert reply.status_code == 200
    assert reply.headers["X-Seen-Query"] == "q=1"
    assert client.get_backend_config(name).num_replicas == 1
    client.delete_endpoint(name)
    client.delete_backend(name)


def test_a_deploy_file_declares_a_command_backend(
    client: turnout.Client,
    unique: Callable[[str], str],
    node_replica: Path,
    http: requests.Session,
    tmp_path: Path,
) -> None:
    name = unique("node-deploy")
    token = tmp_path / "token"
    token.write_text(client.token or "")
    token.chmod(0o600)
    deploy_file = tmp_path / "deploy.yaml"
    # cwd relative to the file's folder.
    cwd = os.path.relpath(node_replica, tmp_path)
    deploy_file.write_text(
        f"backends:\n  {name}:\n    command:\n      argv: [node, replica.js]\n"
        f"      cwd: {cwd}\n    config: {{num_replicas: 2}}\n"
        f"endpoints:\n  {name}:\n    route: /{name}\n    backend: {name}\n"
    )
    argv = [sys.executable, "-m", "turnout.cli", "deploy", str(deploy_file)]
    argv += ["--address", client.controller_address, "--token-file", str(token)]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1].startswith("Deployed: 2 created")
    assert http.get(f"{client.http_address}/{name}", timeout=30).status_code == 200
    assert len(client.list_replicas(name)) == 2
    # The same file again: the command compares equal, nothing changes.
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].startswith("Nothing changed")
    client.delete_endpoint(name)
    client.delete_backend(name)


@pytest.mark.parametrize(
    ("script", "options", "reason"),
    [
        ("echo about to fail; exit 3", {}, "exited with status 3 before it reported readiness"),
        ("echo still loading; sleep 60", {"ready_timeout": 2}, "within 2 s"),
        ('echo ready >&"$TURNOUT_READY_FD"; sleep 60', {}, "which is no readiness report"),
    ],
    ids=["exits", "never-ready", "malformed"],
)
def test_a_command_that_never_serves_is_refused_with_what_it_printed(
    client: turnout.Client,
    unique: Callable[[str], str],
    script: str,
    options: dict[str, Any],
    reason: str,
) -> None:
    name = unique("broken-command")
    with pytest.raises(InvalidArgumentError) as failed:
        client.create_backend(name, turnout.Command(["bash", "-c", script], **options))
    message = str(failed.value)
    assert reason in message
    # What it printed, on its stdout or on the readiness descriptor.
    assert script.split(";")[0].split()[1] in message
    assert name not in client.list_backends()


def test_a_command_replica_that_dies_is_restarted(
    client: turnout.Client,
    unique: Callable[[str], str],
    node_replica: Path,
    http: requests.Session,
) -> None:
    name = unique("node-dies")
    client.create_backend(name, node(node_replica))
    client.create_endpoint(name, name, route=f"/{name}")
    [before] = client.list_replicas(name)
    os.kill(before.pid, signal.SIGKILL)

    def replaced() -> bool:
        replicas = client.list_replicas(name)
        return [(r.state, r.pid != before.pid) for r in replicas] == [("RUNNING", True)]

    wait_until(replaced, timeout=60)
    [after] = client.list_replicas(name)
    assert after.replica_id == before.replica_id
    assert http.get(f"{client.http_address}/{name}", timeout=30).status_code == 200
    client.delete_endpoint(name)
    client.delete_backend(name)


def test_traffic_splits_between_a_python_and_a_node_backend(
    client: turnout.Client,
    unique: Callable[[str], str],
    node_replica: Path,
    http: requests.Session,
) -> None:
    py, js = unique("split-python"), unique("split-node")
    client.create_backend(py, python_backend())
    client.create_backend(js, node(node_replica))
    client.create_endpoint(py, py, route=f"/{py}")
    client.set_traffic(py, {py: 0.5, js: 0.5})
    replies = [http.get(f"{client.http_address}/{py}", timeout=30) for _ in range(60)]
    assert {r.status_code for r in replies} == {200}
    seen = [served_by(r) for r in replies]
    # Each backend gets about half: missing one entirely has odds of 2**-59.
    assert set(seen) == {"python", "node"}
    client.delete_endpoint(py)
    client.delete_backend(py)
    client.delete_backend(js)


def test_a_rollout_from_python_to_node_under_load_drops_nothing(
    client: turnout.Client,
    unique: Callable[[str], str],
    node_replica: Path,
) -> None:
    name = unique("rollout")
    client.create_backend(name, python_backend(), config={"num_replicas": 2})
    client.create_endpoint(name, name, route=f"/{name}")
    url = f"{client.http_address}/{name}"
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        ends = time.monotonic() + LOAD_MAX_S
        with requests.Session() as session:
            while not stop.is_set() and len(outcomes) < LOAD_MAX_REQUESTS:
                if time.monotonic() > ends:
                    break
                try:
                    reply = session.get(url, timeout=30)
                    outcomes.append((reply.status_code, served_by(reply)))
                except requests.RequestException as exc:
                    outcomes.append((0, repr(exc)))

    sender = threading.Thread(target=load)
    sender.start()
    try:
        wait_until(lambda: len(outcomes) >= 20, timeout=60)
        # Same tag, new source: replicas are replaced one at a time, each
        # new Node.js replica serving before a Python one stops.
        client.update_backend(name, node(node_replica))
        count = len(outcomes)
        wait_until(lambda: len(outcomes) >= count + 20, timeout=60)
    finally:
        stop.set()
        sender.join(timeout=60)
    failures = [o for o in outcomes if o[0] != 200]
    assert not failures, failures[:5]
    served = [who for _, who in outcomes]
    assert served[0] == "python"
    assert served[-20:] == ["node"] * 20
    client.delete_endpoint(name)
    client.delete_backend(name)
