"""Turnout: serve Python functions and classes, with weighted traffic between backends.

Example::

    import requests
    import turnout as serve

    serve.init()
    serve.create_backend("hello", lambda request: "hello world")
    serve.create_endpoint("hello", "hello", route="/hello")
    print(requests.get("http://127.0.0.1:8000/hello").text)
"""

from turnout._grpc import TLSConfig
from turnout._version import __version__
from turnout.api import (
    connect,
    create_backend,
    create_endpoint,
    delete_backend,
    delete_endpoint,
    endpoint_stats,
    get_backend_config,
    get_handle,
    init,
    list_backends,
    list_endpoints,
    list_replicas,
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
from turnout.client import Client, ReplicaInfo
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
from turnout.handle import EndpointHandle, HandleFuture

__all__ = [
    "AlreadyExistsError",
    "BackendConfig",
    "BackendError",
    "CapacityError",
    "DeadlineExceededError",
    "Client",
    "EndpointHandle",
    "HandleFuture",
    "InUseError",
    "InvalidArgumentError",
    "MethodNotFoundError",
    "NotFoundError",
    "NotRunningError",
    "OverloadedError",
    "PermissionDeniedError",
    "ReplicaInfo",
    "TLSConfig",
    "TokenFileError",
    "TurnoutError",
    "TurnoutValueError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "__version__",
    "accept_batch",
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
    "set_traffic",
    "shadow_traffic",
    "shutdown",
    "start",
    "stat",
    "update_backend",
    "update_backend_config",
    "update_endpoint",
]
