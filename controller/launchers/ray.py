"""The Ray launcher: replicas as detached Ray actors on a Ray cluster's nodes.

Ray places, Turnout serves: each replica is one detached, named actor
(``ReplicaHost``, ``max_restarts=0``: Turnout's supervision restarts it, with
its own backoff and its refusal of a backend that fails its first start) in a
namespace of the instance's own. The actor runs the unchanged ``python -m
turnout.replica`` on its node, bound to that node's address, hands it the spec
on its stdin and returns its readiness report; from then on the controller
talks to the replica directly (health checks, Reconfigure) and the proxy sends
it requests, as with local processes.

``ray`` is imported only here (``pip install 'turnout[ray]'``), when an
instance is started with ``--ray-address``. The proxy stays a local process
of the controller (``LocalLauncher``), which this launcher also asks for
health checks and Reconfigure calls: those go to an address, wherever it is.

Placement is chosen here, not left to Ray's queue: a replica goes to the live
node with the fewest of this instance's replicas among those with room for
it and allowed by its backend's options (custom resources, node selector,
max_replicas_per_node; ``choose_node``), pinned there
(``NodeAffinitySchedulingStrategy``), so replicas spread across nodes; a
replica that no node has room for is refused at once (RESOURCE_EXHAUSTED, or
INVALID_ARGUMENT when it is bigger than any node) instead of waiting in
Ray's queue for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout._internal import auth, command_replica, controller_args, proxy_args, replica_args
from turnout._internal.backoff import Backoff
from turnout._internal.errors import InvalidArgumentError, UnavailableError
from turnout._internal.proxy_args import ProxyArgs
from turnout._internal.readiness import Readiness
from turnout._internal.replica_args import ReplicaArgs
from turnout._internal.rpc import Security, TLSConfig
from turnout._internal.spawn import spawn_async
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2

from ..log_tail import LogChunk, read_chunk
from ..resources import Allocation, ResourcePool
from ..store import PROXY, ChildRecord, Store
from .base import STOP_TIMEOUT_S, Child, ProxySpec, SpawnError
from .local import (
    CHILD_ENV_PREFIXES,
    READY_TIMEOUT_S,
    LocalLauncher,
    child_environment,
    command_report,
    command_spec,
)

logger = logging.getLogger(__name__)

# ChildRecord.launcher of the replicas this launcher starts.
RAY = "ray"
# How long a replica's actor may wait to be placed and report readiness:
# Ray's own start of a worker process comes on top of the replica's.
ACTOR_READY_TIMEOUT_S = READY_TIMEOUT_S + 30.0
# How long an actor whose process has stopped may take to end itself
# before it is killed.
LEAVE_TIMEOUT_S = 5.0
# How long adoption waits for a recorded actor to say whether its replica lives.
ADOPT_TIMEOUT_S = 10.0
# How long GetReplicaLog waits for a replica's actor to read its log.
READ_LOG_TIMEOUT_S = 10.0
# A replica's log file, in its actor's private folder on the node.
REPLICA_LOG = "replica.log"
# How long placement waits for Ray's view of a node's free resources to show
# what replicas stopped just before freed (it lags by up to about a second),
# polling every PLACEMENT_POLL_S; then the best node with room is taken.
PLACEMENT_SETTLE_S = 3.0
PLACEMENT_POLL_S = 0.2
# Actor names of node proxies: this prefix, the node id, "~" and a nonce.
NODE_PROXY_PREFIX = "proxy@"
NODE_PROXY_BACKOFF_INITIAL_S = 0.5
NODE_PROXY_BACKOFF_MAX_S = 10.0
# With --ray-proxy-location EveryNode: how often the cluster's nodes are
# listed, so that a node that joins gets its proxy within this many seconds.
NODE_WATCH_S = 5.0
# How long a node where a replica's actor vanished gets no new replicas
# (while another node can take them): Ray's default to call a node dead is ~15 s.
SUSPECT_S = 30.0
_EPSILON = 1e-9


def namespace_for(state_path: Path) -> str:
    """The Ray namespace of the instance whose state is ``state_path``: the
    same for a controller restarted on the same state (it finds its actors
    again), different for every other instance on the cluster."""
    digest = hashlib.sha256(str(state_path.resolve()).encode()).hexdigest()[:16]
    return f"turnout-{digest}"


def actor_name(replica_id: str) -> str:
    """A fresh actor name for one start of ``replica_id``: a restarted replica
    keeps its id, but the actor of its last start may still be going away."""
    return f"{replica_id}~{secrets.token_hex(4)}"


def ray_handle(actor: str, node_id: str, node_ip: str, pid: int) -> str:
    """The ``ChildRecord.handle`` of a replica on Ray: its actor's name (in
    the instance's namespace) and where it runs."""
    return json.dumps({"actor": actor, "node_id": node_id, "node_ip": node_ip, "pid": pid})


def parse_ray_handle(record: ChildRecord) -> dict[str, Any] | None:
    if record.launcher != RAY:
        return None
    try:
        held = json.loads(record.handle)
    except ValueError:
        return None
    return held if isinstance(held, dict) and isinstance(held.get("actor"), str) else None


# node_selector's key that matches a node's IP address, not a Ray label.
NODE_IP_KEY = "node_ip"


