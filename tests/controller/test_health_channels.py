"""The local launcher's health checks over one channel per replica: a real
replica process, the connections counted in /proc."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from turnout.controller.launchers.local import ChildProcess, LocalLauncher
from turnout.controller.store import REPLICA, ChildRecord, MemoryStore
from turnout.v1 import controller_pb2 as pb

# /proc/net/tcp's state column: ESTABLISHED.
ESTABLISHED = "01"


def own_sockets() -> set[str]:
    """The inodes of this process's sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def connections_to(port: int) -> dict[int, str]:
    """This process's TCP connections to ``port``: local port -> state."""
    mine = own_sockets()
    found = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if int(remote.rsplit(":", 1)[1], 16) == port and inode in mine:
                    found[int(local.rsplit(":", 1)[1], 16)] = state
    return found


def port_of(child: ChildProcess) -> int:
    host, _, port = child.address.rpartition(":")
    assert host and port.isdigit(), f"a TCP address, not {child.address!r}"
    return int(port)


Scenario = Callable[[LocalLauncher, ChildProcess], Awaitable[None]]


def with_replica(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        launcher = LocalLauncher(tmp_path / "run", tmp_path / "logs", MemoryStore())
        request = pb.CreateBackendRequest(
            tag="dumps", spec=pb.BackendSpec(import_path="json:dumps"), config=pb.BackendConfig()
        )
        record = ChildRecord(name="dumps#1", kind=REPLICA, backend="dumps")
        try:
            child = await launcher.start_replica(record, request.SerializeToString(), {})
            assert child.ok, child.report.message
            await scenario(launcher, child)
        finally:
            await launcher.stop_all()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_many_checks_of_a_running_replica_use_one_connection(tmp_path: Path) -> None:
    async def scenario(launcher: LocalLauncher, child: ChildProcess) -> None:
        port = port_of(child)
        seen = []
        for _ in range(20):
            assert await launcher.healthy(child, 10.0)
            seen.append(connections_to(port))
        # Held between checks, and the same one each time (a new channel per
        # check connects from a new local port, and closes it after).
        assert all(held == seen[0] for held in seen), seen
        assert list(seen[0].values()) == [ESTABLISHED]
        assert len(launcher.health_channels) == 1

    with_replica(tmp_path, scenario)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_a_stopped_replica_fails_its_check_in_time_and_keeps_no_channel(tmp_path: Path) -> None:
    async def scenario(launcher: LocalLauncher, child: ChildProcess) -> None:
        port = port_of(child)
        assert await launcher.healthy(child, 10.0)
        assert connections_to(port)
        await child.stop()
        # Its reaper forgets it: the channel is closed, its socket with it.
        await asyncio.wait_for(until(lambda: len(launcher.health_channels) == 0), 10)
        await asyncio.wait_for(until(lambda: not connections_to(port)), 10)
        # A check that comes after (a watcher's last) fails within its own
        # deadline, and leaves no channel behind either.
        assert not await asyncio.wait_for(launcher.healthy(child, 1.0), 5)
        assert len(launcher.health_channels) == 0
        assert not connections_to(port)

    with_replica(tmp_path, scenario)


def test_the_launcher_closes_the_channels_left_when_it_stops(tmp_path: Path) -> None:
    # The Ray launcher's replicas are checked through the local launcher,
    # which does not track them: its stop closes their channels.
    held: list[tuple[LocalLauncher, int]] = []

    async def scenario(launcher: LocalLauncher, child: ChildProcess) -> None:
        untracked = ChildProcess("replica elsewhere", child.process, "", child.report)
        assert await launcher.healthy(untracked, 10.0)
        held.append((launcher, port_of(child)))

    with_replica(tmp_path, scenario)
    [(launcher, port)] = held
    assert len(launcher.health_channels) == 0
    assert not connections_to(port)
