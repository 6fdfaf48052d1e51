"""``BackendConfig``: how a backend's replicas run."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from turnout.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

_INT_FIELDS = (
    "num_replicas",
    "max_concurrent_queries",
    "max_batch_size",
    "health_check_failure_threshold",
    "max_queued_requests",
)
_SECONDS_FIELDS = (
    "batch_wait_timeout",
    "graceful_shutdown_timeout",
    "health_check_period",
    "queue_timeout",
    "health_check_timeout",
)
# Bounds of the seconds fields (the controller checks the same, see
# docs/operations.md "Limits"): a longer wait is a typo, and every wait of the
# controller stays bounded; a health check more often than 10 times a second
# only costs the replica.
MAX_SECONDS = 86400.0
MIN_HEALTH_CHECK_S = 0.1
_HEALTH_FIELDS = ("health_check_period", "health_check_timeout")

# Methods the replica calls on the instance itself; never on a request's behalf.
LIFECYCLE_METHODS = frozenset({"reconfigure", "check_health"})


def request_callable(name: str) -> bool:
    """Whether a request (HTTP or handle) may ever call the method ``name``:
    ``__call__`` and public methods, lifecycle methods excepted."""
    return name == "__call__" or (
        name.isidentifier() and not name.startswith("_") and name not in LIFECYCLE_METHODS
    )


def method_names(values: Iterable[Any], what: str = "http_call_methods") -> list[str]:
    """Method names for ``what``, de-duplicated in order; raises TypeError for
    a non-str and InvalidArgumentError for a name no request may call."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a list of method names, got {type(values).__name__}")
    names: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{what} must hold str method names, got {type(value).__name__}")
        if not request_callable(value):
            raise InvalidArgumentError(
                f"{what} cannot name {value!r}: only __call__ and public methods other than "
                f"{' and '.join(sorted(LIFECYCLE_METHODS))} are callable by requests"
            )
        if value not in names:
            names.append(value)
    return names


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

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {value}")
        for name in _SECONDS_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            minimum = MIN_HEALTH_CHECK_S if name in _HEALTH_FIELDS else 0.0
            if not math.isfinite(value) or not minimum <= value <= MAX_SECONDS:
                raise InvalidArgumentError(
                    f"{name} must be a number of seconds from {minimum:g} to {MAX_SECONDS:g}, "
                    f"got {value}"
                )
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**value)

    def to_proto(self) -> pb.BackendConfig:
        message = pb.BackendConfig()
        for name in (*_INT_FIELDS, *_SECONDS_FIELDS):
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        if self.user_config is not None:
            message.user_config_json = json.dumps(self.user_config)
        if self.http_call_methods is not None:
            # Set even when empty: an empty list (only handles may call) is not "unset".
            message.http_call_methods.SetInParent()
            message.http_call_methods.names.extend(self.http_call_methods)
        return message

    @classmethod
    def from_proto(cls, message: pb.BackendConfig) -> BackendConfig:
        values: dict[str, Any] = {
            name: getattr(message, name)
            for name in (*_INT_FIELDS, *_SECONDS_FIELDS)
            if message.HasField(name)  # type: ignore[arg-type]
        }
        if message.HasField("user_config_json"):
            values["user_config"] = json.loads(message.user_config_json)
        if message.HasField("http_call_methods"):
            values["http_call_methods"] = list(message.http_call_methods.names)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The default of every field: what the controller fills in for fields a
# create_backend call leaves unset, and what replicas and senders fall back on.
DEFAULTS = BackendConfig(
    num_replicas=1,
    max_concurrent_queries=100,
    max_batch_size=1,
    batch_wait_timeout=0.0,
    graceful_shutdown_timeout=20.0,
    health_check_period=10.0,
    health_check_failure_threshold=3,
    max_queued_requests=1000,
    queue_timeout=30.0,
    health_check_timeout=10.0,
)
