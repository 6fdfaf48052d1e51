"""The rollout state machine on a simulated endpoint and a fake clock: steps,
rollback on a breach with its evidence, pause/resume/abort, one rollout per
endpoint, bad input, and resuming from the store after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from turnout._internal import rollout_rules as rules
from turnout._internal.errors import (
    InUseError,
    InvalidArgumentError,
    NotFoundError,
    TurnoutError,
)
from turnout.controller.rollouts import Rollouts
from turnout.controller.store import MemoryStore
from turnout.v1 import rollout_pb2 as rpb


class SimulatedEndpoint:
    """An endpoint taking ``rate`` requests a second, split by its traffic;
    each backend fails a share of them and answers in a given p99. Windows are
    integrals over the traffic in force at each moment, as the stats book's."""

    def __init__(self, rate: float = 50.0) -> None:
        self.now = 1000.0
        self.rate = rate
        self.backends = {"old", "new", "other"}
        self.traffic: dict[str, dict[str, float]] = {"ep": {"old": 1.0}}
        self.shadows: dict[str, float] = {}
        self.failing = {"old": 0.0, "new": 0.0}
        self.p99 = {"old": 0.01, "new": 0.01}
        self.match_rate = 1.0
        # (since, split) for the traffic in force from then on.
        self.history: list[tuple[float, dict[str, float]]] = [(self.now, {"old": 1.0})]
        self.shadow_since = 0.0
        self.deleted: list[str] = []

    # ---- RolloutHost ----------------------------------------------------

    def traffic_of(self, endpoint: str) -> dict[str, float] | None:
        found = self.traffic.get(endpoint)
        return None if found is None else dict(found)

    def has_backend(self, tag: str) -> bool:
        return tag in self.backends

    async def set_traffic(self, endpoint: str, traffic: dict[str, float]) -> None:
        if endpoint not in self.traffic:
            raise NotFoundError(f"endpoint {endpoint!r} does not exist")
        split = {b: w for b, w in traffic.items() if w > 0}
        self.traffic[endpoint] = split
        self.history.append((self.now, split))

    async def set_shadow(self, endpoint: str, backend: str, proportion: float) -> None:
        if proportion:
            self.shadows[backend] = proportion
            self.shadow_since = self.now
        else:
            self.shadows.pop(backend, None)

    def requests_to(self, backend: str, start: float, end: float) -> float:
        total = 0.0
        for i, (since, split) in enumerate(self.history):
            until = self.history[i + 1][0] if i + 1 < len(self.history) else end
            overlap = min(until, end) - max(since, start)
            if overlap > 0:
                total += overlap * self.rate * split.get(backend, 0.0)
        return total

    def window(self, endpoint: str, backend: str, seconds: float) -> rules.Window:
        requests = int(self.requests_to(backend, self.now - seconds, self.now))
        errors = int(requests * self.failing.get(backend, 0.0))
        p99 = self.p99.get(backend) if requests else None
        return rules.Window(requests, errors, p99, p99)

    def shadow_counts(self, endpoint: str, backend: str) -> tuple[int, int]:
        if backend not in self.shadows:
            return 0, 0
        copies = int((self.now - self.shadow_since) * self.rate * self.shadows[backend])
        matched = int(copies * self.match_rate)
        return matched, copies - matched

    async def delete_backend(self, tag: str) -> None:
        if any(tag in split for split in self.traffic.values()):
            raise TurnoutError(f"backend {tag!r} is in use")
        self.backends.discard(tag)
        self.deleted.append(tag)


def make(host: SimulatedEndpoint, store: MemoryStore | None = None) -> Rollouts:
    async def sleep(seconds: float) -> None:
        host.now += seconds
        await asyncio.sleep(0)

    return Rollouts(
        store or MemoryStore(),
        _Adapter(host),
        clock=lambda: host.now,
        wall=lambda: host.now,
        sleep=sleep,
        tick_s=0.5,
    )


