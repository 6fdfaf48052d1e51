"""Desired state (the backends and endpoints the user asked for) and the
record of the processes the controller started for them.

The controller keeps both behind the small ``Store`` protocol so that a durable
store (SQLite, then PostgreSQL or etcd for several controllers) can replace the
in-memory one without touching the rest of the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from turnout._internal.cors import CorsPolicy
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import rollout_pb2 as rpb


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
    # Cross-origin resource sharing, answered by the proxy; None = none.
    cors: CorsPolicy | None = None

    def backends(self) -> set[str]:
        """Every backend this endpoint sends requests to, shadows included."""
        return set(self.traffic) | set(self.shadows)


PROXY = "proxy"
REPLICA = "replica"
# The launcher of OS processes on the controller's machine (``launchers.local``).
LOCAL = "local"


@dataclass(frozen=True)
class ChildRecord:
    """A child the controller started, as a later controller needs it to
    re-adopt the child (or to stop it) after a crash."""

    # "proxy", or the replica id ("<backend>#<n>").
    name: str
    # PROXY or REPLICA.
    kind: str
    # Which launcher started it, and what that launcher needs to find it
    # again: opaque to everyone else (local processes: pid and start time).
    launcher: str = LOCAL
    handle: str = ""
    # host:port it serves on; "" until it reported ready.
    address: str = ""
    log_path: str = ""
    # Replicas only: backend tag and what they run (see ``replica_digest``).
    backend: str = ""
    digest: str = ""
    # Replicas only: cores pinned, GPU ids and the share of each GPU held.
    cpus: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    gpu_share: float = 0.0
    # Replicas only: what their code can do, as they reported it (JSON).
    capabilities: str = "{}"


class Store(Protocol):
    """Where desired state and child records live.

    Each mutating method is one atomic change, durable (for a durable store)
    when it returns; reads return copies the caller may keep.
    """

    def backends(self) -> dict[str, BackendRecord]: ...
    def endpoints(self) -> dict[str, EndpointRecord]: ...
    def put_backend(self, record: BackendRecord) -> None: ...
    def delete_backend(self, tag: str) -> None: ...
    def put_endpoint(self, record: EndpointRecord) -> None: ...
    def delete_endpoint(self, name: str) -> None: ...

    # Child processes, keyed by ``ChildRecord.name``.
    def children(self) -> dict[str, ChildRecord]: ...
    def put_child(self, record: ChildRecord) -> None: ...
    def delete_child(self, name: str) -> None: ...

    # Each endpoint's current or last rollout, keyed by endpoint.
    def rollouts(self) -> dict[str, rpb.Rollout]: ...
    def put_rollout(self, rollout: rpb.Rollout) -> None: ...


class MemoryStore:
    """Desired state in this process only; lost when the controller exits."""

    def __init__(self) -> None:
        self._backends: dict[str, BackendRecord] = {}
        self._endpoints: dict[str, EndpointRecord] = {}
        self._children: dict[str, ChildRecord] = {}
        self._rollouts: dict[str, bytes] = {}

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

    def children(self) -> dict[str, ChildRecord]:
        return dict(self._children)

    def put_child(self, record: ChildRecord) -> None:
        self._children[record.name] = record

    def delete_child(self, name: str) -> None:
        self._children.pop(name, None)

    def rollouts(self) -> dict[str, rpb.Rollout]:
        return {name: rpb.Rollout.FromString(data) for name, data in self._rollouts.items()}

    def put_rollout(self, rollout: rpb.Rollout) -> None:
        self._rollouts[rollout.endpoint] = rollout.SerializeToString()
