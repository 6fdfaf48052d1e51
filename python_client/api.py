"""The module-level API (``turnout.init``, ``turnout.create_backend``, ...).

Each function forwards to the process-wide ``Client`` that ``init()`` made, so
code written for Ray Serve 0.8 runs with ``import turnout as serve``.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from turnout.client import Client, ReplicaInfo
from turnout.config import BackendConfig
from turnout.errors import InvalidArgumentError, NotRunningError, TurnoutError
from turnout.handle import EndpointHandle
from turnout.instance import LocalInstance

_lock = threading.Lock()
_client: Client | None = None


def init(
    address: str | None = None,
    *,
    http_host: str = "127.0.0.1",
    http_port: int = 8000,
    state_path: str | os.PathLike[str] | None = None,
    access_log: bool = False,
    proxy_workers: int = 1,
    max_replicas: int | None = None,
) -> Client:
    """Connect to a Turnout instance, starting one if needed.

    With no ``address``, a local instance is started (controller, HTTP proxy
    on ``http_host:http_port``; port 0 picks a free one) and owned by this
    process: it stops at ``shutdown()`` or when this interpreter exits. Its
    desired state (backends, endpoints, traffic) lives in a fresh temporary
    store, or in the SQLite file ``state_path``, from which a later ``init()``
    brings it all back. ``access_log=True`` makes the proxy write one line per
    request to ``<log_dir>/proxy-access.log`` (off by default: this mode is for
    development and benchmarks; ``turnout start`` turns it on).
    ``proxy_workers=N`` runs the HTTP proxy as N processes sharing the port
    (SO_REUSEPORT), for machines with cores to spare; see docs/operations.md.
    ``max_replicas`` caps the replicas of all backends together (default: from
    the machine's CPUs and memory, see docs/operations.md "Limits").
    With an ``address`` ("host:port" of a controller) it connects to that
    instance. Calling ``init()`` again returns the same client.

    Example::

        import turnout as serve
        client = serve.init()
        print(client.controller_address, client.http_address)
    """
    global _client
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a str, got {type(address).__name__}")
    if not isinstance(http_host, str):
        raise TypeError(f"http_host must be a str, got {type(http_host).__name__}")
    if isinstance(http_port, bool) or not isinstance(http_port, int):
        raise TypeError(f"http_port must be an int, got {type(http_port).__name__}")
    if not isinstance(access_log, bool):
        raise TypeError(f"access_log must be a bool, got {type(access_log).__name__}")
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
    with _lock:
        if _client is not None:
            if address in (None, _client.controller_address):
                return _client
            raise TurnoutError(
                f"already connected to {_client.controller_address}; "
                "call turnout.shutdown() before connecting elsewhere"
            )
        if address is not None:
            _client = Client(address)
            return _client
        instance = LocalInstance.start(
            http_host,
            http_port,
            state_path=None if state_path is None else Path(state_path),
            access_log=access_log,
            proxy_workers=proxy_workers,
            max_replicas=max_replicas,
        )
        try:
            _client = Client(instance.address, _instance=instance)
        except BaseException:
            instance.wait_stopped()
            raise
        atexit.register(_shutdown_owned, _client)
        return _client


def _shutdown_owned(client: Client) -> None:
    client.shutdown()


def shutdown() -> None:
    """Stop the instance ``init()`` connected to (every process it started)."""
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        client.shutdown()


def _current() -> Client:
    client = _client
    if client is None:
        raise NotRunningError("no Turnout instance: call turnout.init() first")
    return client


def create_backend(
    tag: str,
    func_or_class: Callable[..., Any] | type | str,
    *init_args: Any,
    config: BackendConfig | dict[str, Any] | None = None,
    replica_options: dict[str, Any] | None = None,
) -> None:
    """See ``Client.create_backend``."""
    _current().create_backend(
        tag, func_or_class, *init_args, config=config, replica_options=replica_options
    )


def update_backend(
    tag: str, func_or_class: Callable[..., Any] | type | str, *init_args: Any
) -> None:
    """See ``Client.update_backend``."""
    _current().update_backend(tag, func_or_class, *init_args)


def create_endpoint(
    name: str,
    backend: str | None = None,
    *,
    route: str | None = None,
    methods: Iterable[str] = ("GET",),
    request_timeout: float | None = None,
) -> None:
    """See ``Client.create_endpoint``."""
    _current().create_endpoint(
        name, backend, route=route, methods=methods, request_timeout=request_timeout
    )


def update_endpoint(
    name: str,
    *,
    route: str | None = None,
    methods: Iterable[str] | None = None,
    request_timeout: float | None = None,
) -> None:
    """See ``Client.update_endpoint``."""
    _current().update_endpoint(name, route=route, methods=methods, request_timeout=request_timeout)


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


def endpoint_stats() -> dict[str, dict[str, Any]]:
    """See ``Client.endpoint_stats``."""
    return _current().endpoint_stats()


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


def list_replicas(backend: str | None = None) -> list[ReplicaInfo]:
    """See ``Client.list_replicas``."""
    return _current().list_replicas(backend)


def delete_endpoint(name: str) -> None:
    """See ``Client.delete_endpoint``."""
    _current().delete_endpoint(name)


def delete_backend(tag: str) -> None:
    """See ``Client.delete_backend``."""
    _current().delete_backend(tag)
