"""Rollouts: one per endpoint at a time, each run by a ``RolloutRunner``.

States (``turnout.v1.RolloutState``)::

    pending ─▶ shadow ─▶ step 1 ─▶ ... ─▶ step n ─▶ succeeded
                 │          │               │
                 └──────────┴───────────────┴──▶ rolled_back (breach) | aborted
    any running state ◀──▶ paused (traffic held where it was)

Every change of state is written to the store before it is acted on, and
the store keeps each endpoint's current or last rollout, so a controller that
restarts (after a SIGKILL too) goes on with every rollout that was running:
it applies the current step's traffic again and times that step from the
start (the stats window starts empty after a restart anyway).

Example::

    rollouts = Rollouts(store, PlaneHost(plane, stats))
    rollouts.resume_all()
    await rollouts.start(rpb.Rollout(endpoint="model", to_backend="model-v2"))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from turnout._internal import rollout_rules as rules
from turnout._internal import validation
from turnout._internal.errors import (
    InUseError,
    InvalidArgumentError,
    NotFoundError,
    TurnoutError,
)
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import rollout_pb2 as rpb

from .control_plane import ControlPlane
from .rollout_runner import TICK_S, RolloutHost, RolloutRunner, finished, split
from .stats_book import StatsBook
from .store import Store

logger = logging.getLogger(__name__)

# A runner that failed unexpectedly is started again after this long.
RETRY_S = 1.0


class PlaneHost:
    """What a rollout acts on in the controller: the control plane's traffic
    calls and the stats book's windows and shadow counts."""

    def __init__(self, plane: ControlPlane, stats: StatsBook) -> None:
        self._plane = plane
        self._stats = stats

    def traffic(self, endpoint: str) -> dict[str, float] | None:
        try:
            found = self._plane.get_endpoint(endpoint)
        except NotFoundError:
            return None
        return {t.backend: t.weight for t in found.traffic}

    def has_backend(self, tag: str) -> bool:
        try:
            self._plane.get_backend(tag)
        except NotFoundError:
            return False
        return True

    async def set_traffic(self, endpoint: str, traffic: dict[str, float]) -> None:
        weights = [pb.TrafficWeight(backend=b, weight=w) for b, w in traffic.items()]
        await self._plane.set_traffic(endpoint, weights)

    async def set_shadow(self, endpoint: str, backend: str, proportion: float) -> None:
        await self._plane.shadow_traffic(endpoint, backend, proportion)

    def window(self, endpoint: str, backend: str, seconds: float) -> rules.Window:
        got = self._stats.window(endpoint, backend, seconds)
        return rules.Window(got.requests, got.errors, got.p95, got.p99)

    def shadow_counts(self, endpoint: str, backend: str) -> tuple[int, int]:
        for stats in self._stats.totals():
            if stats.endpoint == endpoint:
                for shadow in stats.shadows:
                    if shadow.backend == backend:
                        return shadow.matched, shadow.differed
        return 0, 0

    async def delete_backend(self, tag: str) -> None:
        await self._plane.delete_backend(tag)


