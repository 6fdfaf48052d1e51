"""End-to-end fixtures: one real Turnout instance (controller, proxy, replicas as
OS processes on ephemeral ports) shared by the tests of this folder."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

import turnout


@pytest.fixture
def default_ports() -> Iterator[None]:
    """Hold the machine's one claim on the default ports (HTTP 8000, gRPC 50051)
    for a test whose program uses them, as a user's would: two test runs on one
    machine (a helper's worktree beside main) take turns instead of failing."""
    with open("/tmp/turnout-default-ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def client() -> Iterator[turnout.Client]:
    # Every test of the session adds its backends to this one instance and
    # few delete them: room for all of them, whatever the machine's default.
    instance = turnout.init(http_port=0, max_replicas=1000)
    yield instance
    turnout.shutdown()


SMALL_MAX_REPLICAS = 3


@pytest.fixture(scope="session")
def small() -> Iterator[turnout.Client]:
    """A second instance that runs at most ``SMALL_MAX_REPLICAS`` replicas, for
    tests that ask for many (they can never fork more than that)."""
    from turnout.instance import LocalInstance

    instance = LocalInstance.start("127.0.0.1", 0, max_replicas=SMALL_MAX_REPLICAS)
    small_client = turnout.Client(instance.address, _instance=instance)
    yield small_client
    small_client.shutdown()


@pytest.fixture(scope="session")
def http(client: turnout.Client) -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def url(client: turnout.Client) -> Callable[[str], str]:
    return lambda path: client.http_address + path


_counter = iter(range(1_000_000))


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Distinct names, so tests sharing one instance never collide."""
    return lambda prefix: f"{prefix}-{os.getpid()}-{next(_counter)}"


@dataclass(frozen=True)
class Deployed:
    """A backend served by an endpoint of the same name on the route ``/<name>``."""

    backend: str
    route: str
    url: str


class Deploy(Protocol):
    def __call__(
        self,
        func_or_class: Any,
        *init_args: Any,
        config: dict[str, Any] | None = None,
        methods: Iterable[str] = ("GET",),
    ) -> Deployed: ...


@pytest.fixture
def deploy(client: turnout.Client, unique: Callable[[str], str]) -> Deploy:
    def deploy(
        func_or_class: Any,
        *init_args: Any,
        config: dict[str, Any] | None = None,
        methods: Iterable[str] = ("GET",),
    ) -> Deployed:
        name = unique(func_or_class.__name__.lower())
        client.create_backend(name, func_or_class, *init_args, config=config)
        client.create_endpoint(name, name, route=f"/{name}", methods=methods)
        return Deployed(backend=name, route=f"/{name}", url=f"{client.http_address}/{name}")

    return deploy


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def processes_mentioning(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


NODE_REPLICA = Path(__file__).resolve().parents[2] / "examples" / "node-replica"
NPM_CI_TIMEOUT_S = 300.0


@pytest.fixture(scope="session")
def node_replica() -> Path:
    """examples/node-replica with its dependencies installed from its lock file
    (`npm ci`, once: CI starts from a clean checkout, a second run reuses them)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the Node.js replica tests need node and npm on PATH (Node 18 or later)")
    installed = NODE_REPLICA / "node_modules" / ".package-lock.json"
    lock = NODE_REPLICA / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_REPLICA,
            check=True,
            timeout=NPM_CI_TIMEOUT_S,
            capture_output=True,
        )
    return NODE_REPLICA
