"""The loop that runs one rollout: shadow phase, traffic steps, verdicts.

It acts only through a ``RolloutHost`` (the control plane and the stats book
in the controller, a fake in unit tests) and reads time from injected clocks,
so the whole state machine runs without a socket or a real second.

Each pass (every ``tick_s``) holds the rollout's lock, so pause and abort
never cut an action in half: they take the lock, then stop the loop while it
sleeps. Within a step the new backend is judged over the window since the
step began (``rollout_rules.judge``): a breach moves all traffic back at
once, whenever it shows; a pass moves on only once the step lasted
``step_seconds``. A window without enough requests keeps the step going.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from turnout._internal import rollout_rules as rules
from turnout._internal.errors import TurnoutError
from turnout.v1 import rollout_pb2 as rpb

logger = logging.getLogger(__name__)

TICK_S = 0.5
# Traffic weights that differ by less are the same split.
_WEIGHT_SLACK = 1e-6


class RolloutHost(Protocol):
    """What a rollout acts on and reads."""

    def traffic(self, endpoint: str) -> dict[str, float] | None:
        """The endpoint's split, None once it is gone."""

    def has_backend(self, tag: str) -> bool: ...

    async def set_traffic(self, endpoint: str, traffic: dict[str, float]) -> None: ...

    async def set_shadow(self, endpoint: str, backend: str, proportion: float) -> None: ...

    def window(self, endpoint: str, backend: str, seconds: float) -> rules.Window:
        """What ``backend`` answered for ``endpoint`` over the last ``seconds``."""

    def shadow_counts(self, endpoint: str, backend: str) -> tuple[int, int]:
        """Copies to ``backend`` that matched and that differed, so far."""

    async def delete_backend(self, tag: str) -> None: ...


TERMINAL = frozenset(
    {rpb.ROLLOUT_STATE_SUCCEEDED, rpb.ROLLOUT_STATE_ROLLED_BACK, rpb.ROLLOUT_STATE_ABORTED}
)


def finished(rollout: rpb.Rollout) -> bool:
    return rollout.state in TERMINAL


def split(rollout: rpb.Rollout) -> dict[str, float]:
    """The traffic the rollout's current step (or phase) sends."""
    if rollout.current_step == 0:
        return {rollout.from_backend: 1.0}
    share = rollout.steps[rollout.current_step - 1]
    if share >= 1.0:
        return {rollout.to_backend: 1.0}
    return {rollout.from_backend: 1.0 - share, rollout.to_backend: share}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= _WEIGHT_SLACK for k in a)


def _window_proto(backend: str, seconds: float, window: rules.Window) -> rpb.RolloutWindow:
    out = rpb.RolloutWindow(
        backend=backend, seconds=seconds, requests=window.requests, errors=window.errors
    )
    if window.p95 is not None:
        out.p95_seconds = window.p95
    if window.p99 is not None:
        out.p99_seconds = window.p99
    return out


