"""``BackendConfig``: how a backend's replicas run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import InitVar, dataclass
from typing import Any

from turnout._internal import autoscaling as autoscaling_fields
from turnout._internal import backend_fields
from turnout._internal.backend_fields import (
    LIFECYCLE_METHODS,
    MAX_SECONDS,
    MIN_HEALTH_CHECK_S,
    Kind,
    method_names,
    request_callable,
)
from turnout.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

# Re-exported: what callers of turnout.config used before the field table.
__all__ = [
    "DEFAULTS",
    "LIFECYCLE_METHODS",
    "MAX_SECONDS",
    "MIN_HEALTH_CHECK_S",
    "BackendConfig",
    "method_names",
    "request_callable",
]


@dataclass
class BackendConfig:
    """How a backend's replicas run. ``None`` means "not given".

    In ``create_backend`` a field left ``None`` takes its default; in
    ``update_backend_config`` it stays as it was. ``get_backend_config``
    returns every field filled in.

    Example::

        serve.create_backend("model", Model, config={"num_replicas": 2})
        serve.update_backend_config("model", BackendConfig(num_replicas=3))

    Fields:
        num_replicas: replica processes, >= 1 (default 1).
        max_concurrent_queries: requests one replica works on at once, >= 1
            (default 100); sync handlers run in a thread pool of this size, and
            senders never have more than this in flight at one replica.
        max_batch_size: requests per call of an ``@accept_batch`` handler
            (default 1).
        batch_wait_timeout: seconds a replica waits to fill a batch (default 0).
        user_config: JSON-compatible value passed to the class's
            ``reconfigure()`` at start and, when it changes, on live replicas
            without restarting them (default: none).
        graceful_shutdown_timeout: seconds a stopping replica gets to finish
            the requests it holds (default 20).
        health_check_period: seconds between health checks, which call the
            class's ``check_health()`` if it has one (default 10).
        health_check_failure_threshold: failed checks in a row after which a
            replica is replaced (default 3).
        health_check_timeout: seconds one health check may take before it
            counts as failed (default 10).
        max_queued_requests: requests a sender holds while every replica is
            full; more are refused with 503 / OverloadedError (default 1000).
        queue_timeout: seconds a request may wait in that queue (default 30).
        http_call_methods: the methods of a class backend that HTTP requests
            may call (``__call__`` without ``X-Serve-Call-Method``, the
            header's method with it); others answer 404. Default: ``__call__``
            and every public method. Handles may call any public method.
            ``reconfigure`` and ``check_health`` are never callable by requests.

        autoscaling: the controller picks the number of replicas from the
            load (requests in flight and queued per replica), as Ray Serve
            2.x's ``autoscaling_config`` (a dict of its keys ``min_replicas``,
            ``max_replicas``, ``target_ongoing_requests``, ``upscale_delay_s``,
            ``downscale_delay_s``, ``initial_replicas``, ``look_back_period_s``;
            also given as ``autoscaling_config``); not with ``num_replicas``
            (default: none, a fixed ``num_replicas``). docs/traffic.md,
            "Autoscaling", has the rules.

    Every field applies to the running replicas without restarting them,
    except ``http_call_methods``: changing it restarts the replicas one at a
    time (no downtime).
    """

    num_replicas: int | None = None
    max_concurrent_queries: int | None = None
    max_batch_size: int | None = None
    batch_wait_timeout: float | None = None
    user_config: Any = None
    graceful_shutdown_timeout: float | None = None
    health_check_period: float | None = None
    health_check_failure_threshold: int | None = None
    max_queued_requests: int | None = None
    queue_timeout: float | None = None
    http_call_methods: list[str] | None = None
    health_check_timeout: float | None = None
    autoscaling: dict[str, Any] | None = None
    # Ray Serve 2.x's name of ``autoscaling``.
    autoscaling_config: InitVar[dict[str, Any] | None] = None

    def __post_init__(self, autoscaling_config: dict[str, Any] | None) -> None:
        if autoscaling_config is not None:
            if self.autoscaling is not None:
                raise InvalidArgumentError(
                    "give autoscaling or autoscaling_config (the same field), not both"
                )
            self.autoscaling = autoscaling_config
        if self.autoscaling is not None:
            # Normalised (aliases resolved), checked as the controller will.
            message = autoscaling_fields.from_dict(self.autoscaling)
            self.autoscaling = autoscaling_fields.to_dict(message)
            if self.num_replicas is not None:
                raise InvalidArgumentError(
                    "num_replicas and autoscaling_config are mutually exclusive: an "
                    "autoscaled backend's replica count is the controller's to decide "
                    "(give initial_replicas in autoscaling_config to choose where it starts)"
                )
        # Type checks here; bounds in the table, shared with the controller.
        for row in backend_fields.NUMBER_FIELDS:
            value = getattr(self, row.name)
            if value is None:
                continue
            if row.kind is Kind.COUNT:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{row.name} must be an int, got {type(value).__name__}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{row.name} must be a number, got {type(value).__name__}")
            backend_fields.check(row.name, value)
        if self.user_config is not None:
            try:
                json.dumps(self.user_config)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"user_config must be JSON-compatible: {exc}") from None
        if self.http_call_methods is not None:
            self.http_call_methods = method_names(self.http_call_methods)

    @classmethod
    def coerce(cls, value: BackendConfig | dict[str, Any] | None) -> BackendConfig:
        """Accept a BackendConfig or a dict of its fields (unknown keys refused)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"config must be a dict or BackendConfig, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} | {"autoscaling_config"}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**value)

    def to_proto(self) -> pb.BackendConfig:
        message = pb.BackendConfig()
        for row in backend_fields.NUMBER_FIELDS:
            value = getattr(self, row.name)
            if value is not None:
                setattr(message, row.name, value)
        if self.user_config is not None:
            message.user_config_json = json.dumps(self.user_config)
        if self.http_call_methods is not None:
            # Set even when empty: an empty list (only handles may call) is not "unset".
            message.http_call_methods.SetInParent()
            message.http_call_methods.names.extend(self.http_call_methods)
        if self.autoscaling is not None:
            message.autoscaling.CopyFrom(autoscaling_fields.from_dict(self.autoscaling))
        return message

    @classmethod
    def from_proto(cls, message: pb.BackendConfig) -> BackendConfig:
        values: dict[str, Any] = {
            row.name: getattr(message, row.name)
            for row in backend_fields.NUMBER_FIELDS
            if message.HasField(row.name)  # type: ignore[arg-type]
        }
        if message.HasField("user_config_json"):
            values["user_config"] = json.loads(message.user_config_json)
        if message.HasField("http_call_methods"):
            values["http_call_methods"] = list(message.http_call_methods.names)
        if message.HasField("autoscaling"):
            # num_replicas is then the controller's current count, not a
            # setting: shown by autoscaling_status(), left out here so that a
            # config read back can be given again.
            values.pop("num_replicas", None)
            values["autoscaling"] = autoscaling_fields.to_dict(message.autoscaling)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The default of every field: what the controller fills in for fields a
# create_backend call leaves unset, and what replicas and senders fall back on.
DEFAULTS = BackendConfig.from_proto(backend_fields.defaults_proto())
