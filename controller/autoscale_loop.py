"""The controller's autoscaling loop: every ``PERIOD_S`` it asks each
autoscaled backend's ``Autoscaler`` what the load (``LoadBook``) calls for,
and applies a decision through the control plane's scale path (which drains
replicas before it stops them). Each decision is logged with its reason and
shown in the backend's ``autoscaling_status``.

A pass never dies: a failure is logged and the next pass goes on. A
backend's decision is applied in its own task, so a slow start of one
backend's replicas holds up no other's decisions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from turnout._internal import autoscaling
from turnout.v1 import controller_pb2 as pb

from .autoscaler import Autoscaler, Decision
from .load_book import LoadBook

logger = logging.getLogger(__name__)

# Seconds between passes; senders report about once a second.
PERIOD_S = 0.5


class Scalable(Protocol):
    """What the loop needs of the control plane."""

    def autoscaled(self) -> dict[str, pb.BackendConfig]: ...

    def room_for(self, tag: str) -> int: ...

    async def autoscale(self, tag: str, count: int) -> bool: ...


class AutoscaleLoop:
    def __init__(
        self,
        plane: Scalable,
        book: LoadBook,
        *,
        period_s: float = PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._plane = plane
        self._book = book
        self._period_s = period_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._scalers: dict[str, Autoscaler] = {}
        self._applying: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Pass after pass, until cancelled."""
        try:
            while True:
                await asyncio.sleep(self._period_s)
                try:
                    self.step()
                except Exception:
                    logger.exception("autoscaling pass failed")
        finally:
            for task in list(self._applying.values()):
                task.cancel()

    def step(self) -> None:
        """One pass over every autoscaled backend."""
        configs = self._plane.autoscaled()
        for tag in list(self._scalers):
            if tag not in configs:
                del self._scalers[tag]
        for tag, config in configs.items():
            if tag in self._applying:
                continue
            scaler = self._scaler(tag, config)
            load = self._book.load(tag, scaler.policy.look_back_period_s)
            decision = scaler.observe(load, self._plane.room_for(tag))
            if decision is not None:
                logger.info(
                    "autoscaling backend %r %s: %s", tag, decision.direction, decision.reason
                )
                self._applying[tag] = asyncio.create_task(
                    self._apply(tag, scaler, decision), name=f"autoscale {tag}"
                )

    def _scaler(self, tag: str, config: pb.BackendConfig) -> Autoscaler:
        policy = autoscaling.policy(config.autoscaling)
        scaler = self._scalers.get(tag)
        if scaler is None or scaler.policy != policy:
            last = scaler.last if scaler is not None else None
            scaler = Autoscaler(policy, config.num_replicas, self._clock, self._wall_clock)
            scaler.last = last
            self._scalers[tag] = scaler
        elif scaler.desired != config.num_replicas:
            # Changed by an admin call (or a decision that could not be applied).
            scaler.reset(config.num_replicas)
        return scaler

    async def _apply(self, tag: str, scaler: Autoscaler, decision: Decision) -> None:
        try:
            if not await self._plane.autoscale(tag, decision.after):
                logger.warning(
                    "autoscaling backend %r to %d replica(s) was not applied", tag, decision.after
                )
        except Exception:
            logger.exception("autoscaling backend %r to %d replica(s) failed", tag, decision.after)
        finally:
            self._applying.pop(tag, None)

    def status(self, tag: str, config: pb.BackendConfig) -> pb.AutoscalingStatus:
        """Where ``tag`` stands (running_replicas is the caller's to fill in)."""
        scaler = self._scalers.get(tag)
        status = pb.AutoscalingStatus(desired_replicas=config.num_replicas)
        if scaler is None:
            status.wanted_replicas = config.num_replicas
            return status
        status.load = scaler.load
        status.wanted_replicas = scaler.wanted
        if scaler.last is not None:
            status.last_decision = scaler.last.direction
            status.last_reason = scaler.last.reason
            status.last_decision_time = scaler.last.at
        return status