@dataclass(frozen=True)
class Request:
    """What one replica asks of a node, from its backend's replica_options."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Custom Ray resources, name -> amount.
    resources: Mapping[str, float] = field(default_factory=dict)
    # Ray label (or NODE_IP_KEY) -> the value the node must have.
    node_selector: Mapping[str, str] = field(default_factory=dict)
    # At most this many of the backend's replicas per node; 0 = no limit.
    max_per_node: int = 0
    # The backend's own runtime_env (JSON), merged over the job's.
    runtime_env: str = ""

    @classmethod
    def of_options(cls, options: pb.ReplicaOptions) -> Request:
        return cls(
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            resources=dict(options.resources),
            node_selector=dict(options.node_selector),
            max_per_node=options.max_replicas_per_node,
            runtime_env=options.runtime_env_json,
        )

    @classmethod
    def of_spec(cls, spec: bytes) -> Request:
        return cls.of_options(pb.CreateBackendRequest.FromString(spec).replica_options)

    def fits(self, resources: Mapping[str, float]) -> bool:
        return (
            resources.get("CPU", 0.0) + _EPSILON >= self.num_cpus
            and resources.get("GPU", 0.0) + _EPSILON >= self.num_gpus
            and all(
                resources.get(name, 0.0) + _EPSILON >= amount
                for name, amount in self.resources.items()
            )
        )

    def selects(self, node: NodeInfo) -> bool:
        """Whether the node's labels (and IP) match the node selector."""
        return all(
            (node.ip if key == NODE_IP_KEY else node.labels.get(key)) == value
            for key, value in self.node_selector.items()
        )

    def __str__(self) -> str:
        custom = "".join(f", {k}={v:g}" for k, v in sorted(self.resources.items()))
        return f"num_cpus={self.num_cpus:g}, num_gpus={self.num_gpus:g}{custom}"


def eligible_nodes(request: Request, nodes: list[NodeInfo]) -> list[NodeInfo]:
    """The nodes the replica may ever run on: big enough and selected.
    Raises SpawnError (INVALID_ARGUMENT) naming why when there is none."""
    selected = [n for n in nodes if request.selects(n)]
    if not selected:
        raise SpawnError(
            "INVALID_ARGUMENT",
            f"node_selector {dict(sorted(request.node_selector.items()))} matches none of "
            f"the Ray cluster's {len(nodes)} live nodes",
        )
    big_enough = [n for n in selected if request.fits(n.total)]
    if not big_enough:
        largest = max((n.total.get("CPU", 0.0) for n in selected), default=0.0)
        which = "selected" if request.node_selector else "live"
        raise SpawnError(
            "INVALID_ARGUMENT",
            f"a replica asks for {request}, more than any of the cluster's {len(selected)} "
            f"{which} nodes has (the largest has {largest:g} CPUs)",
        )
    return big_enough


def check_placement(request: Request, nodes: list[NodeInfo], count: int) -> None:
    """Raise SpawnError (INVALID_ARGUMENT) unless ``count`` replicas could
    ever be placed on ``nodes``: some node is eligible, and
    max_replicas_per_node times the eligible nodes is at least ``count``."""
    eligible = eligible_nodes(request, nodes)
    if request.max_per_node and request.max_per_node * len(eligible) < count:
        raise SpawnError(
            "INVALID_ARGUMENT",
            f"{count} replicas with max_replicas_per_node={request.max_per_node} need "
            f"{-(-count // request.max_per_node)} nodes; the Ray cluster has "
            f"{len(eligible)} that can take them",
        )


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    total: dict[str, float]
    free: dict[str, float]
    # Ray's labels of the node (``ray start --labels``, and Ray's own ray.io/*).
    labels: dict[str, str] = field(default_factory=dict)


def choose_node(
    request: Request,
    nodes: list[NodeInfo],
    placed: Mapping[str, int],
    settled: bool = True,
    mine: Mapping[str, int] | None = None,
) -> NodeInfo | None:
    """The node for one more replica: of those eligible for it (big enough,
    matching its node selector, with fewer than max_replicas_per_node of its
    backend's replicas, ``mine``: node id -> count), the one with fewest of
    this instance's replicas (``placed``: node id -> count), then the one
    with most free CPUs, if it has room for it now. Unless ``settled``, None
    when that node lacks room (Ray's view of free resources lags a release
    by up to a second: ask again); once settled, the best node that has
    room. Raises SpawnError when none is eligible, or (settled) none has room."""
    big_enough = eligible_nodes(request, nodes)
    if request.max_per_node:
        counts = mine or {}
        big_enough = [n for n in big_enough if counts.get(n.node_id, 0) < request.max_per_node]
        if not big_enough:
            raise SpawnError(
                "RESOURCE_EXHAUSTED",
                f"every Ray node that can take the replica already runs "
                f"max_replicas_per_node={request.max_per_node} of its backend's replicas",
            )
    ranked = sorted(
        big_enough, key=lambda n: (placed.get(n.node_id, 0), -n.free.get("CPU", 0.0), n.ip)
    )
    if request.fits(ranked[0].free):
        return ranked[0]
    if not settled:
        return None
    room = [n for n in ranked if request.fits(n.free)]
    if not room:
        raise SpawnError(
            "RESOURCE_EXHAUSTED",
            f"no node of the Ray cluster has room for a replica asking for {request} now",
        )
    return room[0]


