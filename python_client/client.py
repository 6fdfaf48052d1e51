"""``Client``: an explicit connection to one Turnout instance."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import grpc

from turnout import _pickling
from turnout._handle_router import HandleRouter
from turnout._internal import auth, rollout_rules, rpc, tls_options, validation, web_apps
from turnout._internal.cors import CorsPolicy
from turnout._internal.latency import WINDOW_S, check_window
from turnout._internal.rpc import TLSConfig
from turnout.command import Command
from turnout.config import BackendConfig
from turnout.errors import (
    InvalidArgumentError,
    NotFoundError,
    NotRunningError,
    error_from_status,
)
from turnout.handle import EndpointHandle
from turnout.instance import LocalInstance
from turnout.rollouts import Rollout, describe
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc
from turnout.v1 import rollout_pb2 as rpb

if TYPE_CHECKING:
    from turnout._dashboard.server import Dashboard

Resp = TypeVar("Resp")

# Admin calls that only read or change state answer fast; creating or scaling
# a backend waits for replica processes to boot, which can take minutes when
# they load large models.
_QUICK_TIMEOUT_S = 30.0
_SLOW_TIMEOUT_S = 600.0
# How long an admin call to an owned instance waits for its owner to restart a
# controller that died (it takes a few seconds) before NotRunningError.
_RESTART_RETRY_S = 30.0
_RETRY_PAUSE_S = 0.05
_DELETES = frozenset({"DeleteBackendRequest", "DeleteEndpointRequest"})

_STATE_NAMES = {
    pb.REPLICA_STATE_STARTING: "STARTING",
    pb.REPLICA_STATE_RUNNING: "RUNNING",
    pb.REPLICA_STATE_STOPPING: "STOPPING",
    pb.REPLICA_STATE_FAILED: "FAILED",
}


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica process as the controller sees it."""

    replica_id: str
    backend: str
    state: str
    address: str
    pid: int
    error: str
    # Cores it is pinned to, and its CUDA_VISIBLE_DEVICES ("" = no GPU).
    cpus: tuple[int, ...] = ()
    gpus: str = ""
    # Its log file (stdout, stderr and logging) on the controller's machine.
    log_path: str = ""
    # The machine it runs on ("" = the controller's own; a node's IP address
    # on a Ray cluster).
    node: str = ""
    # Times the controller started it again after it died or failed to
    # start, and why the last time happened ("" = never).
    restarts: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class ReplicaLog:
    """Part of one replica's log (``Client.replica_log``): ``data`` from some
    byte offset on, ``next_offset`` to go on from, the log's ``size`` now."""

    data: bytes
    next_offset: int
    size: int

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def call_controller(
    method: Callable[..., Resp],
    request: Any,
    timeout: float,
    unavailable: Callable[[str], str],
) -> Resp:
    """One blocking ControllerService call, its gRPC failure as a Turnout
    error: UNAVAILABLE (nothing answers) is a ``NotRunningError`` whose
    message ``unavailable(details)`` words for the caller."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        details: str = exc.details() or code.name
        if code == grpc.StatusCode.UNAVAILABLE:
            raise NotRunningError(unavailable(details)) from None
        raise error_from_status(code, details) from None


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _method_list(methods: Iterable[str]) -> list[str]:
    if isinstance(methods, str):
        raise TypeError("methods must be a list of str, e.g. ['GET'], not a str")
    return [_check_str(m, "each method") for m in methods]


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def _check_timeout(value: float | None) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise TypeError(f"request_timeout must be a number, got {type(value).__name__}")
    return value


def _as_json(values: tuple[Any, ...]) -> str | None:
    """``values`` as a JSON array when they come back from it unchanged, else None."""
    try:
        text = json.dumps(list(values))
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == list(values) else None


def _app_import_path(tag: str, app: Any) -> str:
    path = web_apps.import_path_of(app, detected=False)
    if path is None:
        raise InvalidArgumentError(
            f"backend {tag!r} is a web app, which replicas import "
            "rather than unpickle: define it at the top level of a module (not the main "
            "script) and pass it from there, or pass its import path 'package.module:app'"
        )
    return path


def _spec(
    tag: str,
    func_or_class: Callable[..., Any] | type | str | Command,
    init_args: tuple[Any, ...],
    interface: str = "auto",
) -> pb.BackendSpec:
    spec = pb.BackendSpec(interface=web_apps.to_proto(interface))
    declared_app = spec.interface in (pb.BACKEND_INTERFACE_WSGI, pb.BACKEND_INTERFACE_ASGI)
    if isinstance(func_or_class, Command):
        if spec.interface != pb.BACKEND_INTERFACE_UNSPECIFIED:
            raise InvalidArgumentError(
                f"backend {tag!r} is a command: it serves the replica protocol itself, "
                "so it takes no interface"
            )
        if init_args:
            raise InvalidArgumentError(
                f"backend {tag!r} is a command: it takes no init args (put them in its argv)"
            )
        spec.command.CopyFrom(func_or_class.to_proto())
        return spec
    if isinstance(func_or_class, str):
        spec.import_path = func_or_class
    elif not inspect.isclass(func_or_class) and (
        declared_app or web_apps.detect(func_or_class) != "handler"
    ):
        # Apps hold locks and weak references that do not pickle (Flask's),
        # or do not unpickle (Starlette's state): replicas import them.
        spec.import_path = _app_import_path(tag, func_or_class)
    elif callable(func_or_class):
        if init_args and not inspect.isclass(func_or_class):
            raise InvalidArgumentError(
                f"backend {tag!r} is a function: init args are only for classes"
            )
        spec.pickled_callable = _pickling.dumps(
            func_or_class,
            tag,
            getattr(func_or_class, "__qualname__", "the backend"),
            "create such objects in __init__ (a class backend's constructor runs in each "
            "replica) instead of capturing them",
        )
    else:
        raise TypeError(
            "func_or_class must be a function, a class, an import path str or a "
            "turnout.Command, "
            f"got {type(func_or_class).__name__}"
        )
    if init_args and spec.import_path and _as_json(init_args) is not None:
        # No pickle at all: an instance that refuses pickled code takes it.
        spec.init_args_json = _as_json(init_args) or ""
    elif init_args:
        spec.pickled_init_args = _pickling.dumps(
            tuple(init_args),
            tag,
            "init_args",
            "create such objects in __init__ (it runs in each replica) instead of passing them",
        )
    return spec


def _shadow_counts(shadow: pb.ShadowStats | None = None) -> dict[str, int]:
    if shadow is None:
        return {"sent": 0, "matched": 0, "differed": 0, "failed": 0}
    return {
        "sent": shadow.sent,
        "matched": shadow.matched,
        "differed": shadow.differed,
        "failed": shadow.failed,
    }


def _metric(name: str, label: str, value: str, count: int) -> dict[str, Any]:
    """One entry of ``stat()``, as Ray Serve 0.8's in-memory metric exporter wrote it."""
    return {"info": {"name": name, "type": "MetricType.COUNTER", label: value}, "value": count}


