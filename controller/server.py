"""The controller process: gRPC server, recovery, proxy supervision, orderly shutdown.

Start-up order matters for a controller restarted after a crash: it recovers
desired state and re-adopts live replicas *before* its gRPC server starts, so
the first routing snapshot a reconnecting proxy receives already holds the
adopted replicas (never an empty table that would turn requests into 404s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from turnout._internal import auth, replica_context
from turnout._internal.backoff import Backoff
from turnout._internal.rpc import SERVER_OPTIONS, Security, add_port, aio_server
from turnout._internal.subscribers import PROXY as PROXY_SUBSCRIBER
from turnout._internal.tls_options import is_unix
from turnout._internal.version import __version__
from turnout.v1 import controller_pb2 as pb

from . import adoption
from .autoscale_loop import AutoscaleLoop
from .control_plane import ControlPlane
from .launchers.base import Child, Launcher, ProxySpec
from .launchers.local import LocalLauncher
from .load_book import LoadBook
from .resources import ResourcePool
from .rollouts import PlaneHost, Rollouts
from .routing import RoutePublisher
from .servicer import ControllerServicer, add_to_server
from .sqlite_store import SqliteStore
from .state_lock import StateLock
from .stats_book import StatsBook
from .store import PROXY

logger = logging.getLogger(__name__)

# A proxy that keeps exiting is restarted after 0.2 s, 0.4 s... up to this; one
# that ran PROXY_STABLE_AFTER_S restarts at once.
PROXY_BACKOFF_INITIAL_S = 0.2
PROXY_BACKOFF_MAX_S = 10.0
PROXY_STABLE_AFTER_S = 10.0
SHUTDOWN_GRACE_S = 2.0
# Largest admin request the controller reads (a CreateBackend carries the
# pickled code): bigger ones are refused with RESOURCE_EXHAUSTED before they
# are buffered. Replicas keep no limit (request bodies are the proxy's).
MAX_ADMIN_MESSAGE_BYTES = 64 * 2**20
ADMIN_SERVER_OPTIONS = [
    *(o for o in SERVER_OPTIONS if o[0] != "grpc.max_receive_message_length"),
    ("grpc.max_receive_message_length", MAX_ADMIN_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class ControllerOptions:
    """Everything the controller process is told at start."""

    instance_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # SQLite file of desired state; None = a fresh one in the instance dir.
    state_path: Path | None = None
    # Children outlive the controller, and a restarted one re-adopts them.
    durable: bool = False
    # The proxy writes proxy-access.log, as text lines or JSON objects.
    access_log: bool = True
    access_log_format: str = "text"
    # How many proxy processes share the HTTP port (the proxy's --workers).
    proxy_workers: int = 1
    # Most replicas of all backends together (resources.default_max_replicas).
    max_replicas: int = 16
    # TLS material (and token) of every gRPC hop of the instance.
    security: Security = field(default_factory=Security)
    # Whether CreateBackend/UpdateBackend take pickled code (import paths always).
    allow_pickled_code: bool = True
    # The proxy's system paths (but /-/healthz) want the token of
    # system_token_file (None: the admin token's file).
    protect_system_paths: bool = False
    system_token_file: Path | None = None
    # The proxy serves HTTPS with this certificate and key; None = HTTP.
    https: tuple[Path, Path] | None = None
    # The admin token's file; None = <instance dir>/token, created if missing.
    token_file: Path | None = None
    # Replicas run as actors on this Ray cluster (launchers.ray); None = local processes.
    ray_address: str | None = None
    # Ray's runtime_env of every replica actor, as JSON (working_dir, pip, env_vars).
    ray_runtime_env: str | None = None
    # Proxies prefer their node's replicas; which nodes get a proxy (controller_args).
    ray_prefer_local_replicas: bool = False
    ray_proxy_location: str = "WithReplicas"

    @property
    def admin_token_file(self) -> Path:
        return self.token_file or self.instance_dir / auth.TOKEN_FILE

    @property
    def system_paths_token_file(self) -> Path | None:
        """What the proxy's protected system paths read the token from; None = open."""
        if not self.protect_system_paths:
            return None
        return self.system_token_file or self.admin_token_file

    @property
    def log_dir(self) -> Path:
        return self.instance_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.instance_dir / "run"


