"""Tests written the way a Ray Serve 0.8 user writes them: module-level calls on
``serve``, a handler, an endpoint, ``requests.get``, a handle.

They are modelled on the cases of Ray Serve 0.8.7's own test_api.py (the same
situations, our own code); the only changes a Ray user makes are the import,
``.result()`` for ``ray.get`` and the instance's HTTP address for
127.0.0.1:8000 (the shared test instance uses a free port).
docs/ray-compatibility.md lists what differs on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import wait_until

import turnout
import turnout as serve


@pytest.fixture
def serve_instance(client: turnout.Client) -> Iterator[str]:
    """The HTTP address of the running instance, which the module functions use."""
    yield client.http_address


def test_function_answers_get_and_post(serve_instance: str, unique: Callable[[str], str]) -> None:
    def function(flask_request: Any) -> dict[str, str]:
        return {"method": flask_request.method}

    name = unique("echo")
    serve.create_backend(name + ":v1", function)
    serve.create_endpoint(name, backend=name + ":v1", route=f"/{name}", methods=["GET", "POST"])

    assert requests.get(f"{serve_instance}/{name}").json()["method"] == "GET"
    assert requests.post(f"{serve_instance}/{name}").json()["method"] == "POST"


def test_call_method_over_http_and_through_a_handle(
    serve_instance: str, unique: Callable[[str], str]
) -> None:
    class CallMethod:
        def method(self, request: Any) -> str:
            return "hello"

    name = unique("call")
    serve.create_backend(name, CallMethod)
    serve.create_endpoint(name, backend=name, route=f"/{name}")

    reply = requests.get(f"{serve_instance}/{name}", headers={"X-SERVE-CALL-METHOD": "method"})
    assert reply.text == "hello"
    handle = serve.get_handle(name)
    assert handle.options(method_name="method").remote().result() == "hello"


def test_endpoint_without_route_is_reached_through_its_handle(
    serve_instance: str, unique: Callable[[str], str]
) -> None:
    def func(_: Any, i: int = 1) -> int:
        return 1

    name = unique("noroute")
    serve.create_backend(name + ":1", func)
    serve.create_endpoint(name, backend=name + ":1")
    assert serve.get_handle(name).remote(i=1).result() == 1
    assert serve.list_endpoints()[name]["route"] is None


def test_duplicates_and_unknown_names_raise_value_error(
    serve_instance: str, unique: Callable[[str], str]
) -> None:
    def f(request: Any) -> None:
        return None

    def g(request: Any) -> None:
        return None

    backend, endpoint = unique("backend"), unique("endpoint")
    serve.create_backend(backend, f)
    with pytest.raises(ValueError):
        serve.create_backend(backend, g)
    serve.create_endpoint(endpoint, backend=backend, route=f"/{endpoint}")
    with pytest.raises(ValueError):
        serve.create_endpoint(unique("other"), backend=backend, route=f"/{endpoint}")
    with pytest.raises(ValueError):
        serve.create_endpoint(endpoint, backend=backend, route=f"/{endpoint}-different")
    with pytest.raises(ValueError):
        serve.set_traffic(endpoint, {"nonexistent_backend": 1.0})
    with pytest.raises(ValueError):
        serve.set_traffic("nonexistent_endpoint_name", {backend: 1.0})


def test_split_traffic_then_delete_the_old_backend_and_reuse_its_tag(
    serve_instance: str, unique: Callable[[str], str]
) -> None:
    def hello(request: Any) -> str:
        return "hello"

    def olleh(request: Any) -> str:
        return "olleh"

    name = unique("delete")
    v1, v2 = name + ":v1", name + ":v2"
    serve.create_backend(v1, hello)
    serve.create_endpoint(name, backend=v1, route=f"/{name}")
    assert requests.get(f"{serve_instance}/{name}").text == "hello"
    with pytest.raises(ValueError):
        serve.delete_backend(v1)  # in use

    serve.create_backend(v2, hello)
    serve.set_traffic(name, {v1: 0.5, v2: 0.5})
    with pytest.raises(ValueError):
        serve.delete_backend(v1)

    serve.set_traffic(name, {v2: 1.0})
    serve.delete_backend(v1)
    with pytest.raises(ValueError):
        serve.set_traffic(name, {v1: 1.0})

    serve.create_backend(v1, olleh)
    serve.set_traffic(name, {v1: 1.0})
    assert requests.get(f"{serve_instance}/{name}").text == "olleh"


def test_scaling_replicas_up_and_down(serve_instance: str, unique: Callable[[str], str]) -> None:
    class Counter:
        def __init__(self) -> None:
            self.count = 0

        def __call__(self, request: Any) -> tuple[int, int]:
            self.count += 1
            return self.count, os.getpid()

    name = unique("counter")
    serve.create_backend(name + ":v1", Counter, config={"num_replicas": 2})
    serve.create_endpoint(name, backend=name + ":v1", route=f"/{name}")

    def pids(count: int) -> set[int]:
        return {requests.get(f"{serve_instance}/{name}").json()[1] for _ in range(count)}

    assert len(pids(20)) == 2  # the load is shared between both replicas
    serve.update_backend_config(name + ":v1", {"num_replicas": 1})
    assert len(pids(10)) == 1  # the one left serves everything once the call returned


def test_user_config_reaches_every_replica(
    serve_instance: str, unique: Callable[[str], str]
) -> None:
    class Counter:
        def __init__(self) -> None:
            self.count = 10

        def __call__(self, request: Any) -> tuple[int, int]:
            return self.count, os.getpid()

        def reconfigure(self, config: dict[str, Any]) -> None:
            self.count = config["count"]

    name = unique("counter")
    config = serve.BackendConfig(num_replicas=2, user_config={"count": 123, "b": 2})
    serve.create_backend(name, Counter, config=config)
    serve.create_endpoint(name, backend=name)
    handle = serve.get_handle(name)

    def check(count: int, num_replicas: int) -> bool:
        results = [handle.remote().result() for _ in range(40)]
        pids = {pid for _, pid in results}
        return {c for c, _ in results} == {count} and len(pids) == num_replicas

    wait_until(lambda: check(123, 2))
    serve.update_backend_config(name, {"num_replicas": 3})
    wait_until(lambda: check(123, 3))
    serve.update_backend_config(name, {"user_config": {"count": 456}})
    wait_until(lambda: check(456, 3))


def test_batching_groups_requests_sent_together(
    serve_instance: str, unique: Callable[[str], str]
) -> None:
    class BatchingExample:
        def __init__(self) -> None:
            self.count = 0

        @serve.accept_batch
        def __call__(self, flask_requests: list[Any]) -> list[int]:
            self.count += 1
            assert serve.context.batch_size == len(flask_requests)
            return [self.count] * len(flask_requests)

    name = unique("batch")
    serve.create_backend(
        name + ":v1", BatchingExample, config={"max_batch_size": 5, "batch_wait_timeout": 1}
    )
    serve.create_endpoint(name, backend=name + ":v1", route=f"/{name}")

    handle = serve.get_handle(name)
    futures = [handle.remote(temp=1) for _ in range(20)]
    # count grows once per batch: any batch of more than one keeps it below 20
    assert max(f.result() for f in futures) < 20


def test_list_endpoints_shows_routes_methods_traffic_and_shadows(
    serve_instance: str, unique: Callable[[str], str]
) -> None:
    def f(request: Any) -> None:
        return None

    b1, b2, b3 = unique("backend"), unique("backend"), unique("backend")
    e1, e2 = unique("endpoint"), unique("endpoint")
    for backend in (b1, b2, b3):
        serve.create_backend(backend, f)
    serve.create_endpoint(e1, backend=b1, route=f"/{e1}", methods=["GET", "POST"])
    serve.create_endpoint(e2, backend=b2, methods=["POST"])
    serve.shadow_traffic(e1, b3, 0.5)

    endpoints = serve.list_endpoints()
    ray_keys = ("route", "methods", "traffic", "shadows")
    assert {k: endpoints[e1][k] for k in ray_keys} == {
        "route": f"/{e1}",
        "methods": ["GET", "POST"],
        "traffic": {b1: 1.0},
        "shadows": {b3: 0.5},
    }
    assert {k: endpoints[e2][k] for k in ray_keys} == {
        "route": None,
        "methods": ["POST"],
        "traffic": {b2: 1.0},
        "shadows": {},
    }
    serve.delete_endpoint(e1)
    assert e1 not in serve.list_endpoints() and e2 in serve.list_endpoints()
