"""End-to-end fixtures: one real Turnout instance (controller, proxy, replicas as
OS processes on ephemeral ports) shared by the tests of this folder."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

import turnout


@pytest.fixture(scope="session")
def client() -> Iterator[turnout.Client]:
    instance = turnout.init(http_port=0)
    yield instance
    turnout.shutdown()


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