class _Adapter:
    """RolloutHost over a SimulatedEndpoint (whose ``traffic`` is a dict)."""

    def __init__(self, sim: SimulatedEndpoint) -> None:
        self.sim = sim

    def traffic(self, endpoint: str) -> dict[str, float] | None:
        return self.sim.traffic_of(endpoint)

    def has_backend(self, tag: str) -> bool:
        return self.sim.has_backend(tag)

    async def set_traffic(self, endpoint: str, traffic: dict[str, float]) -> None:
        await self.sim.set_traffic(endpoint, traffic)

    async def set_shadow(self, endpoint: str, backend: str, proportion: float) -> None:
        await self.sim.set_shadow(endpoint, backend, proportion)

    def window(self, endpoint: str, backend: str, seconds: float) -> rules.Window:
        return self.sim.window(endpoint, backend, seconds)

    def shadow_counts(self, endpoint: str, backend: str) -> tuple[int, int]:
        return self.sim.shadow_counts(endpoint, backend)

    async def delete_backend(self, tag: str) -> None:
        await self.sim.delete_backend(tag)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


async def until_ended(rollouts: Rollouts, endpoint: str = "ep", passes: int = 100_000) -> None:
    for _ in range(passes):
        if rollouts.get(endpoint).state in (
            rpb.ROLLOUT_STATE_SUCCEEDED,
            rpb.ROLLOUT_STATE_ROLLED_BACK,
            rpb.ROLLOUT_STATE_ABORTED,
        ):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"rollout did not end: {rollouts.get(endpoint)}")


async def until(check: Callable[[], bool], passes: int = 100_000) -> None:
    for _ in range(passes):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def request(**fields: Any) -> rpb.Rollout:
    values: dict[str, Any] = {
        "endpoint": "ep",
        "to_backend": "new",
        "steps": [0.1, 0.5, 1.0],
        "step_seconds": 10.0,
        "slo": rules.slo_from_dict({"max_error_rate": 0.05, "max_latency_ratio": 2.0}),
    }
    values.update(fields)
    return rpb.Rollout(**values)


def test_a_healthy_rollout_goes_through_every_step_and_ends_at_100_percent() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        started = sim.now
        await rollouts.start(request())
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_SUCCEEDED, done
        assert done.current_step == 3 and not done.evidence
        assert sim.traffic["ep"] == {"new": 1.0}
        assert [split for _, split in sim.history[1:]] == [
            {"old": 0.9, "new": 0.1},
            {"old": 0.5, "new": 0.5},
            {"new": 1.0},
        ]
        # Three steps of 10 s each (and the last tick).
        assert 30 <= sim.now - started <= 31
        assert "old" not in sim.deleted

    run(scenario)


def test_a_backend_failing_20_percent_is_rolled_back_at_its_first_step_with_evidence() -> None:
    sim = SimulatedEndpoint()
    sim.failing["new"] = 0.2

    async def scenario() -> None:
        rollouts = make(sim)
        started = sim.now
        await rollouts.start(request(step_seconds=60.0))
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_ROLLED_BACK
        assert done.current_step == 1
        (breach,) = done.evidence
        assert (breach.bound, breach.limit) == ("max_error_rate", 0.05)
        assert breach.value == pytest.approx(0.2, abs=0.02)
        assert "max_error_rate" in done.verdict
        assert sim.traffic["ep"] == {"old": 1.0}
        # Rolled back as soon as min_requests (20) reached it, long before the
        # step's 60 s: what reached it is bounded by the first step's share.
        reached = sim.requests_to("new", started, sim.now)
        total = sim.requests_to("old", started, sim.now) + reached
        assert reached <= 0.1 * total + 1
        assert sim.now - started < 10

    run(scenario)


def test_a_backend_5x_slower_is_rolled_back_on_the_latency_ratio() -> None:
    sim = SimulatedEndpoint()
    sim.p99["new"] = 0.05

    async def scenario() -> None:
        rollouts = make(sim)
        await rollouts.start(request())
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_ROLLED_BACK
        assert [(b.bound, round(b.value, 3)) for b in done.evidence] == [("max_latency_ratio", 5.0)]
        assert done.new_window.p99_seconds == 0.05 and done.old_window.p99_seconds == 0.01

    run(scenario)


