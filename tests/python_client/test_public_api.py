"""The names ``import turnout`` offers are a deliberate list."""

from __future__ import annotations

import grpc
import pytest

import turnout
from turnout.errors import error_from_status, status_for

EXPECTED = {
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
    "TokenFileError",
    "UnauthenticatedError",
    "ReplicaInfo",
    "Rollout",
    "ReplicaLog",
    "TLSConfig",
    "TurnoutError",
    "TurnoutValueError",
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
    "autoscaling_status",
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
}


def test_public_exports() -> None:
    assert set(turnout.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(turnout, name)


def test_value_errors_are_value_errors() -> None:
    for cls in (
        turnout.AlreadyExistsError,
        turnout.NotFoundError,
        turnout.InUseError,
        turnout.InvalidArgumentError,
    ):
        assert issubclass(cls, ValueError)
        assert issubclass(cls, turnout.TurnoutError)


def test_status_codes_map_both_ways() -> None:
    pairs = {
        turnout.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
        turnout.NotFoundError: grpc.StatusCode.NOT_FOUND,
        turnout.InUseError: grpc.StatusCode.FAILED_PRECONDITION,
        turnout.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
        turnout.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    }
    for cls, code in pairs.items():
        assert status_for(cls("x")) == code
        error = error_from_status(code, "details")
        assert type(error) is cls and str(error) == "details"
    assert type(error_from_status(grpc.StatusCode.INTERNAL, "boom")) is turnout.TurnoutError


def test_module_functions_before_init_say_how_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in a fresh interpreter, whatever other tests of this session did.
    monkeypatch.setattr(turnout.api, "_current_name", None)
    with pytest.raises(turnout.NotRunningError, match=r"turnout\.init\(\)"):
        turnout.list_backends()


def test_no_public_function_is_shadowed_by_a_submodule_of_the_same_name() -> None:
    # Importing a submodule sets it as the package's attribute, in place of a
    # lazily imported public name: `turnout.rollout` must stay the function.
    import turnout.client  # noqa: F401  (imports every client module)

    for name in turnout.__all__:
        assert not isinstance(getattr(turnout, name), type(turnout)), name
