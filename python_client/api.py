"""The module-level API (``turnout.init``, ``turnout.create_backend``, ...).

Each function forwards to the process-wide ``Client`` that ``init()`` made, so
code written for Ray Serve 0.8 runs with ``import turnout as serve``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from turnout._internal import (
    controller_args,
    replica_context,
    rollout_rules,
    tls_options,
    validation,
)
from turnout._internal.latency import WINDOW_S
from turnout._internal.proxy_args import ACCESS_LOG_FORMATS
from turnout._internal.rpc import TLSConfig
from turnout.client import Client, ReplicaInfo
from turnout.command import Command
from turnout.config import BackendConfig
from turnout.errors import InvalidArgumentError, NotRunningError, TurnoutError
from turnout.handle import EndpointHandle
from turnout.instance import LocalInstance
from turnout.rollouts import Rollout

DEFAULT_NAME = "default"

_lock = threading.Lock()
# Every instance init() made or connected to in this process, by name; module
# calls go to the current one, the one initialised last (Ray's rule).
_clients: dict[str, Client] = {}
_current_name: str | None = None
_started = itertools.count(1)


def init(
    address: str | None = None,
    *,
    name: str = DEFAULT_NAME,
    http_host: str = "127.0.0.1",
    http_port: int = 8000,
    state_path: str | os.PathLike[str] | None = None,
    access_log: bool = False,
    access_log_format: str = "text",
    proxy_workers: int = 1,
    log_to_driver: bool = True,
    keep_instance_dir: bool = False,
    max_replicas: int | None = None,
    tls: TLSConfig | None = None,
    token: str | None = None,
    ray_address: str | None = None,
    ray_runtime_env: Mapping[str, Any] | None = None,
    ray_prefer_local_replicas: bool = False,
    ray_proxy_location: str = "WithReplicas",
    dashboard: bool = False,
) -> Client:
    """Connect to a Turnout instance, starting one if needed.

    With no ``address``, a local instance is started (controller, HTTP proxy
    on ``http_host:http_port``; port 0 picks a free one) and owned by this
    process: it stops at ``shutdown()`` or when this interpreter exits, however
    it exits. Should its controller die, this process starts a new one within
    seconds, which takes over the running proxy and replicas; admin calls made
    meanwhile wait for it (up to 30 s). Its desired state (backends,
    endpoints, traffic) lives in a fresh temporary store, or in the SQLite file
    ``state_path``, from which a later ``init()`` brings it all back.

    The instance directory (``/tmp/turnout-*``: logs, run files, the temporary
    store) is removed when the instance stops; ``keep_instance_dir=True`` keeps
    it (``client.log_dir`` is in it). A ``state_path`` file is never removed.
    ``log_to_driver=True`` (the default) copies to this process's stderr what
    replicas log at WARNING and above (handler tracebacks) and what handlers
    print, each line prefixed with the replica id, e.g. ``(model#1)``.
    ``access_log=True`` makes the proxy write one line per request to
    ``<log_dir>/proxy-access.log`` (off by default: this mode is for
    development and benchmarks; ``turnout start`` turns it on);
    ``access_log_format="json"`` makes each line a JSON object (see
    docs/operations.md, "Access log").
    ``proxy_workers=N`` runs the HTTP proxy as N processes sharing the port
    (SO_REUSEPORT), for machines with cores to spare; see docs/operations.md.
    ``max_replicas`` caps the replicas of all backends together (default: from
    the machine's CPUs and memory, see docs/operations.md "Limits").
    ``tls=turnout.TLSConfig(cert=..., key=..., ca=...)`` starts the instance
    with TLS on every gRPC hop (mutual TLS when ``ca`` is given) and connects
    with the same material; see docs/security.md.
    ``ray_address="host:port"`` (a Ray cluster's GCS, this machine one of its
    nodes) runs the started instance's replicas as Ray actors across the
    cluster (``pip install 'turnout[ray]'``); see docs/ray-cluster.md.
    With it, ``ray_runtime_env={...}`` is the Ray runtime_env of every
    replica (only ``working_dir``, a folder here or a URI, ``pip``,
    ``env_vars`` and ``py_modules``: the code import-path backends need),
    ``ray_prefer_local_replicas=True`` makes each node's proxy send
    to replicas on its own node while one there has room, and
    ``ray_proxy_location="EveryNode"`` puts a proxy on every live node (the
    default, ``"WithReplicas"``: on each node with replicas).
    ``dashboard=True`` also serves the operators' dashboard of the instance
    on 127.0.0.1 (port 8265, else a free one) and prints its URL to stderr;
    see docs/dashboard.md.
    With an ``address`` ("host:port" or "unix:/path" of a controller) it
    connects to that instance, over TLS when ``tls`` is given, presenting
    ``token`` (else ``$TURNOUT_TOKEN_FILE``, ``$TURNOUT_TOKEN``, the default
    instance's token file). A first argument without a colon is a ``name``
    instead, as Ray Serve 0.8's ``serve.init("x")`` means. A started instance
    gets a new token, held in memory (``client.token``). Inside a replica,
    ``init()`` connects to the instance running it and never starts another.

    Several instances can live in one process under different names
    (``name``, default ``"default"``), each with its own controller and HTTP port.
    Module functions go to the instance initialised last; ``init(name=...)``
    of a running one switches back to it (its other arguments are then not
    used) and returns its client.

    Example::

        import turnout as serve
        client = serve.init()
        print(client.controller_address, client.http_address)
    """
    global _current_name
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a str, got {type(address).__name__}")
    if address is not None and ":" not in address and name == DEFAULT_NAME:
        # Ray Serve 0.8's first parameter is the instance's name
        # (``serve.init("x")``); an address always has a colon (host:port, unix:).
        name, address = address, None
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidArgumentError("name must not be empty")
    if not isinstance(http_host, str):
        raise TypeError(f"http_host must be a str, got {type(http_host).__name__}")
    if isinstance(http_port, bool) or not isinstance(http_port, int):
        raise TypeError(f"http_port must be an int, got {type(http_port).__name__}")
    for flag, value in (
        ("access_log", access_log),
        ("log_to_driver", log_to_driver),
        ("keep_instance_dir", keep_instance_dir),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    if not isinstance(access_log_format, str):
        raise TypeError(f"access_log_format must be a str, got {type(access_log_format).__name__}")
    if access_log_format not in ACCESS_LOG_FORMATS:
        raise InvalidArgumentError(
            f"access_log_format must be one of {', '.join(ACCESS_LOG_FORMATS)}, "
            f"got {access_log_format!r}"
        )
    if access_log_format != "text" and not access_log:
        raise InvalidArgumentError(f"access_log_format={access_log_format!r} needs access_log=True")
    if isinstance(proxy_workers, bool) or not isinstance(proxy_workers, int):
        raise TypeError(f"proxy_workers must be an int, got {type(proxy_workers).__name__}")
    if proxy_workers < 1:
        raise InvalidArgumentError(f"proxy_workers must be >= 1, got {proxy_workers}")
    if max_replicas is not None and (
        isinstance(max_replicas, bool) or not isinstance(max_replicas, int)
    ):
        raise TypeError(f"max_replicas must be an int, got {type(max_replicas).__name__}")
    if max_replicas is not None and max_replicas < 1:
        raise InvalidArgumentError(f"max_replicas must be >= 1, got {max_replicas}")
    if not isinstance(dashboard, bool):
        raise TypeError(f"dashboard must be a bool, got {type(dashboard).__name__}")
    if ray_address is not None and not isinstance(ray_address, str):
        raise TypeError(f"ray_address must be a str, got {type(ray_address).__name__}")
    if ray_address is not None and ":" not in ray_address:
        raise InvalidArgumentError(f"ray_address must be host:port, got {ray_address!r}")
    _check_ray_options(ray_address, ray_prefer_local_replicas, ray_proxy_location)
    runtime_env_json = _ray_runtime_env(ray_address, ray_runtime_env)
    with _lock:
        client = _clients.get(name)
        if client is not None and client.closed:
            del _clients[name]
            client = None
        if client is not None:
            if address not in (None, client.controller_address):
                raise TurnoutError(
                    f"instance {name!r} is connected to {client.controller_address}; call "
                    "turnout.shutdown() first, or give the other instance another name"
                )
            _current_name = name
            return client
        if address is None:
            address = replica_context.controller_address()
        if address is not None:
            client = Client(address, tls=tls, token=token)
        else:
            client = _start_local(
                http_host,
                http_port,
                state_path=None if state_path is None else Path(state_path),
                access_log=access_log,
                access_log_format=access_log_format,
                proxy_workers=proxy_workers,
                log_to_driver=log_to_driver,
                keep_dir=keep_instance_dir,
                max_replicas=max_replicas,
                tls=tls,
                ray_address=ray_address,
                ray_runtime_env=runtime_env_json,
                ray_prefer_local_replicas=ray_prefer_local_replicas,
                ray_proxy_location=ray_proxy_location,
            )
        _clients[name] = client
        _current_name = name
    if dashboard:
        _serve_dashboard(client)
    return client


def _serve_dashboard(client: Client) -> None:
    from turnout._dashboard import DEFAULT_PORT

    try:
        served = client.serve_dashboard(DEFAULT_PORT)
    except InvalidArgumentError:  # the port is taken (another dashboard)
        served = client.serve_dashboard(0)
    print(f"Turnout dashboard: {served.url}", file=sys.stderr, flush=True)


def _ray_runtime_env(ray_address: str | None, runtime_env: object) -> str | None:
    """The instance's runtime_env as JSON, checked (``validation.runtime_env``)."""
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"ray_runtime_env must be a dict, got {type(runtime_env).__name__}")
    if ray_address is None:
        raise InvalidArgumentError("ray_runtime_env needs ray_address")
    try:
        text = json.dumps(dict(runtime_env), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"ray_runtime_env must be JSON (dicts, lists, str, numbers): {exc}"
        ) from None
    validation.runtime_env(text, instance=True)
    return text


def _check_ray_options(
    ray_address: str | None, prefer_local_replicas: object, proxy_location: object
) -> None:
    if not isinstance(prefer_local_replicas, bool):
        raise TypeError(
            f"ray_prefer_local_replicas must be a bool, got {type(prefer_local_replicas).__name__}"
        )
    if not isinstance(proxy_location, str):
        raise TypeError(f"ray_proxy_location must be a str, got {type(proxy_location).__name__}")
    if proxy_location not in controller_args.RAY_PROXY_LOCATIONS:
        raise InvalidArgumentError(
            f"ray_proxy_location must be one of {', '.join(controller_args.RAY_PROXY_LOCATIONS)}, "
            f"got {proxy_location!r}"
        )
    for flag, given in (
        ("ray_prefer_local_replicas", prefer_local_replicas),
        ("ray_proxy_location", proxy_location != controller_args.WITH_REPLICAS),
    ):
        if given and ray_address is None:
            raise InvalidArgumentError(f"{flag} needs ray_address")


def _start_local(
    http_host: str,
    http_port: int,
    *,
    state_path: Path | None,
    access_log: bool,
    access_log_format: str,
    proxy_workers: int,
    log_to_driver: bool,
    keep_dir: bool,
    max_replicas: int | None,
    tls: TLSConfig | None = None,
    ray_address: str | None = None,
    ray_runtime_env: str | None = None,
    ray_prefer_local_replicas: bool = False,
    ray_proxy_location: str = "WithReplicas",
) -> Client:
    if tls is not None and not isinstance(tls, TLSConfig):
        raise TypeError(f"tls must be a turnout.TLSConfig, got {type(tls).__name__}")
    tls = None if tls is None else tls_options.check(tls)
    if tls is not None and tls.cert is None:
        raise InvalidArgumentError("init(tls=...) starting an instance needs cert and key")
    instance = LocalInstance.start(
        http_host,
        http_port,
        state_path=state_path,
        access_log=access_log,
        access_log_format=access_log_format,
        proxy_workers=proxy_workers,
        log_to_driver=log_to_driver,
        keep_dir=keep_dir,
        max_replicas=max_replicas,
        tls=tls,
        ray_address=ray_address,
        ray_runtime_env=ray_runtime_env,
        ray_prefer_local_replicas=ray_prefer_local_replicas,
        ray_proxy_location=ray_proxy_location,
    )
    try:
        client = Client(instance.address, tls=tls, token=instance.token, _instance=instance)
    except BaseException:
        instance.wait_stopped()
        raise
    atexit.register(client.shutdown)
    return client


def start(detached: bool = False, **options: Any) -> Client:
    """Start a new local instance and return its ``Client`` (Ray Serve 1.0's style).

    Takes ``init()``'s keywords for a local instance (``http_host``,
    ``http_port``, ``state_path``, ...). Each call starts another instance,
    which also becomes the current one for the module functions. The
    client's methods are the module functions: ``client.create_backend(...)``.
    A detached instance, which outlives this process, is what the ``turnout
    start`` command runs; connect to it with ``turnout.connect(address)``.

    Example::

        import turnout as serve
        client = serve.start(http_port=0)
        client.create_backend("hi", lambda request: "hi")
        client.create_endpoint("hi", backend="hi", route="/hi")
        client.shutdown()
    """
    if not isinstance(detached, bool):
        raise TypeError(f"detached must be a bool, got {type(detached).__name__}")
    if detached:
        raise InvalidArgumentError(
            "turnout.start(detached=True) is not supported: run `turnout start` for an "
            "instance that outlives this process, and turnout.connect(address) to reach it"
        )
    for key in ("address", "name"):
        if key in options:
            raise TypeError(f"start() got an unexpected keyword argument {key!r}")
    return init(name=f"started-{next(_started)}", **options)


def connect(address: str | None = None, token: str | None = None) -> Client:
    """A ``Client`` of a running instance (Ray Serve 1.0's ``serve.connect()``).

    With no ``address``: the current instance (the one ``init()`` or
    ``start()`` made last); in code running inside a replica, the instance
    that runs it; else the one ``turnout start`` runs (``$TURNOUT_ADDRESS``,
    else 127.0.0.1:50051, as the CLI finds it), as Ray's ``connect()`` finds
    the detached instance. With an ``address`` ("host:port" of a
    controller): that instance. ``token``: as ``init()`` takes it.

    Example::

        import turnout as serve
        serve.start(http_port=0)
        client = serve.connect()
        print(client.http_address)
        client.shutdown()
    """
    if address is None:
        with contextlib.suppress(NotRunningError):
            return _current()
        from turnout.cli import ADDRESS_ENV, DEFAULT_ADDRESS  # the CLI's own rule

        address = os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, got {type(address).__name__}")
    with _lock:
        for client in _clients.values():
            if client.controller_address == address and not client.closed:
                return client
    return Client(address, token=token)


def shutdown() -> None:
    """Stop the current instance (every process it started).

    Afterwards there is no current instance: module calls raise
    ``NotRunningError`` until ``init()`` starts or switches to one (other
    named instances keep running).
    """
    global _current_name
    with _lock:
        name, _current_name = _current_name, None
        client = _clients.pop(name, None) if name is not None else None
    if client is not None:
        client.shutdown()


def _current() -> Client:
    client = _clients.get(_current_name) if _current_name is not None else None
    if client is not None and not client.closed:
        return client
    if replica_context.controller_address() is not None:
        # User code in a replica reaches its own instance with no set-up.
        return init()
    raise NotRunningError("no Turnout instance: call turnout.init() first")


def create_backend(
    tag: str,
    func_or_class: Callable[..., Any] | type | str | Command,
    *init_args: Any,
    config: BackendConfig | dict[str, Any] | None = None,
    replica_options: dict[str, Any] | None = None,
    interface: str = "auto",
) -> None:
    """See ``Client.create_backend``."""
    _current().create_backend(
        tag,
        func_or_class,
        *init_args,
        config=config,
        replica_options=replica_options,
        interface=interface,
    )


def update_backend(
    tag: str,
    func_or_class: Callable[..., Any] | type | str | Command,
    *init_args: Any,
    interface: str = "auto",
) -> None:
    """See ``Client.update_backend``."""
    _current().update_backend(tag, func_or_class, *init_args, interface=interface)


def create_endpoint(
    name: str,
    backend: str | None = None,
    *,
    route: str | None = None,
    methods: Iterable[str] = ("GET",),
    request_timeout: float | None = None,
    cors: dict[str, Any] | None = None,
) -> None:
    """See ``Client.create_endpoint``."""
    _current().create_endpoint(
        name, backend, route=route, methods=methods, request_timeout=request_timeout, cors=cors
    )


def update_endpoint(
    name: str,
    *,
    route: str | None = None,
    methods: Iterable[str] | None = None,
    request_timeout: float | None = None,
    cors: dict[str, Any] | Literal[False] | None = None,
) -> None:
    """See ``Client.update_endpoint``."""
    _current().update_endpoint(
        name, route=route, methods=methods, request_timeout=request_timeout, cors=cors
    )


def set_traffic(endpoint: str, traffic: dict[str, float]) -> None:
    """See ``Client.set_traffic``."""
    _current().set_traffic(endpoint, traffic)


def shadow_traffic(endpoint: str, backend: str, proportion: float) -> None:
    """See ``Client.shadow_traffic``."""
    _current().shadow_traffic(endpoint, backend, proportion)


def get_handle(endpoint: str, missing_ok: bool = False) -> EndpointHandle:
    """See ``Client.get_handle``."""
    return _current().get_handle(endpoint, missing_ok)


def stat() -> list[dict[str, Any]]:
    """See ``Client.stat``."""
    return _current().stat()


def endpoint_stats(window: float = WINDOW_S) -> dict[str, dict[str, Any]]:
    """See ``Client.endpoint_stats``."""
    return _current().endpoint_stats(window)


def update_backend_config(tag: str, config: BackendConfig | dict[str, Any]) -> None:
    """See ``Client.update_backend_config``."""
    _current().update_backend_config(tag, config)


def get_backend_config(tag: str) -> BackendConfig:
    """See ``Client.get_backend_config``."""
    return _current().get_backend_config(tag)


def list_backends() -> dict[str, dict[str, Any]]:
    """See ``Client.list_backends``."""
    return _current().list_backends()


def list_endpoints() -> dict[str, dict[str, Any]]:
    """See ``Client.list_endpoints``."""
    return _current().list_endpoints()


def autoscaling_status(backend: str) -> dict[str, Any] | None:
    """See ``Client.autoscaling_status``."""
    return _current().autoscaling_status(backend)


def list_replicas(backend: str | None = None) -> list[ReplicaInfo]:
    """See ``Client.list_replicas``."""
    return _current().list_replicas(backend)


def delete_endpoint(name: str) -> None:
    """See ``Client.delete_endpoint``."""
    _current().delete_endpoint(name)


def delete_backend(tag: str) -> None:
    """See ``Client.delete_backend``."""
    _current().delete_backend(tag)


def rollout(
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
    """See ``Client.rollout``."""
    return _current().rollout(
        endpoint,
        to_backend,
        steps=steps,
        step_s=step_s,
        slo=slo,
        shadow_s=shadow_s,
        shadow_proportion=shadow_proportion,
        min_match_rate=min_match_rate,
        delete_old=delete_old,
    )


def get_rollout(endpoint: str) -> Rollout:
    """See ``Client.get_rollout``."""
    return _current().get_rollout(endpoint)


def list_rollouts() -> dict[str, dict[str, Any]]:
    """See ``Client.list_rollouts``."""
    return _current().list_rollouts()
