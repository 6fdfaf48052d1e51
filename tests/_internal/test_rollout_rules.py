"""The SLO verdict over one window, the shadow gate, and what a rollout's
steps, step_s, SLO and shadow phase may be."""

from __future__ import annotations

import math

import pytest

from turnout._internal import rollout_rules as rules
from turnout._internal.errors import InvalidArgumentError
from turnout._internal.rollout_rules import BREACH, PASS, WAIT, Window, judge
from turnout.v1 import rollout_pb2 as rpb


def slo(**values: float) -> rpb.RolloutSlo:
    return rules.slo_from_dict(values)


def test_nothing_is_judged_before_min_requests() -> None:
    verdict = judge(Window(19, 19), Window(1000, 0), slo(max_error_rate=0.0))
    assert verdict.kind == WAIT and "19 of 20" in verdict.reason
    assert judge(Window(5, 5), Window(0, 0), slo(min_requests=5, max_error_rate=0.5)).kind == BREACH


def test_absolute_bounds_report_every_number_that_breached() -> None:
    verdict = judge(
        Window(100, 20, p95=0.3, p99=0.6),
        Window(0, 0),
        slo(max_error_rate=0.05, max_p95_s=0.5, max_p99_s=0.5),
    )
    assert verdict.kind == BREACH
    assert [(b.bound, b.value, b.limit) for b in verdict.breaches] == [
        ("max_error_rate", 0.2, 0.05),
        ("max_p99_s", 0.6, 0.5),
    ]
    assert verdict.reason == "max_error_rate: 0.2 > 0.05; max_p99_s: 0.6 > 0.5"


def test_relative_bounds_compare_with_the_old_backend_when_it_had_enough_requests() -> None:
    bounds = slo(max_error_rate_ratio=2.0, max_latency_ratio=2.0)
    slow = judge(Window(50, 0, 0.05, 0.05), Window(500, 0, 0.01, 0.01), bounds)
    assert slow.kind == BREACH and slow.breaches[0].bound == "max_latency_ratio"
    assert slow.breaches[0].value == pytest.approx(5.0)
    erring = judge(Window(50, 1), Window(500, 0), bounds)
    assert erring.kind == BREACH and erring.breaches[0].value == math.inf
    fine = judge(Window(50, 1, 0.01, 0.012), Window(500, 10, 0.01, 0.01), bounds)
    assert fine.kind == PASS
    # The old backend got nothing (the last step): relative bounds are skipped.
    alone = judge(Window(50, 5, 1.0, 1.0), Window(3, 0, 0.01, 0.01), bounds)
    assert alone.kind == PASS and "too quiet" in alone.reason


def test_shadow_gate_on_the_match_rate() -> None:
    assert rules.shadow_gate(5, 0, 20, 1.0).kind == WAIT
    assert rules.shadow_gate(40, 0, 20, 1.0).kind == PASS
    failed = rules.shadow_gate(30, 10, 20, 0.9)
    assert failed.kind == BREACH and failed.reason == "min_match_rate: 0.75 < 0.9"


@pytest.mark.parametrize(
    "steps",
    [[0.5, 0.25, 1.0], [0.1, 0.1, 1.0], [0.1, 0.5], [0.0, 1.0], [1.5], [math.nan, 1.0], ["x"]],
)
def test_bad_steps_are_refused(steps: list[object]) -> None:
    with pytest.raises(InvalidArgumentError):
        rules.check_steps(steps)


def test_defaults_fill_in() -> None:
    assert rules.check_steps([]) == [0.05, 0.25, 0.5, 1.0]
    assert rules.check_step_s(0) == 60.0
    assert rules.slo_from_dict(None).min_requests == 20
    shadow = rules.check_shadow(rpb.RolloutShadow(seconds=10))
    assert (shadow.proportion, shadow.min_match_rate) == (1.0, 1.0)
    assert rules.check_shadow(rpb.RolloutShadow()) == rpb.RolloutShadow()
    assert rules.slo_to_dict(slo(max_p99_s=0.2)) == {"max_p99_s": 0.2, "min_requests": 20}


@pytest.mark.parametrize(
    "values",
    [
        {"max_eror_rate": 0.1},
        {"max_error_rate": 1.5},
        {"max_error_rate": -0.1},
        {"max_latency_ratio": 0},
        {"max_p99_s": math.inf},
        {"min_requests": 0},
        {"min_requests": 2.5},
        {"max_error_rate": "0.1"},
    ],
)
def test_bad_slos_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        rules.slo_from_dict(values)


def test_bad_step_s_and_shadow_are_refused() -> None:
    for value in (-1, 601, math.nan, True):
        with pytest.raises(InvalidArgumentError):
            rules.check_step_s(value)
    for shadow in (
        rpb.RolloutShadow(seconds=-1),
        rpb.RolloutShadow(seconds=5, proportion=2),
        rpb.RolloutShadow(seconds=5, min_match_rate=math.nan),
    ):
        with pytest.raises(InvalidArgumentError):
            rules.check_shadow(shadow)