class ClusterResources(ResourcePool):
    """The controller's resource pool on a Ray cluster: nothing is pinned or
    reserved on the controller's machine (Ray accounts for each node); a
    replica bigger than every node is refused before any starts."""

    def __init__(self, launcher: RayLauncher) -> None:
        super().__init__(cpus=[], gpus=[])
        self._launcher = launcher

    def check(self, num_cpus: float, num_gpus: float, count: int) -> None:
        request = Request(num_cpus=num_cpus, num_gpus=num_gpus)
        nodes = self._launcher.nodes()
        if not any(request.fits(n.total) for n in nodes):
            raise InvalidArgumentError(
                f"a replica asks for {request}, more than any of the Ray cluster's "
                f"{len(nodes)} live nodes has"
            )

    def check_placement(self, options: pb.ReplicaOptions, total: int) -> None:
        """Refuse a backend whose ``total`` replicas no set of nodes could
        take (node selector, custom resources, max_replicas_per_node)."""
        try:
            check_placement(Request.of_options(options), self._launcher.nodes(), total)
        except SpawnError as exc:
            raise InvalidArgumentError(str(exc)) from None

    def allocate(self, owner: str, num_cpus: float, num_gpus: float) -> Allocation:
        return self._hold(owner, Allocation())


@dataclass(frozen=True)
class Material:
    """Files a child needs on its node, shipped by content (the node does not
    share the controller's disk): credentials and TLS material."""

    credentials: auth.ChildCredentials | None = None
    # field of TLSConfig ("cert", "key", "ca") -> PEM bytes
    tls: dict[str, bytes] = field(default_factory=dict)
    tls_server_name: str | None = None
    insecure: bool = False
    # A proxy's: the token its protected system paths want, its HTTPS pair.
    system_token: str | None = None
    https: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, security: Security, credentials: auth.ChildCredentials | None) -> Material:
        tls: dict[str, bytes] = {}
        if security.tls is not None:
            for name in ("cert", "key", "ca"):
                path = getattr(security.tls, name)
                if path is not None:
                    tls[name] = Path(path).read_bytes()
        return cls(
            credentials=credentials,
            tls=tls,
            tls_server_name=None if security.tls is None else security.tls.server_name,
            insecure=security.insecure,
        )

    def write(self, folder: Path) -> tuple[Security, Path | None]:
        """Write the files (0600) into ``folder``: the child's Security and
        credentials file."""
        credentials_file = None
        if self.credentials is not None:
            credentials_file = folder / "credentials.json"
            self.credentials.write(credentials_file)
        tls = None
        if self.tls or self.tls_server_name:
            paths: dict[str, Path] = {}
            for name, pem in self.tls.items():
                paths[name] = folder / f"tls-{name}.pem"
                auth.write_private(paths[name], pem.decode(), replace=True)
            tls = TLSConfig(**paths, server_name=self.tls_server_name)
        return Security(tls=tls, insecure=self.insecure), credentials_file

    def write_proxy_files(self, folder: Path) -> dict[str, Path]:
        """The proxy's own files (ProxyArgs field -> path), written 0600."""
        written: dict[str, Path] = {}
        if self.system_token is not None:
            written["system_token_file"] = folder / "system-token"
            auth.write_private(written["system_token_file"], self.system_token, replace=True)
        for name, pem in self.https.items():
            written[f"https_{name}"] = folder / f"https-{name}.pem"
            auth.write_private(written[f"https_{name}"], pem.decode(), replace=True)
        return written


class ProcessHost:
    """A Ray actor that runs one Turnout process on its node and stays with
    it (the process exits when the actor does, ``--parent-pid``). Declared
    without Ray so that this module imports without it; ``RayLauncher``
    makes its subclasses actor classes."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._report = Readiness.crashed()
        self._files = Path(tempfile.mkdtemp(prefix="turnout-"))

    @staticmethod
    def node_ip() -> str:
        import ray

        ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return ip

    def _started(self, pid: int) -> dict[str, Any]:
        """What a start answers the launcher: the readiness report, where the
        process runs, and its pid (0: none was started)."""
        import ray

        return {
            "report": self._report.to_json(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": self.node_ip(),
            "pid": pid,
        }

    async def _run(
        self, argv: Callable[[int], list[str]], what: str, env: dict[str, str], stdin: bytes | None
    ) -> dict[str, Any]:
        """Start ``argv(ready_fd)`` and wait for its report; the report (as
        JSON), with the node's id and address and the process's pid."""

        spawned = await spawn_async(
            argv, stdin_data=stdin, env=child_environment(os.environ, env), process_group=0
        )
        self._process = spawned.process
        report = await spawned.ready(READY_TIMEOUT_S, what)
        self._report = report
        if not report.ok:
            await self._end(0.0)
        return self._started(spawned.process.pid)

    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def read_log(self, offset: int | None, max_bytes: int) -> LogChunk:
        """Part of its replica's log (``log_tail.read_chunk``), for GetReplicaLog."""
        return read_chunk(self._files / REPLICA_LOG, offset, max_bytes)

    def report(self) -> str:
        """What the process reported (JSON); a crash if it is no longer running."""
        return (self._report if self.alive() else Readiness.crashed()).to_json()

    async def wait(self) -> int:
        """Until the process has exited: its exit status."""
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, timeout: float) -> None:
        await self._end(timeout)

    def leave(self) -> None:
        """End this actor in order (its worker process exits normally, so
        what it does at exit, e.g. saving coverage data, is done)."""
        import ray

        ray.actor.exit_actor()  # type: ignore[no-untyped-call]

    async def _end(self, timeout: float) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), timeout)
        # Its group too: what a handler's code started goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def _python_path(actors: str, given: str) -> dict[str, str]:
    """The replica's PYTHONPATH: the actor's first (Ray puts the runtime_env's
    py_modules there), then the controller's (where pickled backends'
    modules import from), each folder once."""
    parts = [p for p in (*actors.split(os.pathsep), *given.split(os.pathsep)) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))} if parts else {}


