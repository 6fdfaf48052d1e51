"""The backend-config field table: every ``BackendConfig`` field once, with its
type, default, bounds, unit and what a change to it takes.

Everything else is derived from ``FIELDS``: the client's ``BackendConfig``
(turnout.config), the controller's checks and defaults
(turnout._internal.validation), the deploy-file checks (they go through
``BackendConfig``), the values a replica starts with (``count``/``seconds``) and
the limits a sender applies (``sender_limits``). To add a field, add a row here
and the field to ``BackendConfig`` and to the proto message; the tests in
tests/_internal/test_backend_fields.py say what else is missing.

Example::

    from turnout._internal import backend_fields

    backend_fields.FIELD["queue_timeout"].default         # 30.0
    backend_fields.check("num_replicas", 0)               # InvalidArgumentError
    backend_fields.needs_new_replicas(old_pb, new_pb)     # True: roll the replicas
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout._internal.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

# A longer wait is a typo, and every wait of the controller stays bounded.
MAX_SECONDS = 86400.0
# A health check more often than 10 times a second only costs the replica.
MIN_HEALTH_CHECK_S = 0.1
# The counts travel as uint32.
MAX_COUNT = 2**32 - 1


class Kind(enum.Enum):
    """What values a field takes, in Python and on the wire."""

    COUNT = "count"  # int, 1 to MAX_COUNT; uint32 in the proto
    SECONDS = "seconds"  # int or float, finite, within the field's bounds; double
    JSON = "json"  # any JSON-compatible value; JSON text in the proto
    METHOD_NAMES = "method names"  # list of method names; a MethodNames message
    AUTOSCALING = "autoscaling"  # dict of Ray 2.x's keys; an AutoscalingConfig message


class Change(enum.Enum):
    """What the controller does when a field changes on a running backend."""

    # Replicas read it only when they start: new replicas replace the running
    # ones, one at a time.
    NEW_REPLICAS = "new replicas"
    # Running replicas take it in place (ReplicaService.Reconfigure), keeping
    # their processes and replica ids.
    RECONFIGURE = "reconfigure"
    # The controller or the senders apply it; replicas never read it.
    LIVE = "live"


@dataclass(frozen=True)
class BackendField:
    """One row of the table."""

    name: str  # in BackendConfig (and in the proto, but for proto_name)
    kind: Kind
    # What the controller fills in when a create leaves the field unset; None
    # = the field has no value then (user_config, http_call_methods).
    default: int | float | None
    unit: str
    change: Change
    # Whether senders (proxy, handles) read it, through the routing snapshot.
    senders: bool = False
    minimum: float = 0.0
    maximum: float = MAX_SECONDS
    proto_name: str = ""

    @property
    def wire_name(self) -> str:
        """The field's name in the ``BackendConfig`` proto message."""
        return self.proto_name or self.name

    @property
    def bounds(self) -> str:
        """The values it takes, as the docs write them."""
        if self.kind is Kind.COUNT:
            return f">= {self.minimum:g}"
        if self.kind is Kind.SECONDS:
            return f"{self.minimum:g} to {self.maximum:g}"
        if self.kind is Kind.AUTOSCALING:
            return "docs/traffic.md"
        return "JSON-compatible" if self.kind is Kind.JSON else "method names"


def _count(
    name: str, default: int, unit: str, change: Change, senders: bool = False
) -> BackendField:
    return BackendField(
        name, Kind.COUNT, default, unit, change, senders, minimum=1, maximum=MAX_COUNT
    )


def _seconds(
    name: str, default: float, change: Change, senders: bool = False, minimum: float = 0.0
) -> BackendField:
    return BackendField(name, Kind.SECONDS, default, "s", change, senders, minimum=minimum)


