"""What a restarted controller needs to re-adopt children: records in both stores,
the adoption plan, real processes found by pid and start time, resources
claimed again, and a proxy waited for before it reconnects."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from turnout._internal.processes import AdoptedProcess, start_time
from turnout.controller.adoption import Wanted, plan_replicas
from turnout.controller.control_plane import replica_digest
from turnout.controller.launchers.local import LocalLauncher, local_handle
from turnout.controller.resources import Allocation, ResourcePool
from turnout.controller.routing import RoutePublisher
from turnout.controller.sqlite_store import SqliteStore
from turnout.controller.state_lock import StateInUseError, StateLock
from turnout.controller.store import PROXY, REPLICA, BackendRecord, ChildRecord, MemoryStore, Store
from turnout.v1 import controller_pb2 as pb


def replica(name: str, digest: str = "d1", address: str = "127.0.0.1:1") -> ChildRecord:
    return ChildRecord(
        name=name,
        kind=REPLICA,
        handle=local_handle(100, 5),
        address=address,
        backend=name.partition("#")[0],
        digest=digest,
        cpus=(0, 1),
        gpus=("0",),
        gpu_share=0.5,
        capabilities='{"reconfigure": true}',
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_child_records_are_kept_replaced_and_deleted(kind: str, tmp_path: Path) -> None:
    store: Store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
    proxy = ChildRecord(name=PROXY, kind=PROXY, handle=local_handle(7, 9), address="127.0.0.1:8000")
    store.put_child(proxy)
    store.put_child(replica("a#1"))
    store.put_child(replica("a#1", digest="d2"))
    assert store.children() == {PROXY: proxy, "a#1": replica("a#1", digest="d2")}
    store.delete_child(PROXY)
    store.delete_child("never-there")
    assert list(store.children()) == ["a#1"]
    if isinstance(store, SqliteStore):
        # What a restarted controller reads back.
        again = SqliteStore(tmp_path / "s.db")
        assert again.children() == {"a#1": replica("a#1", digest="d2")}
        again.close()
        store.close()


def test_plan_adopts_current_replicas_and_strays_the_rest() -> None:
    records = [
        replica("a#3"),
        replica("a#1"),
        replica("a#2", digest="old"),  # left by a rollout that never finished
        replica("b#1"),  # backend deleted before the crash
        replica("c#1", address=""),  # never reported ready
        ChildRecord(name=PROXY, kind=PROXY, handle=local_handle(1, 1)),
    ]
    plan = plan_replicas(records, {"a": Wanted("d1", 2), "c": Wanted("d1", 1)})
    assert [r.name for r in plan.candidates["a"]] == ["a#1", "a#3"]
    assert sorted(r.name for r in plan.stray) == ["a#2", "b#1", "c#1"]


def test_digest_ignores_what_replicas_do_not_read() -> None:
    spec = pb.BackendSpec(import_path="m:f")
    base = BackendRecord("a", spec, pb.BackendConfig(num_replicas=1, max_batch_size=1))
    scaled = BackendRecord("a", spec, pb.BackendConfig(num_replicas=5, max_batch_size=1))
    batched = BackendRecord("a", spec, pb.BackendConfig(num_replicas=1, max_batch_size=8))
    configured = BackendRecord("a", spec, pb.BackendConfig(user_config_json='{"x": 1}'))
    assert replica_digest(base) == replica_digest(scaled)
    assert replica_digest(base) != replica_digest(batched)
    assert replica_digest(base) != replica_digest(configured)


def test_adopted_process_is_found_signalled_and_awaited() -> None:
    async def scenario() -> None:
        with subprocess.Popen(["sleep", "60"]) as sleeper:
            started = start_time(sleeper.pid)
            assert started is not None
            # Another start time: the pid was reused by someone else.
            assert AdoptedProcess.open(sleeper.pid, started + 1) is None
            adopted = AdoptedProcess.open(sleeper.pid, started)
            assert adopted is not None
            waiter = asyncio.ensure_future(adopted.wait())
            await asyncio.sleep(0.05)
            assert not waiter.done()
            adopted.send_signal(signal.SIGTERM)
            await asyncio.wait_for(waiter, 10)
            assert adopted.returncode is not None
            assert sleeper.wait(10) == -signal.SIGTERM
        assert start_time(sleeper.pid) is None

    asyncio.run(scenario())


def test_claimed_resources_are_not_handed_out_again() -> None:
    pool = ResourcePool(cpus=[0, 1, 2, 3], gpus=["0", "1"])
    pool.claim("a#1", Allocation(cpus=(0, 1), gpus=("0",), gpu_share=1.0))
    fresh = pool.allocate("b#1", 2, 1)
    assert fresh.cpus == (2, 3)
    assert fresh.gpus == ("1",)
    pool.release("a#1")
    assert pool.allocate("c#1", 0, 1).gpus == ("0",)


def test_required_router_is_waited_for_before_it_connects() -> None:
    async def scenario() -> None:
        publisher = RoutePublisher()
        await publisher.require("proxy")
        version = await publisher.publish([], [])
        assert not await publisher.wait_applied(version, timeout=0.01)
        await publisher.ack("proxy", version)
        assert await publisher.wait_applied(version, timeout=0.01)
        # A dead proxy is no longer waited for.
        version = await publisher.publish([], [])
        await publisher.release("proxy")
        assert await publisher.wait_applied(version, timeout=0.01)

    asyncio.run(scenario())


def test_one_controller_per_state_file(tmp_path: Path) -> None:
    first = StateLock(tmp_path / "state.db")
    with pytest.raises(StateInUseError, match="in use by another controller"):
        StateLock(tmp_path / "state.db")
    first.release()
    StateLock(tmp_path / "state.db").release()


# The children table as builds before the launcher seam wrote it: pid and
# start time of a local process instead of a launcher and its handle.
OLD_CHILDREN_TABLE = """
CREATE TABLE children (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, pid INTEGER NOT NULL,
    start_time INTEGER NOT NULL, address TEXT NOT NULL, log_path TEXT NOT NULL,
    backend TEXT NOT NULL, digest TEXT NOT NULL, resources TEXT NOT NULL,
    capabilities TEXT NOT NULL
)
"""


def test_a_state_file_of_an_earlier_build_still_adopts_its_children(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        started = start_time(sleeper.pid)
        assert started is not None
        old = sqlite3.connect(path)
        old.execute(OLD_CHILDREN_TABLE)
        old.execute(
            "INSERT INTO children VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "a#1", REPLICA, sleeper.pid, started, "127.0.0.1:7", "/l/a.log", "a", "d1",
                json.dumps({"cpus": [0], "gpus": [], "gpu_share": 0.0}), '{"reconfigure": true}',
            ),
        )  # fmt: skip
        old.commit()
        old.close()

        store = SqliteStore(path)
        record = store.children()["a#1"]
        assert (record.backend, record.digest, record.address, record.cpus) == (
            "a", "d1", "127.0.0.1:7", (0,)
        )  # fmt: skip

        async def adopt_and_stop() -> tuple[int, str, bool]:
            launcher = LocalLauncher(tmp_path / "run", tmp_path / "logs", store, durable=True)
            child = launcher.adopt(record)
            assert child is not None
            seen = child.pid, child.address, bool(child.report.capabilities.get("reconfigure"))
            await launcher.stop_all()
            return seen

        assert asyncio.run(adopt_and_stop()) == (sleeper.pid, "127.0.0.1:7", True)
        assert sleeper.wait(10) == -signal.SIGTERM
        assert store.children() == {}  # its record went with it
        store.close()
    # Opened again, the migrated file stays as it is.
    assert SqliteStore(path).children() == {}
