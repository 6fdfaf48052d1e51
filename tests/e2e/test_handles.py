"""Python handles: calls, options, pickling, method calls, composition."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Deploy

import turnout


class Inspect:
    """Returns what the handler saw of its request."""

    def __call__(self, request: Any) -> dict[str, Any]:
        return {
            "data": request.data,
            "json": request.json,
            "args": request.args.to_dict(),
            "method": request.method,
            "header": request.headers.get("X-Token"),
            "pid": os.getpid(),
        }

    def double(self, request: Any) -> Any:
        return request.data * 2

    def fail(self, request: Any) -> None:
        raise KeyError("no such thing")


def test_remote_passes_data_and_kwargs(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Inspect)
    handle = client.get_handle(app.backend)
    seen = handle.remote({"a": [1, 2]}, user="ada", n=3).result(timeout=30)
    assert seen["data"] == {"a": [1, 2]} and seen["json"] == {"a": [1, 2]}
    assert seen["args"] == {"user": "ada", "n": 3}
    assert seen["method"] == "GET"
    assert handle.remote().result(timeout=30)["data"] is None


def test_results_are_python_objects_and_futures_are_awaitable(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(Inspect)
    doubler = client.get_handle(app.backend).options(method_name="double")
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = doubler.remote(array).result(timeout=30)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    np.testing.assert_array_equal(result, array * 2)

    async def gather() -> list[Any]:
        return list(await asyncio.gather(*(doubler.remote(i) for i in range(10))))

    assert asyncio.run(gather()) == [i * 2 for i in range(10)]


def test_options_make_new_handles(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Inspect)
    plain = client.get_handle(app.backend)
    posted = plain.options(http_method="post", http_headers={"X-Token": "t1"})
    seen = posted.remote().result(timeout=30)
    assert (seen["method"], seen["header"]) == ("POST", "t1")
    assert plain.remote().result(timeout=30)["method"] == "GET"
    # The method name positionally, as Ray Serve 0.8 and 1.0 take it.
    assert plain.options("double").remote(21).result(timeout=30) == 42
    with pytest.raises(turnout.InvalidArgumentError):
        plain.options(http_method="FETCH")
    with pytest.raises(TypeError):
        plain.options(shard_key=42)  # type: ignore[call-overload]


def test_errors_through_handles(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Inspect)
    handle = client.get_handle(app.backend)
    with pytest.raises(turnout.BackendError) as info:
        handle.options(method_name="fail").remote().result(timeout=30)
    assert info.value.remote_type == "KeyError"
    assert "no such thing" in info.value.remote_message
    assert "Traceback" in info.value.remote_traceback and "def fail" not in str(info.value)
    with pytest.raises(turnout.MethodNotFoundError):
        handle.options(method_name="nope").remote().result(timeout=30)
    with pytest.raises(turnout.NotFoundError):
        client.get_handle("no-such-endpoint")


def test_missing_ok_handle_waits_for_its_endpoint(client: turnout.Client, unique: Any) -> None:
    name = unique("late")
    handle = client.get_handle(name, missing_ok=True)
    client.create_backend(name, Inspect)
    # remote() returns at once (it never holds the caller's thread or event
    # loop); the call waits inside its future for the endpoint to appear.
    pending = handle.remote(5)
    assert not pending.done()
    client.create_endpoint(name, name)
    assert pending.result(timeout=30)["data"] == 5
    assert handle.remote(6).result(timeout=30)["data"] == 6


def test_a_call_to_an_endpoint_that_never_appears_fails_in_its_future(
    client: turnout.Client, unique: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from turnout import _handle_router

    monkeypatch.setattr(_handle_router, "ENDPOINT_WAIT_S", 0.5)
    handle = client.get_handle(unique("never"), missing_ok=True)
    with pytest.raises(turnout.NotFoundError, match="does not exist"):
        handle.remote().result(timeout=30)
    # A shorter timeout of the call's own ends the wait first.
    monkeypatch.setattr(_handle_router, "ENDPOINT_WAIT_S", 30.0)
    with pytest.raises(turnout.DeadlineExceededError):
        handle.options(timeout=0.5).remote().result(timeout=30)


def test_a_call_whose_awaiting_task_was_cancelled_leaves_the_router_working(
    client: turnout.Client, unique: Any
) -> None:
    # asyncio.wait_for cancels the awaited handle future; when that call later
    # expires, the router must not fail on it (and then expire nothing more).
    handle = client.get_handle(unique("never"), missing_ok=True).options(timeout=0.5)

    async def give_up_early() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(handle.remote(), 0.05)

    asyncio.run(give_up_early())
    time.sleep(1.0)  # the cancelled call's own timeout passes
    with pytest.raises(turnout.DeadlineExceededError):
        handle.remote().result(timeout=30)


def test_handles_pickle_and_follow_the_shard_key(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Inspect, config={"num_replicas": 3})
    handle = pickle.loads(pickle.dumps(client.get_handle(app.backend)))
    for key in ("alice", "bob", "carol", "dave"):
        pinned = handle.options(shard_key=key)
        assert len({pinned.remote().result(timeout=30)["pid"] for _ in range(5)}) == 1


# ---- composition -------------------------------------------------------------


def preprocess(request: Any) -> list[float]:
    return [float(v) / 10 for v in request.data]


class Model:
    def __call__(self, request: Any) -> float:
        return round(float(sum(request.data)), 6)


def reject(request: Any) -> None:
    raise ValueError(f"cannot score {request.data!r}")


class SyncPipeline:
    def __init__(self, pre: turnout.EndpointHandle, model: turnout.EndpointHandle) -> None:
        self.pre, self.model = pre, model

    def __call__(self, request: Any) -> dict[str, Any]:
        values = [int(v) for v in request.args["values"].split(",")]
        features = self.pre.remote(values).result(timeout=30)
        return {"score": self.model.remote(features).result(timeout=30)}


class AsyncPipeline(SyncPipeline):
    async def __call__(self, request: Any) -> dict[str, Any]:  # type: ignore[override]
        values = [int(v) for v in request.args["values"].split(",")]
        features = await self.pre.remote(values)
        return {"score": await self.model.remote(features)}

    async def checked(self, request: Any) -> dict[str, Any]:
        try:
            await self.model.remote(request.data)
        except turnout.BackendError as exc:
            return {"type": exc.remote_type, "message": exc.remote_message,
                    "traceback": "Traceback" in exc.remote_traceback}  # fmt: skip
        return {}


@pytest.mark.parametrize("pipeline", [SyncPipeline, AsyncPipeline])
def test_composition_under_concurrency(
    client: turnout.Client, deploy: Deploy, pipeline: type[SyncPipeline]
) -> None:
    pre = deploy(preprocess, config={"num_replicas": 2})
    model = deploy(Model, config={"num_replicas": 2})
    app = deploy(
        pipeline,
        client.get_handle(pre.backend),
        client.get_handle(model.backend),
        config={"num_replicas": 2, "max_concurrent_queries": 4},
    )

    def score(i: int) -> tuple[int, Any]:
        reply = requests.get(app.url, params={"values": f"{i},{i + 1},10"}, timeout=60)
        return reply.status_code, reply.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(score, range(40)))
    assert results == [(200, {"score": round((2 * i + 11) / 10, 6)}) for i in range(40)]


def test_errors_cross_composition_with_type_and_traceback(
    client: turnout.Client, deploy: Deploy
) -> None:
    pre = deploy(preprocess)
    broken = deploy(reject)
    app = deploy(AsyncPipeline, client.get_handle(pre.backend), client.get_handle(broken.backend))
    handle = client.get_handle(app.backend).options(method_name="checked")
    assert handle.remote([1, 2]).result(timeout=30) == {
        "type": "ValueError",
        "message": "cannot score [1, 2]",
        "traceback": True,
    }
    # Not caught upstream: the HTTP client sees a 500 naming the error.
    reply = requests.get(app.url, params={"values": "1,2"})
    assert reply.status_code == 500
    assert reply.json()["error"] == "BackendError"
    assert "ValueError: cannot score" in reply.json()["message"]
