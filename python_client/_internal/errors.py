"""Turnout's exceptions, and their mapping to gRPC status codes.

::

    TurnoutError
    ├── TurnoutValueError (also ValueError)   bad input, refused before anything changed
    │   ├── AlreadyExistsError                ALREADY_EXISTS: tag, name or route taken
    │   ├── NotFoundError                     NOT_FOUND: no such backend or endpoint
    │   │   └── MethodNotFoundError           the backend has no such method
    │   ├── InUseError                        FAILED_PRECONDITION: e.g. backend used by an endpoint
    │   ├── InvalidArgumentError              INVALID_ARGUMENT: malformed value
    │   └── CapacityError                     RESOURCE_EXHAUSTED: more replicas than max_replicas
    ├── NotRunningError (also ConnectionError) no Turnout instance to talk to
    ├── UnavailableError                      no running replica, or it could not be reached
    │   └── OverloadedError                   every replica full and the queue too (HTTP 503)
    ├── DeadlineExceededError (also TimeoutError) the call's timeout passed (HTTP 504)
    ├── UnauthenticatedError (also PermissionError) UNAUTHENTICATED: no valid token
    ├── PermissionDeniedError (also PermissionError) PERMISSION_DENIED: role or instance refuses
    ├── UnimplementedError                    UNIMPLEMENTED: not built yet
    └── BackendError                          a handler raised; carries the remote traceback

Wrong argument *types* raise the built-in ``TypeError``. The controller's core
raises these classes; its gRPC servicer maps them to status codes with
``STATUS_FOR``, and the client maps status codes back with ``error_from_status``.
"""

from __future__ import annotations

import grpc


class TurnoutError(Exception):
    """Base class of every error Turnout raises on purpose."""


class TurnoutValueError(TurnoutError, ValueError):
    """A request was refused because of its content; nothing changed."""


class AlreadyExistsError(TurnoutValueError):
    """A backend tag, endpoint name or route is already taken."""


class NotFoundError(TurnoutValueError):
    """No backend or endpoint has that name."""


class MethodNotFoundError(NotFoundError):
    """A handle or the X-Serve-Call-Method header named a method the backend lacks."""


class InUseError(TurnoutValueError):
    """The object is still needed, e.g. a backend an endpoint sends traffic to."""


class InvalidArgumentError(TurnoutValueError):
    """A value is malformed or out of range."""


class CapacityError(TurnoutValueError):
    """The instance would run more replicas than its ``max_replicas`` allows
    (all backends together); nothing was started."""


class NotRunningError(TurnoutError, ConnectionError):
    """No Turnout instance answers at the address."""


class UnavailableError(TurnoutError):
    """No replica could take the request: none is running, or it could not be reached."""


class OverloadedError(UnavailableError):
    """Every replica had max_concurrent_queries in flight and the queue was full,
    or the call waited longer than queue_timeout. Try again later."""


class DeadlineExceededError(TurnoutError, TimeoutError):
    """The call's timeout passed before the backend answered; the replica was told
    to cancel it."""


class UnimplementedError(TurnoutError, NotImplementedError):
    """The controller does not implement this call yet."""


class UnauthenticatedError(TurnoutError, PermissionError):
    """The call carried no valid token of the instance; the message says how to
    pass one (``Client(..., token=...)``, ``$TURNOUT_TOKEN``, ``turnout token``)."""


class PermissionDeniedError(TurnoutError, PermissionError):
    """The token is valid but its role does not grant the call (e.g. an admin
    call from code running in a replica, which never holds the admin token),
    or the instance refuses it: a backend sent as pickled code to an instance
    started with ``--no-allow-pickled-code``."""


class TokenFileError(InvalidArgumentError):
    """A token or credentials file that cannot be read, or that group or
    others may read (it is then refused, as ssh refuses such a key)."""


class BackendError(TurnoutError):
    """A backend's handler raised.

    ``remote_type`` is the exception class name, ``remote_message`` its
    message and ``remote_traceback`` the traceback formatted on the replica.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


STATUS_FOR: dict[type[TurnoutError], grpc.StatusCode] = {
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    InUseError: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    CapacityError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    NotRunningError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}

_ERROR_FOR = {code: cls for cls, code in STATUS_FOR.items()}


def status_for(error: TurnoutError) -> grpc.StatusCode:
    """The gRPC status code that carries ``error``."""
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


def error_from_status(code: grpc.StatusCode, details: str) -> TurnoutError:
    """The exception a client raises for a failed call."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        # gRPC's own size limit, not Turnout's capacity: the request was too big.
        return InvalidArgumentError(f"the call is too large for the server: {details}")
    cls = _ERROR_FOR.get(code, TurnoutError)
    return cls(details)
