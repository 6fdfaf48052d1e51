"""What a rollout is allowed to be, and the verdict over one window.

Plain functions shared by the controller (which judges), the client and
deploy files (which check what they send): no clock, no I/O.

A window is judged only once the new backend answered ``min_requests`` in
it; before that the verdict is ``WAIT``. Absolute bounds apply to the new
backend alone; relative ones (``max_error_rate_ratio``,
``max_latency_ratio``) compare it with the old backend over the same
window, and are skipped while the old backend answered fewer than
``min_requests`` (at the last step it gets none).

Example::

    slo = slo_from_dict({"max_error_rate": 0.01, "max_latency_ratio": 2.0})
    verdict = judge(Window(40, 3, 0.02, 0.03), Window(800, 1, 0.01, 0.012), slo)
    verdict.kind          # BREACH
    verdict.breaches[0]   # Breach("max_error_rate", 0.075, 0.01)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turnout.v1 import rollout_pb2 as rpb

from .errors import InvalidArgumentError

DEFAULT_STEPS = (0.05, 0.25, 0.5, 1.0)
DEFAULT_STEP_S = 60.0
DEFAULT_MIN_REQUESTS = 20
MAX_STEPS = 100
# A step is judged over at most this long a window (the stats book's longest).
MAX_STEP_S = 600.0

# SLO keys a dict (client, deploy file) may hold, each with its proto field.
SLO_KEYS = (
    "max_error_rate",
    "max_p95_s",
    "max_p99_s",
    "max_error_rate_ratio",
    "max_latency_ratio",
    "min_requests",
)
_PROTO_FIELD = {"max_p95_s": "max_p95_seconds", "max_p99_s": "max_p99_seconds"}
SHADOW_KEYS = ("seconds", "proportion", "min_match_rate")

PASS, WAIT, BREACH = "pass", "wait", "breach"
# The bound of a rollout whose SLO sets none: a rollout that judged nothing
# would be set_traffic with waits.
DEFAULT_MAX_ERROR_RATE = 0.01


@dataclass(frozen=True)
class Window:
    """One backend's requests over a window; quantiles in seconds (None: no requests)."""

    requests: int
    errors: int
    p95: float | None = None
    p99: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Breach:
    bound: str
    value: float
    limit: float


@dataclass(frozen=True)
class Verdict:
    kind: str  # PASS, WAIT or BREACH
    reason: str
    breaches: list[Breach] = field(default_factory=list)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{what} must be finite, got {value!r}")
    return float(value)


def check_steps(steps: Sequence[object]) -> list[float]:
    """The steps as floats: increasing shares in (0, 1], ending at 1."""
    if not steps:
        return list(DEFAULT_STEPS)
    if len(steps) > MAX_STEPS:
        raise InvalidArgumentError(f"at most {MAX_STEPS} steps, got {len(steps)}")
    out = [_number(s, "each step") for s in steps]
    for before, after in zip(out, out[1:], strict=False):
        if after <= before:
            raise InvalidArgumentError(f"steps must be increasing, got {out}")
    if out[0] <= 0 or out[-1] != 1.0:
        raise InvalidArgumentError(
            f"steps are shares of traffic in (0, 1] and the last must be 1, got {out}"
        )
    return out


def check_step_s(seconds: object) -> float:
    value = _number(seconds, "step_s")
    if value == 0:
        return DEFAULT_STEP_S
    if not 0 < value <= MAX_STEP_S:
        raise InvalidArgumentError(f"step_s must be > 0 and at most {MAX_STEP_S:g}, got {value!r}")
    return value


def _has(slo: rpb.RolloutSlo, name: str) -> bool:
    return bool(slo.HasField(name))  # type: ignore[arg-type]


def check_slo(slo: rpb.RolloutSlo) -> rpb.RolloutSlo:
    """``slo`` with min_requests filled in; InvalidArgumentError for bad bounds."""
    out = rpb.RolloutSlo()
    out.CopyFrom(slo)
    for name in ("max_error_rate", "max_p95_seconds", "max_p99_seconds"):
        value = getattr(out, name)
        if _has(out, name) and not (math.isfinite(value) and value >= 0):
            raise InvalidArgumentError(f"slo {name} must be >= 0, got {value!r}")
    if out.HasField("max_error_rate") and out.max_error_rate > 1:
        raise InvalidArgumentError(
            f"slo max_error_rate is a share of requests, 0..1, got {out.max_error_rate!r}"
        )
    for name in ("max_error_rate_ratio", "max_latency_ratio"):
        value = getattr(out, name)
        if _has(out, name) and not (math.isfinite(value) and value > 0):
            raise InvalidArgumentError(f"slo {name} must be > 0, got {value!r}")
    if not out.min_requests:
        out.min_requests = DEFAULT_MIN_REQUESTS
    return out