class ReplicaHost(ProcessHost):
    """The actor of one replica: ``python -m turnout.replica`` bound to its
    node's address, the spec on its stdin."""

    async def start(
        self, replica_id: str, spec: bytes, env: dict[str, str], material: Material
    ) -> dict[str, Any]:
        import ray

        security, credentials_file = material.write(self._files)
        # The runtime_env's env_vars are the actor's; the replica inherits
        # only listed names of it (``child_environment``), so pass them on.
        runtime_env = ray.get_runtime_context().runtime_env or {}
        env = {**dict(runtime_env.get("env_vars") or {}), **env}
        env.update(_python_path(os.environ.get("PYTHONPATH", ""), env.get("PYTHONPATH", "")))
        command = command_spec(spec)
        if command is not None:
            return await self._start_command(replica_id, command, env, security, credentials_file)
        options = ReplicaArgs(
            replica_id=replica_id,
            spec_fd=0,
            host=self.node_ip(),
            parent_pid=os.getpid(),
            # Read back through the actor (GetReplicaLog, `turnout logs`); what
            # the handler prints goes to stdout and stderr, which Ray keeps
            # with the actor's output in its node's log folder.
            log_file=self._files / REPLICA_LOG,
            security=security,
            credentials_file=credentials_file,
        )

        def argv(ready_fd: int) -> list[str]:
            return replica_args.command(dataclasses.replace(options, ready_fd=ready_fd))

        return await self._run(argv, f"replica {replica_id}", env, spec)

    async def _start_command(
        self,
        replica_id: str,
        request: pb.CreateBackendRequest,
        env: dict[str, str],
        security: Security,
        credentials_file: Path | None,
    ) -> dict[str, Any]:
        """A command backend's replica (docs/replica-protocol.md) on this
        node, as the local launcher starts one: its program with Turnout's
        variables, bound to the node's address, its output in the log that
        GetReplicaLog reads. The program, and its ``cwd``, must be on the
        node (installed there, or in the runtime_env's working_dir, where the
        actor runs: the default cwd)."""

        command = request.spec.command
        argv = list(command.argv)
        output = self._files / REPLICA_LOG
        timeout = command.ready_timeout if command.HasField("ready_timeout") else READY_TIMEOUT_S
        # Turnout's own variables are the replica's, never the controller's.
        passed = {k: v for k, v in env.items() if k not in command_replica.NAMES}
        inherited = {k: v for k, v in os.environ.items() if k not in command_replica.NAMES}

        def ready_env(ready_fd: int) -> dict[str, str]:
            return command_replica.environment(
                replica_id=replica_id,
                backend=request.tag,
                config=request.config,
                ready_fd=ready_fd,
                host=self.node_ip(),
                credentials_file=credentials_file,
                parent_pid=os.getpid(),
                tls=security.tls,
            )

        try:
            with output.open("ab") as out:
                spawned = await spawn_async(
                    lambda _: argv,
                    ready_env=ready_env,
                    stdout=out,
                    stderr=out,
                    env=child_environment(inherited, {**passed, **command.env}),
                    cwd=command.cwd or None,
                    process_group=0,
                )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._report = Readiness.failed(
                "INVALID_ARGUMENT",
                f"cannot start the command {argv} on node {self.node_ip()}: {exc}",
            )
            return self._started(0)
        self._process = spawned.process
        report = await command_report(
            spawned.take_ready_fd(), spawned.process, argv, timeout, output
        )
        self._report = report
        if not report.ok:
            await self._end(0.0)
        return self._started(spawned.process.pid)


class ProxyHost(ProcessHost):
    """The actor of one node's HTTP proxy: ``python -m turnout.proxy`` bound
    to its node's address, following the controller's routes under a
    subscriber id of its own."""

    async def start(
        self, options: ProxyArgs, env: dict[str, str], material: Material
    ) -> dict[str, Any]:
        security, credentials_file = material.write(self._files)
        node_options = dataclasses.replace(
            options,
            **material.write_proxy_files(self._files),  # type: ignore[arg-type]
            host=self.node_ip(),
            credentials_file=credentials_file,
            parent_pid=os.getpid(),
            log_file=None,
            access_log=None,
            tls=security.tls,
        )

        def argv(ready_fd: int) -> list[str]:
            return proxy_args.command(dataclasses.replace(node_options, ready_fd=ready_fd))

        return await self._run(argv, f"proxy on {node_options.host}", env, None)


