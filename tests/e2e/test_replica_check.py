"""``turnout replica-check`` against real replicas serving the conformance
handler: the Python replica (``turnout._conformance.echo``) and the Node.js
one (examples/node-replica), each started alone as the controller starts it
(a readiness pipe and a credentials file; the Node.js one with the
environment a command backend gets)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from turnout._internal import auth, command_replica, readiness
from turnout.v1 import controller_pb2

READY_TIMEOUT_S = 60.0
CHECK_TIMEOUT_S = 120.0
ECHO = "turnout._conformance.echo:Echo"


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    address: str
    credentials: Path
    log: Path


def write_credentials(folder: Path) -> Path:
    """The credentials a replica of an instance gets (the tokens of the proxy,
    handles and the controller)."""
    path = folder / "credentials-handle.json"
    auth.child_credentials(os.urandom(32), "handle").write(path)
    return path


def start(argv: list[str], folder: Path, env: dict[str, str] | None = None) -> Started:
    """Start a replica and wait for its readiness line on the pipe whose
    descriptor ``argv`` or ``env`` names as ``{ready_fd}``."""
    credentials = write_credentials(folder)
    read_fd, write_fd = os.pipe()
    fill = {"ready_fd": str(write_fd), "credentials": str(credentials)}

    def filled(text: str) -> str:
        for name, value in fill.items():
            text = text.replace(f"{{{name}}}", value)
        return text

    argv = [filled(arg) for arg in argv]
    environ = {**os.environ, **{k: filled(v) for k, v in (env or {}).items()}}
    log = folder / "replica.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, pass_fds=(write_fd,), stdout=out, stderr=out, env=environ, cwd=folder
        )
    os.close(write_fd)
    report = readiness.read(read_fd, READY_TIMEOUT_S, "the replica")
    if not report.ok:
        process.kill()
        process.wait(timeout=30)
        pytest.fail(f"the replica did not start: {report}\n{log.read_text()}")
    return Started(process, report.address, credentials, log)


def start_python_replica(folder: Path, tag: str, import_path: str) -> Started:
    """A Python replica of ``import_path``, started alone (no controller)."""
    spec = folder / "spec.pb"
    spec.write_bytes(
        controller_pb2.CreateBackendRequest(
            tag=tag, spec=controller_pb2.BackendSpec(import_path=import_path)
        ).SerializeToString()
    )
    argv = [sys.executable, "-m", "turnout.replica", "--spec-file", str(spec)]
    argv += ["--replica-id", f"{tag}#1", "--parent-pid", str(os.getpid())]
    argv += ["--ready-fd", "{ready_fd}", "--credentials-file", "{credentials}"]
    return start(argv, folder)


@pytest.fixture
def python_replica(tmp_path: Path) -> Iterator[Started]:
    started = start_python_replica(tmp_path, "echo", ECHO)
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
        started.process.wait(timeout=30)


@pytest.fixture
def node_replica_process(tmp_path: Path, node_replica: Path) -> Iterator[Started]:
    env = command_replica.environment(
        replica_id="node#1",
        backend="node",
        config=controller_pb2.BackendConfig(graceful_shutdown_timeout=5),
        ready_fd=0,  # replaced by the pipe's descriptor
        parent_pid=os.getpid(),
    )
    env[command_replica.READY_FD_ENV] = "{ready_fd}"
    env[command_replica.CREDENTIALS_FILE_ENV] = "{credentials}"
    started = start(["node", str(node_replica / "replica.js")], tmp_path, env)
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
        started.process.wait(timeout=30)


def replica_check(replica: Started, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "turnout.cli", "replica-check", replica.address]
    argv += ["--credentials-file", str(replica.credentials), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)


def assert_every_rule_passes(result: subprocess.CompletedProcess[str], log: Path) -> None:
    lines = result.stdout.splitlines()
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{log.read_text()}"
    verdicts = [line.split()[0] for line in lines[:-1]]
    assert verdicts and set(verdicts) == {"PASS"}, result.stdout
    assert lines[-1].endswith("0 failed, 0 skipped"), result.stdout


def test_the_python_replica_keeps_the_replica_contract(python_replica: Started) -> None:
    result = replica_check(python_replica, "--stop-pid", str(python_replica.process.pid))
    assert_every_rule_passes(result, python_replica.log)
    # The graceful-stop rule stopped it, as SIGTERM does: status 0.
    assert python_replica.process.wait(timeout=30) == 0


def test_the_node_replica_keeps_the_replica_contract(node_replica_process: Started) -> None:
    result = replica_check(
        node_replica_process, "--stop-pid", str(node_replica_process.process.pid)
    )
    assert_every_rule_passes(result, node_replica_process.log)
    assert node_replica_process.process.wait(timeout=30) == 0


def test_a_replica_that_breaks_a_rule_fails_the_check(tmp_path: Path) -> None:
    # A plain backend, not the conformance handler: most rules fail, and the
    # command says so by its exit status and per rule.
    replica = start_python_replica(tmp_path, "plain", "json:dumps")
    try:
        result = replica_check(replica, "--only", "body.binary", "--only", "health")
    finally:
        replica.process.kill()
        replica.process.wait(timeout=30)
    assert result.returncode == 1, result.stdout
    assert "PASS  health.serving" in result.stdout
    assert "FAIL  body.binary" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("2 passed, 1 failed")
