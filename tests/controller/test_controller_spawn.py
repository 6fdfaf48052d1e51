"""A replica the OS refuses to start fails the call that asked for it, at once,
and leaves no replica behind: the real launcher, a real (refused) exec."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from turnout._internal.validation import full_config
from turnout.controller.launchers.local import LocalLauncher, file_key
from turnout.controller.replica_set import ReplicaSet, ReplicaStartError
from turnout.controller.store import REPLICA, ChildRecord, MemoryStore
from turnout.v1 import controller_pb2 as pb


def test_a_spawn_the_os_refuses_is_an_answer_not_a_hang(tmp_path: Path) -> None:
    async def scenario() -> tuple[ReplicaStartError, list[pb.Replica]]:
        launcher = LocalLauncher(tmp_path / "run", tmp_path / "logs", MemoryStore())
        # Past validation (the controller checks this first), straight to exec().
        options = pb.ReplicaOptions(env={"BROKEN": "a\0b"})

        async def nothing() -> None:
            pass

        replicas = ReplicaSet("b", b"", launcher, nothing, full_config(pb.BackendConfig()), options)
        with pytest.raises(ReplicaStartError) as info:
            await asyncio.wait_for(replicas.scale(2), 30)
        return info.value, replicas.describe()

    error, left = asyncio.run(scenario())
    assert error.code == "INVALID_ARGUMENT"
    assert "null" in str(error) or "NUL" in str(error)
    assert left == []


def test_file_keys_differ_for_tags_alike_as_file_names() -> None:
    tags = ["x y", "x_y", "x/y", "a" * 150 + "1", "a" * 150 + "2"]
    keys = {file_key(tag) for tag in tags}
    assert len(keys) == len(tags)
    assert all(len(key) <= 60 and "/" not in key for key in keys)
    assert file_key("x y") == file_key("x y")


def test_a_replica_gets_its_spec_on_stdin_and_nothing_is_left_on_disk(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, str]:
        launcher = LocalLauncher(tmp_path / "run", tmp_path / "logs", MemoryStore())
        request = pb.CreateBackendRequest(
            tag="dumps", spec=pb.BackendSpec(import_path="json:dumps"), config=pb.BackendConfig()
        )
        record = ChildRecord(name="dumps#1", kind=REPLICA, backend="dumps")
        child = await asyncio.wait_for(
            launcher.start_replica(record, request.SerializeToString(), {}), 60
        )
        healthy = await launcher.healthy(child, 30)
        await launcher.stop_all()
        return healthy, child.report.message

    healthy, message = asyncio.run(scenario())
    assert healthy, message
    assert list((tmp_path / "run").iterdir()) == []