class Rollouts:
    """Every endpoint's current or last rollout, and the runners of those that run."""

    def __init__(
        self,
        store: Store,
        host: RolloutHost,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tick_s: float = TICK_S,
    ) -> None:
        self._store = store
        self._host = host
        self._clock, self._wall, self._sleep, self._tick_s = clock, wall, sleep, tick_s
        self._rollouts: dict[str, rpb.Rollout] = store.rollouts()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def resume_all(self) -> None:
        """Go on with every rollout a previous controller left running."""
        for endpoint, rollout in self._rollouts.items():
            if not finished(rollout) and rollout.state != rpb.ROLLOUT_STATE_PAUSED:
                logger.info("resuming the rollout of %r at step %d", endpoint, rollout.current_step)
                self._launch(rollout)

    async def start(self, request: rpb.Rollout) -> rpb.Rollout:
        endpoint = request.endpoint
        if not endpoint:
            raise InvalidArgumentError("a rollout needs an endpoint")
        traffic = self._host.traffic(endpoint)
        if traffic is None:
            raise NotFoundError(f"endpoint {validation.shown(endpoint)} does not exist")
        current = self._rollouts.get(endpoint)
        if current is not None and not finished(current):
            raise InUseError(
                f"endpoint {endpoint!r} already has a rollout (to {current.to_backend!r}, "
                f"{rpb.RolloutState.Name(current.state)}); abort it or wait for it to end"
            )
        to = request.to_backend
        if not to:
            raise InvalidArgumentError("a rollout needs to_backend, the backend to move to")
        if not self._host.has_backend(to):
            raise InvalidArgumentError(f"backend {validation.shown(to)} does not exist")
        if len(traffic) != 1:
            raise InvalidArgumentError(
                f"endpoint {endpoint!r} splits its traffic ({traffic}); a rollout starts from "
                "one backend: set_traffic it to one first"
            )
        (old,) = traffic
        if request.from_backend and request.from_backend != old:
            raise InvalidArgumentError(
                f"endpoint {endpoint!r} sends its traffic to {old!r}, not {request.from_backend!r}"
            )
        if old == to:
            raise InvalidArgumentError(f"endpoint {endpoint!r} already sends all traffic to {to!r}")
        rollout = rpb.Rollout(
            endpoint=endpoint,
            from_backend=old,
            to_backend=to,
            steps=rules.check_steps(list(request.steps)),
            step_seconds=rules.check_step_s(request.step_seconds),
            shadow=rules.check_shadow(request.shadow),
            slo=rules.with_default_bounds(request.slo),
            delete_old=request.delete_old,
            state=rpb.ROLLOUT_STATE_PENDING,
            verdict="pending",
            started_unix=self._wall(),
        )
        self._save(rollout)
        self._rollouts[endpoint] = rollout
        self._launch(rollout)
        return self.get(endpoint)

    def get(self, endpoint: str) -> rpb.Rollout:
        rollout = self._rollouts.get(endpoint)
        if rollout is None:
            raise NotFoundError(f"endpoint {validation.shown(endpoint)} has had no rollout")
        copy = rpb.Rollout()
        copy.CopyFrom(rollout)
        return copy

    def list(self) -> list[rpb.Rollout]:
        return [self.get(endpoint) for endpoint in sorted(self._rollouts)]

    async def pause(self, endpoint: str) -> rpb.Rollout:
        rollout = self._running(endpoint, "paused")
        async with self._lock(endpoint):
            self._running(endpoint, "paused")
            await self._halt(endpoint)
            rollout.paused_state = rollout.state
            rollout.state = rpb.ROLLOUT_STATE_PAUSED
            rollout.verdict = (
                f"paused at step {rollout.current_step}; traffic held at {split(rollout)}"
            )
            self._save(rollout)
        return self.get(endpoint)

    async def resume(self, endpoint: str) -> rpb.Rollout:
        rollout = self._rollouts.get(endpoint)
        if rollout is None or rollout.state != rpb.ROLLOUT_STATE_PAUSED:
            raise InUseError(f"endpoint {endpoint!r} has no paused rollout to resume")
        async with self._lock(endpoint):
            rollout.state = rollout.paused_state
            rollout.paused_state = rpb.ROLLOUT_STATE_UNSPECIFIED
            rollout.verdict = f"resumed at step {rollout.current_step}"
            self._save(rollout)
            self._launch(rollout)
        return self.get(endpoint)

    async def abort(self, endpoint: str) -> rpb.Rollout:
        rollout = self._rollouts.get(endpoint)
        if rollout is None or finished(rollout):
            raise InUseError(f"endpoint {endpoint!r} has no rollout running to abort")
        async with self._lock(endpoint):
            if finished(rollout):
                raise InUseError(f"endpoint {endpoint!r} has no rollout running to abort")
            await self._halt(endpoint)
            verdict = f"aborted; all traffic back on {rollout.from_backend!r}"
            try:
                if self._host.traffic(endpoint) is not None:
                    await self._host.set_traffic(endpoint, {rollout.from_backend: 1.0})
                    if rollout.state == rpb.ROLLOUT_STATE_SHADOW or (
                        rollout.paused_state == rpb.ROLLOUT_STATE_SHADOW
                    ):
                        await self._host.set_shadow(endpoint, rollout.to_backend, 0.0)
            except TurnoutError as exc:
                # Its runner is stopped: the rollout ends either way, saying why
                # the traffic stayed (the old backend deleted at the last step...).
                verdict = f"aborted; traffic left as it was: {exc}"
            rollout.state = rpb.ROLLOUT_STATE_ABORTED
            rollout.verdict = verdict
            rollout.ended_unix = self._wall()
            self._save(rollout)
        return self.get(endpoint)

    async def stop(self) -> None:
        """Stop every runner (controller shutdown); the store keeps where they were."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- helpers --------------------------------------------------------

    def _running(self, endpoint: str, verb: str) -> rpb.Rollout:
        rollout = self._rollouts.get(endpoint)
        if rollout is None or finished(rollout) or rollout.state == rpb.ROLLOUT_STATE_PAUSED:
            raise InUseError(f"endpoint {endpoint!r} has no running rollout to be {verb}")
        return rollout

    def _lock(self, endpoint: str) -> asyncio.Lock:
        return self._locks.setdefault(endpoint, asyncio.Lock())

    def _save(self, rollout: rpb.Rollout) -> None:
        self._store.put_rollout(rollout)

    def _launch(self, rollout: rpb.Rollout) -> None:
        runner = RolloutRunner(
            rollout,
            self._host,
            self._save,
            self._lock(rollout.endpoint),
            clock=self._clock,
            wall=self._wall,
            sleep=self._sleep,
            tick_s=self._tick_s,
        )
        self._tasks[rollout.endpoint] = asyncio.create_task(self._guarded(runner))

    async def _guarded(self, runner: RolloutRunner) -> None:
        """Run until the rollout ends or pauses; an unexpected failure is
        logged and the runner starts again (it re-applies its step)."""
        while not finished(runner.rollout) and runner.rollout.state != rpb.ROLLOUT_STATE_PAUSED:
            try:
                await runner.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("rollout of %r failed; trying again", runner.rollout.endpoint)
                await self._sleep(RETRY_S)

    async def _halt(self, endpoint: str) -> None:
        """Stop the endpoint's runner (called with its lock held: it sleeps or waits)."""
        task = self._tasks.pop(endpoint, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