# The quantiles of a recent window, as endpoint_stats() names them.
_QUANTILES = ("p50", "p95", "p99", "handler_p50", "handler_p95", "handler_p99")
# What stat() reports of each endpoint's window: entry quantile -> key.
_STAT_QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))


def _recent(window: pb.WindowStats | None = None) -> dict[str, Any]:
    """One endpoint's (or backend's) window: counts, and quantiles in seconds
    (None where nothing was counted)."""
    if window is None:
        return {"requests": 0, "errors": 0, **dict.fromkeys(_QUANTILES)}
    quantiles = {
        name: getattr(window, f"{name}_seconds")
        if window.HasField(f"{name}_seconds")  # type: ignore[arg-type]
        else None
        for name in _QUANTILES
    }
    return {"requests": window.requests, "errors": window.errors, **quantiles}


def _latency_entries(endpoint: str, recent: dict[str, Any]) -> list[dict[str, Any]]:
    """``stat()``'s latency quantiles of one endpoint's recent window."""
    return [
        {
            "info": {
                "name": "endpoint_latency_seconds",
                "type": "MetricType.GAUGE",
                "endpoint": endpoint,
                "quantile": q,
                "window_s": recent["window_s"],
            },
            "value": recent[key],
        }
        for q, key in _STAT_QUANTILES
    ]


def _endpoint_entry(
    window: float, backends: list[str] | None = None, shadows: list[str] | None = None
) -> dict[str, Any]:
    """An endpoint's ``endpoint_stats()`` entry before any router counted:
    zeros for each backend of its traffic and shadows."""
    backends = backends or []
    return {
        "requests": dict.fromkeys(backends, 0),
        "errors": 0,
        "shadows": {backend: _shadow_counts() for backend in shadows or []},
        "recent": {
            "window_s": window,
            **_recent(),
            "backends": {backend: _recent() for backend in backends},
        },
    }


