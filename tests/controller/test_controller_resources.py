"""CPU pinning and GPU assignment, on a described machine (no real GPU needed)."""

from __future__ import annotations

import pytest

from turnout.controller.resources import ResourcePool, discover_gpus
from turnout.errors import InvalidArgumentError


def test_whole_gpus_are_never_shared() -> None:
    pool = ResourcePool(cpus=[0, 1], gpus=["0", "1", "2"])
    first = pool.allocate("a#1", 0, 2)
    second = pool.allocate("b#1", 0, 1)
    assert set(first.gpus) | set(second.gpus) == {"0", "1", "2"}
    assert not set(first.gpus) & set(second.gpus)
    with pytest.raises(InvalidArgumentError, match="free"):
        pool.allocate("c#1", 0, 1)
    pool.release("b#1")
    assert pool.allocate("c#1", 0, 1).gpus == second.gpus


def test_fractions_share_a_gpu_best_fit() -> None:
    pool = ResourcePool(cpus=[0], gpus=["0", "1"])
    a = pool.allocate("a", 0, 0.5)
    b = pool.allocate("b", 0, 0.5)
    assert a.gpus == b.gpus  # the fuller GPU is filled first
    c = pool.allocate("c", 0, 0.75)
    assert c.gpus != a.gpus
    with pytest.raises(InvalidArgumentError):
        pool.allocate("d", 0, 0.5)
    # A whole GPU is only taken when nothing uses it.
    with pytest.raises(InvalidArgumentError):
        pool.allocate("e", 0, 1)


def test_check_says_whether_all_replicas_fit_before_any_starts() -> None:
    pool = ResourcePool(cpus=[0, 1], gpus=["0"])
    pool.check(num_cpus=2, num_gpus=0.5, count=2)
    with pytest.raises(InvalidArgumentError):
        pool.check(num_cpus=0, num_gpus=0.5, count=3)
    with pytest.raises(InvalidArgumentError, match="cores"):
        pool.check(num_cpus=3, num_gpus=0, count=1)
    # check() reserves nothing.
    assert pool.allocate("x", 0, 1).gpus == ("0",)


def test_cpus_are_pinned_least_used_first() -> None:
    pool = ResourcePool(cpus=[0, 1, 2, 3], gpus=[])
    assert pool.allocate("a", 2, 0).cpus == (0, 1)
    assert pool.allocate("b", 1.2, 0).cpus == (2, 3)
    assert pool.allocate("c", 1, 0).cpus == (0,)


def test_gpu_discovery_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_GPUS", "3, 5")
    assert discover_gpus() == ["3", "5"]
    monkeypatch.setenv("TURNOUT_GPUS", "")
    assert discover_gpus() == []
