"""No Turnout process outlives its owner: shutdown(), normal exit, SIGKILL of the
owner, and SIGKILL of the controller itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import processes_mentioning, wait_until

# Starts an instance with a two-replica backend, prints where it lives, then
# does what argv[1] says.
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
    mode = sys.argv[1]
    if mode == "shutdown":
        turnout.shutdown()
        print("stopped", flush=True)
        time.sleep(60)
    elif mode == "wait":
        time.sleep(60)
    """
)


def start_owner(mode: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, mode], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    info = json.loads(owner.stdout.readline())
    # controller, proxy and two replicas
    assert len(turnout_processes(info)) == 4
    return owner, info


def turnout_processes(info: dict[str, object]) -> set[int]:
    # The controller and replicas name the instance directory on their command
    # line; the proxy names the controller's address.
    return set(processes_mentioning(str(info["instance"]))) | set(
        processes_mentioning(f"--controller {info['address']}")
    )


def assert_all_gone(info: dict[str, object]) -> None:
    wait_until(lambda: not turnout_processes(info), timeout=30)


def test_shutdown_stops_every_process() -> None:
    owner, info = start_owner("shutdown")
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "stopped"
    # shutdown() returns only once everything is gone: no waiting needed.
    assert turnout_processes(info) == set()
    owner.kill()
    owner.wait()


def test_normal_exit_of_the_owner_stops_the_instance() -> None:
    owner, info = start_owner("exit")
    assert owner.wait(timeout=60) == 0
    assert_all_gone(info)


def test_sigkill_of_the_owner_stops_the_instance() -> None:
    owner, info = start_owner("wait")
    owner.kill()
    owner.wait()
    assert_all_gone(info)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_controller_leaves_no_orphans(sig: signal.Signals) -> None:
    owner, info = start_owner("wait")
    try:
        os.kill(int(str(info["controller"])), sig)
        assert_all_gone(info)
    finally:
        owner.kill()
        owner.wait()
