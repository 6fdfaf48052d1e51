"""The seam between supervision and whatever runs the children.

``ReplicaSet``, ``ControlPlane``, adoption and the controller's proxy
supervision know children only through these two protocols, so a launcher
that runs them elsewhere (a cluster engine's actors, containers) replaces the
local one without a change there. ``tests/controller/fake_launcher.py`` is the
smallest complete implementation; ``local.LocalLauncher`` the real one.

Every launcher records each child in the store (``ChildRecord``, with its own
``launcher`` name and an opaque ``handle``) from the moment it exists until it
is gone, so that a restarted controller can find it again (``adopt``) or stop
it (``stop_recorded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from turnout._internal.readiness import Readiness
from turnout.v1 import replica_pb2

from ..log_tail import LogChunk
from ..store import ChildRecord

# How long SIGTERM (or the launcher's graceful stop) gets before a kill.
STOP_TIMEOUT_S = 10.0


class SpawnError(Exception):
    """The launcher could not even start a child (bad environment, no memory,
    no such interpreter); ``code`` is the gRPC status name the caller should
    see. A child that started and then failed reports that in its
    ``Readiness`` instead."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ReconfigureError(Exception):
    """A replica refused or failed a Reconfigure call; the message is its reason."""


@dataclass(frozen=True)
class ProxySpec:
    """What the proxy is started with, whichever launcher starts it."""

    controller_address: str
    host: str
    port: int
    access_log: bool = True
    # "text" or "json": how it writes each request.
    access_log_format: str = "text"
    # Processes sharing the HTTP port (the proxy's --workers).
    workers: int = 1
    # The token file the protected system paths check; None = open.
    system_token_file: Path | None = None
    # Its node's id on a Ray cluster ("" = none), and whether it prefers that
    # node's replicas (--ray-prefer-local-replicas).
    node_id: str = ""
    prefer_local_replicas: bool = False


class Child(Protocol):
    """One started (or re-adopted) proxy or replica."""

    @property
    def name(self) -> str:
        """For logs: "proxy" or "replica <id>"."""
        ...

    @property
    def record(self) -> ChildRecord | None:
        """How the store knows it; None only while it is being started."""
        ...

    @property
    def report(self) -> Readiness:
        """What it said when it came up (adopted: rebuilt from its record)."""
        ...

    @property
    def ok(self) -> bool: ...
    @property
    def address(self) -> str:
        """host:port it serves on ("" unless ``ok``)."""
        ...

    @property
    def pid(self) -> int:
        """Its OS process id where one is known (shown to users), else 0."""
        ...

    @property
    def log_path(self) -> str: ...

    @property
    def node(self) -> str:
        """The machine it runs on, as this launcher names it ("" = the
        controller's own)."""
        ...

    @property
    def node_id(self) -> str:
        """The id of that machine in the routing snapshot (a Ray node id;
        "" = the controller's own): proxies preferring their own node's
        replicas compare it with theirs."""
        ...

    async def wait(self) -> int | None:
        """Until it has exited: its exit status, None when unknown (a child
        this controller did not start itself)."""
        ...

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask it to stop (SIGTERM: it drains), kill it after ``timeout``."""
        ...

    def kill(self) -> None:
        """End it now, and whatever it started."""
        ...


class Launcher(Protocol):
    """Starts, finds again, stops and talks to the controller's children."""

    async def start_replica(self, record: ChildRecord, spec: bytes, env: dict[str, str]) -> Child:
        """Start the replica ``record`` names (its id, backend, digest and
        resources; ``launcher``/``handle`` are the launcher's to fill in),
        loading ``spec`` (a serialized ``CreateBackendRequest``) with ``env``
        added to its environment. Returns once it reported (``child.ok`` or
        not); a child that is not ok is already gone. Raises SpawnError when
        it cannot be started at all."""
        ...

    async def start_proxy(self, spec: ProxySpec) -> Child:
        """Start the HTTP proxy, as ``start_replica`` does a replica."""
        ...

    def adopt(self, record: ChildRecord) -> Child | None:
        """Take over a recorded child still alive (the same one: a reused pid
        is not it); None, and its record dropped, when it is gone or another
        launcher made it. Its health is the caller's to check."""
        ...

    async def stop_recorded(self, record: ChildRecord) -> None:
        """Stop a recorded child if it is still alive; its record is dropped."""
        ...

    def relabel(self, child: Child, digest: str) -> None:
        """Record that a running replica now runs ``digest`` (changed in place)."""
        ...

    def follows(self, child: Child, controller_address: str) -> bool:
        """Whether an adopted proxy reconnects to ``controller_address``."""
        ...

    async def healthy(self, child: Child, timeout: float) -> bool:
        """Whether a replica answers its health check SERVING within ``timeout``."""
        ...

    async def proxy_healthy(self, child: Child, timeout: float) -> bool:
        """Whether the proxy answers its health check within ``timeout``."""
        ...

    async def reconfigure(
        self, child: Child, request: replica_pb2.ReconfigureRequest, timeout: float
    ) -> None:
        """Change a running replica in place; raises ReconfigureError with its reason."""
        ...

    async def read_log(self, child: Child, offset: int | None, max_bytes: int) -> LogChunk:
        """Up to ``max_bytes`` of a replica's log from ``offset`` (None: its
        end), read where the replica runs (``log_tail.read_chunk``)."""
        ...

    async def stop_all(self) -> None:
        """Stop every child it started or adopted; returns when their records are gone."""
        ...
