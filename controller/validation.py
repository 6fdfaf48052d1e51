"""Checks on every admin request, before anything changes.

Each function returns the normalised value or raises one of ``turnout.errors``;
the servicer turns those into gRPC status codes.
"""

from __future__ import annotations

import json
import math
import re

from turnout.config import DEFAULTS, method_names
from turnout.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
DEFAULT_METHODS = ["GET"]
# Paths under /-/ belong to the proxy (/-/routes, /-/healthz, /-/metrics).
SYSTEM_PREFIX = "/-/"
_DEFAULTS = DEFAULTS.to_proto()
DEFAULT_MAX_CONCURRENT_QUERIES = _DEFAULTS.max_concurrent_queries
MAX_NAME_LENGTH = 256
WEIGHT_TOLERANCE = 1e-6

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def name(value: str, what: str) -> str:
    """A backend tag or endpoint name: non-empty, printable, bounded."""
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not value.isprintable():
        raise InvalidArgumentError(f"{what} {value!r} contains control characters")
    return value


def route(value: str) -> str:
    """An HTTP route: empty (no HTTP exposure) or an absolute path."""
    if not value:
        return ""
    if not value.startswith("/"):
        raise InvalidArgumentError(f"route {value!r} must start with '/'")
    if any(c in value for c in "?# ") or not value.isprintable():
        raise InvalidArgumentError(f"route {value!r} must be a plain path (no '?', '#' or spaces)")
    if value.startswith(SYSTEM_PREFIX) or value == SYSTEM_PREFIX.rstrip("/"):
        raise InvalidArgumentError(f"route {value!r} is reserved: paths under /-/ are the proxy's")
    return value


def methods(values: list[str]) -> list[str]:
    """HTTP methods, upper-cased and de-duplicated; empty means GET."""
    if not values:
        return list(DEFAULT_METHODS)
    result: list[str] = []
    for value in values:
        upper = value.upper()
        if upper not in HTTP_METHODS:
            known = ", ".join(sorted(HTTP_METHODS))
            raise InvalidArgumentError(f"unknown HTTP method {value!r}; use one of {known}")
        if upper not in result:
            result.append(upper)
    return result


def spec(value: pb.BackendSpec) -> pb.BackendSpec:
    source = value.WhichOneof("source")
    if source is None:
        raise InvalidArgumentError("backend spec needs pickled_callable or import_path")
    if source == "import_path" and not _IMPORT_PATH.match(value.import_path):
        raise InvalidArgumentError(
            f"import path {value.import_path!r} must look like 'package.module:attribute'"
        )
    if source == "pickled_callable" and not value.pickled_callable:
        raise InvalidArgumentError("pickled_callable is empty")
    if value.pickled_init_args and value.init_args_json:
        raise InvalidArgumentError(
            "give init args as pickled_init_args or init_args_json, not both"
        )
    if value.init_args_json:
        try:
            args = json.loads(value.init_args_json)
        except ValueError as exc:
            raise InvalidArgumentError(f"init_args_json is not valid JSON: {exc}") from None
        if not isinstance(args, list):
            raise InvalidArgumentError("init_args_json must be a JSON array")
    return value


def _non_negative(update: pb.BackendConfig, field: str, positive: bool = False) -> None:
    if update.HasField(field):  # type: ignore[arg-type]
        value = getattr(update, field)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise InvalidArgumentError(f"{field} must be a finite number {bound}, got {value}")


def _at_least_one(update: pb.BackendConfig, field: str) -> None:
    if update.HasField(field) and getattr(update, field) < 1:  # type: ignore[arg-type]
        raise InvalidArgumentError(f"{field} must be >= 1, got {getattr(update, field)}")


def config_update(update: pb.BackendConfig) -> None:
    """Checks the fields set in ``update`` (a full or partial config)."""
    for field in (
        "num_replicas",
        "max_concurrent_queries",
        "max_batch_size",
        "health_check_failure_threshold",
        "max_queued_requests",
    ):
        _at_least_one(update, field)
    for field in ("batch_wait_timeout", "graceful_shutdown_timeout", "queue_timeout"):
        _non_negative(update, field)
    _non_negative(update, "health_check_period", positive=True)
    if update.HasField("user_config_json"):
        try:
            json.loads(update.user_config_json)
        except ValueError as exc:
            raise InvalidArgumentError(f"user_config_json is not valid JSON: {exc}") from None
    if update.HasField("http_call_methods"):
        names = method_names(update.http_call_methods.names)
        del update.http_call_methods.names[:]
        update.http_call_methods.names.extend(names)


def full_config(requested: pb.BackendConfig) -> pb.BackendConfig:
    """``requested`` with every unset field given its default."""
    config_update(requested)
    config = pb.BackendConfig()
    config.CopyFrom(_DEFAULTS)
    config.MergeFrom(requested)
    return config


# Config fields a running replica reads only at start: changing one restarts the
# replicas, one at a time.
RESTART_FIELDS = ("http_call_methods",)
# Config fields a running replica takes in place (ReplicaService.Reconfigure),
# keeping its process and replica id.
LIVE_FIELDS = ("max_concurrent_queries", "max_batch_size", "batch_wait_timeout")


def replica_options(options: pb.ReplicaOptions) -> pb.ReplicaOptions:
    for field in ("num_cpus", "num_gpus"):
        value = getattr(options, field)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"{field} must be a finite number >= 0, got {value}")
    if options.num_gpus > 1 and options.num_gpus != int(options.num_gpus):
        raise InvalidArgumentError(
            f"num_gpus {options.num_gpus} mixes whole and shared GPUs; use a whole number "
            "or a fraction below 1"
        )
    for key in options.env:
        if not key or "=" in key or "\0" in key:
            raise InvalidArgumentError(f"environment variable name {key!r} is not valid")
    return options


def request_timeout(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"request_timeout must be a number >= 0, got {value}")
    return value


def proportion(value: float) -> float:
    """Share of requests copied to a shadow: 0 (remove) to 1."""
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise InvalidArgumentError(f"proportion must be between 0 and 1, got {value}")
    return value


def traffic(weights: dict[str, float]) -> dict[str, float]:
    """Weights >= 0 and finite that sum to 1."""
    for backend, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgumentError(
                f"weight of {backend!r} must be a finite number >= 0, got {weight}"
            )
    total = math.fsum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise InvalidArgumentError(f"traffic weights must sum to 1, got {total}")
    return dict(weights)
