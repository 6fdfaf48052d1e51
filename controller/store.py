"""Desired state: the backends and endpoints the user asked for.

The controller keeps desired state behind the small ``Store`` protocol so that
a durable store (SQLite, then PostgreSQL or etcd for several controllers) can
replace the in-memory one without touching the rest of the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from turnout.v1 import controller_pb2 as pb


@dataclass
class BackendRecord:
    tag: str
    spec: pb.BackendSpec
    # Effective config: every field set.
    config: pb.BackendConfig
    options: pb.ReplicaOptions = field(default_factory=pb.ReplicaOptions)


@dataclass
class EndpointRecord:
    name: str
    route: str
    methods: list[str]
    # backend tag -> weight; weights sum to 1 (or the dict is empty).
    traffic: dict[str, float] = field(default_factory=dict)
    # backend tag -> proportion of requests copied.
    shadows: dict[str, float] = field(default_factory=dict)
    # Seconds a request may take; 0 = no limit.
    request_timeout: float = 0.0

    def backends(self) -> set[str]:
        """Every backend this endpoint sends requests to, shadows included."""
        return set(self.traffic) | set(self.shadows)


class Store(Protocol):
    """Where desired state lives. Each method is one atomic change."""

    def backends(self) -> dict[str, BackendRecord]: ...
    def endpoints(self) -> dict[str, EndpointRecord]: ...
    def put_backend(self, record: BackendRecord) -> None: ...
    def delete_backend(self, tag: str) -> None: ...
    def put_endpoint(self, record: EndpointRecord) -> None: ...
    def delete_endpoint(self, name: str) -> None: ...


class MemoryStore:
    """Desired state in this process only; lost when the controller exits."""

    def __init__(self) -> None:
        self._backends: dict[str, BackendRecord] = {}
        self._endpoints: dict[str, EndpointRecord] = {}

    def backends(self) -> dict[str, BackendRecord]:
        return dict(self._backends)

    def endpoints(self) -> dict[str, EndpointRecord]:
        return dict(self._endpoints)

    def put_backend(self, record: BackendRecord) -> None:
        self._backends[record.tag] = record

    def delete_backend(self, tag: str) -> None:
        self._backends.pop(tag, None)

    def put_endpoint(self, record: EndpointRecord) -> None:
        self._endpoints[record.name] = record

    def delete_endpoint(self, name: str) -> None:
        self._endpoints.pop(name, None)
