"""The autoscaling config: its fields (Ray Serve 2.x's names), defaults,
bounds and checks, shared by the client, deploy files and the controller.

A backend whose config has ``autoscaling`` set gets its replica count from
the controller (``turnout.controller.autoscaler``); ``num_replicas`` then
holds the count last decided, and giving both is refused.

Example::

    from turnout._internal import autoscaling

    message = autoscaling.from_dict({"min_replicas": 1, "max_replicas": 4})
    autoscaling.policy(message).target_ongoing_requests   # 2.0
    autoscaling.from_dict({"max_replicas": 0})            # InvalidArgumentError
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout._internal.backend_fields import MAX_COUNT, MAX_SECONDS
from turnout._internal.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

COUNTS = ("min_replicas", "max_replicas", "initial_replicas")
SECONDS = ("upscale_delay_s", "downscale_delay_s", "look_back_period_s")
# In the order of the proto's field numbers.
KEYS = (
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
    "initial_replicas",
    "look_back_period_s",
)
# Ray Serve's earlier spelling of target_ongoing_requests (before 2.10).
ALIASES = {"target_num_ongoing_requests_per_replica": "target_ongoing_requests"}
# Shorter than this, the average would be one report or none.
MIN_LOOK_BACK_S = 0.1


@dataclass(frozen=True)
class Policy:
    """An autoscaling config with every default filled in (initial_replicas
    defaults to min_replicas)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    initial_replicas: int | None = None
    look_back_period_s: float = 30.0

    @property
    def start_replicas(self) -> int:
        """Replicas a new backend starts with."""
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas

    def clamp(self, count: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, count))


DEFAULT = Policy()


def policy(message: pb.AutoscalingConfig) -> Policy:
    """``message`` with its defaults filled in."""
    values: dict[str, Any] = {
        key: getattr(message, key)
        for key in KEYS
        if message.HasField(key)  # type: ignore[arg-type]
    }
    return Policy(**values)


def check(message: pb.AutoscalingConfig) -> None:
    """Raise InvalidArgumentError unless ``message`` is a valid config."""
    for key in COUNTS:
        if message.HasField(key) and getattr(message, key) < 1:  # type: ignore[arg-type]
            raise InvalidArgumentError(
                f"autoscaling {key} must be >= 1 (scaling to zero is not supported), "
                f"got {getattr(message, key)}"
            )
    for key in SECONDS:
        if not message.HasField(key):  # type: ignore[arg-type]
            continue
        value = getattr(message, key)
        low = MIN_LOOK_BACK_S if key == "look_back_period_s" else 0.0
        if not math.isfinite(value) or not low <= value <= MAX_SECONDS:
            raise InvalidArgumentError(
                f"autoscaling {key} must be a number of seconds from {low:g} to "
                f"{MAX_SECONDS:g}, got {value}"
            )
    if message.HasField("target_ongoing_requests"):
        value = message.target_ongoing_requests
        if not math.isfinite(value) or value <= 0:
            raise InvalidArgumentError(
                f"autoscaling target_ongoing_requests must be a number > 0, got {value}"
            )
    rules = policy(message)
    if rules.max_replicas < rules.min_replicas:
        raise InvalidArgumentError(
            f"autoscaling max_replicas ({rules.max_replicas}) must be >= min_replicas "
            f"({rules.min_replicas})"
        )
    if rules.initial_replicas is not None and rules.clamp(rules.initial_replicas) != (
        rules.initial_replicas
    ):
        raise InvalidArgumentError(
            f"autoscaling initial_replicas ({rules.initial_replicas}) must be within "
            f"min_replicas ({rules.min_replicas}) and max_replicas ({rules.max_replicas})"
        )


def from_dict(values: Mapping[str, Any]) -> pb.AutoscalingConfig:
    """An ``AutoscalingConfig`` from Ray 2.x's keys (unknown keys refused,
    wrong types TypeError, bad values InvalidArgumentError)."""
    if not isinstance(values, Mapping):
        raise TypeError(f"autoscaling_config must be a dict, got {type(values).__name__}")
    message = pb.AutoscalingConfig()
    for raw, value in values.items():
        key = ALIASES.get(str(raw), str(raw))
        if key not in KEYS:
            raise InvalidArgumentError(
                f"unknown autoscaling_config key {raw!r}; known: {', '.join(KEYS)}"
            )
        if value is None:
            continue
        if key in COUNTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"autoscaling {key} must be an int, got {type(value).__name__}")
            if not 0 <= value <= MAX_COUNT:
                raise InvalidArgumentError(f"autoscaling {key} must be >= 1, got {value}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"autoscaling {key} must be a number, got {type(value).__name__}")
        setattr(message, key, value)
    check(message)
    return message


def to_dict(message: pb.AutoscalingConfig) -> dict[str, Any]:
    """The fields set in ``message``, by Ray 2.x's names."""
    return {
        key: getattr(message, key)
        for key in KEYS
        if message.HasField(key)  # type: ignore[arg-type]
    }