# In the order of BackendConfig's fields and of the proto's field numbers.
FIELDS: tuple[BackendField, ...] = (
    _count("num_replicas", 1, "replicas", Change.LIVE),
    _count("max_concurrent_queries", 100, "requests", Change.RECONFIGURE, senders=True),
    _count("max_batch_size", 1, "requests", Change.RECONFIGURE),
    _seconds("batch_wait_timeout", 0.0, Change.RECONFIGURE),
    BackendField(
        "user_config", Kind.JSON, None, "", Change.RECONFIGURE, proto_name="user_config_json"
    ),
    _seconds("graceful_shutdown_timeout", 20.0, Change.LIVE),
    _seconds("health_check_period", 10.0, Change.LIVE, minimum=MIN_HEALTH_CHECK_S),
    _count("health_check_failure_threshold", 3, "checks", Change.LIVE),
    _count("max_queued_requests", 1000, "requests", Change.LIVE, senders=True),
    _seconds("queue_timeout", 30.0, Change.LIVE, senders=True),
    BackendField("http_call_methods", Kind.METHOD_NAMES, None, "", Change.NEW_REPLICAS),
    _seconds("health_check_timeout", 10.0, Change.LIVE, minimum=MIN_HEALTH_CHECK_S),
    BackendField("autoscaling", Kind.AUTOSCALING, None, "", Change.LIVE),
)
FIELD: Mapping[str, BackendField] = {f.name: f for f in FIELDS}
NAMES: tuple[str, ...] = tuple(FIELD)
NUMBER_FIELDS: tuple[BackendField, ...] = tuple(
    f for f in FIELDS if f.kind in (Kind.COUNT, Kind.SECONDS)
)
# Changing one of these starts new replicas (one at a time).
NEW_REPLICA_FIELDS: tuple[str, ...] = tuple(
    f.wire_name for f in FIELDS if f.change is Change.NEW_REPLICAS
)
# Numbers running replicas take in place through Reconfigure (user_config
# travels there too, as its own request field).
RECONFIGURE_LIMITS: tuple[str, ...] = tuple(
    f.name for f in NUMBER_FIELDS if f.change is Change.RECONFIGURE
)


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


def check(name: str, value: int | float) -> None:
    """Raise InvalidArgumentError unless the number ``value`` is within the
    bounds of the count or seconds field ``name`` (its type is the caller's:
    the client checks Python types, the proto fixes them on the wire)."""
    row = FIELD[name]
    if row.kind is Kind.COUNT:
        if value < row.minimum:
            raise InvalidArgumentError(f"{name} must be >= {int(row.minimum)}, got {value}")
        if value > row.maximum:
            raise InvalidArgumentError(f"{name} must be at most {int(row.maximum)}, got {value}")
    elif not math.isfinite(value) or not row.minimum <= value <= row.maximum:
        raise InvalidArgumentError(
            f"{name} must be a number of seconds from {row.minimum:g} to {row.maximum:g}, "
            f"got {value}"
        )


def check_proto(config: pb.BackendConfig) -> None:
    """``check`` every count and seconds field set in ``config``."""
    for row in NUMBER_FIELDS:
        if config.HasField(row.name):  # type: ignore[arg-type]
            check(row.name, getattr(config, row.name))


def defaults_proto() -> pb.BackendConfig:
    """A BackendConfig message with every field that has a default set to it."""
    config = pb.BackendConfig()
    for row in NUMBER_FIELDS:
        setattr(config, row.name, row.default)
    return config


def count(config: pb.BackendConfig, name: str) -> int:
    """The count field ``name`` of ``config``, or its default when unset."""
    default = _default(name, Kind.COUNT)
    if config.HasField(name):  # type: ignore[arg-type]
        return int(getattr(config, name))
    return int(default)


def seconds(config: pb.BackendConfig, name: str) -> float:
    """The seconds field ``name`` of ``config``, or its default when unset."""
    default = _default(name, Kind.SECONDS)
    if config.HasField(name):  # type: ignore[arg-type]
        return float(getattr(config, name))
    return float(default)


