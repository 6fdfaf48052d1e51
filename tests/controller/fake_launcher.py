"""A launcher whose children are objects in memory (as httpx's MockTransport
is a transport): ``ControlPlane`` and ``ReplicaSet`` run against it in
milliseconds, with no process and no socket.

A replica "loads" its spec by import path: one named in ``refusals`` reports
that failure, any other serves at ``fake:<n>``. Tests crash children
(``exit``), make them unhealthy, and read what was started and reconfigured.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from turnout._internal.readiness import Readiness
from turnout.controller.launchers.base import Child, ProxySpec, ReconfigureError
from turnout.controller.log_tail import LogChunk
from turnout.controller.store import PROXY, ChildRecord, MemoryStore, Store
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2

CAPABILITIES = {"reconfigure": True, "batch_methods": ["__call__"]}


@dataclass(eq=False)
class FakeChild:
    name: str
    record: ChildRecord
    report: Readiness
    spec: pb.CreateBackendRequest = field(default_factory=pb.CreateBackendRequest)
    env: dict[str, str] = field(default_factory=dict)
    healthy: bool = True
    exited: asyncio.Future[int | None] = field(default_factory=asyncio.Future)
    pid: int = 0
    log_path: str = ""
    node: str = ""
    node_id: str = ""

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def address(self) -> str:
        return self.report.address

    def exit(self, code: int | None = 1) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    async def wait(self) -> int | None:
        return await asyncio.shield(self.exited)

    async def stop(self, timeout: float = 10.0) -> None:
        self.exit(0)

    def kill(self) -> None:
        self.exit(-9)


def _fake(child: Child) -> FakeChild:
    assert isinstance(child, FakeChild)
    return child


class FakeLauncher:
    def __init__(self, store: Store | None = None) -> None:
        self.store = store or MemoryStore()
        self.children: list[FakeChild] = []
        # import path -> what a replica loading it reports
        self.refusals: dict[str, Readiness] = {}
        # replica id -> why its Reconfigure fails
        self.reconfigure_refusals: dict[str, str] = {}
        self.reconfigured: list[tuple[str, replica_pb2.ReconfigureRequest]] = []
        # What replicas say their code can do.
        self.capabilities = dict(CAPABILITIES)
        # The node id replicas started from now on run on (a Ray node's, say).
        self.node_id = ""

    def live(self, name_prefix: str = "") -> list[FakeChild]:
        return [c for c in self.children if not c.exited.done() and c.name.startswith(name_prefix)]

    def _child(self, record: ChildRecord, report: Readiness) -> FakeChild:
        handle = str(len(self.children) + 1)
        if report.ok:
            report = replace(report, address=f"fake:{handle}")
        record = replace(record, launcher="fake", handle=handle, address=report.address)
        child = FakeChild(record.name, record, report, pid=int(handle))
        self.children.append(child)
        self.store.put_child(record)
        child.exited.add_done_callback(lambda _: self.store.delete_child(record.name))
        if not report.ok:
            child.exit(1)
        return child

    async def start_replica(
        self, record: ChildRecord, spec: bytes, env: dict[str, str]
    ) -> FakeChild:
        request = pb.CreateBackendRequest.FromString(spec)
        refusal = self.refusals.get(request.spec.import_path)
        child = self._child(record, refusal or Readiness(ok=True, capabilities=self.capabilities))
        child.spec, child.env, child.node_id = request, env, self.node_id
        return child

    async def start_proxy(self, spec: ProxySpec) -> FakeChild:
        return self._child(ChildRecord(name=PROXY, kind=PROXY), Readiness(ok=True))

    def adopt(self, record: ChildRecord) -> FakeChild | None:
        found = [c for c in self.live() if c.record.handle == record.handle]
        return found[0] if found else None

    async def stop_recorded(self, record: ChildRecord) -> None:
        child = self.adopt(record)
        if child is not None:
            await child.stop()

    def relabel(self, child: Child, digest: str) -> None:
        fake = _fake(child)
        fake.record = replace(fake.record, digest=digest)
        self.store.put_child(fake.record)

    def follows(self, child: Child, controller_address: str) -> bool:
        return True

    async def healthy(self, child: Child, timeout: float) -> bool:
        return _fake(child).healthy and not _fake(child).exited.done()

    async def proxy_healthy(self, child: Child, timeout: float) -> bool:
        return not _fake(child).exited.done()

    async def reconfigure(
        self, child: Child, request: replica_pb2.ReconfigureRequest, timeout: float
    ) -> None:
        if child.name in self.reconfigure_refusals:
            raise ReconfigureError(self.reconfigure_refusals[child.name])
        self.reconfigured.append((child.name, request))

    async def read_log(self, child: Child, offset: int | None, max_bytes: int) -> LogChunk:
        data = f"log of {child.name}\n".encode()
        start = len(data) - min(max_bytes, len(data)) if offset is None else offset
        return LogChunk(
            data[start : start + max_bytes], min(len(data), start + max_bytes), len(data)
        )

    async def stop_all(self) -> None:
        for child in self.live():
            await child.stop()