def test_a_step_waits_for_min_requests_before_it_is_judged() -> None:
    sim = SimulatedEndpoint(rate=10.0)  # 1 request/s reach the new backend at 10 %

    async def scenario() -> None:
        rollouts = make(sim)
        started = sim.now
        await rollouts.start(request())
        await until(lambda: sim.now - started >= 15)
        waiting = rollouts.get("ep")
        assert waiting.current_step == 1
        assert "requests needed to judge" in waiting.verdict
        await until_ended(rollouts)
        assert rollouts.get("ep").state == rpb.ROLLOUT_STATE_SUCCEEDED
        assert sim.now - started >= 20

    run(scenario)


def test_pause_holds_the_traffic_and_resume_goes_on() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        started = sim.now
        await rollouts.start(request())
        await until(lambda: rollouts.get("ep").current_step == 2)
        paused = await rollouts.pause("ep")
        assert paused.state == rpb.ROLLOUT_STATE_PAUSED
        # Time passes (other tasks' sleeps would advance it): nothing moves.
        sim.now += 300
        for _ in range(1000):
            await asyncio.sleep(0)
        assert rollouts.get("ep").state == rpb.ROLLOUT_STATE_PAUSED
        assert sim.traffic["ep"] == {"old": 0.5, "new": 0.5}
        with pytest.raises(InUseError):
            await rollouts.pause("ep")
        resumed = await rollouts.resume("ep")
        assert resumed.state == rpb.ROLLOUT_STATE_STEPPING and resumed.current_step == 2
        await until_ended(rollouts)
        assert rollouts.get("ep").state == rpb.ROLLOUT_STATE_SUCCEEDED
        assert sim.now - started >= 300 + 30
        with pytest.raises(InUseError):
            await rollouts.resume("ep")

    run(scenario)


def test_abort_moves_all_traffic_back_and_a_new_rollout_may_start() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        await rollouts.start(request())
        await until(lambda: rollouts.get("ep").current_step == 2)
        aborted = await rollouts.abort("ep")
        assert aborted.state == rpb.ROLLOUT_STATE_ABORTED
        assert sim.traffic["ep"] == {"old": 1.0}
        with pytest.raises(InUseError):
            await rollouts.abort("ep")
        again = await rollouts.start(request())
        assert again.state in (rpb.ROLLOUT_STATE_PENDING, rpb.ROLLOUT_STATE_STEPPING)
        await rollouts.stop()

    run(scenario)


def test_one_rollout_per_endpoint_and_bad_input_is_refused() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        with pytest.raises(InvalidArgumentError, match="increasing"):
            await rollouts.start(request(steps=[0.5, 0.25, 1.0]))
        with pytest.raises(InvalidArgumentError, match="last must be 1"):
            await rollouts.start(request(steps=[0.1, 0.5]))
        with pytest.raises(InvalidArgumentError, match="does not exist"):
            await rollouts.start(request(to_backend="missing"))
        with pytest.raises(NotFoundError):
            await rollouts.start(request(endpoint="missing"))
        with pytest.raises(InvalidArgumentError, match="already sends"):
            await rollouts.start(request(to_backend="old"))
        with pytest.raises(InvalidArgumentError, match="not 'other'"):
            await rollouts.start(request(from_backend="other"))
        with pytest.raises(InvalidArgumentError, match="step_s"):
            await rollouts.start(request(step_seconds=-1.0))
        with pytest.raises(NotFoundError):
            rollouts.get("ep")
        await rollouts.start(request())
        with pytest.raises(InUseError, match="already has a rollout"):
            await rollouts.start(request(to_backend="other"))
        await rollouts.stop()

    run(scenario)


def test_traffic_set_by_another_call_stops_the_rollout_and_keeps_that_traffic() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        await rollouts.start(request())
        await until(lambda: rollouts.get("ep").current_step == 1)
        await sim.set_traffic("ep", {"old": 0.7, "new": 0.3})
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_ABORTED and "changed by another call" in done.verdict
        assert sim.traffic["ep"] == {"old": 0.7, "new": 0.3}

    run(scenario)