def check_shadow(shadow: rpb.RolloutShadow) -> rpb.RolloutShadow:
    """``shadow`` with its defaults filled in (an unset phase stays all zero)."""
    out = rpb.RolloutShadow()
    out.CopyFrom(shadow)
    if not math.isfinite(out.seconds) or not 0 <= out.seconds <= MAX_STEP_S:
        raise InvalidArgumentError(
            f"shadow seconds must be >= 0 and at most {MAX_STEP_S:g}, got {out.seconds!r}"
        )
    if out.seconds == 0:
        return rpb.RolloutShadow()
    if not 0 <= out.proportion <= 1:
        raise InvalidArgumentError(f"shadow proportion must be in (0, 1], got {out.proportion!r}")
    if not 0 <= out.min_match_rate <= 1:
        raise InvalidArgumentError(
            f"shadow min_match_rate must be in 0..1, got {out.min_match_rate!r}"
        )
    out.proportion = out.proportion or 1.0
    out.min_match_rate = out.min_match_rate or 1.0
    return out


def with_default_bounds(slo: rpb.RolloutSlo) -> rpb.RolloutSlo:
    """``slo``, or with ``max_error_rate`` 0.01 if it sets no bound at all."""
    out = check_slo(slo)
    if not any(_has(out, _PROTO_FIELD.get(key, key)) for key in SLO_KEYS[:-1]):
        out.max_error_rate = DEFAULT_MAX_ERROR_RATE
    return out


def slo_from_dict(values: Mapping[str, Any] | None) -> rpb.RolloutSlo:
    """An SLO from the client's or a deploy file's dict; unknown keys are refused."""
    if values is None:
        return check_slo(rpb.RolloutSlo())
    if not isinstance(values, Mapping):
        raise TypeError(f"slo must be a dict, got {type(values).__name__}")
    unknown = sorted(set(values) - set(SLO_KEYS))
    if unknown:
        raise InvalidArgumentError(
            f"unknown slo key(s) {', '.join(map(repr, unknown))}; known: {', '.join(SLO_KEYS)}"
        )
    slo = rpb.RolloutSlo()
    for key, value in values.items():
        if key == "min_requests":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
                raise InvalidArgumentError(f"slo min_requests must be an int > 0, got {value!r}")
            slo.min_requests = value
        else:
            setattr(slo, _PROTO_FIELD.get(key, key), _number(value, f"slo {key}"))
    return check_slo(slo)


def slo_to_dict(slo: rpb.RolloutSlo) -> dict[str, float | int]:
    """The dict ``slo_from_dict`` takes, with only the bounds that are set."""
    out: dict[str, float | int] = {}
    for key in SLO_KEYS[:-1]:
        name = _PROTO_FIELD.get(key, key)
        if _has(slo, name):
            out[key] = getattr(slo, name)
    out["min_requests"] = slo.min_requests or DEFAULT_MIN_REQUESTS
    return out


def judge(new: Window, old: Window, slo: rpb.RolloutSlo) -> Verdict:
    """The verdict on the new backend over one window, against ``slo``."""
    need = slo.min_requests or DEFAULT_MIN_REQUESTS
    if new.requests < need:
        return Verdict(WAIT, f"{new.requests} of {need} requests needed to judge")
    breaches: list[Breach] = []

    def over(bound: str, value: float | None, limit: float) -> None:
        if value is not None and value > limit:
            breaches.append(Breach(bound, value, limit))

    if slo.HasField("max_error_rate"):
        over("max_error_rate", new.error_rate, slo.max_error_rate)
    if slo.HasField("max_p95_seconds"):
        over("max_p95_s", new.p95, slo.max_p95_seconds)
    if slo.HasField("max_p99_seconds"):
        over("max_p99_s", new.p99, slo.max_p99_seconds)
    relative = old.requests >= need
    if relative and slo.HasField("max_error_rate_ratio"):
        limit = slo.max_error_rate_ratio * old.error_rate
        if new.error_rate > limit:
            ratio = new.error_rate / old.error_rate if old.error_rate else math.inf
            breaches.append(Breach("max_error_rate_ratio", ratio, slo.max_error_rate_ratio))
    if relative and slo.HasField("max_latency_ratio") and new.p99 is not None and old.p99:
        over("max_latency_ratio", new.p99 / old.p99, slo.max_latency_ratio)
    if breaches:
        return Verdict(BREACH, "; ".join(describe(b) for b in breaches), breaches)
    compared = "" if relative else " (old backend too quiet to compare with)"
    return Verdict(PASS, f"within the SLO over {new.requests} requests{compared}")


def shadow_gate(matched: int, differed: int, need: int, min_match_rate: float) -> Verdict:
    """The verdict on a shadow phase's copies: ``need`` compared ones at least."""
    compared = matched + differed
    if compared < need:
        return Verdict(WAIT, f"{compared} of {need} compared copies needed to judge")
    rate = matched / compared
    if rate < min_match_rate:
        breach = Breach("min_match_rate", rate, min_match_rate)
        return Verdict(BREACH, describe(breach), [breach])
    return Verdict(PASS, f"{matched} of {compared} copies matched")


def describe(breach: Breach) -> str:
    """One breach in words, e.g. "max_error_rate: 0.2 > 0.01"."""
    sign = "<" if breach.bound == "min_match_rate" else ">"
    return f"{breach.bound}: {breach.value:.4g} {sign} {breach.limit:.4g}"
