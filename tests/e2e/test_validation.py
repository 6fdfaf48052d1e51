"""Every refused admin call: as a Python exception and as a gRPC status code.
A refused call changes nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

import turnout
from turnout._internal import rpc
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc


def hello(request: Any) -> str:
    return "hello"


@pytest.fixture(scope="module")
def stub(client: turnout.Client) -> Iterator[controller_pb2_grpc.ControllerServiceStub]:
    with rpc.channel(
        client.controller_address, rpc.security_for(client.controller_address)
    ) as channel:
        yield controller_pb2_grpc.ControllerServiceStub(channel)


@pytest.fixture(scope="module")
def existing(client: turnout.Client) -> dict[str, str]:
    """A backend and an endpoint (on a route) that the cases collide with."""
    client.create_backend("v-backend", hello)
    client.create_endpoint("v-endpoint", "v-backend", route="/v-route")
    return {"backend": "v-backend", "endpoint": "v-endpoint", "route": "/v-route"}


def status_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    code: grpc.StatusCode = info.value.code()
    return code


def pickled_spec() -> pb.BackendSpec:
    import cloudpickle

    return pb.BackendSpec(pickled_callable=cloudpickle.dumps(hello))


GRPC_CASES: list[tuple[str, grpc.StatusCode, Callable[[Any], Any]]] = [
    (
        "duplicate backend tag, other content",
        grpc.StatusCode.ALREADY_EXISTS,
        lambda s: s.CreateBackend(
            pb.CreateBackendRequest(
                tag="v-backend", spec=pickled_spec(), config=pb.BackendConfig(num_replicas=2)
            )
        ),
    ),
    (
        "duplicate endpoint name",
        grpc.StatusCode.ALREADY_EXISTS,
        lambda s: s.CreateEndpoint(
            pb.CreateEndpointRequest(name="v-endpoint", backend="v-backend")
        ),
    ),
    (
        "duplicate route",
        grpc.StatusCode.ALREADY_EXISTS,
        lambda s: s.CreateEndpoint(
            pb.CreateEndpointRequest(name="other", backend="v-backend", route="/v-route")
        ),
    ),
    (
        "unknown backend",
        grpc.StatusCode.NOT_FOUND,
        lambda s: s.GetBackend(pb.GetBackendRequest(tag="nope")),
    ),
    (
        "endpoint on unknown backend",
        grpc.StatusCode.NOT_FOUND,
        lambda s: s.CreateEndpoint(pb.CreateEndpointRequest(name="e2", backend="nope")),
    ),
    (
        "unknown endpoint",
        grpc.StatusCode.NOT_FOUND,
        lambda s: s.DeleteEndpoint(pb.DeleteEndpointRequest(name="nope")),
    ),
    (
        "delete backend in use",
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda s: s.DeleteBackend(pb.DeleteBackendRequest(tag="v-backend")),
    ),
    (
        "empty backend tag",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateBackend(pb.CreateBackendRequest(tag="", spec=pickled_spec())),
    ),
    (
        "empty endpoint name",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateEndpoint(pb.CreateEndpointRequest(name="", backend="v-backend")),
    ),
    (
        "route without leading slash",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateEndpoint(
            pb.CreateEndpointRequest(name="e3", backend="v-backend", route="simple")
        ),
    ),
    (
        "unknown HTTP method",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateEndpoint(
            pb.CreateEndpointRequest(name="e4", backend="v-backend", methods=["FETCH"])
        ),
    ),
    (
        "endpoint without a backend",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateEndpoint(pb.CreateEndpointRequest(name="e6", route="/e6")),
    ),
    (
        "num_replicas 0",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateBackend(
            pb.CreateBackendRequest(
                tag="zero", spec=pickled_spec(), config=pb.BackendConfig(num_replicas=0)
            )
        ),
    ),
    (
        "function backend given init args",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateBackend(
            pb.CreateBackendRequest(
                tag="fn-args",
                spec=pb.BackendSpec(import_path="importable_backends:shout", init_args_json="[1]"),
            )
        ),
    ),
    (
        "import path that does not import",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateBackend(
            pb.CreateBackendRequest(
                tag="bad-import", spec=pb.BackendSpec(import_path="no_such_module:thing")
            )
        ),
    ),
    (
        "unknown backend interface",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateBackend(
            pb.CreateBackendRequest(
                tag="bad-interface",
                spec=pb.BackendSpec(import_path="importable_backends:shout", interface=9),  # type: ignore[arg-type]
            )
        ),
    ),
    (
        "CORS policy without origins",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.CreateEndpoint(
            pb.CreateEndpointRequest(name="e7", backend="v-backend", cors=pb.CorsPolicy())
        ),
    ),
    (
        "CORS origin with a path",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.UpdateEndpoint(
            pb.UpdateEndpointRequest(
                name="v-endpoint", cors=pb.CorsPolicy(allow_origins=["https://a.example/x"])
            )
        ),
    ),
    (
        "CORS set and cleared at once",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: s.UpdateEndpoint(
            pb.UpdateEndpointRequest(
                name="v-endpoint", cors=pb.CorsPolicy(allow_origins=["*"]), clear_cors=True
            )
        ),
    ),
]


@pytest.mark.parametrize(
    ("case", "code", "call"), GRPC_CASES, ids=[case for case, _, _ in GRPC_CASES]
)
def test_grpc_status_codes(
    client: turnout.Client,
    stub: controller_pb2_grpc.ControllerServiceStub,
    existing: dict[str, str],
    case: str,
    code: grpc.StatusCode,
    call: Callable[[Any], Any],
) -> None:
    before = (client.list_backends(), client.list_endpoints())
    assert status_of(lambda: call(stub)) == code
    assert (client.list_backends(), client.list_endpoints()) == before


PYTHON_CASES: list[tuple[str, type[Exception], Callable[[turnout.Client], Any]]] = [
    (
        "duplicate backend tag, other content",
        turnout.AlreadyExistsError,
        lambda c: c.create_backend("v-backend", hello, config={"max_concurrent_queries": 5}),
    ),
    (
        "duplicate endpoint name",
        turnout.AlreadyExistsError,
        lambda c: c.create_endpoint("v-endpoint", "v-backend"),
    ),
    (
        "duplicate route",
        turnout.AlreadyExistsError,
        lambda c: c.create_endpoint("other", "v-backend", route="/v-route"),
    ),
    ("unknown backend", turnout.NotFoundError, lambda c: c.get_backend_config("nope")),
    (
        "endpoint on unknown backend",
        turnout.NotFoundError,
        lambda c: c.create_endpoint("e2", "nope"),
    ),
    (
        "scale unknown backend",
        turnout.NotFoundError,
        lambda c: c.update_backend_config("nope", {"num_replicas": 2}),
    ),
    ("unknown endpoint", turnout.NotFoundError, lambda c: c.delete_endpoint("nope")),
    ("delete backend in use", turnout.InUseError, lambda c: c.delete_backend("v-backend")),
    ("empty backend tag", turnout.InvalidArgumentError, lambda c: c.create_backend("", hello)),
    (
        "empty endpoint name",
        turnout.InvalidArgumentError,
        lambda c: c.create_endpoint("", "v-backend"),
    ),
    (
        "route without leading slash",
        turnout.InvalidArgumentError,
        lambda c: c.create_endpoint("e3", "v-backend", route="simple"),
    ),
    (
        "unknown HTTP method",
        turnout.InvalidArgumentError,
        lambda c: c.create_endpoint("e4", "v-backend", methods=["FETCH"]),
    ),
    (
        "num_replicas 0",
        turnout.InvalidArgumentError,
        lambda c: c.create_backend("zero", hello, config={"num_replicas": 0}),
    ),
    (
        "unknown config key",
        turnout.InvalidArgumentError,
        lambda c: c.create_backend("typo", hello, config={"num_replica": 2}),
    ),
    (
        "function backend given init args",
        turnout.InvalidArgumentError,
        lambda c: c.create_backend("fn-args", hello, 1, 2),
    ),
    (
        "import path that does not import",
        turnout.InvalidArgumentError,
        lambda c: c.create_backend("bad-import", "no_such_module:thing"),
    ),
    ("tag of wrong type", TypeError, lambda c: c.create_backend(42, hello)),  # type: ignore[arg-type]
    ("backend of wrong type", TypeError, lambda c: c.create_backend("t", 42)),  # type: ignore[arg-type]
    (
        "methods as a str",
        TypeError,
        lambda c: c.create_endpoint("e5", "v-backend", methods="GET"),
    ),
    # As Ray Serve: an endpoint needs a backend to send its traffic to.
    ("endpoint without a backend", TypeError, lambda c: c.create_endpoint("e6", route="/e6")),
    (
        "endpoint with backend=None",
        TypeError,
        lambda c: c.create_endpoint("e7", backend=None, route="/e7"),
    ),
    (
        "num_replicas of wrong type",
        TypeError,
        lambda c: c.create_backend("t2", hello, config={"num_replicas": "2"}),
    ),
]


@pytest.mark.parametrize(
    ("case", "error", "call"), PYTHON_CASES, ids=[case for case, _, _ in PYTHON_CASES]
)
def test_python_exceptions(
    client: turnout.Client,
    existing: dict[str, str],
    case: str,
    error: type[Exception],
    call: Callable[[turnout.Client], Any],
) -> None:
    before = (client.list_backends(), client.list_endpoints())
    with pytest.raises(error) as info:
        call(client)
    if error is not TypeError:
        assert isinstance(info.value, ValueError)
        assert str(info.value)
    assert (client.list_backends(), client.list_endpoints()) == before


def test_constructor_error_names_the_cause(client: turnout.Client) -> None:
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("weights file missing")

        def __call__(self, request: Any) -> str:
            return "never"

    with pytest.raises(turnout.InvalidArgumentError, match="weights file missing"):
        client.create_backend("broken", Broken)
    assert "broken" not in client.list_backends()


_LOCK = threading.Lock()


def test_unpicklable_code_names_the_backend_and_the_object(client: turnout.Client) -> None:
    """cloudpickle says only "cannot pickle '_thread.lock' object"; the error
    says which backend, which object, and what to do instead."""
    lock = threading.Lock()

    def in_closure(request: Any) -> str:
        with lock:
            return "never"

    def locked(request: Any) -> str:
        with _LOCK:
            return "never"

    class Cached:
        cache_lock = threading.Lock()

        def __call__(self, request: Any) -> str:
            return "never"

    class Holder:
        def __init__(self) -> None:
            self.mutex = threading.Lock()

    class Takes:
        def __init__(self, greeting: str, holder: Holder) -> None:
            self.holder = holder

        def __call__(self, request: Any) -> str:
            return "never"

    cases: list[tuple[Any, tuple[Any, ...], str]] = [
        (in_closure, (), "closure variable 'lock' of "),
        (locked, (), "global '_LOCK' used by "),
        (Cached, (), "Cached.cache_lock"),
        (Takes, ("hi", Holder()), "init_args[1].mutex"),
    ]
    for code, init_args, culprit in cases:
        with pytest.raises(TypeError) as info:
            client.create_backend("unpicklable", code, *init_args)
        message = str(info.value)
        assert message.startswith("backend 'unpicklable': cannot pickle "), message
        assert culprit in message and "(a _thread.lock)" in message, message
        assert "cannot pickle '_thread.lock' object" in message
        assert "create such objects in __init__" in message
    assert "unpicklable" not in client.list_backends()


def test_calls_without_an_instance_say_how_to_start_one() -> None:
    with pytest.raises(turnout.NotRunningError, match=r"turnout\.init\(\)"):
        turnout.Client("127.0.0.1:1")


def test_resending_the_same_create_calls_is_harmless(
    client: turnout.Client,
    stub: controller_pb2_grpc.ControllerServiceStub,
    existing: dict[str, str],
) -> None:
    """A client that timed out may retry: the same content succeeds, once."""
    replicas = client.list_replicas("v-backend")
    client.create_backend("v-backend", hello)
    client.create_endpoint("v-endpoint", "v-backend", route="/v-route")
    stub.CreateBackend(pb.CreateBackendRequest(tag="v-backend", spec=pickled_spec()))
    stub.CreateEndpoint(
        pb.CreateEndpointRequest(name="v-endpoint", backend="v-backend", route="/v-route")
    )
    assert client.list_replicas("v-backend") == replicas
    assert list(client.list_endpoints()).count("v-endpoint") == 1