def test_a_restarted_controller_resumes_a_rollout_from_the_store_at_its_step() -> None:
    sim = SimulatedEndpoint()
    store = MemoryStore()

    async def first() -> None:
        rollouts = make(sim, store)
        await rollouts.start(request())
        await until(lambda: rollouts.get("ep").current_step == 2)
        await rollouts.stop()  # as a SIGKILL leaves it: the store says step 2

    async def second() -> None:
        assert store.rollouts()["ep"].current_step == 2
        rollouts = make(sim, store)
        rollouts.resume_all()
        await until_ended(rollouts)
        assert rollouts.get("ep").state == rpb.ROLLOUT_STATE_SUCCEEDED
        assert store.rollouts()["ep"].state == rpb.ROLLOUT_STATE_SUCCEEDED

    run(first)
    sim.traffic["ep"] = {"old": 1.0}  # even traffic lost with the crash comes back
    run(second)
    assert sim.traffic["ep"] == {"new": 1.0}
    assert {"old": 0.5, "new": 0.5} in [split for _, split in sim.history[-3:]]


def test_a_shadow_phase_that_differs_rolls_back_before_any_traffic_moves() -> None:
    sim = SimulatedEndpoint()
    sim.match_rate = 0.5

    async def scenario() -> None:
        rollouts = make(sim)
        shadow = rpb.RolloutShadow(seconds=5.0, proportion=0.5, min_match_rate=0.99)
        await rollouts.start(request(shadow=shadow))
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_ROLLED_BACK and done.current_step == 0
        assert [b.bound for b in done.evidence] == ["min_match_rate"]
        assert sim.shadows == {}
        assert all(split == {"old": 1.0} for _, split in sim.history)

    run(scenario)


def test_a_shadow_phase_that_matches_goes_on_to_the_steps_and_delete_old_deletes() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        shadow = rpb.RolloutShadow(seconds=5.0)
        await rollouts.start(request(shadow=shadow, delete_old=True))
        await until(lambda: rollouts.get("ep").state == rpb.ROLLOUT_STATE_SHADOW)
        assert sim.shadows == {"new": 1.0}
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_SUCCEEDED and "'old' deleted" in done.verdict
        assert sim.deleted == ["old"]

    run(scenario)


def test_a_refused_traffic_change_ends_the_rollout_instead_of_looping() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        await rollouts.start(request())
        await until(lambda: rollouts.get("ep").current_step == 1)
        del sim.traffic["ep"]  # the endpoint deleted: its traffic cannot be set
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_ABORTED and "deleted" in done.verdict

    run(scenario)


def test_a_resumed_rollout_whose_endpoint_is_gone_ends_instead_of_retrying() -> None:
    sim = SimulatedEndpoint()
    store = MemoryStore()
    store.put_rollout(
        request(
            from_backend="old", state=rpb.ROLLOUT_STATE_STEPPING, current_step=2, steps=[0.1, 1.0]
        )
    )
    del sim.traffic["ep"]

    async def scenario() -> None:
        rollouts = make(sim, store)
        rollouts.resume_all()
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_ABORTED and done.verdict.startswith("stopped:")

    run(scenario)


def test_abort_after_the_old_backend_was_deleted_still_ends_the_rollout() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        await rollouts.start(request())
        await until(lambda: rollouts.get("ep").current_step == 3)  # all on "new"
        await sim.delete_backend("old")

        async def refuse(endpoint: str, traffic: dict[str, float]) -> None:
            raise NotFoundError("backend 'old' does not exist")

        sim.set_traffic = refuse  # type: ignore[method-assign]
        aborted = await rollouts.abort("ep")
        assert aborted.state == rpb.ROLLOUT_STATE_ABORTED
        assert "traffic left as it was" in aborted.verdict
        assert sim.traffic["ep"] == {"new": 1.0}

    run(scenario)


def test_a_breach_when_the_old_backend_is_gone_keeps_its_evidence() -> None:
    sim = SimulatedEndpoint()

    async def scenario() -> None:
        rollouts = make(sim)
        await rollouts.start(request())
        await until(lambda: rollouts.get("ep").current_step == 3)  # all on "new"
        await sim.delete_backend("old")

        async def refuse(endpoint: str, traffic: dict[str, float]) -> None:
            raise NotFoundError("backend 'old' does not exist")

        sim.set_traffic = refuse  # type: ignore[method-assign]
        sim.failing["new"] = 0.5
        await until_ended(rollouts)
        done = rollouts.get("ep")
        assert done.state == rpb.ROLLOUT_STATE_ABORTED
        assert "could not go back" in done.verdict
        assert [b.bound for b in done.evidence] == ["max_error_rate"]

    run(scenario)
