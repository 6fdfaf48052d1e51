"""``BackendConfig``: how a backend's replicas run."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from turnout.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb


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
            (default 100); sync handlers run in a thread pool of this size.
        max_batch_size: items per call of an ``@accept_batch`` handler
            (default 1: no batching).
        batch_wait_timeout: seconds a replica waits to fill a batch (default 0).
        user_config: JSON-compatible value passed to the class's
            ``reconfigure()`` (default: none).
    """

    num_replicas: int | None = None
    max_concurrent_queries: int | None = None
    max_batch_size: int | None = None
    batch_wait_timeout: float | None = None
    user_config: Any = None

    def __post_init__(self) -> None:
        for name in ("num_replicas", "max_concurrent_queries", "max_batch_size"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {value}")
        timeout = self.batch_wait_timeout
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(
                    f"batch_wait_timeout must be a number, got {type(timeout).__name__}"
                )
            if not math.isfinite(timeout) or timeout < 0:
                raise InvalidArgumentError(f"batch_wait_timeout must be >= 0, got {timeout}")
        if self.user_config is not None:
            try:
                json.dumps(self.user_config)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"user_config must be JSON-compatible: {exc}") from None

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
        if self.num_replicas is not None:
            message.num_replicas = self.num_replicas
        if self.max_concurrent_queries is not None:
            message.max_concurrent_queries = self.max_concurrent_queries
        if self.max_batch_size is not None:
            message.max_batch_size = self.max_batch_size
        if self.batch_wait_timeout is not None:
            message.batch_wait_timeout = float(self.batch_wait_timeout)
        if self.user_config is not None:
            message.user_config_json = json.dumps(self.user_config)
        return message

    @classmethod
    def from_proto(cls, message: pb.BackendConfig) -> BackendConfig:
        return cls(
            num_replicas=message.num_replicas if message.HasField("num_replicas") else None,
            max_concurrent_queries=(
                message.max_concurrent_queries
                if message.HasField("max_concurrent_queries")
                else None
            ),
            max_batch_size=message.max_batch_size if message.HasField("max_batch_size") else None,
            batch_wait_timeout=(
                message.batch_wait_timeout if message.HasField("batch_wait_timeout") else None
            ),
            user_config=(
                json.loads(message.user_config_json)
                if message.HasField("user_config_json")
                else None
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
