"""Turnout: serve Python functions and classes, with weighted traffic between backends.

Example::

    import requests
    import turnout as serve

    serve.init()
    serve.create_backend("hello", lambda request: "hello world")
    serve.create_endpoint("hello", "hello", route="/hello")
    print(requests.get("http://127.0.0.1:8000/hello").text)
"""

# Lazy: a server process imports ``turnout._internal`` (which imports this
# package first) and must not load the client, the handles and gRPC stubs it
# never uses. Each public name is imported on first access.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout._dashboard.server import Dashboard
    from turnout._internal.rpc import TLSConfig
    from turnout._internal.sse import EventStream, sse_event
    from turnout._internal.version import __version__
    from turnout.api import (
        autoscaling_status,
        connect,
        create_backend,
        create_endpoint,
        delete_backend,
        delete_endpoint,
        endpoint_stats,
        get_backend_config,
        get_handle,
        get_rollout,
        init,
        list_backends,
        list_endpoints,
        list_replicas,
        list_rollouts,
        rollout,
        set_traffic,
        shadow_traffic,
        shutdown,
        start,
        stat,
        update_backend,
        update_backend_config,
        update_endpoint,
    )
    from turnout.batching import accept_batch, context
    from turnout.client import Client, ReplicaInfo, ReplicaLog
    from turnout.command import Command
    from turnout.config import BackendConfig
    from turnout.errors import (
        AlreadyExistsError,
        BackendError,
        CapacityError,
        DeadlineExceededError,
        InUseError,
        InvalidArgumentError,
        MethodNotFoundError,
        NotFoundError,
        NotRunningError,
        OverloadedError,
        PermissionDeniedError,
        TokenFileError,
        TurnoutError,
        TurnoutValueError,
        UnauthenticatedError,
        UnavailableError,
        UnimplementedError,
    )
    from turnout.handle import EndpointHandle, HandleFuture, HandleIterator
    from turnout.rollouts import Rollout

_WHERE = {
    "AlreadyExistsError": "turnout.errors",
    "BackendConfig": "turnout.config",
    "BackendError": "turnout.errors",
    "CapacityError": "turnout.errors",
    "DeadlineExceededError": "turnout.errors",
    "Client": "turnout.client",
    "Command": "turnout.command",
    "Dashboard": "turnout._dashboard.server",
    "EndpointHandle": "turnout.handle",
    "EventStream": "turnout._internal.sse",
    "HandleFuture": "turnout.handle",
    "HandleIterator": "turnout.handle",
    "InUseError": "turnout.errors",
    "InvalidArgumentError": "turnout.errors",
    "MethodNotFoundError": "turnout.errors",
    "NotFoundError": "turnout.errors",
    "NotRunningError": "turnout.errors",
    "OverloadedError": "turnout.errors",
    "PermissionDeniedError": "turnout.errors",
    "ReplicaInfo": "turnout.client",
    "Rollout": "turnout.rollouts",
    "ReplicaLog": "turnout.client",
    "TLSConfig": "turnout._internal.rpc",
    "TokenFileError": "turnout.errors",
    "TurnoutError": "turnout.errors",
    "TurnoutValueError": "turnout.errors",
    "UnauthenticatedError": "turnout.errors",
    "UnavailableError": "turnout.errors",
    "UnimplementedError": "turnout.errors",
    "__version__": "turnout._internal.version",
    "accept_batch": "turnout.batching",
    "autoscaling_status": "turnout.api",
    "connect": "turnout.api",
    "context": "turnout.batching",
    "create_backend": "turnout.api",
    "create_endpoint": "turnout.api",
    "delete_backend": "turnout.api",
    "delete_endpoint": "turnout.api",
    "endpoint_stats": "turnout.api",
    "get_backend_config": "turnout.api",
    "get_handle": "turnout.api",
    "sse_event": "turnout._internal.sse",
    "init": "turnout.api",
    "list_backends": "turnout.api",
    "list_endpoints": "turnout.api",
    "list_replicas": "turnout.api",
    "list_rollouts": "turnout.api",
    "get_rollout": "turnout.api",
    "rollout": "turnout.api",
    "set_traffic": "turnout.api",
    "shadow_traffic": "turnout.api",
    "shutdown": "turnout.api",
    "start": "turnout.api",
    "stat": "turnout.api",
    "update_backend": "turnout.api",
    "update_backend_config": "turnout.api",
    "update_endpoint": "turnout.api",
}

__all__ = [
    "AlreadyExistsError",
    "BackendConfig",
    "BackendError",
    "CapacityError",
    "DeadlineExceededError",
    "Client",
    "Command",
    "Dashboard",
    "EndpointHandle",
    "EventStream",
    "HandleFuture",
    "HandleIterator",
    "InUseError",
    "InvalidArgumentError",
    "MethodNotFoundError",
    "NotFoundError",
    "NotRunningError",
    "OverloadedError",
    "PermissionDeniedError",
    "ReplicaInfo",
    "Rollout",
    "ReplicaLog",
    "TLSConfig",
    "TokenFileError",
    "TurnoutError",
    "TurnoutValueError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "__version__",
    "accept_batch",
    "autoscaling_status",
    "connect",
    "context",
    "create_backend",
    "create_endpoint",
    "delete_backend",
    "delete_endpoint",
    "endpoint_stats",
    "get_backend_config",
    "get_handle",
    "init",
    "list_backends",
    "list_endpoints",
    "list_replicas",
    "list_rollouts",
    "get_rollout",
    "rollout",
    "set_traffic",
    "shadow_traffic",
    "shutdown",
    "sse_event",
    "start",
    "stat",
    "update_backend",
    "update_backend_config",
    "update_endpoint",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'turnout' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
