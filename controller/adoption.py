"""Which recorded children a restarted controller re-adopts, and the checks
that decide it.

A child is re-adopted when it is still the same process (pid and start time,
checked by the launcher), still serves (its health check, through the
launcher), and still belongs to desired state (a
replica of an existing backend, running what that backend's record says, and
no more of them than ``num_replicas``). Every other recorded child that is
still alive is stopped: it is what is left of a change that was never
acknowledged, or of a backend deleted before the crash.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .launchers.base import Child, Launcher
from .replica_set import replica_index
from .store import PROXY, REPLICA, ChildRecord

logger = logging.getLogger(__name__)

ADOPT_HEALTH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Wanted:
    """What desired state asks of one backend's replicas."""

    digest: str
    count: int


@dataclass
class ReplicaPlan:
    """Recorded replicas sorted into candidates for adoption and the rest."""

    # backend tag -> records worth trying, oldest replica id first
    candidates: dict[str, list[ChildRecord]] = field(default_factory=dict)
    # records of replicas to stop (if still alive)
    stray: list[ChildRecord] = field(default_factory=list)


def plan_replicas(records: list[ChildRecord], wanted: dict[str, Wanted]) -> ReplicaPlan:
    """Pure sorting, no process is touched: a replica is a candidate when its
    backend still exists, it runs that backend's current digest and it had
    reported ready (has an address)."""
    plan = ReplicaPlan()
    for record in sorted(records, key=lambda r: (r.backend, replica_index(r.name))):
        if record.kind != REPLICA:
            continue
        want = wanted.get(record.backend)
        if want is not None and want.count > 0 and record.digest == want.digest and record.address:
            plan.candidates.setdefault(record.backend, []).append(record)
        else:
            plan.stray.append(record)
    return plan


async def adopt_replicas(
    launcher: Launcher, records: list[ChildRecord], wanted: dict[str, Wanted]
) -> dict[str, list[Child]]:
    """Re-adopt the recorded replicas that qualify; stop the rest.

    Returns the adopted ones by backend, at most ``count`` each.
    """
    plan = plan_replicas(records, wanted)
    adopted: dict[str, list[Child]] = {}
    to_stop = list(plan.stray)

    async def try_adopt(record: ChildRecord) -> Child | None:
        child = launcher.adopt(record)
        if child is None:
            logger.info("replica %s is gone", record.name)
            return None
        if not await launcher.healthy(child, ADOPT_HEALTH_TIMEOUT_S):
            logger.warning(
                "replica %s (pid %d) is not healthy; replacing it", record.name, child.pid
            )
            await child.stop()
            return None
        return child

    for tag, candidates in plan.candidates.items():
        children = await asyncio.gather(*(try_adopt(r) for r in candidates))
        alive = [c for c in children if c is not None]
        keep = alive[: wanted[tag].count]
        adopted[tag] = keep
        await asyncio.gather(*(c.stop() for c in alive[len(keep) :]))
    await asyncio.gather(*(launcher.stop_recorded(r) for r in to_stop))
    return adopted


async def adopt_proxy(
    launcher: Launcher,
    record: ChildRecord | None,
    host: str,
    port: int,
    controller_address: str,
) -> Child | None:
    """Re-adopt the recorded proxy if it lives, is healthy, listens where
    asked (``port`` 0: anywhere) and reconnects to ``controller_address``;
    otherwise stop it and return None."""
    if record is None or record.kind != PROXY:
        return None
    recorded_host, _, recorded_port = record.address.rpartition(":")
    same_host = recorded_host.strip("[]") == host.strip("[]")
    placed = same_host and (port == 0 or str(port) == recorded_port)
    if not placed:
        await launcher.stop_recorded(record)
        return None
    child = launcher.adopt(record)
    if child is None:
        return None
    if not launcher.follows(child, controller_address) or not await launcher.proxy_healthy(
        child, ADOPT_HEALTH_TIMEOUT_S
    ):
        await child.stop()
        return None
    return child


async def stop_all_recorded(launcher: Launcher, records: list[ChildRecord]) -> None:
    """Stop what an earlier controller left running (a non-durable start)."""
    await asyncio.gather(*(launcher.stop_recorded(r) for r in records))