@dataclass(eq=False)
class RayChild:
    """A replica running in a Ray actor (``base.Child``)."""

    name: str
    actor: Any
    actor_name: str
    report: Readiness = field(default_factory=Readiness.crashed)
    record: ChildRecord | None = None
    node_id: str = ""
    node_ip: str = ""
    pid: int = 0
    log_path: str = ""
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # Being stopped or killed: no longer counts where replicas are placed.
    leaving: bool = False
    # Its actor vanished without being asked to (its node may be dead).
    lost: bool = False

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def address(self) -> str:
        return self.report.address

    @property
    def node(self) -> str:
        return self.node_ip

    async def wait(self) -> int | None:
        try:
            code: int | None = await self.actor.wait.remote()
        except Exception as exc:  # the actor (or its node) is gone: so is the replica
            logger.warning("%s: its actor is gone (%s)", self.name, type(exc).__name__)
            code = None
            self.lost = not self.leaving
        self.exited.set()
        return code

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (it drains), SIGKILL after ``timeout``, by its actor; then the actor goes."""
        self.leaving = True
        with contextlib.suppress(Exception):  # an actor already gone stopped its replica
            await asyncio.wait_for(self.actor.stop.remote(timeout), timeout + 5.0)
        with contextlib.suppress(Exception):  # it ends the call by ending itself
            await asyncio.wait_for(self.actor.leave.remote(), LEAVE_TIMEOUT_S)
        self.kill()

    def kill(self) -> None:
        import ray

        self.leaving = True
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)


def _ready_timeout(spec: bytes) -> float:
    """How long a replica's actor may take to report: a command backend's
    own ready_timeout, if longer, on top of Ray's start of the actor."""
    command = command_spec(spec)
    if command is None or not command.spec.command.HasField("ready_timeout"):
        return ACTOR_READY_TIMEOUT_S
    return max(ACTOR_READY_TIMEOUT_S, command.spec.command.ready_timeout + 30.0)


def _ray(child: Child) -> RayChild | None:
    return child if isinstance(child, RayChild) else None