class Client:
    """A connection to a Turnout controller.

    ``turnout.init()`` returns one; create one yourself to talk to several
    instances. Every method raises ``TypeError`` for arguments of the wrong
    type, a ``ValueError`` subclass from ``turnout.errors`` for refused values,
    and ``NotRunningError`` when the controller does not answer.

    Example::

        client = turnout.Client("127.0.0.1:50051")
        client.create_backend("echo", lambda request: request.args.get("q"))
        client.create_endpoint("echo", "echo", route="/echo")

    ``address`` is "host:port" or "unix:/path/to/controller.sock". ``tls``
    (a ``turnout.TLSConfig``) connects over TLS: ``ca`` verifies the
    controller, ``cert``/``key`` are this client's certificate when the
    instance wants mutual TLS; handles made from this client use it too::

        tls = turnout.TLSConfig(ca="ca.pem", cert="client.pem", key="client.key")
        client = turnout.Client("10.0.0.5:50051", tls=tls)
    """

    def __init__(
        self,
        address: str,
        *,
        tls: TLSConfig | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        _instance: LocalInstance | None = None,
    ) -> None:
        self._address = _check_str(address, "address")
        self._instance = _instance
        # An explicit token, else a file, else the replica's own credentials,
        # $TURNOUT_TOKEN_FILE, $TURNOUT_TOKEN, the default instance's file.
        if token is None and token_file is None and _instance is not None:
            token = _instance.token
        self._token = auth.find_token(token, token_file, address)
        self._security = dataclasses.replace(rpc.security_for(address), token=self._token)
        if tls is not None:
            if not isinstance(tls, TLSConfig):
                raise TypeError(f"tls must be a turnout.TLSConfig, got {type(tls).__name__}")
            self._security = dataclasses.replace(self._security, tls=tls_options.check(tls))
        self._channel = rpc.channel(address, self._security)
        self._stub = controller_pb2_grpc.ControllerServiceStub(self._channel)
        self._lock = threading.Lock()
        self._closed = False
        self._dashboards: list[Dashboard] = []
        self._info = self._call(self._stub.GetInstance, pb.GetInstanceRequest())
        # Only once it answered: handles made from here on (and unpickled in
        # this process) reach the instance the same way.
        rpc.remember(address, self._security)

    # ---- connection -------------------------------------------------------

    @property
    def controller_address(self) -> str:
        """The controller's "host:port", as grpcurl and ``init(address=...)`` take it."""
        return self._address

    @property
    def token(self) -> str | None:
        """The token this client presents (e.g. to hand to grpcurl); inside a
        replica, the replica's own, which grants no admin calls."""
        return self._token

    @property
    def http_address(self) -> str:
        """Base URL of the HTTP proxy, e.g. ``"http://127.0.0.1:8000"``."""
        return self._info.http_address

    @property
    def controller_pid(self) -> int:
        """OS process id of the controller."""
        return self._info.controller_pid

    @property
    def log_dir(self) -> str:
        """Directory with the controller, proxy and replica logs."""
        return self._info.log_dir

    @property
    def closed(self) -> bool:
        """True once ``shutdown()`` was called on this client."""
        return self._closed

    def _tls_hint(self) -> str:
        if self._security.tls is None:
            return "; if it uses TLS, pass tls=turnout.TLSConfig(ca=...) (CLI: --tls-ca)"
        return (
            "; if it runs, check the TLS material: the CA that signed its certificate, the "
            "name it was issued for, and a client certificate when it wants mutual TLS"
        )

    def _call(
        self, method: Callable[..., Resp], request: Any, timeout: float = _QUICK_TIMEOUT_S
    ) -> Resp:
        if self._closed:
            raise NotRunningError("this client was shut down; call turnout.init() again")
        retry_until = time.monotonic() + _RESTART_RETRY_S
        retried = False
        while True:
            controller = self._instance.process.pid if self._instance is not None else 0
            try:
                return call_controller(
                    method,
                    request,
                    timeout,
                    lambda details: (
                        f"no Turnout controller answers at {self._address} ({details}); "
                        f"start one with turnout.init(){self._tls_hint()}"
                    ),
                )
            except NotRunningError:
                if not self._wait_for_restart(controller, retry_until):
                    raise
                retried = True
                # Never a hot loop, whatever the channel's state says.
                time.sleep(_RETRY_PAUSE_S)
            except NotFoundError:
                # The attempt the controller died answering had deleted it.
                if retried and request.DESCRIPTOR.name in _DELETES:
                    # Nobody reads a delete's (empty) answer.
                    return cast(Resp, None)
                raise

    def _wait_for_restart(self, controller: int, until: float) -> bool:
        """After UNAVAILABLE: True once a new controller of an owned instance
        serves (its owner restarts a dead one), False if the controller
        ``controller`` (pid) did not die, or no new one came in time.

        Every admin call may be sent again: reads and sets are idempotent,
        CreateBackend and CreateEndpoint answer an identical retry as a
        success, and a retried delete that finds nothing counts as done.
        """
        instance = self._instance
        if instance is None or not instance.lost(controller):
            return False
        ready = grpc.channel_ready_future(self._channel)
        try:
            while not instance.gone:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(grpc.FutureTimeoutError):
                    ready.result(timeout=min(remaining, 0.5))
                    return True
            return False
        finally:
            ready.cancel()

    def shutdown(self) -> None:
        """Stop the instance: every replica, the proxy and the controller."""
        with self._lock:
            if self._closed:
                return
            for dashboard in self._dashboards:
                dashboard.stop()
            try:
                self._call(self._stub.Shutdown, pb.ShutdownRequest(), timeout=_SLOW_TIMEOUT_S)
            except NotRunningError:
                pass
            finally:
                self._closed = True
                self._channel.close()
                if self._instance is not None:
                    self._instance.wait_stopped()

    def serve_dashboard(
        self,
        port: int = 8265,
        *,
        host: str = "127.0.0.1",
        https: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    ) -> Dashboard:
        """Serve the operators' dashboard of this instance from a thread of
        this process, with this client's credentials, until ``stop()`` or
        ``shutdown()``; port 0 picks a free one. Its ``url`` carries the token
        that opens it. Beyond loopback it needs ``https=(cert, key)``
        (docs/dashboard.md).

        Example::

            dashboard = client.serve_dashboard(port=0)
            print(dashboard.url)  # http://127.0.0.1:40123/?token=...
        """
        from turnout._dashboard.server import Dashboard

        files = None
        if https is not None:
            if not isinstance(https, tuple) or len(https) != 2:
                raise TypeError("https must be a (certificate path, key path) tuple")
            files = (Path(https[0]), Path(https[1]))
        dashboard = Dashboard(self, host=host, port=port, https=files)
        self._dashboards.append(dashboard)
        return dashboard

    # ---- backends ---------------------------------------------------------

    def create_backend(
        self,
        tag: str,
        func_or_class: Callable[..., Any] | type | str | Command,
        *init_args: Any,
        config: BackendConfig | dict[str, Any] | None = None,
        replica_options: dict[str, Any] | None = None,
        interface: str = "auto",
    ) -> None:
        """Create a backend and wait until its replicas are serving.

        ``func_or_class`` is a function, a class (constructed once per replica
        with ``init_args``; its ``__call__`` handles requests), or an import
        path ``"package.module:attr"`` naming one, or a ``turnout.Command``: a
        program in any language that serves the replica protocol itself
        (docs/replica-protocol.md). ``replica_options`` places
        the replica processes: ``num_cpus`` (pin to that many cores),
        ``num_gpus`` (whole GPUs, or a fraction of one, via
        ``CUDA_VISIBLE_DEVICES``), ``env`` (extra environment variables),
        ``memory`` (bytes) and, on a Ray instance, ``resources``,
        ``node_selector``, ``max_replicas_per_node`` and ``runtime_env``
        (docs/ray-cluster.md, "Placement").

        The callable and ``init_args`` travel to the replicas pickled: one that
        holds something that cannot be (a lock, a socket, an open file) raises
        ``TypeError`` naming it; create such objects in ``__init__`` instead.

        Example::

            class Counter:
                def __init__(self, start):
                    self.count = start
                def __call__(self, request):
                    self.count += 1
                    return {"count": self.count}

            serve.create_backend("counter", Counter, 10, config={"num_replicas": 2},
                                 replica_options={"num_cpus": 1})

        A WSGI app (Flask, Django) or an ASGI app (FastAPI, Starlette), or
        the import path of one, serves every path under its endpoint's route
        (docs/apps.md); ``interface`` ("auto", "handler", "wsgi", "asgi")
        says which it is when detection would be wrong::

            serve.create_backend("api", "myproject.web:app")
        """
        _check_str(tag, "tag")
        request = pb.CreateBackendRequest(
            tag=tag,
            spec=_spec(tag, func_or_class, init_args, interface),
            config=BackendConfig.coerce(config).to_proto(),
            replica_options=validation.replica_options_from(replica_options),
        )
        self._call(self._stub.CreateBackend, request, timeout=_SLOW_TIMEOUT_S)

    def update_backend(
        self,
        tag: str,
        func_or_class: Callable[..., Any] | type | str | Command,
        *init_args: Any,
        interface: str = "auto",
    ) -> None:
        """Deploy new code under an existing tag without downtime.

        Replicas are replaced one at a time, each new one serving before an old
        one stops (and the old one finishing what it holds). If the new code
        cannot start, nothing changes and the error is raised. ``interface``
        is as for ``create_backend``, said again for the new code.

        Example::

            serve.update_backend("counter", CounterV2, 10)
        """
        _check_str(tag, "tag")
        request = pb.UpdateBackendRequest(
            tag=tag, spec=_spec(tag, func_or_class, init_args, interface)
        )
        self._call(self._stub.UpdateBackend, request, timeout=_SLOW_TIMEOUT_S)

    def get_backend_config(self, tag: str) -> BackendConfig:
        """The backend's effective config, every field filled in."""
        reply = self._call(self._stub.GetBackend, pb.GetBackendRequest(tag=_check_str(tag, "tag")))
        return BackendConfig.from_proto(reply.backend.config)

    def update_backend_config(self, tag: str, config: BackendConfig | dict[str, Any]) -> None:
        """Change the given fields of a backend's config (e.g. scale it)."""
        _check_str(tag, "tag")
        if config is None:
            raise TypeError("config must be a dict or BackendConfig, got NoneType")
        update = BackendConfig.coerce(config).to_proto()
        request = pb.UpdateBackendConfigRequest(tag=tag, config=update)
        self._call(self._stub.UpdateBackendConfig, request, timeout=_SLOW_TIMEOUT_S)

    def list_backends(self) -> dict[str, dict[str, Any]]:
        """``{tag: config as a dict}`` for every backend."""
        reply = self._call(self._stub.ListBackends, pb.ListBackendsRequest())
        return {b.tag: BackendConfig.from_proto(b.config).to_dict() for b in reply.backends}

    def delete_backend(self, tag: str) -> None:
        """Delete a backend and stop its replicas. Refused (InUseError) while an
        endpoint sends it traffic."""
        request = pb.DeleteBackendRequest(tag=_check_str(tag, "tag"))
        self._call(self._stub.DeleteBackend, request, timeout=_SLOW_TIMEOUT_S)

    def autoscaling_status(self, backend: str) -> dict[str, Any] | None:
        """Where an autoscaled backend stands; None for one with a fixed
        ``num_replicas``. NotFoundError for an unknown backend.

        ``{"desired_replicas", "running_replicas", "wanted_replicas", "load",
        "last_decision", "last_reason", "last_decision_time"}``: the replicas
        the controller wants (its last decision) and those RUNNING, what the
        load asks for before the delays, the load (requests in flight and
        queued, averaged over ``look_back_period_s``), and the last decision
        ("up", "down" or None), why, and when (Unix time, None before the
        first). docs/traffic.md, "Autoscaling", has the rules.

        Example::

            serve.create_backend("m", Model, config={"autoscaling_config": {"max_replicas": 4}})
            serve.autoscaling_status("m")["desired_replicas"]   # 1
        """
        request = pb.GetBackendRequest(tag=_check_str(backend, "backend"))
        reply = self._call(self._stub.GetBackend, request)
        if not reply.backend.HasField("autoscaling_status"):
            return None
        status = reply.backend.autoscaling_status
        return {
            "desired_replicas": status.desired_replicas,
            "running_replicas": status.running_replicas,
            "wanted_replicas": status.wanted_replicas,
            "load": status.load,
            "last_decision": status.last_decision or None,
            "last_reason": status.last_reason or None,
            "last_decision_time": status.last_decision_time or None,
        }

    def list_replicas(self, backend: str | None = None) -> list[ReplicaInfo]:
        """Replica processes (of one backend, or all) with state, address and pid."""
        request = pb.ListReplicasRequest(backend=_check_str(backend or "", "backend"))
        reply = self._call(self._stub.ListReplicas, request)
        return [
            ReplicaInfo(
                replica_id=r.replica_id,
                backend=r.backend,
                state=_STATE_NAMES.get(r.state, "UNKNOWN"),
                address=r.address,
                pid=r.pid,
                error=r.error,
                cpus=tuple(r.cpus),
                gpus=r.gpus,
                log_path=r.log_path,
                node=r.node,
                restarts=r.restarts,
                last_error=r.last_error,
            )
            for r in reply.replicas
        ]

    def replica_log(
        self, replica_id: str, max_bytes: int = 0, offset: int | None = None
    ) -> ReplicaLog:
        """Part of a running replica's log, read by the controller where the
        replica runs (a Ray node included): its last ``max_bytes`` (0 = 64 KiB;
        at most 1 MiB), or from byte ``offset`` on (a previous answer's
        ``next_offset``, to follow it; past the end, after a rotation: from
        the start). NotFoundError for a replica id that does not run.

        Example::

            log = client.replica_log("model#1")
            print(log.text)
            more = client.replica_log("model#1", offset=log.next_offset)
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an int, got {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise InvalidArgumentError(f"max_bytes must be >= 0, got {max_bytes}")
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        if offset is not None and offset < 0:
            raise InvalidArgumentError(f"offset must be >= 0, got {offset}")
        request = pb.GetReplicaLogRequest(
            replica_id=_check_str(replica_id, "replica_id"),
            # Beyond the field's range: the controller's own "at most" answer.
            max_bytes=min(max_bytes, 2**32 - 1),
            offset=None if offset is None else min(offset, 2**64 - 1),
        )
        reply = self._call(self._stub.GetReplicaLog, request)
        return ReplicaLog(reply.data, reply.next_offset, reply.size)

    # ---- endpoints --------------------------------------------------------

    def create_endpoint(
        self,
        name: str,
        backend: str | None = None,
        *,
        route: str | None = None,
        methods: Iterable[str] = ("GET",),
        request_timeout: float | None = None,
        cors: dict[str, Any] | None = None,
    ) -> None:
        """Create an endpoint, optionally on an HTTP route, sending all traffic to
        ``backend`` (required, positional or keyword; ``TypeError`` without it,
        as in Ray Serve). ``request_timeout`` (seconds) answers 504 to requests
        that take longer and cancels their work; ``X-Serve-Timeout-Ms``
        overrides it. ``cors`` takes the options of Starlette's
        CORSMiddleware (``allow_origins``, ``allow_methods``,
        ``allow_headers``, ``expose_headers``, ``allow_credentials``,
        ``max_age``); the proxy answers preflights itself (docs/apps.md, "CORS").

        Example::

            serve.create_endpoint("simple_endpoint", "simple_backend",
                                  route="/simple", methods=["GET"],
                                  cors={"allow_origins": ["https://app.example"]})
        """
        _check_str(name, "name")
        if backend is None:
            raise TypeError(
                f"backend must be specified when creating endpoint {name!r}, "
                "e.g. create_endpoint(name, backend=tag)"
            )
        _check_str(backend, "backend")
        if route is not None:
            _check_str(route, "route")
        request = pb.CreateEndpointRequest(
            name=name,
            backend=backend,
            route=route or "",
            methods=_method_list(methods),
            request_timeout=float(_check_timeout(request_timeout) or 0),
        )
        if cors is not None:
            request.cors.CopyFrom(CorsPolicy.from_dict(cors).to_proto())
        self._call(self._stub.CreateEndpoint, request)

    def update_endpoint(
        self,
        name: str,
        *,
        route: str | None = None,
        methods: Iterable[str] | None = None,
        request_timeout: float | None = None,
        cors: dict[str, Any] | Literal[False] | None = None,
    ) -> None:
        """Change an endpoint's route, methods, request timeout or CORS policy
        in place; ``None`` keeps the current value, ``route=""`` takes the
        endpoint off HTTP, ``request_timeout=0`` removes the limit and
        ``cors=False`` the CORS policy. Its traffic and
        shadows stay, and a request that fits both the old and the new shape
        never finds the endpoint missing (delete and create again would).

        Example::

            serve.update_endpoint("simple_endpoint", methods=["GET", "POST"])
        """
        _check_str(name, "name")
        request = pb.UpdateEndpointRequest(name=name)
        if route is not None:
            request.route = _check_str(route, "route")
        if methods is not None:
            method_list = _method_list(methods)
            if not method_list:
                raise InvalidArgumentError("methods must name at least one HTTP method")
            request.methods.extend(method_list)
        if _check_timeout(request_timeout) is not None:
            request.request_timeout = float(request_timeout or 0)
        if cors is False:
            request.clear_cors = True
        elif cors is not None:
            request.cors.CopyFrom(CorsPolicy.from_dict(cors).to_proto())
        self._call(self._stub.UpdateEndpoint, request)

    def set_traffic(self, endpoint: str, traffic: dict[str, float]) -> None:
        """Split an endpoint's requests between backends by weight.

        Weights are >= 0 and sum to 1, e.g. ``{"v1": 0.9, "v2": 0.1}``.
        """
        _check_str(endpoint, "endpoint")
        if not isinstance(traffic, dict):
            raise TypeError(f"traffic must be a dict, got {type(traffic).__name__}")
        weights = []
        for backend, weight in traffic.items():
            _check_str(backend, "each backend")
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise TypeError(f"weight of {backend!r} must be a number")
            weights.append(pb.TrafficWeight(backend=backend, weight=float(weight)))
        self._call(self._stub.SetTraffic, pb.SetTrafficRequest(endpoint=endpoint, traffic=weights))

    def list_endpoints(self) -> dict[str, dict[str, Any]]:
        """``{name: {"route", "methods", "traffic", "shadows", "request_timeout",
        "serves_app", "cors"}}`` for every endpoint; ``route`` is None for one
        reachable only through handles, ``request_timeout`` (seconds) None when
        there is no limit, ``serves_app`` whether a WSGI/ASGI app serves the
        paths under the route, ``cors`` the CORS options (every one filled in)
        or None.

        Example::

            serve.list_endpoints()
            # {"model": {"route": "/model", "methods": ["GET"], "traffic": {"model": 1.0},
            #            "shadows": {}, "request_timeout": None, "serves_app": False,
            #            "cors": None}}
        """
        reply = self._call(self._stub.ListEndpoints, pb.ListEndpointsRequest())
        return {
            e.name: {
                "route": e.route or None,
                "methods": list(e.methods),
                "traffic": {t.backend: t.weight for t in e.traffic},
                "shadows": {s.backend: s.proportion for s in e.shadows},
                "request_timeout": e.request_timeout or None,
                "serves_app": e.serves_app,
                "cors": CorsPolicy.from_proto(e.cors).to_dict() if e.HasField("cors") else None,
            }
            for e in reply.endpoints
        }

    def shadow_traffic(self, endpoint: str, backend: str, proportion: float) -> None:
        """Copy a share of an endpoint's requests to ``backend``; 0 removes the shadow.

        The copies' answers never reach the client; ``endpoint_stats()`` counts
        how many matched the primary's answer and how many differed.

        Example::

            serve.shadow_traffic("model", "model-v2", 0.25)
        """
        _check_str(endpoint, "endpoint")
        _check_str(backend, "backend")
        if isinstance(proportion, bool) or not isinstance(proportion, int | float):
            raise TypeError(f"proportion must be a number, got {type(proportion).__name__}")
        request = pb.ShadowTrafficRequest(
            endpoint=endpoint, backend=backend, proportion=float(proportion)
        )
        self._call(self._stub.ShadowTraffic, request)

    # ---- rollouts ---------------------------------------------------------

    def rollout(
        self,
        endpoint: str,
        to_backend: str,
        *,
        steps: Iterable[float] = rollout_rules.DEFAULT_STEPS,
        step_s: float = rollout_rules.DEFAULT_STEP_S,
        slo: dict[str, Any] | None = None,
        shadow_s: float | None = None,
        shadow_proportion: float = 1.0,
        min_match_rate: float = 1.0,
        delete_old: bool = False,
    ) -> Rollout:
        """Move ``endpoint`` from the one backend it serves from to
        ``to_backend`` in ``steps`` (shares of traffic, increasing, the last
        1), each lasting ``step_s`` seconds, run by the controller.

        Over each step the new backend is compared with the old one against
        ``slo``: absolute bounds ``max_error_rate`` (0..1), ``max_p95_s``,
        ``max_p99_s`` (seconds) and bounds relative to the old backend
        ``max_error_rate_ratio``, ``max_latency_ratio`` (of p99s), judged once
        the new backend answered ``min_requests`` (20) in the step; with no
        bound given, ``max_error_rate`` is 0.01. A breach moves all traffic
        back at once and the rollout ends "rolled_back" with the numbers
        that breached. With ``shadow_s``, copies of ``shadow_proportion`` of
        the requests go to the new backend first, for that long, and at
        least ``min_match_rate`` of them must answer as the old one did.
        With ``delete_old``, the old backend is deleted once the rollout
        succeeded. One rollout per endpoint at a time.

        Example::

            rollout = serve.rollout("model", "model-v2", steps=[0.05, 0.5, 1.0], step_s=60,
                                    slo={"max_error_rate": 0.01, "max_latency_ratio": 2.0})
            rollout.wait()  # "succeeded", "rolled_back" or "aborted"
        """
        _check_str(endpoint, "endpoint")
        _check_str(to_backend, "to_backend")
        if isinstance(steps, str | bytes) or not isinstance(steps, Iterable):
            raise TypeError(f"steps must be a list of numbers, got {type(steps).__name__}")
        checked = rollout_rules.check_steps(list(steps))
        request = rpb.Rollout(
            endpoint=endpoint,
            to_backend=to_backend,
            steps=checked,
            step_seconds=rollout_rules.check_step_s(step_s),
            slo=rollout_rules.slo_from_dict(slo),
            delete_old=bool(delete_old),
        )
        if shadow_s is not None:
            shadow = rpb.RolloutShadow(
                seconds=_number(shadow_s, "shadow_s"),
                proportion=_number(shadow_proportion, "shadow_proportion"),
                min_match_rate=_number(min_match_rate, "min_match_rate"),
            )
            if shadow.seconds <= 0:
                raise InvalidArgumentError(f"shadow_s must be > 0, got {shadow_s!r}")
            request.shadow.CopyFrom(rollout_rules.check_shadow(shadow))
        self._call(self._stub.StartRollout, rpb.StartRolloutRequest(rollout=request))
        return Rollout(endpoint, self._rollout_call)

    def get_rollout(self, endpoint: str) -> Rollout:
        """The current (or last) rollout of ``endpoint``; NotFoundError if it had none."""
        _check_str(endpoint, "endpoint")
        self._rollout_call("GetRollout", endpoint)
        return Rollout(endpoint, self._rollout_call)

    def list_rollouts(self) -> dict[str, dict[str, Any]]:
        """``{endpoint: Rollout.info()}`` for each endpoint's current or last rollout."""
        reply = self._call(self._stub.ListRollouts, rpb.ListRolloutsRequest())
        return {r.endpoint: describe(r) for r in reply.rollouts}

    def _rollout_call(self, name: str, endpoint: str) -> rpb.Rollout:
        request = getattr(rpb, f"{name}Request")(endpoint=endpoint)
        reply = self._call(getattr(self._stub, name), request)
        return reply.rollout  # type: ignore[no-any-return]

    def get_handle(self, endpoint: str, missing_ok: bool = False) -> EndpointHandle:
        """A handle to call ``endpoint`` from Python.

        Raises NotFoundError for an unknown endpoint unless ``missing_ok``, in
        which case ``remote()`` still returns at once and the call waits in its
        future (up to 30 s, then ``NotFoundError``) for the endpoint to be created.

        Example::

            handle = serve.get_handle("later", missing_ok=True)
            future = handle.remote(1)  # does not wait
            serve.create_endpoint("later", "model")
            print(future.result(timeout=30))
        """
        _check_str(endpoint, "endpoint")
        if not missing_ok:
            self._call(self._stub.GetEndpoint, pb.GetEndpointRequest(name=endpoint))
        return EndpointHandle(self._address, endpoint, token=self._token)

    def endpoint_stats(self, window: float = WINDOW_S) -> dict[str, dict[str, Any]]:
        """Counters per endpoint, summed over the proxy and every process's handles:

        ``{endpoint: {"requests": {backend: n}, "errors": n,
        "shadows": {backend: {"sent", "matched", "differed", "failed"}},
        "recent": {...}}}``.

        Every endpoint that exists is there from its creation, with a zero for
        each backend of its traffic and shadows, so reading one never raises
        ``KeyError`` before the first request; an endpoint deleted after it
        counted requests stays, with what it counted. ``requests`` counts
        answered requests (failed ones too); ``errors`` those that failed
        (HTTP status >= 500, or an error through a handle). Routers report
        about once a second, so the numbers may lag by that much; this
        process's own handle calls are always included. ``stat()`` gives
        the same counters in Ray Serve 0.8's shape.

        ``recent`` is what happened over the last ``window`` seconds (at most
        600): ``{"window_s", "requests", "errors", "p50", "p95", "p99",
        "handler_p50", "handler_p95", "handler_p99", "backends": {backend:
        {the same but window_s}}}``. The quantiles are in seconds,
        interpolated within the buckets of the latency histograms (see
        docs/operations.md), None when nothing was counted in the window:
        ``p50``..``p99`` end to end as the routers saw them (waiting for a
        free replica included), ``handler_...`` the time the replicas
        reported spending.

        Example::

            serve.endpoint_stats()["model"]
            # {"requests": {"model-v1": 90, "model-v2": 10}, "errors": 0,
            #  "shadows": {"model-v3": {"sent": 25, "matched": 24, "differed": 1,
            #                           "failed": 0}},
            #  "recent": {"window_s": 60.0, "requests": 12, "errors": 0,
            #             "p50": 0.0031, "p95": 0.0094, "p99": 0.012, ...,
            #             "backends": {"model-v1": {"requests": 11, ...}, ...}}}
        """
        return self._counters(check_window(window))[0]

    def _counters(self, window: float = 60.0) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        """``endpoint_stats()``, and the failed requests by backend over all endpoints."""
        HandleRouter.flush_local(self._address)
        reply = self._call(self._stub.GetStats, pb.GetStatsRequest(window_seconds=window))
        listed = self._call(self._stub.ListEndpoints, pb.ListEndpointsRequest())
        errors_by_backend: dict[str, int] = {}
        stats: dict[str, dict[str, Any]] = {
            e.name: _endpoint_entry(
                window, [t.backend for t in e.traffic], [s.backend for s in e.shadows]
            )
            for e in listed.endpoints
        }
        for e in reply.endpoints:
            counts = stats.setdefault(e.endpoint, _endpoint_entry(window))
            counts["requests"].update(dict(e.requests_by_backend))
            counts["errors"] = e.errors
            for shadow in e.shadows:
                counts["shadows"][shadow.backend] = _shadow_counts(shadow)
            for backend, n in e.errors_by_backend.items():
                errors_by_backend[backend] = errors_by_backend.get(backend, 0) + n
        for w in reply.recent:
            recent = stats.setdefault(w.endpoint, _endpoint_entry(window))["recent"]
            if w.backend:
                recent["backends"][w.backend] = _recent(w)
            else:
                recent.update(_recent(w))
        return dict(sorted(stats.items())), errors_by_backend

    def stat(self) -> list[dict[str, Any]]:
        """The counters in Ray Serve 0.8's shape: a list of
        ``{"info": {"name": ..., "type": "MetricType.COUNTER", "endpoint" or
        "backend": ...}, "value": n}``, with Ray's metric names:

        - ``num_router_requests`` (per endpoint): requests answered;
        - ``num_error_endpoint_requests`` (per endpoint): those that failed;
        - ``backend_request_counter`` (per backend): requests it answered,
          shadow copies included, over all endpoints;
        - ``backend_error_counter`` (per backend): the failed ones among them
          (shadow copies not included: their failures are in
          ``endpoint_stats()``'s shadow counts);
        - ``endpoint_latency_seconds`` (per endpoint, type
          ``MetricType.GAUGE``, with ``quantile`` 0.5, 0.95 and 0.99 and
          ``window_s`` 60.0 in its info): the quantile of the requests'
          end-to-end seconds over the last 60 s (None when there were none);
          ``endpoint_stats()["<endpoint>"]["recent"]`` has them per backend,
          and for other windows.

        Every existing endpoint and backend has its entries, zeros included.
        ``endpoint_stats()`` has the same counts per endpoint and backend,
        with how shadows compared.

        Example::

            def requests_to(backend):
                return sum(
                    entry["value"]
                    for entry in serve.stat()
                    if entry["info"]["name"] == "backend_request_counter"
                    and entry["info"]["backend"] == backend
                )
        """
        per_endpoint, errors_by_backend = self._counters()
        backends = self._call(self._stub.ListBackends, pb.ListBackendsRequest()).backends
        per_backend = dict.fromkeys(sorted(b.tag for b in backends), 0)
        entries: list[dict[str, Any]] = []
        for endpoint, counts in per_endpoint.items():
            for backend, n in counts["requests"].items():
                per_backend[backend] = per_backend.get(backend, 0) + n
            for backend, shadow in counts["shadows"].items():
                answered = shadow["matched"] + shadow["differed"]
                per_backend[backend] = per_backend.get(backend, 0) + answered
            answered_requests = sum(counts["requests"].values())
            entries.append(_metric("num_router_requests", "endpoint", endpoint, answered_requests))
            entries.append(
                _metric("num_error_endpoint_requests", "endpoint", endpoint, counts["errors"])
            )
            entries += _latency_entries(endpoint, counts["recent"])
        for backend, n in sorted(per_backend.items()):
            entries.append(_metric("backend_request_counter", "backend", backend, n))
            errors = errors_by_backend.get(backend, 0)
            entries.append(_metric("backend_error_counter", "backend", backend, errors))
        return entries

    def delete_endpoint(self, name: str) -> None:
        """Delete an endpoint; its backends stay."""
        request = pb.DeleteEndpointRequest(name=_check_str(name, "name"))
        self._call(self._stub.DeleteEndpoint, request)
