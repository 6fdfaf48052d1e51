"""Recovery reconciles recorded children toward desired state: what an
unacknowledged change left running is stopped (real processes, real signals)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from turnout._internal.processes import start_time
from turnout.controller.control_plane import ControlPlane, replica_digest
from turnout.controller.launchers.local import LocalLauncher, local_handle
from turnout.controller.routing import RoutePublisher
from turnout.controller.sqlite_store import SqliteStore
from turnout.controller.store import REPLICA, BackendRecord, ChildRecord
from turnout.v1 import controller_pb2 as pb


def recorded(store: SqliteStore, name: str, process: subprocess.Popen[bytes], digest: str) -> None:
    started = start_time(process.pid)
    assert started is not None
    store.put_child(
        ChildRecord(
            name=name,
            kind=REPLICA,
            handle=local_handle(process.pid, started),
            address="127.0.0.1:1",
            backend=name.partition("#")[0],
            digest=digest,
        )
    )


def test_recovery_stops_what_desired_state_no_longer_has(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    # Backend "kept" exists with no replica wanted; "deleted" was deleted
    # before the crash, its replica never stopped.
    kept = BackendRecord("kept", pb.BackendSpec(import_path="m:f"), pb.BackendConfig())
    store.put_backend(kept)
    with (
        subprocess.Popen(["sleep", "60"]) as stray,
        subprocess.Popen(["sleep", "60"]) as stale,
    ):
        recorded(store, "deleted#1", stray, "x")
        # A replica of the existing backend running other code: a rollout that
        # was never acknowledged.
        recorded(store, "kept#1", stale, "not-" + replica_digest(kept))

        async def recover() -> None:
            launcher = LocalLauncher(tmp_path / "run", tmp_path / "logs", store, durable=True)
            plane = ControlPlane(store, launcher, RoutePublisher())
            await plane.recover(adopt=True)
            assert plane.list_replicas() == []
            await plane.stop()

        asyncio.run(recover())
        assert stray.wait(10) < 0 and stale.wait(10) < 0
    assert store.children() == {}
    store.close()
