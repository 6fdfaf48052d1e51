"""How Turnout's processes start each other: the readiness report, the one
spawn helper, and each process kind's command line built and parsed by the
same module (real child processes, no mocks)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from turnout._internal import controller_args, proxy_args, replica_args
from turnout._internal.readiness import Readiness
from turnout._internal.rpc import Security, TLSConfig
from turnout._internal.spawn import Argv, spawn, spawn_async

# A child that reports how many bytes it read on stdin (to its end), or
# crashes, or never reports: what parents must tell apart.
CHILD = """
import os, sys
from turnout._internal import readiness
fd = int(sys.argv[2])
if sys.argv[1] == "crash":
    sys.exit(3)
if sys.argv[1] == "hang":
    import time; time.sleep(60)
data = sys.stdin.buffer.read()
readiness.write(fd, readiness.Readiness(ok=True, address=f"read:{len(data)}", pid=os.getpid()))
"""


def child(mode: str) -> Argv:
    return lambda fd: [sys.executable, "-c", CHILD, mode, str(fd)]


def test_a_report_survives_its_line_and_unknown_fields_are_ignored() -> None:
    report = Readiness(ok=True, address="127.0.0.1:5", pid=7, capabilities={"reconfigure": True})
    assert Readiness.from_json(report.to_json()) == report
    assert Readiness.from_json('{"ok": true, "address": "h:1", "from_a_newer_build": 1}') == (
        Readiness(ok=True, address="h:1")
    )
    failed = Readiness.failed("INVALID_ARGUMENT", "bad import path", "Traceback ...")
    assert Readiness.from_json(failed.to_json()) == failed


def test_an_empty_or_unreadable_report_is_a_failure_that_says_so() -> None:
    assert Readiness.from_json(b"") == Readiness.crashed()
    assert not Readiness.crashed().ok
    garbled = Readiness.from_json(b"Segmentation fault\n")
    assert (garbled.ok, garbled.code) == (False, "INTERNAL")
    assert "Segmentation fault" in garbled.message


def test_spawn_tells_ready_crashed_and_silent_children_apart() -> None:
    process, report = spawn(child("ok"), 60, "the child")
    assert report.ok and report.pid == process.pid and report.address == "read:0"
    assert process.wait(30) == 0
    process, report = spawn(child("crash"), 60, "the child")
    assert report == Readiness.crashed()
    assert process.wait(30) == 3
    process, report = spawn(child("hang"), 0.5, "the child")
    assert (report.code, report.message) == (
        "DEADLINE_EXCEEDED",
        "the child did not start within 0.5 s",
    )
    process.kill()
    process.wait(30)


def test_spawn_async_hands_a_large_input_over_while_waiting_for_the_report() -> None:
    data = b"x" * (8 * 2**20)  # far beyond a pipe's buffer

    async def scenario() -> Readiness:
        started = await spawn_async(child("ok"), stdin_data=data)
        report = await started.ready(60, "the child")
        await started.process.wait()
        return report

    assert asyncio.run(scenario()).address == f"read:{len(data)}"


def test_each_command_line_reads_back_as_it_was_built() -> None:
    tls = TLSConfig(cert=Path("/c.pem"), key=Path("/k.pem"), ca=Path("/ca.pem"), server_name="t")
    controller = controller_args.ControllerArgs(
        host="0.0.0.0", port=50051, http_port=0, state=Path("/s/state.db"), durable=True,
        access_log=False, access_log_format="json", proxy_workers=3, max_replicas=4,
        allow_pickled_code=False, protect_system_paths=True, system_token_file=Path("/t"),
        https_cert=Path("/h.pem"),
        https_key=Path("/h.key"), tls=tls, insecure=True, ready_fd=9, owner_pid=1,
        remove_instance_dir=True, instance_dir=Path("/s"), ray_address="10.0.0.1:6379",
        ray_prefer_local_replicas=True, ray_proxy_location="EveryNode",
    )  # fmt: skip
    assert controller_args.parse(controller_args.to_argv(controller)) == controller
    proxy = proxy_args.ProxyArgs(
        controller="unix:/run/c.sock", host="::1", port=0, max_body_bytes=10, read_timeout=0.25,
        idle_timeout=0.0, max_connections=5, workers=2, worker_index=1, stats_dir=Path("/d"),
        credentials_file=Path("/cr"), ready_fd=4, parent_pid=2, log_file=Path("/p.log"),
        access_log=Path("/a.log"), access_log_format="json", protect_system_paths=True,
        system_token_file=Path("/t"), node_id="abc123", prefer_local_replicas=True,
        https_cert=Path("/h.pem"), https_key=Path("/h.key"), tls=tls,
    )  # fmt: skip
    assert proxy_args.parse(proxy_args.to_argv(proxy)) == proxy
    replica = replica_args.ReplicaArgs(
        replica_id="a b#2", spec_fd=0, host="::1", ready_fd=3, parent_pid=2,
        log_file=Path("/r.log"), stuck_call_grace_s=1.5, credentials_file=Path("/cr"),
        security=Security(tls=TLSConfig(cert=Path(__file__), key=Path(__file__))),
    )  # fmt: skip
    parsed = replica_args.parse(replica_args.to_argv(replica))
    assert parsed.security.tls is not None and parsed.security.tls.cert == Path(__file__)
    assert parsed == replica


def test_a_replica_command_line_names_one_source_of_its_spec() -> None:
    with pytest.raises(SystemExit) as info:
        replica_args.parse(["--replica-id", "a#1"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        replica_args.parse(["--replica-id", "a#1", "--spec-fd", "0", "--spec-file", "/x"])
