"""The replicas of one backend: start, health-check, restart, scale, stop.

Each replica slot has one supervising task that loops: start a process, wait
until its health check answers, mark it RUNNING, wait for it to exit, and (if
nobody asked it to stop) start it again after a backoff. A replica that fails
on its very first start fails the call that asked for it (create or scale up),
so a broken backend is refused instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from turnout._grpc import CHANNEL_OPTIONS
from turnout.errors import InvalidArgumentError, TurnoutError
from turnout.v1 import controller_pb2 as pb

from .launcher import ChildProcess, ProcessLauncher

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 10.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
# A replica that ran this long before dying restarts without backoff.
STABLE_AFTER_S = 30.0

OnChange = Callable[[], Awaitable[None]]


class ReplicaStartError(TurnoutError):
    """A replica failed on its first start; carries the replica's own reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class ReplicaSlot:
    replica_id: str
    state: pb.ReplicaState.ValueType = pb.REPLICA_STATE_STARTING
    child: ChildProcess | None = None
    error: str = ""
    stopping: bool = False
    started: asyncio.Future[None] = field(default_factory=asyncio.Future)
    task: asyncio.Task[None] | None = None

    def describe(self, backend: str) -> pb.Replica:
        child = self.child
        return pb.Replica(
            replica_id=self.replica_id,
            backend=backend,
            state=self.state,
            address=child.address if child else "",
            pid=child.pid if child else 0,
            error=self.error,
        )


async def health_ok(address: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """True when the replica's grpc.health.v1 service says SERVING."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            logger.warning("health check of %s failed: %s", address, exc.details())
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class ReplicaSet:
    def __init__(
        self, tag: str, spec_path: Path, launcher: ProcessLauncher, on_change: OnChange
    ) -> None:
        self.tag = tag
        self.spec_path = spec_path
        self._launcher = launcher
        self._on_change = on_change
        self._slots: dict[str, ReplicaSlot] = {}
        self._next_index = 0

    def running(self) -> list[ReplicaSlot]:
        return [
            s
            for s in self._slots.values()
            if s.state == pb.REPLICA_STATE_RUNNING and s.child is not None
        ]

    def describe(self) -> list[pb.Replica]:
        return [slot.describe(self.tag) for slot in self._slots.values()]

    def _live(self) -> list[ReplicaSlot]:
        return [s for s in self._slots.values() if not s.stopping]

    async def scale(self, count: int) -> None:
        """Run exactly ``count`` replicas; returns once new ones are RUNNING.

        Raises ReplicaStartError (after removing the failed replicas) when a
        new replica cannot start.
        """
        live = self._live()
        if count > len(live):
            new = [self._add_slot() for _ in range(count - len(live))]
            results = await asyncio.gather(*(s.started for s in new), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                await self._stop_slots(new)
                failure = failures[0]
                if isinstance(failure, ReplicaStartError):
                    raise failure
                raise ReplicaStartError("INTERNAL", str(failure))
        elif count < len(live):
            # Newest first: the oldest replicas are the warmest.
            await self._stop_slots(live[count:][::-1])

    async def stop(self) -> None:
        await self._stop_slots(list(self._slots.values()))

    def _add_slot(self) -> ReplicaSlot:
        self._next_index += 1
        slot = ReplicaSlot(replica_id=f"{self.tag}#{self._next_index}")
        self._slots[slot.replica_id] = slot
        slot.task = asyncio.create_task(self._supervise(slot), name=slot.replica_id)
        return slot

    async def _stop_slots(self, slots: list[ReplicaSlot]) -> None:
        for slot in slots:
            slot.stopping = True
            slot.state = pb.REPLICA_STATE_STOPPING
        # Routers drop the replicas before they are told to exit, so no new
        # request reaches a replica that is shutting down.
        await self._on_change()
        await asyncio.gather(*(self._stop_slot(slot) for slot in slots))
        await self._on_change()

    async def _stop_slot(self, slot: ReplicaSlot) -> None:
        if slot.child is not None:
            await slot.child.stop()
        if slot.task is not None:
            slot.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slot.task
        if not slot.started.done():
            slot.started.set_exception(ReplicaStartError("CANCELLED", "replica stopped"))
            slot.started.exception()  # mark retrieved: nobody may be waiting
        self._slots.pop(slot.replica_id, None)

    async def _supervise(self, slot: ReplicaSlot) -> None:
        backoff = BACKOFF_INITIAL_S
        while not slot.stopping:
            slot.state = pb.REPLICA_STATE_STARTING
            child = await self._launcher.start_replica(slot.replica_id, self.spec_path)
            if child.ok and not await health_ok(child.address):
                child.report = {
                    "ok": False,
                    "code": "UNAVAILABLE",
                    "message": "health check failed",
                }
                await child.stop()
            if not child.ok:
                slot.state = pb.REPLICA_STATE_FAILED
                slot.error = str(child.report.get("message", "failed to start"))
                if not slot.started.done():
                    code = str(child.report.get("code", "INTERNAL"))
                    slot.started.set_exception(ReplicaStartError(code, slot.error))
                    return
                await self._on_change()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            slot.child = child
            slot.state = pb.REPLICA_STATE_RUNNING
            slot.error = ""
            await self._on_change()
            if not slot.started.done():
                slot.started.set_result(None)
            began = time.monotonic()
            exit_code = await child.wait()
            if slot.stopping:
                return
            slot.child = None
            slot.state = pb.REPLICA_STATE_FAILED
            slot.error = f"process exited with code {exit_code}"
            logger.warning("replica %s died (%s); restarting", slot.replica_id, slot.error)
            await self._on_change()
            if time.monotonic() - began >= STABLE_AFTER_S:
                backoff = BACKOFF_INITIAL_S
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)


def start_error_to_user_error(error: ReplicaStartError, tag: str) -> TurnoutError:
    """What the admin caller sees when a backend's replica cannot start."""
    if error.code == "INVALID_ARGUMENT":
        return InvalidArgumentError(f"backend {tag!r} cannot start: {error}")
    return TurnoutError(f"backend {tag!r}: a replica failed to start: {error}")