class RayLauncher:
    """Replicas as Ray actors, the proxy a local process (``base.Launcher``)."""

    def __init__(
        self,
        address: str,
        namespace: str,
        local: LocalLauncher,
        store: Store,
        *,
        runtime_env: str | None = None,
        prefer_local_replicas: bool = False,
        proxy_location: str = controller_args.WITH_REPLICAS,
    ) -> None:
        import ray

        self.address = address
        self.namespace = namespace
        self.local = local
        self._store = store
        self._children: dict[RayChild, asyncio.Task[None]] = {}
        # (backend, node id) -> replicas being started there (placed, not
        # yet serving): replicas started together spread too.
        self._starting: dict[tuple[str, str], int] = {}
        # node id -> when a replica's actor there was lost: Ray takes about
        # 15 s to call a node dead, and placement avoids it meanwhile.
        self._suspect: dict[str, float] = {}
        # The token (RAY_AUTH_TOKEN or Ray's token file) is Ray's to find.
        # The runtime_env is the job's, which every actor inherits: only there
        # does Ray upload a local working_dir (to the cluster, then each node).
        ray.init(
            address=address,
            namespace=namespace,
            runtime_env=None if runtime_env is None else json.loads(runtime_env),
            log_to_driver=False,
            configure_logging=False,
            include_dashboard=False,
        )
        # Any: Ray's types do not follow .options(...).remote() to the methods.
        self._actor_class: Any = ray.remote(ReplicaHost)
        self._proxy_class: Any = ray.remote(ProxyHost)
        # Node proxies: one per node with replicas, but the controller's own
        # (its proxy is the local launcher's); node id -> the task keeping it.
        self._own_node: str = ray.get_runtime_context().get_node_id()
        self._proxy_spec: ProxySpec | None = None
        self._node_proxies: dict[str, RayChild] = {}
        self._proxy_keepers: dict[str, asyncio.Task[None]] = {}
        self._adopted_proxies = self._find_node_proxies()
        self._prefer_local = prefer_local_replicas
        self._proxy_location = proxy_location
        self._node_watch: asyncio.Task[None] | None = None
        self._stopping = False
        logger.info("on the Ray cluster at %s, namespace %s", address, namespace)

    # Where things run ---------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        """The cluster's live nodes, with their total and free resources."""
        import ray
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()  # type: ignore[no-untyped-call]
        return [
            NodeInfo(
                node_id=n["NodeID"],
                ip=n["NodeManagerAddress"],
                total=dict(n["Resources"]),
                free=dict(free.get(n["NodeID"], {})),
                labels={str(k): str(v) for k, v in (n.get("Labels") or {}).items()},
            )
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive")
        ]

    def _trusted(self, nodes: list[NodeInfo]) -> list[NodeInfo]:
        """``nodes`` without those where an actor was lost in the last
        ``SUSPECT_S`` seconds, unless that leaves none."""
        now = asyncio.get_running_loop().time()
        self._suspect = {n: t for n, t in self._suspect.items() if now - t < SUSPECT_S}
        trusted = [n for n in nodes if n.node_id not in self._suspect]
        return trusted or nodes

    def _placed(self, backend: str | None = None) -> dict[str, int]:
        """node id -> replicas there (of ``backend`` only, if given)."""
        counts: dict[str, int] = {}
        for (tag, node_id), n in self._starting.items():
            if backend is None or tag == backend:
                counts[node_id] = counts.get(node_id, 0) + n
        for child in self._children:
            if child.leaving:
                continue
            if backend is not None and (child.record is None or child.record.backend != backend):
                continue
            counts[child.node_id] = counts.get(child.node_id, 0) + 1
        return counts

    # Replicas -----------------------------------------------------------

    async def start_replica(
        self, record: ChildRecord, spec: bytes, env: dict[str, str] | None = None
    ) -> Child:
        request = Request.of_spec(spec)
        node = await self._choose(request, record.backend)
        key = (record.backend, node.node_id)
        self._starting[key] = self._starting.get(key, 0) + 1
        try:
            return await self._start_on(node, request, record, spec, env or {})
        finally:
            self._starting[key] -= 1

    async def _choose(self, request: Request, backend: str) -> NodeInfo:
        """Where the replica goes (``choose_node``), giving Ray's view of free
        resources ``PLACEMENT_SETTLE_S`` to catch up with replicas just stopped."""
        deadline = asyncio.get_running_loop().time() + PLACEMENT_SETTLE_S
        while True:
            nodes = self._trusted(await asyncio.to_thread(self.nodes))
            settled = asyncio.get_running_loop().time() >= deadline
            node = choose_node(
                request, nodes, self._placed(), settled=settled, mine=self._placed(backend)
            )
            if node is not None:
                logger.info("placing on %s (placed: %s)", node.ip, self._placed())
                return node
            await asyncio.sleep(PLACEMENT_POLL_S)

    async def _start_on(
        self,
        node: NodeInfo,
        request: Request,
        record: ChildRecord,
        spec: bytes,
        env: dict[str, str],
    ) -> Child:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        name = actor_name(record.name)
        try:
            actor = self._actor_class.options(
                name=name,
                lifetime="detached",
                max_restarts=0,
                num_cpus=request.num_cpus,
                num_gpus=request.num_gpus,
                resources=dict(request.resources),
                **self._runtime_env(request),
                # Hard: a soft affinity lets Ray's own scheduler move it elsewhere
                # (it does so even with room on the node), undoing the spread. A
                # node that died meanwhile fails the start, which is retried.
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            ).remote()
        except Exception as exc:  # Ray refused the actor's options
            raise SpawnError(
                "INVALID_ARGUMENT", f"Ray refused replica {record.name}: {exc}"
            ) from exc
        child = RayChild(name=f"replica {record.name}", actor=actor, actor_name=name)
        # Recorded before it can serve: a controller killed from here on
        # leaves a record that the next one uses to find (or stop) the actor.
        self._record(
            child,
            dataclasses.replace(
                record, launcher=RAY, handle=ray_handle(name, node.node_id, node.ip, 0)
            ),
        )
        material = self._material("handle")
        timeout = _ready_timeout(spec)
        try:
            started = await asyncio.wait_for(
                actor.start.remote(record.name, spec, self._environment(env), material), timeout
            )
        except TimeoutError:
            child.kill()
            self._forget(child)
            child.report = Readiness.timed_out(child.name, timeout)
            return child
        except Exception as exc:  # Ray could not run the actor at all
            child.kill()
            self._forget(child)
            raise SpawnError("UNAVAILABLE", f"cannot start {child.name} on Ray: {exc}") from exc
        except BaseException:
            child.kill()
            raise
        child.report = Readiness.from_json(started["report"])
        child.node_id, child.node_ip = started["node_id"], started["node_ip"]
        child.pid = started["pid"]
        if not child.ok:
            child.kill()
            self._forget(child)
            logger.warning("%s failed to start: %s", child.name, child.report.message)
            return child
        assert child.record is not None
        self._record(
            child,
            dataclasses.replace(
                child.record,
                handle=ray_handle(name, child.node_id, child.node_ip, child.pid),
                address=child.address,
                capabilities=json.dumps(child.report.capabilities, sort_keys=True),
            ),
        )
        self._track(child)
        logger.info("%s serves on %s (node %s)", child.name, child.address, child.node_ip)
        self._want_proxy(child.node_id, child.node_ip)
        return child

    @staticmethod
    def _runtime_env(request: Request) -> dict[str, Any]:
        """The actor's runtime_env option, if the backend has one: Ray merges
        it over the job's (--ray-runtime-env) itself, its keys replacing the
        job's but env_vars merged name by name."""
        if not request.runtime_env:
            return {}
        return {"runtime_env": json.loads(request.runtime_env)}

    def _material(self, principal: str) -> Material:
        credentials = None
        if self.local.credentials is not None:
            credentials = self.local.credentials(principal)
        return Material.of(self.local.security, credentials)

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """What the replica gets of the controller's environment: Turnout's,
        gRPC's and coverage's settings (the controller's address among them)
        and the backend's env; the node's own PATH, HOME and the like stay."""
        mine = child_environment(os.environ)
        passed = {k: v for k, v in mine.items() if k.startswith(CHILD_ENV_PREFIXES)}
        passed.update(extra)
        return passed

    def adopt(self, record: ChildRecord) -> Child | None:
        if record.kind == PROXY:
            return self.local.adopt(record)
        return self._adopt(record)

    def _adopt(self, record: ChildRecord) -> RayChild | None:
        """The recorded replica's actor, if it is there and its replica lives."""
        import ray

        held = parse_ray_handle(record)
        if held is None:
            logger.warning("%s was not started by the Ray launcher; forgetting it", record.name)
            self._store.delete_child(record.name)
            return None
        try:
            actor = ray.get_actor(held["actor"], namespace=self.namespace)
            alive = bool(ray.get(actor.alive.remote(), timeout=ADOPT_TIMEOUT_S))
        except Exception:  # no such actor, or it does not answer: gone
            alive = False
        if not alive:
            self._drop(record)
            return None
        capabilities: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            capabilities = json.loads(record.capabilities)
        child = RayChild(
            name=f"replica {record.name}",
            actor=actor,
            actor_name=held["actor"],
            report=Readiness(ok=True, address=record.address, capabilities=capabilities),
            record=record,
            node_id=str(held.get("node_id", "")),
            node_ip=str(held.get("node_ip", "")),
            pid=int(held.get("pid", 0)),
        )
        self._track(child)
        logger.info("adopted %s (actor %s) at %s", child.name, child.actor_name, record.address)
        self._want_proxy(child.node_id, child.node_ip)
        return child

    async def stop_recorded(self, record: ChildRecord) -> None:
        if record.kind == PROXY or record.launcher != RAY:
            await self.local.stop_recorded(record)
            return
        child = self._adopt(record)
        if child is not None:
            await child.stop()
            reaper = self._children.get(child)
            if reaper is not None:
                await reaper
        else:
            # Alive or not, an actor left behind would hold its resources.
            self._kill_by_name(record)

    def _kill_by_name(self, record: ChildRecord) -> None:
        import ray

        held = parse_ray_handle(record)
        if held is None:
            return
        with contextlib.suppress(Exception):
            ray.kill(ray.get_actor(held["actor"], namespace=self.namespace), no_restart=True)

    def relabel(self, child: Child, digest: str) -> None:
        mine = _ray(child)
        if mine is None:
            self.local.relabel(child, digest)
        elif mine.record is not None and not mine.exited.is_set():
            self._record(mine, dataclasses.replace(mine.record, digest=digest))

    def _record(self, child: RayChild, record: ChildRecord) -> None:
        self._store.put_child(record)
        child.record = record

    def _forget(self, child: RayChild) -> None:
        if child.record is not None:
            self._drop(child.record)

    def _drop(self, record: ChildRecord) -> None:
        # Only its own record: a restarted replica reuses the name.
        current = self._store.children().get(record.name)
        if current is not None and current.handle == record.handle:
            self._store.delete_child(record.name)

    def _track(self, child: RayChild) -> None:
        async def reap() -> None:
            await child.wait()
            if child.lost:
                self._suspect[child.node_id] = asyncio.get_running_loop().time()
            # The replica has exited: its actor goes too, freeing its name
            # and its node's resources.
            if child.lost:
                child.kill()
            else:
                await child.stop(0.0)
            self._children.pop(child, None)
            self._forget(child)
            # Its health checks went through the local launcher.
            await self.local.health_channels.forget(child)

        self._children[child] = asyncio.create_task(reap(), name=f"reap {child.name}")

    # Proxies --------------------------------------------------------------

    async def start_proxy(self, spec: ProxySpec) -> Child:
        """The controller's own proxy (a local process); each other node
        with replicas gets one of its own, started as replicas land there
        (with --ray-proxy-location EveryNode: each other live node)."""
        self._proxy_spec = spec
        if self._proxy_location == controller_args.EVERY_NODE and self._node_watch is None:
            self._node_watch = asyncio.create_task(self._watch_nodes(), name="proxy per node")
        return await self.local.start_proxy(
            dataclasses.replace(
                spec, node_id=self._own_node, prefer_local_replicas=self._prefer_local
            )
        )

    async def _watch_nodes(self) -> None:
        """A proxy on every live node, those that join later included."""
        while not self._stopping:
            try:
                nodes = await asyncio.to_thread(self.nodes)
            except Exception as exc:  # the GCS briefly unreachable: next round
                logger.warning("cannot list the Ray cluster's nodes: %s", exc)
                nodes = []
            for node in nodes:
                self._want_proxy(node.node_id, node.ip)
            await asyncio.sleep(NODE_WATCH_S)

    def node_proxies(self) -> dict[str, str]:
        """node address -> the HTTP address of its proxy, for those serving."""
        return {c.node_ip: c.address for c in self._node_proxies.values() if c.ok}

    def _find_node_proxies(self) -> dict[str, Any]:
        """Node proxies an earlier controller of this instance left running
        (their actor names say their node): node id -> actor name."""
        import ray

        found: dict[str, Any] = {}
        for name in ray.util.list_named_actors():
            if isinstance(name, str) and name.startswith(NODE_PROXY_PREFIX):
                node_id = name[len(NODE_PROXY_PREFIX) :].partition("~")[0]
                found[node_id] = name
        return found

    def _want_proxy(self, node_id: str, node_ip: str) -> None:
        if self._stopping or node_id == self._own_node or node_id in self._proxy_keepers:
            return
        self._proxy_keepers[node_id] = asyncio.create_task(
            self._keep_proxy(node_id, node_ip), name=f"proxy on {node_ip}"
        )

    async def _keep_proxy(self, node_id: str, node_ip: str) -> None:
        """Run a proxy on the node while the node lives, restarting it with backoff."""
        backoff = Backoff(NODE_PROXY_BACKOFF_INITIAL_S, NODE_PROXY_BACKOFF_MAX_S)
        try:
            while not self._stopping:
                child = await self._adopt_node_proxy(node_id) or await self._start_node_proxy(
                    node_id, node_ip
                )
                if child is not None and child.ok:
                    self._node_proxies[node_id] = child
                    logger.info("node %s: proxy on %s", node_ip, child.address)
                    await child.wait()
                    self._node_proxies.pop(node_id, None)
                    child.kill()
                if self._stopping:
                    return
                if not any(n.node_id == node_id for n in await asyncio.to_thread(self.nodes)):
                    logger.info("node %s is gone; so is its proxy", node_ip)
                    return
                await asyncio.sleep(backoff.next())
        finally:
            self._proxy_keepers.pop(node_id, None)

    async def _adopt_node_proxy(self, node_id: str) -> RayChild | None:
        import ray

        name = self._adopted_proxies.pop(node_id, None)
        if name is None:
            return None
        try:
            actor = ray.get_actor(name, namespace=self.namespace)
            report = Readiness.from_json(await actor.report.remote())
        except Exception:  # gone: a new one is started
            return None
        return RayChild(name=f"proxy {name}", actor=actor, actor_name=name, report=report)

    async def _start_node_proxy(self, node_id: str, node_ip: str) -> RayChild | None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec = self._proxy_spec
        if spec is None:
            return None
        name = f"{NODE_PROXY_PREFIX}{node_id}~{secrets.token_hex(4)}"
        actor = self._proxy_class.options(
            name=name,
            lifetime="detached",
            max_restarts=0,
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote()
        child = RayChild(name=f"proxy on {node_ip}", actor=actor, actor_name=name)
        options = ProxyArgs(
            controller=spec.controller_address,
            port=spec.port,
            subscriber_id=f"proxy@{node_ip}",
            node_id=node_id,
            prefer_local_replicas=self._prefer_local,
            protect_system_paths=spec.system_token_file is not None,
        )
        material = dataclasses.replace(
            self._material("proxy"),
            system_token=None
            if spec.system_token_file is None
            else spec.system_token_file.read_text(),
            https={}
            if self.local.https is None
            else {
                "cert": self.local.https[0].read_bytes(),
                "key": self.local.https[1].read_bytes(),
            },
        )
        try:
            started = await asyncio.wait_for(
                actor.start.remote(options, self._environment({}), material),
                ACTOR_READY_TIMEOUT_S,
            )
        except BaseException as exc:
            child.kill()
            if not isinstance(exc, Exception):
                raise
            logger.warning("node %s: its proxy did not start: %s", node_ip, exc)
            return None
        child.report = Readiness.from_json(started["report"])
        child.node_id, child.node_ip, child.pid = node_id, node_ip, started["pid"]
        if not child.ok:
            child.kill()
            logger.warning("node %s: its proxy failed: %s", node_ip, child.report.message)
        return child

    # What stays the local launcher's -------------------------------------

    def follows(self, child: Child, controller_address: str) -> bool:
        return self.local.follows(child, controller_address)

    async def healthy(self, child: Child, timeout: float) -> bool:
        return await self.local.healthy(child, timeout)

    async def proxy_healthy(self, child: Child, timeout: float) -> bool:
        return await self.local.proxy_healthy(child, timeout)

    async def reconfigure(
        self, child: Child, request: replica_pb2.ReconfigureRequest, timeout: float
    ) -> None:
        await self.local.reconfigure(child, request, timeout)

    async def read_log(self, child: Child, offset: int | None, max_bytes: int) -> LogChunk:
        """A replica's log, read on its node by its actor."""
        mine = _ray(child)
        if mine is None:
            return await self.local.read_log(child, offset, max_bytes)
        try:
            chunk: LogChunk = await asyncio.wait_for(
                mine.actor.read_log.remote(offset, max_bytes), READ_LOG_TIMEOUT_S
            )
        except Exception as exc:  # the actor (or its node) is gone, or slow
            raise UnavailableError(
                f"cannot read the log of {child.name} on node {mine.node_ip}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return chunk

    async def stop_all(self) -> None:
        self._stopping = True
        children = dict(self._children)
        proxies = list(self._node_proxies.values())
        await asyncio.gather(*(child.stop() for child in [*children, *proxies]))
        await asyncio.gather(*children.values(), return_exceptions=True)
        if self._node_watch is not None:
            self._node_watch.cancel()
            await asyncio.gather(self._node_watch, return_exceptions=True)
        for keeper in list(self._proxy_keepers.values()):
            keeper.cancel()
        await asyncio.gather(*self._proxy_keepers.values(), return_exceptions=True)
        await self.local.stop_all()

    def close(self) -> None:
        import ray

        ray.shutdown()