def _default(name: str, kind: Kind) -> int | float:
    """The default of ``name``; KeyError unless it is a ``kind`` field."""
    row = FIELD[name]
    if row.kind is not kind or row.default is None:
        raise KeyError(f"{name} is not a {kind.value} field")
    return row.default


def _wire_value(config: pb.BackendConfig, row: BackendField) -> object:
    """What ``config`` holds for ``row``: None when unset (set and unset differ
    even where the value reads the same, e.g. an empty method list)."""
    if not config.HasField(row.wire_name):  # type: ignore[arg-type]
        return None
    if row.kind is Kind.METHOD_NAMES:
        return list(config.http_call_methods.names)
    if row.kind is Kind.AUTOSCALING:
        return config.autoscaling.SerializeToString(deterministic=True)
    return getattr(config, row.wire_name)


def changed(old: pb.BackendConfig, new: pb.BackendConfig) -> list[BackendField]:
    """The fields whose value differs between two configs, in table order."""
    return [row for row in FIELDS if _wire_value(old, row) != _wire_value(new, row)]


def needs_new_replicas(old: pb.BackendConfig, new: pb.BackendConfig) -> bool:
    """Whether going from ``old`` to ``new`` replaces the running replicas
    (a roll), rather than changing them in place or not at all.

    Example::

        old = pb.BackendConfig(num_replicas=1)
        needs_new_replicas(old, pb.BackendConfig(num_replicas=3))  # False: a scale
    """
    return any(row.change is Change.NEW_REPLICAS for row in changed(old, new))


def reconfigure_limits(old: pb.BackendConfig, new: pb.BackendConfig) -> dict[str, int | float]:
    """The numbers a Reconfigure of the running replicas sends for ``new``:
    those that changed since ``old``."""
    return {
        row.name: getattr(new, row.name)
        for row in changed(old, new)
        if row.change is Change.RECONFIGURE and row.kind in (Kind.COUNT, Kind.SECONDS)
    }


@dataclass(frozen=True)
class SenderLimits:
    """How much a sender (the proxy, or a process with handles) may load one
    backend: at most ``max_concurrent_queries`` in flight at each replica, then
    at most ``max_queued_requests`` waiting, each for ``queue_timeout`` s."""

    max_concurrent_queries: int = int(_default("max_concurrent_queries", Kind.COUNT))
    max_queued_requests: int = int(_default("max_queued_requests", Kind.COUNT))
    queue_timeout: float = float(_default("queue_timeout", Kind.SECONDS))


SENDER_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.senders)


def sender_limits(targets: pb.BackendTargets | pb.BackendConfig) -> SenderLimits:
    """The limits of one backend, from its routing snapshot entry (or config).

    A field that is unset takes its default. Where the message has no
    presence for it (``BackendTargets``), a ``<name>_set`` flag beside it
    says whether it was given (``queue_timeout_set``: so that a
    ``queue_timeout`` of 0 means 0); without one, or with the flag false (a
    snapshot from an older controller), unset reads as 0, so a 0 counts as
    the default, as it always has.
    """
    fields = targets.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for name in SENDER_FIELDS:
        if fields[name].has_presence:
            given = targets.HasField(name)  # type: ignore[arg-type]
        else:
            flag = f"{name}_set"
            given = bool(getattr(targets, name)) or (
                flag in fields and bool(getattr(targets, flag))
            )
        if given:
            values[name] = getattr(targets, name)
    return SenderLimits(**values)


def with_sender_limits(targets: pb.BackendTargets, config: pb.BackendConfig) -> pb.BackendTargets:
    """``targets`` (a routing snapshot entry) given ``config``'s sender limits,
    as the controller publishes them; returns ``targets``."""
    limits = sender_limits(config)
    fields = targets.DESCRIPTOR.fields_by_name
    for name in SENDER_FIELDS:
        setattr(targets, name, getattr(limits, name))
        # Said even when it is 0, where the field itself cannot say it.
        if f"{name}_set" in fields:
            setattr(targets, f"{name}_set", True)
    return targets
