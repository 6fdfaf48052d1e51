"""The autoscaling rule, the load book and the loop, on a fake clock (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fake_launcher import FakeLauncher

from turnout._internal import autoscaling, validation
from turnout._internal.autoscaling import Policy
from turnout._internal.errors import InvalidArgumentError
from turnout.config import BackendConfig
from turnout.controller import load_book
from turnout.controller.autoscale_loop import AutoscaleLoop
from turnout.controller.autoscaler import Autoscaler
from turnout.controller.control_plane import ControlPlane
from turnout.controller.load_book import LoadBook
from turnout.controller.routing import RoutePublisher
from turnout.controller.sqlite_store import SqliteStore
from turnout.controller.store import BackendRecord
from turnout.v1 import controller_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = Policy(
    min_replicas=1,
    max_replicas=5,
    target_ongoing_requests=2,
    upscale_delay_s=3,
    downscale_delay_s=10,
    look_back_period_s=2,
)


def _scaler(clock: Clock, current: int = 1, policy: Policy = POLICY) -> Autoscaler:
    return Autoscaler(policy, current, clock, wall_clock=lambda: 42.0)


def test_scales_up_to_what_the_load_asks_once_it_asked_for_the_whole_delay() -> None:
    clock = Clock()
    scaler = _scaler(clock)
    assert scaler.observe(load=7.0, room=16) is None  # wants ceil(7 / 2) = 4
    clock.now += 2.9
    assert scaler.observe(load=7.0, room=16) is None
    clock.now += 0.1
    decision = scaler.observe(load=7.0, room=16)
    assert decision is not None
    assert (decision.direction, decision.before, decision.after) == ("up", 1, 4)
    assert "load 7.00" in decision.reason and "1 -> 4" in decision.reason
    assert decision.at == 42.0
    assert scaler.desired == 4 and scaler.last == decision


def test_a_moment_at_the_desired_count_restarts_the_delay() -> None:
    clock = Clock()
    scaler = _scaler(clock)
    scaler.observe(load=6.0, room=16)
    clock.now += 2
    assert scaler.observe(load=2.0, room=16) is None  # wants 1 = desired
    clock.now += 2
    assert scaler.observe(load=6.0, room=16) is None  # the delay starts again
    clock.now += 2.9
    assert scaler.observe(load=6.0, room=16) is None
    clock.now += 0.1
    assert scaler.observe(load=6.0, room=16) is not None


def test_scales_down_slowly_to_the_most_wanted_during_the_delay() -> None:
    clock = Clock()
    scaler = _scaler(clock, current=5)
    for load in (1.0, 5.0, 1.0):  # wants 1, 3, 1
        assert scaler.observe(load=load, room=16) is None
        clock.now += 4
    decision = scaler.observe(load=0.0, room=16)
    assert decision is not None
    assert (decision.direction, decision.before, decision.after) == ("down", 5, 3)


def test_never_below_min_nor_above_max_nor_beyond_the_room() -> None:
    clock = Clock()
    policy = Policy(min_replicas=2, max_replicas=4, upscale_delay_s=0, downscale_delay_s=0)
    scaler = _scaler(clock, current=2, policy=policy)
    assert scaler.observe(load=0.0, room=16) is None  # min 2
    decision = scaler.observe(load=100.0, room=16)
    assert decision is not None and decision.after == 4  # max 4
    scaler = _scaler(clock, current=2, policy=policy)
    decision = scaler.observe(load=100.0, room=3)  # the instance has room for 3
    assert decision is not None and decision.after == 3
    scaler = _scaler(clock, current=2, policy=policy)
    assert scaler.observe(load=100.0, room=1) is None  # no room: what runs stays


def test_load_book_averages_each_sample_until_the_next_over_the_window() -> None:
    clock = Clock()
    book = LoadBook(clock, hold_s=3.0)
    book.report("proxy", [pb.BackendLoad(backend="a", in_flight_by_replica={"a#1": 4})])
    book.report("handles", [pb.BackendLoad(backend="a", queued=2)])
    clock.now += 1
    book.report("proxy", [pb.BackendLoad(backend="a", in_flight_by_replica={"a#1": 2, "a#2": 2})])
    clock.now += 1
    # proxy: 4 for 1 s, then 4 for 1 s; handles: 2 for 2 s (held, < hold_s)
    assert book.load("a", window_s=2) == pytest.approx(6.0)
    book.report("proxy", [])  # no load left
    clock.now += 2
    # proxy 0 over the last 2 s; handles silent for 4 s: held 3 s, so 1 s of 2
    assert book.load("a", window_s=2) == pytest.approx(1.0)
    assert book.load("b", window_s=2) == 0.0


def test_load_book_forgets_silent_reporters() -> None:
    clock = Clock()
    book = LoadBook(clock, retain_s=10.0)
    book.report("gone", [pb.BackendLoad(backend="a", queued=1)])
    clock.now += 11
    book.report("proxy", [])
    assert book.reporters() == ["proxy"]


def test_config_takes_rays_names_and_refuses_bad_values() -> None:
    config = BackendConfig(
        autoscaling_config={"max_replicas": 3, "target_num_ongoing_requests_per_replica": 1}
    )
    assert config.autoscaling == {"max_replicas": 3, "target_ongoing_requests": 1.0}
    assert BackendConfig.from_proto(config.to_proto()) == config
    with pytest.raises(InvalidArgumentError, match="mutually exclusive"):
        BackendConfig(num_replicas=2, autoscaling={"max_replicas": 2})
    with pytest.raises(InvalidArgumentError, match="max_replicas .* must be >= min_replicas"):
        BackendConfig(autoscaling={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(InvalidArgumentError, match="initial_replicas"):
        BackendConfig(autoscaling={"max_replicas": 2, "initial_replicas": 3})
    with pytest.raises(InvalidArgumentError, match="unknown autoscaling_config key 'metrics_x'"):
        BackendConfig(autoscaling={"metrics_x": 1})
    with pytest.raises(InvalidArgumentError, match="target_ongoing_requests must be a number > 0"):
        BackendConfig(autoscaling={"target_ongoing_requests": 0})
    with pytest.raises(TypeError, match="max_replicas must be an int"):
        BackendConfig(autoscaling={"max_replicas": 2.5})
    with pytest.raises(InvalidArgumentError, match="min_replicas must be >= 1"):
        autoscaling.check(pb.AutoscalingConfig(min_replicas=0))


class FakePlane:
    def __init__(self, config: pb.BackendConfig) -> None:
        self.configs = {"a": config}
        self.applied: list[int] = []

    def autoscaled(self) -> dict[str, pb.BackendConfig]:
        return self.configs

    def room_for(self, tag: str) -> int:
        return 16

    async def autoscale(self, tag: str, count: int) -> bool:
        self.applied.append(count)
        self.configs[tag].num_replicas = count
        return True


def test_the_loop_applies_decisions_and_shows_them() -> None:
    asyncio.run(_loop_applies_decisions())


async def _loop_applies_decisions() -> None:
    clock = Clock()
    config = BackendConfig(
        autoscaling={"max_replicas": 4, "upscale_delay_s": 1, "look_back_period_s": 1}
    ).to_proto()
    config.num_replicas = 1
    plane = FakePlane(config)
    book = LoadBook(clock)
    loop = AutoscaleLoop(plane, book, clock=clock, wall_clock=lambda: 7.0)
    book.report("proxy", [pb.BackendLoad(backend="a", queued=8)])
    clock.now += 1
    loop.step()
    clock.now += 1
    book.report("proxy", [pb.BackendLoad(backend="a", queued=8)])
    loop.step()
    await asyncio.sleep(0)
    assert plane.applied == [4]
    status = loop.status("a", plane.configs["a"])
    assert (status.desired_replicas, status.wanted_replicas, status.last_decision) == (4, 4, "up")
    assert status.last_decision_time == 7.0 and "1 -> 4" in status.last_reason


def _autoscaled(tag: str, **values: object) -> pb.CreateBackendRequest:
    return pb.CreateBackendRequest(
        tag=tag,
        spec=pb.BackendSpec(import_path="app:Model"),
        config=pb.BackendConfig(autoscaling=autoscaling.from_dict(values)),
    )


def _run_plane(scenario: Callable[[ControlPlane], Awaitable[None]]) -> FakeLauncher:
    launcher = FakeLauncher()

    async def main() -> None:
        plane = ControlPlane(launcher.store, launcher, RoutePublisher(), max_replicas=5)
        try:
            await asyncio.wait_for(scenario(plane), 10)
        finally:
            await plane.stop()

    asyncio.run(main())
    assert launcher.live() == []
    return launcher


def _running(plane: ControlPlane, tag: str) -> int:
    return sum(r.state == pb.REPLICA_STATE_RUNNING for r in plane.list_replicas(tag))


def test_an_autoscaled_backend_starts_at_initial_replicas_and_scales_as_decided() -> None:
    async def scenario(plane: ControlPlane) -> None:
        backend = await plane.create_backend(
            _autoscaled("a", min_replicas=1, max_replicas=8, initial_replicas=2)
        )
        assert backend.config.num_replicas == 2
        assert backend.autoscaling_status.desired_replicas == 2
        assert backend.autoscaling_status.running_replicas == 2
        assert plane.autoscaled().keys() == {"a"}
        assert await plane.autoscale("a", 4)
        assert _running(plane, "a") == 4
        _, targets = plane.snapshot_parts()
        assert [(t.desired_replicas, len(t.replicas)) for t in targets] == [(4, 4)]
        # The instance runs 5 at most: 6 does not fit, and nothing changes.
        assert not await plane.autoscale("a", 6)
        assert await plane.autoscale("a", 1)
        assert _running(plane, "a") == 1
        assert plane.get_backend("a").config.num_replicas == 1

    _run_plane(scenario)


def test_num_replicas_is_refused_beside_autoscaling_and_alone_turns_it_off() -> None:
    async def scenario(plane: ControlPlane) -> None:
        request = _autoscaled("a", max_replicas=3)
        request.config.num_replicas = 2
        with pytest.raises(InvalidArgumentError, match="mutually exclusive"):
            await plane.create_backend(request)
        await plane.create_backend(_autoscaled("a", max_replicas=3))
        await plane.autoscale("a", 3)
        # Turning it on again keeps what runs, within the new bounds.
        update = pb.BackendConfig(autoscaling=autoscaling.from_dict({"max_replicas": 2}))
        backend = await plane.update_backend_config("a", update)
        assert backend.config.num_replicas == 2 and _running(plane, "a") == 2
        backend = await plane.update_backend_config("a", pb.BackendConfig(num_replicas=1))
        assert not backend.config.HasField("autoscaling")
        assert not backend.HasField("autoscaling_status")
        assert not await plane.autoscale("a", 2)  # no longer autoscaled
        assert plane.autoscaled() == {}

    _run_plane(scenario)


def test_load_book_keeps_a_bounded_part_of_an_oversized_report() -> None:
    clock = Clock()
    book = LoadBook(clock)
    loads = [
        pb.BackendLoad(backend=f"b{i}", queued=1)
        for i in range(load_book.MAX_BACKENDS_PER_REPORT + 5)
    ]
    book.report("broken", loads)
    clock.now += 1
    assert book.load("b0", window_s=1) == 1.0
    assert book.load(f"b{load_book.MAX_BACKENDS_PER_REPORT + 1}", window_s=1) == 0.0


def test_the_state_file_keeps_the_autoscaling_config_and_the_decided_count(tmp_path: Path) -> None:
    config = validation.full_config(
        pb.BackendConfig(autoscaling=autoscaling.from_dict({"max_replicas": 4}))
    )
    config.num_replicas = 3  # as a decision leaves it
    record = BackendRecord(
        "a", pb.BackendSpec(import_path="app:Model"), config, pb.ReplicaOptions()
    )
    store = SqliteStore(tmp_path / "state.db")
    store.put_backend(record)
    store.close()
    reopened = SqliteStore(tmp_path / "state.db")
    try:
        assert reopened.backends()["a"] == record
    finally:
        reopened.close()
