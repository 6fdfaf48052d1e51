"""The replicas of one backend: start, health-check, restart, scale, roll, stop.

Each replica slot has one supervising task that loops: start a process, wait
until its health check answers, mark it RUNNING, then watch it (process exit,
and a health check every ``health_check_period``) until it dies or fails
``health_check_failure_threshold`` checks in a row, and (unless asked to stop)
start it again after a backoff. A replica that fails on its very first start
fails the call that asked for it (create, scale up, roll), so a broken backend
is refused instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from turnout._internal import backend_fields
from turnout._internal.backoff import Backoff
from turnout._internal.child_process import OUT_OF_MEMORY_EXIT
from turnout._internal.errors import InvalidArgumentError, TurnoutError
from turnout._internal.readiness import Readiness
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2

from .launchers.base import Child, Launcher, ReconfigureError, SpawnError
from .resources import Allocation, ResourcePool
from .store import REPLICA, ChildRecord

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 10.0
# A replica that keeps failing is restarted after 0.5 s, 1 s, 2 s... up to this.
RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# A replica that ran this long before dying restarts without backoff.
STABLE_AFTER_S = 30.0
# Beyond its graceful_shutdown_timeout, what a stopping replica gets before SIGKILL.
KILL_MARGIN_S = 5.0
RECONFIGURE_TIMEOUT_S = 60.0

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
    child: Child | None = None
    allocation: Allocation = field(default_factory=Allocation)
    error: str = ""
    # Restarts after a death or failed start, and why the last one happened
    # (kept once it runs again, for operators: ListReplicas).
    restarts: int = 0
    last_error: str = ""
    stopping: bool = False
    # What it runs (``replica_digest`` of the backend when it started).
    digest: str = ""
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
            gpus=self.allocation.cuda_visible_devices,
            cpus=self.allocation.cpus,
            log_path=child.log_path if child else "",
            node=child.node if child else "",
            restarts=self.restarts,
            last_error=self.last_error,
        )


def replica_index(replica_id: str) -> int:
    """The ``n`` of a replica id "<backend>#<n>" (0 if it has none)."""
    _, _, index = replica_id.rpartition("#")
    return int(index) if index.isdigit() else 0


class ReplicaSet:
    def __init__(
        self,
        tag: str,
        spec: bytes,
        launcher: Launcher,
        on_change: OnChange,
        config: pb.BackendConfig,
        options: pb.ReplicaOptions | None = None,
        resources: ResourcePool | None = None,
        *,
        digest: str = "",
    ) -> None:
        self.tag = tag
        # What new (and restarted) replicas load (a serialized
        # CreateBackendRequest), and its digest.
        self.spec = spec
        self.digest = digest
        self.config = config
        self.options = options or pb.ReplicaOptions()
        # What the backend's code can do, as its first replica reported it.
        self.capabilities: dict[str, Any] = {}
        self._launcher = launcher
        self._on_change = on_change
        self._resources = resources or ResourcePool(gpus=[])
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

    def check_fits(self, count: int, total: int) -> None:
        """Raise InvalidArgumentError unless ``count`` more replicas, ``total``
        in all, fit the machine (or the cluster)."""
        if count > 0:
            self._resources.check(self.options.num_cpus, self.options.num_gpus, count)
            self._resources.check_placement(self.options, total)

    async def scale(self, count: int) -> None:
        """Run exactly ``count`` replicas; returns once new ones are RUNNING.

        Raises ReplicaStartError (after removing the failed replicas) when a
        new replica cannot start.
        """
        live = self._live()
        if count > len(live):
            self.check_fits(count - len(live), count)
            await self._start_slots(count - len(live))
        elif count < len(live):
            # Newest first: the oldest replicas are the warmest.
            await self._stop_slots(live[count:][::-1])

    def resume(self, count: int) -> None:
        """Start ``count`` replicas without waiting, retrying failed starts with
        backoff (recovery after a restart: nobody is there to refuse to)."""
        for _ in range(count):
            slot = self._add_slot()
            slot.started.set_result(None)

    def adopt(self, children: list[Child]) -> None:
        """Supervise replicas a previous controller started (already serving
        and health-checked), keeping their ids and resources."""
        for child in children:
            record = child.record
            assert record is not None
            slot = ReplicaSlot(
                replica_id=record.name,
                state=pb.REPLICA_STATE_RUNNING,
                child=child,
                allocation=Allocation(record.cpus, record.gpus, record.gpu_share),
                digest=record.digest,
            )
            self._resources.claim(slot.replica_id, slot.allocation)
            slot.started.set_result(None)
            if not self.capabilities:
                self.capabilities = dict(child.report.capabilities)
            self._slots[slot.replica_id] = slot
            self._next_index = max(self._next_index, replica_index(slot.replica_id))
            slot.task = asyncio.create_task(self._supervise(slot, child), name=slot.replica_id)

    def set_digest(self, digest: str) -> None:
        """The running replicas now run ``digest`` (changed in place, e.g. by
        reconfigure); recorded at once, so a crash cannot mislabel them."""
        self.digest = digest
        for slot in self.running():
            if slot.digest != digest and slot.child is not None:
                slot.digest = digest
                self._launcher.relabel(slot.child, digest)

    async def roll(self, spec: bytes, digest: str = "") -> None:
        """Replace every replica by one loading ``spec``, one at a time,
        each new replica RUNNING before its old one stops.

        If the first new replica cannot start nothing has changed; a later
        failure stops the roll where it is.
        """
        previous = self.spec, self.digest
        self.spec, self.digest = spec, digest
        for index, old in enumerate(self._live()):
            try:
                await self._start_slots(1)
            except ReplicaStartError:
                if index == 0:
                    self.spec, self.digest = previous
                raise
            await self._stop_slots([old])

    async def reconfigure(self, user_config_json: str = "", **limits: Any) -> None:
        """Change every running replica in place: call its reconfigure() with
        ``user_config_json`` ("" = don't) and set the config ``limits`` given
        (max_concurrent_queries, max_batch_size, batch_wait_timeout)."""
        request = replica_pb2.ReconfigureRequest(user_config_json=user_config_json, **limits)
        for slot in self.running():
            assert slot.child is not None
            try:
                await self._launcher.reconfigure(slot.child, request, RECONFIGURE_TIMEOUT_S)
            except ReconfigureError as exc:
                raise InvalidArgumentError(
                    f"backend {self.tag!r}: replica {slot.replica_id} could not reconfigure: {exc}"
                ) from None

    async def stop(self) -> None:
        await self._stop_slots(list(self._slots.values()))

    async def _start_slots(self, count: int) -> None:
        new = [self._add_slot() for _ in range(count)]
        results = await asyncio.gather(*(s.started for s in new), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self._stop_slots(new)
            failure = failures[0]
            if isinstance(failure, ReplicaStartError):
                raise failure
            raise ReplicaStartError("INTERNAL", str(failure))

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
        # request reaches a replica that is shutting down; the replica then
        # finishes what it holds within graceful_shutdown_timeout.
        await self._on_change()
        await asyncio.gather(*(self._stop_slot(slot) for slot in slots))
        await self._on_change()

    async def _stop_slot(self, slot: ReplicaSlot) -> None:
        if slot.child is not None:
            await slot.child.stop(self.config.graceful_shutdown_timeout + KILL_MARGIN_S)
        if slot.task is not None:
            slot.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slot.task
        if not slot.started.done():
            slot.started.set_exception(ReplicaStartError("CANCELLED", "replica stopped"))
            slot.started.exception()  # mark retrieved: nobody may be waiting
        self._resources.release(slot.replica_id)
        self._slots.pop(slot.replica_id, None)

    def _environment(self, allocation: Allocation) -> dict[str, str]:
        env = dict(self.options.env)
        if allocation.gpus or self._resources.gpus:
            # On a GPU machine a replica sees only the GPUs it was given.
            env["CUDA_VISIBLE_DEVICES"] = allocation.cuda_visible_devices
        return env

    async def _start_once(self, slot: ReplicaSlot) -> tuple[Child | None, Readiness]:
        """One attempt to start the slot's process: the child if it serves, and
        its report (why it failed, or what it can do)."""
        self._resources.release(slot.replica_id)
        try:
            slot.allocation = self._resources.allocate(
                slot.replica_id, self.options.num_cpus, self.options.num_gpus
            )
        except InvalidArgumentError as exc:
            return None, Readiness.failed("RESOURCE_EXHAUSTED", str(exc))
        slot.digest = self.digest
        record = ChildRecord(
            name=slot.replica_id,
            kind=REPLICA,
            backend=self.tag,
            digest=self.digest,
            cpus=slot.allocation.cpus,
            gpus=slot.allocation.gpus,
            gpu_share=slot.allocation.gpu_share,
        )
        try:
            child = await self._launcher.start_replica(
                record, self.spec, self._environment(slot.allocation)
            )
        except SpawnError as exc:
            # Becomes the answer of the call that asked for the replica (or a
            # FAILED replica retried with backoff), never a supervisor task
            # that died and left its caller waiting.
            logger.error("replica %s: %s", slot.replica_id, exc)
            return None, Readiness.failed(exc.code, str(exc))
        if not child.ok:
            return None, child.report
        if not await self._launcher.healthy(child, HEALTH_TIMEOUT_S):
            await child.stop()
            return None, Readiness.failed("UNAVAILABLE", "health check failed")
        return child, child.report

    async def _supervise(self, slot: ReplicaSlot, adopted: Child | None = None) -> None:
        """Keep the slot's replica running; ``adopted`` is one already running."""
        backoff = Backoff(RESTART_BACKOFF_INITIAL_S, RESTART_BACKOFF_MAX_S)
        while not slot.stopping:
            slot.state = pb.REPLICA_STATE_STARTING
            child: Child | None
            if adopted is not None:
                child, report, adopted = adopted, adopted.report, None
            else:
                child, report = await self._start_once(slot)
            if child is None:
                slot.state = pb.REPLICA_STATE_FAILED
                slot.error = report.message or "failed to start"
                if not slot.started.done():
                    code = report.code or "INTERNAL"
                    slot.started.set_exception(ReplicaStartError(code, slot.error))
                    return
                slot.last_error = slot.error
                slot.restarts += 1
                await self._on_change()
                await asyncio.sleep(backoff.next())
                continue
            slot.child = child
            slot.state = pb.REPLICA_STATE_RUNNING
            slot.error = ""
            if not self.capabilities:
                self.capabilities = dict(report.capabilities)
            await self._on_change()
            if not slot.started.done():
                slot.started.set_result(None)
            began = time.monotonic()
            reason = await self._watch(slot, child)
            if slot.stopping:
                return
            slot.child = None
            slot.state = pb.REPLICA_STATE_FAILED
            slot.error = slot.last_error = reason
            slot.restarts += 1
            logger.warning("replica %s: %s; restarting", slot.replica_id, reason)
            await self._on_change()
            if time.monotonic() - began >= STABLE_AFTER_S:
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next())

    def _exit_reason(self, code: int) -> str:
        limit = self.options.memory_bytes
        if limit and code == OUT_OF_MEMORY_EXIT:
            return f"exceeded memory limit of {limit / 2**20:g} MiB"
        if limit and code == -signal.SIGKILL:
            # The kernel's OOM killer, or an operator: say which limit it had.
            return f"process was killed (SIGKILL); its memory limit was {limit / 2**20:g} MiB"
        return f"process exited with code {code}"

    async def _watch(self, slot: ReplicaSlot, child: Child) -> str:
        """Wait until the replica exits or fails its health checks; says which."""
        exited = asyncio.ensure_future(child.wait())
        failures = 0
        try:
            while True:
                period = backend_fields.seconds(self.config, "health_check_period")
                done, _ = await asyncio.wait({exited}, timeout=period)
                if done:
                    code = exited.result()
                    if code is None:  # not our child: no exit status to tell
                        return "process exited"
                    return self._exit_reason(code)
                if slot.stopping:
                    await exited
                    return "stopped"
                timeout = backend_fields.seconds(self.config, "health_check_timeout")
                if await self._launcher.healthy(child, timeout):
                    failures = 0
                    continue
                failures += 1
                threshold = backend_fields.count(self.config, "health_check_failure_threshold")
                if failures >= threshold:
                    child.kill()
                    await exited
                    return f"failed {failures} health checks in a row"
        finally:
            exited.cancel()