class ProxyStartError(Exception):
    pass


class Controller:
    def __init__(self, options: ControllerOptions) -> None:
        self.options = options
        state_path = options.state_path or options.instance_dir / "state.db"
        self._lock = StateLock(state_path)
        self.store = SqliteStore(state_path)
        # The admin token (created on first start) and the internal secret the
        # proxy's and replicas' credentials derive from; rotating the first
        # leaves the second, so running children keep working.
        auth.ensure(options.admin_token_file)
        self._secret = auth.ensure(options.instance_dir / auth.SECRET_FILE).encode()
        self.verifier = auth.instance_verifier(self._secret, options.admin_token_file)
        local = LocalLauncher(
            options.run_dir,
            options.log_dir,
            self.store,
            durable=options.durable,
            security=options.security,
        )
        local.https = options.https
        local.credentials = lambda principal: auth.child_credentials(self._secret, principal)
        self.launcher: Launcher = local
        resources: ResourcePool | None = None
        if options.ray_address is not None:
            # Imported only here: ray is an optional extra.
            from .launchers.ray import ClusterResources, RayLauncher, namespace_for

            on_ray = RayLauncher(
                options.ray_address,
                namespace_for(state_path),
                local,
                self.store,
                runtime_env=options.ray_runtime_env,
                prefer_local_replicas=options.ray_prefer_local_replicas,
                proxy_location=options.ray_proxy_location,
            )
            self.launcher, resources = on_ray, ClusterResources(on_ray)
        self.publisher = RoutePublisher()
        self.plane = ControlPlane(
            self.store,
            self.launcher,
            self.publisher,
            resources=resources,
            max_replicas=options.max_replicas,
            allow_pickled_code=options.allow_pickled_code,
        )
        # What routers report; controller code reads recent windows from it.
        self.stats = StatsBook()
        # The load routers report, and the loop that scales autoscaled backends by it.
        self.loads = LoadBook()
        self.autoscaler = AutoscaleLoop(self.plane, self.loads)
        self.plane.autoscaling_status = self.autoscaler.status
        self._autoscale_task: asyncio.Task[None] | None = None
        # Rollouts the controller runs, from the store (resumed once serving).
        self.rollouts = Rollouts(self.store, PlaneHost(self.plane, self.stats))
        self.health = health.aio.HealthServicer()
        self.address = ""
        self.http_address = ""
        self._server: grpc.aio.Server | None = None
        self._proxy: Child | None = None
        self._proxy_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve gRPC, then start the proxy; raises ProxyStartError if it cannot."""
        security = self.options.security
        server = aio_server(
            security, ADMIN_SERVER_OPTIONS, auth.interceptors(self.verifier, "controller")
        )
        self._server = server
        host = self.options.host
        # A Unix socket is its own address: the port means nothing there.
        where = host if is_unix(host) else f"{host}:{self.options.port}"
        port = add_port(server, where, security)
        if port == 0:
            raise OSError(f"cannot listen on {where}")
        self.address = host if is_unix(host) else f"{host}:{port}"
        # Replicas started from here on find their instance through it (handles
        # inside backends); adopted ones got the same address, the port is fixed.
        replica_context.publish(self.address)
        instance = pb.GetInstanceResponse(
            controller_address=self.address,
            controller_pid=os.getpid(),
            log_dir=str(self.options.log_dir),
            version=__version__,
            max_replicas=self.options.max_replicas,
        )
        add_to_server(
            ControllerServicer(
                self.plane,
                self.publisher,
                instance,
                self.shutdown,
                self._data_token,
                self.verifier.principal,
                self.stats,
                self.loads,
                self.rollouts,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                pb.DESCRIPTOR.services_by_name["ControllerService"].full_name,
                pb.DESCRIPTOR.services_by_name["RouterService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        await self.plane.recover(adopt=self.options.durable)
        await server.start()
        proxy, adopted = await self._recover_proxy()
        if not proxy.ok:
            raise ProxyStartError(proxy.report.message or "proxy failed to start")
        self._proxy = proxy
        await self.publisher.require(PROXY_SUBSCRIBER)
        if adopted:
            # Ready means the proxy serves the recovered state: a change the
            # old controller wrote but never published reaches it now.
            await self.plane.routes_changed()
        scheme = "http" if self.options.https is None else "https"
        self.http_address = f"{scheme}://{proxy.address}"
        instance.http_address = self.http_address
        self._proxy_task = asyncio.create_task(self._supervise_proxy())
        self._autoscale_task = asyncio.create_task(self.autoscaler.run(), name="autoscaling")
        self.rollouts.resume_all()
        for service in ("", "turnout.v1.ControllerService"):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.info("controller on %s, proxy on %s", self.address, self.http_address)

    def _data_token(self, presented: str | None) -> str:
        """What a caller presents to replicas: an admin gets the handle token
        (replicas never see the admin one), anyone else keeps their own."""
        if self.verifier.roles(presented) == auth.ADMIN_ROLES:
            return auth.derive(self._secret, "handle")
        return presented or ""

    async def _recover_proxy(self) -> tuple[Child, bool]:
        """The proxy an earlier controller left serving (and True), or a new one.

        A new proxy of a durable instance takes the recorded proxy's port when
        none was asked for, so clients keep their URL across restarts.
        """
        host, port = self.options.http_host, self.options.http_port
        record = self.store.children().get(PROXY)
        if self.options.durable:
            adopted = await adoption.adopt_proxy(self.launcher, record, host, port, self.address)
            if adopted is not None:
                return adopted, True
            if record is not None and port == 0 and record.address:
                port = int(record.address.rpartition(":")[2])
        elif record is not None:
            await self.launcher.stop_recorded(record)
        return await self.launcher.start_proxy(self._proxy_spec(host, port)), False

    def _proxy_spec(self, host: str, port: int) -> ProxySpec:
        return ProxySpec(
            controller_address=self.address,
            host=host,
            port=port,
            access_log=self.options.access_log,
            access_log_format=self.options.access_log_format,
            workers=self.options.proxy_workers,
            system_token_file=self.options.system_paths_token_file,
        )

    async def _supervise_proxy(self) -> None:
        """Restart the proxy on the same port whenever it dies."""
        host, _, port = self.http_address.partition("://")[2].rpartition(":")
        backoff = Backoff(PROXY_BACKOFF_INITIAL_S, PROXY_BACKOFF_MAX_S)
        while not self._stopping:
            assert self._proxy is not None
            began = time.monotonic()
            code = await self._proxy.wait()
            if self._stopping:
                return
            await self.publisher.release(PROXY_SUBSCRIBER)
            logger.warning("proxy (pid %d) exited (%s); restarting it", self._proxy.pid, code)
            if time.monotonic() - began < PROXY_STABLE_AFTER_S:
                await asyncio.sleep(backoff.next())
            else:
                backoff.reset()
            proxy = await self.launcher.start_proxy(self._proxy_spec(host, int(port)))
            if proxy.ok:
                self._proxy = proxy
                await self.publisher.require(PROXY_SUBSCRIBER)
            else:
                logger.error("proxy restart failed: %s", proxy.report.message)

    async def shutdown(self) -> None:
        """Stop replicas, then the proxy; idempotent, waits until done."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        if self._autoscale_task is not None:
            self._autoscale_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._autoscale_task
        await self.rollouts.stop()
        await self.plane.stop()
        if self._proxy_task is not None:
            self._proxy_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._proxy_task
        await self.launcher.stop_all()
        self.store.close()
        self._lock.release()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop the gRPC server (after shutdown), letting a Shutdown reply go out."""
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_S)