class RolloutRunner:
    """Runs ``rollout`` (changed in place) until it ends or is stopped.

    ``save`` persists it after every change of state; ``clock`` is monotonic
    seconds, ``wall`` Unix seconds, ``sleep`` waits (all injectable).
    """

    def __init__(
        self,
        rollout: rpb.Rollout,
        host: RolloutHost,
        save: Callable[[rpb.Rollout], None],
        lock: asyncio.Lock,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tick_s: float = TICK_S,
    ) -> None:
        self.rollout = rollout
        self._host = host
        self._save = save
        self.lock = lock
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._tick_s = tick_s
        self._began = clock()
        self._shadow_base = (0, 0)

    async def run(self) -> None:
        """Apply where the rollout stands (a resumed one included), then judge
        it every tick until it ends."""
        async with self.lock:
            await self._guard(self._enter)
        while not finished(self.rollout):
            await self._sleep(self._tick_s)
            async with self.lock:
                if finished(self.rollout) or self.rollout.state == rpb.ROLLOUT_STATE_PAUSED:
                    return
                await self._guard(self._pass)

    async def _guard(self, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        except TurnoutError as exc:
            # The plane refused (an endpoint deleted under us...): end, never loop on it.
            self._end(rpb.ROLLOUT_STATE_ABORTED, f"stopped: {exc}")
            self._save(self.rollout)

    async def _enter(self) -> None:
        """Start (or restart) the current phase: its traffic, its timer."""
        r = self.rollout
        if r.state == rpb.ROLLOUT_STATE_PENDING:
            if r.shadow.seconds > 0:
                self._move(rpb.ROLLOUT_STATE_SHADOW, 0, "shadow phase")
            else:
                self._move(rpb.ROLLOUT_STATE_STEPPING, 1, "")
            self._save(r)
        self._began = self._clock()
        r.step_started_unix = self._wall()
        await self._host.set_traffic(r.endpoint, split(r))
        if r.state == rpb.ROLLOUT_STATE_SHADOW:
            await self._host.set_shadow(r.endpoint, r.to_backend, r.shadow.proportion)
            self._shadow_base = self._host.shadow_counts(r.endpoint, r.to_backend)

    def _move(self, state: int, step: int, verdict: str) -> None:
        r = self.rollout
        r.state = state  # type: ignore[assignment]
        r.current_step = step
        if state == rpb.ROLLOUT_STATE_STEPPING and not verdict:
            verdict = f"step {step} of {len(r.steps)}: {r.steps[step - 1]:.4g} of traffic"
        r.verdict = verdict
        logger.info("rollout of %r: %s", r.endpoint, verdict)

    def _end(self, state: int, verdict: str, breaches: list[rules.Breach] | None = None) -> None:
        r = self.rollout
        r.state = state  # type: ignore[assignment]
        r.verdict = verdict
        r.ended_unix = self._wall()
        for breach in breaches or []:
            r.evidence.add(bound=breach.bound, value=breach.value, limit=breach.limit)
        logger.info("rollout of %r ended: %s", r.endpoint, verdict)

    async def _pass(self) -> None:
        r = self.rollout
        now = self._host.traffic(r.endpoint)
        if now is None:
            self._end(rpb.ROLLOUT_STATE_ABORTED, f"endpoint {r.endpoint!r} was deleted")
            self._save(r)
            return
        if not _same(now, split(r)):
            # Someone set the traffic by hand: theirs wins, the rollout stops.
            self._end(
                rpb.ROLLOUT_STATE_ABORTED,
                f"the endpoint's traffic was changed by another call (to {now}); rollout stopped",
            )
            self._save(r)
            return
        elapsed = self._clock() - self._began
        if r.state == rpb.ROLLOUT_STATE_SHADOW:
            await self._judge_shadow(elapsed)
        elif r.state == rpb.ROLLOUT_STATE_STEPPING:
            await self._judge_step(elapsed)

    async def _judge_shadow(self, elapsed: float) -> None:
        r = self.rollout
        if elapsed < r.shadow.seconds:
            return
        matched, differed = self._host.shadow_counts(r.endpoint, r.to_backend)
        verdict = rules.shadow_gate(
            matched - self._shadow_base[0],
            differed - self._shadow_base[1],
            r.slo.min_requests or rules.DEFAULT_MIN_REQUESTS,
            r.shadow.min_match_rate,
        )
        if verdict.kind == rules.WAIT:
            r.verdict = f"shadow phase: {verdict.reason}"
            return
        await self._host.set_shadow(r.endpoint, r.to_backend, 0.0)
        if verdict.kind == rules.BREACH:
            self._end(
                rpb.ROLLOUT_STATE_ROLLED_BACK,
                f"shadow gate failed: {verdict.reason}",
                verdict.breaches,
            )
            self._save(r)
            return
        self._move(rpb.ROLLOUT_STATE_STEPPING, 1, "")
        self._save(r)
        await self._enter()

    async def _judge_step(self, elapsed: float) -> None:
        r = self.rollout
        seconds = min(max(elapsed, self._tick_s), rules.MAX_STEP_S)
        new = self._host.window(r.endpoint, r.to_backend, seconds)
        old = self._host.window(r.endpoint, r.from_backend, seconds)
        r.new_window.CopyFrom(_window_proto(r.to_backend, seconds, new))
        r.old_window.CopyFrom(_window_proto(r.from_backend, seconds, old))
        verdict = rules.judge(new, old, r.slo)
        step = f"step {r.current_step} of {len(r.steps)} ({r.steps[r.current_step - 1]:.4g})"
        if verdict.kind == rules.BREACH:
            # Off the new backend first, then say so.
            try:
                await self._host.set_traffic(r.endpoint, {r.from_backend: 1.0})
            except TurnoutError as exc:
                # The old backend is gone (deleted at the last step): the
                # breach is still the news, with why nothing moved.
                self._end(
                    rpb.ROLLOUT_STATE_ABORTED,
                    f"breach at {step}: {verdict.reason}; the traffic could not go back: {exc}",
                    verdict.breaches,
                )
                self._save(r)
                return
            self._end(
                rpb.ROLLOUT_STATE_ROLLED_BACK,
                f"rolled back at {step}: {verdict.reason}",
                verdict.breaches,
            )
            self._save(r)
            return
        r.verdict = f"{step}: {verdict.reason}"
        if verdict.kind == rules.WAIT or elapsed < r.step_seconds:
            return
        if r.current_step < len(r.steps):
            self._move(rpb.ROLLOUT_STATE_STEPPING, r.current_step + 1, "")
            self._save(r)
            await self._enter()
            return
        note = ""
        if r.delete_old:
            try:
                await self._host.delete_backend(r.from_backend)
                note = f"; backend {r.from_backend!r} deleted"
            except TurnoutError as exc:
                note = f"; backend {r.from_backend!r} kept: {exc}"
        self._end(rpb.ROLLOUT_STATE_SUCCEEDED, f"all traffic on {r.to_backend!r}{note}")
        self._save(r)
