"""CPU cores and GPUs for replicas.

Cores are pinned, not reserved: a replica asking for ``num_cpus`` gets that
many cores (rounded up), the least used ones first, and may share them with
other replicas. GPUs are reserved: a whole number of GPUs takes whole, unused
GPUs; a fraction below 1 takes that share of one GPU (best fit), so whole GPUs
are never oversubscribed. A request that cannot be met raises before any
replica starts.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass

from turnout._internal import validation
from turnout._internal.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

# Lets an operator (or a test) say which GPUs the controller may hand out,
# e.g. "0,1", instead of asking nvidia-smi. An empty value means none.
GPUS_ENV = "TURNOUT_GPUS"
_EPSILON = 1e-9
# Default capacity of an instance, in replicas of all backends together:
# MAX_REPLICAS_PER_CPU per core and MAX_REPLICAS_PER_GIB per GiB of memory,
# whichever is less, and never below MIN_DEFAULT_MAX_REPLICAS.
MAX_REPLICAS_PER_CPU = 4
MAX_REPLICAS_PER_GIB = 2
MIN_DEFAULT_MAX_REPLICAS = 16


def default_max_replicas() -> int:
    """``max(16, min(4 × CPUs, 2 × memory in GiB))`` for this machine.

    Example::

        default_max_replicas()  # 16 on a 2-core, 8 GiB machine
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = float("inf")
    by_machine = min(MAX_REPLICAS_PER_CPU * (cpus or 1), int(MAX_REPLICAS_PER_GIB * memory_gib))
    return max(MIN_DEFAULT_MAX_REPLICAS, by_machine)


def discover_gpus() -> list[str]:
    """GPU ids this controller may use: TURNOUT_GPUS, else CUDA_VISIBLE_DEVICES,
    else what nvidia-smi lists, else none."""
    for variable in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        if variable in os.environ:
            return [g.strip() for g in os.environ[variable].split(",") if g.strip()]
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return []
    try:
        listing = subprocess.run(
            [nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


@dataclass(frozen=True)
class Allocation:
    cpus: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    # Share of each GPU in ``gpus`` that this allocation holds.
    gpu_share: float = 0.0

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.gpus)


class ResourcePool:
    def __init__(self, cpus: list[int] | None = None, gpus: list[str] | None = None) -> None:
        self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
        self.gpus = discover_gpus() if gpus is None else gpus
        self._cpu_load = dict.fromkeys(self.cpus, 0)
        self._gpu_used = dict.fromkeys(self.gpus, 0.0)
        self._held: dict[str, Allocation] = {}

    def check(self, num_cpus: float, num_gpus: float, count: int) -> None:
        """Raise InvalidArgumentError unless ``count`` replicas of this size fit now."""
        if math.ceil(num_cpus) > len(self.cpus):
            raise InvalidArgumentError(
                f"num_cpus={num_cpus} but the controller's machine has {len(self.cpus)} cores"
            )
        trial = ResourcePool(list(self.cpus), list(self.gpus))
        trial._gpu_used = dict(self._gpu_used)
        for i in range(count):
            trial.allocate(f"trial#{i}", num_cpus, num_gpus)

    def check_placement(self, options: pb.ReplicaOptions, total: int) -> None:
        """Raise InvalidArgumentError for placement options one machine
        cannot honour (they need a Ray instance); ``total``: the backend's
        replicas (a max_replicas_per_node of at least that changes nothing)."""
        used = validation.ray_options_used(options, total)
        if used:
            raise InvalidArgumentError(
                f"replica option(s) {', '.join(used)} need a Ray instance (turnout start "
                "--ray-address, docs/ray-cluster.md); this one runs every replica on one machine"
            )

    def allocate(self, owner: str, num_cpus: float, num_gpus: float) -> Allocation:
        cpus = self._pick_cpus(math.ceil(num_cpus)) if num_cpus > 0 else ()
        gpus, share = self._pick_gpus(num_gpus) if num_gpus > 0 else ((), 0.0)
        return self._hold(owner, Allocation(cpus=cpus, gpus=gpus, gpu_share=share))

    def claim(self, owner: str, allocation: Allocation) -> None:
        """Hold what a re-adopted replica already uses, so it is not handed out
        again. Cores and GPUs this pool does not know are left out."""
        self.release(owner)
        known = Allocation(
            cpus=tuple(c for c in allocation.cpus if c in self._cpu_load),
            gpus=tuple(g for g in allocation.gpus if g in self._gpu_used),
            gpu_share=allocation.gpu_share,
        )
        self._hold(owner, known)

    def _hold(self, owner: str, allocation: Allocation) -> Allocation:
        for cpu in allocation.cpus:
            self._cpu_load[cpu] += 1
        for gpu in allocation.gpus:
            self._gpu_used[gpu] += allocation.gpu_share
        self._held[owner] = allocation
        return allocation

    def release(self, owner: str) -> None:
        allocation = self._held.pop(owner, None)
        if allocation is None:
            return
        for cpu in allocation.cpus:
            self._cpu_load[cpu] -= 1
        for gpu in allocation.gpus:
            self._gpu_used[gpu] = max(0.0, self._gpu_used[gpu] - allocation.gpu_share)

    def _pick_cpus(self, count: int) -> tuple[int, ...]:
        if count > len(self.cpus):
            raise InvalidArgumentError(
                f"num_cpus={count} but the controller's machine has {len(self.cpus)} cores"
            )
        least_used = sorted(self.cpus, key=lambda cpu: (self._cpu_load[cpu], cpu))
        return tuple(sorted(least_used[:count]))

    def _pick_gpus(self, num_gpus: float) -> tuple[tuple[str, ...], float]:
        if num_gpus >= 1:
            free = [g for g in self.gpus if self._gpu_used[g] <= _EPSILON]
            if len(free) < num_gpus:
                raise InvalidArgumentError(
                    f"num_gpus={num_gpus:g} but only {len(free)} of the {len(self.gpus)} GPUs "
                    "the controller sees are free"
                )
            return tuple(free[: int(num_gpus)]), 1.0
        fits = [g for g in self.gpus if self._gpu_used[g] + num_gpus <= 1 + _EPSILON]
        if not fits:
            raise InvalidArgumentError(
                f"num_gpus={num_gpus:g} does not fit on any of the {len(self.gpus)} GPUs "
                "the controller sees"
            )
        # Best fit: fill the fullest GPU that still has room.
        best = max(fits, key=lambda g: (self._gpu_used[g], g))
        return (best,), num_gpus
