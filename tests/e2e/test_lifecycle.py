"""No Turnout process outlives its owner: shutdown(), normal exit, SIGKILL of the
owner, and SIGKILL of the controller itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import processes_mentioning, wait_until

# Starts an instance with a two-replica backend, prints where it lives, waits
# for a line on stdin, then does what argv[1] says.
OWNER = textwrap.dedent(
    """
    import json, os, sys, time
    import turnout

    client = turnout.init(http_port=0)
    client.create_backend("b", lambda request: os.getpid(), config={"num_replicas": 2})
    client.create_endpoint("e", "b", route="/e")
    print(json.dumps({"instance": client.log_dir.rsplit("/", 1)[0],
                      "controller": client.controller_pid,
                      "address": client.controller_address}), flush=True)
    sys.stdin.readline()
    mode = sys.argv[1]
    if mode == "shutdown":
        turnout.shutdown()
        print("stopped", flush=True)
        time.sleep(60)
    elif mode == "wait":
        time.sleep(60)
    """
)


_owners: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def reap_owners() -> Iterator[None]:
    yield
    while _owners:
        owner = _owners.pop()
        owner.kill()
        owner.wait()
        for pipe in (owner.stdin, owner.stdout):
            assert pipe is not None
            pipe.close()


def start_owner(mode: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    _owners.append(owner)
    assert owner.stdout is not None and owner.stdin is not None
    info = json.loads(owner.stdout.readline())
    # controller, proxy and two replicas
    assert len(turnout_processes(info)) == 4
    owner.stdin.write("go\n")
    owner.stdin.flush()
    return owner, info


def turnout_processes(info: dict[str, object]) -> set[int]:
    # The controller and replicas name the instance directory on their command
    # line; the proxy names the controller's address.
    return set(processes_mentioning(str(info["instance"]))) | set(
        processes_mentioning(f"--controller {info['address']}")
    )


def assert_all_gone(info: dict[str, object]) -> None:
    wait_until(lambda: not turnout_processes(info), timeout=30)
    # The instance directory (state with pickled code, logs) goes with it.
    wait_until(lambda: not Path(str(info["instance"])).exists(), timeout=10)


def test_shutdown_stops_every_process() -> None:
    owner, info = start_owner("shutdown")
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "stopped"
    # shutdown() returns only once everything is gone: no waiting needed.
    assert turnout_processes(info) == set()
    assert not Path(str(info["instance"])).exists()


def test_normal_exit_of_the_owner_stops_the_instance() -> None:
    owner, info = start_owner("exit")
    assert owner.wait(timeout=60) == 0
    assert_all_gone(info)


def test_sigkill_of_the_owner_stops_the_instance() -> None:
    owner, info = start_owner("wait")
    owner.kill()
    owner.wait()
    assert_all_gone(info)


def test_sigterm_of_the_controller_stops_the_instance() -> None:
    # An orderly stop, whoever asks for it; a SIGKILL is a crash, after which
    # the owner starts a new controller (test_owned_instance.py).
    owner, info = start_owner("wait")
    os.kill(int(str(info["controller"])), signal.SIGTERM)
    assert_all_gone(info)


def test_owner_and_controller_killed_together_leave_no_orphans() -> None:
    # Nobody is left to stop the proxy and replicas: they watch the owner themselves.
    owner, info = start_owner("wait")
    os.kill(int(str(info["controller"])), signal.SIGKILL)
    owner.kill()
    owner.wait()
    wait_until(lambda: not turnout_processes(info), timeout=60)


# A backend, an endpoint with a traffic split and a shadow, on a state file.
STATEFUL = textwrap.dedent(
    """
    import json, sys
    import requests
    import turnout

    client = turnout.init(http_port=0, state_path=sys.argv[1])
    if sys.argv[2] == "create":
        client.create_backend("a", lambda request: "a")
        client.create_backend("b", lambda request: "b")
        client.create_backend("c", lambda request: "c")
        client.create_endpoint("e", "a", route="/e", methods=["GET", "POST"], request_timeout=9,
                               cors={"allow_origins": ["https://app.example"]})
        client.set_traffic("e", {"a": 0.25, "b": 0.75})
        client.shadow_traffic("e", "c", 0.5)
    answers = {requests.get(client.http_address + "/e").text for _ in range(40)}
    print(json.dumps({"endpoints": client.list_endpoints(),
                      "backends": sorted(client.list_backends()),
                      "answers": sorted(answers)}))
    """
)


def test_desired_state_comes_back_from_the_state_file(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")

    def run(mode: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-c", STATEFUL, state, mode],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    first = run("create")
    assert first["answers"] == ["a", "b"]
    # A new instance (a new controller, proxy and replicas) on the same file.
    second = run("reuse")
    assert (
        second["endpoints"]
        == first["endpoints"]
        == {
            "e": {
                "route": "/e",
                "methods": ["GET", "POST"],
                "traffic": {"a": 0.25, "b": 0.75},
                "shadows": {"c": 0.5},
                "request_timeout": 9.0,
                "serves_app": False,
                "cors": {
                    "allow_origins": ["https://app.example"],
                    "allow_methods": [],
                    "allow_headers": [],
                    "expose_headers": [],
                    "allow_credentials": False,
                    "max_age": 600,
                },
            }
        }
    )
    assert second["backends"] == ["a", "b", "c"]
    assert second["answers"] == ["a", "b"]
