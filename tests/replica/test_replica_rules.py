"""What the runtime calls and how (no sockets): handlers without a request,
lifecycle methods, the HTTP allow-list, live limits, stuck calls, and load
errors that say where and why."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import turnout
from turnout.replica.runtime import BackendRuntime, LoadError, MethodNotFound
from turnout.replica.slots import Slots
from turnout.v1 import controller_pb2


def create_request(
    target: Any = None,
    *,
    import_path: str = "",
    http_call_methods: list[str] | None = None,
    **config: Any,
) -> controller_pb2.CreateBackendRequest:
    spec = controller_pb2.BackendSpec()
    if import_path:
        spec.import_path = import_path
    else:
        spec.pickled_callable = cloudpickle.dumps(target)
    message = controller_pb2.BackendConfig(**config)
    if http_call_methods is not None:
        message.http_call_methods.SetInParent()
        message.http_call_methods.names.extend(http_call_methods)
    return controller_pb2.CreateBackendRequest(tag="backend", spec=spec, config=message)


@pytest.fixture
def load() -> Iterator[Callable[..., BackendRuntime]]:
    loaded: list[BackendRuntime] = []

    def load(*args: Any, **kwargs: Any) -> BackendRuntime:
        loaded.append(BackendRuntime.load(create_request(*args, **kwargs)))
        return loaded[-1]

    yield load
    for runtime in loaded:
        runtime.close()


Load = Callable[..., BackendRuntime]


def call(runtime: BackendRuntime, request: Any = None, method: str = "", web: bool = False) -> Any:
    return asyncio.run(runtime.handle(method, request, web))


def load_error(*args: Any, **kwargs: Any) -> LoadError:
    with pytest.raises(LoadError) as raised:
        BackendRuntime.load(create_request(*args, **kwargs)).close()
    assert raised.value.code == "INVALID_ARGUMENT"
    return raised.value


# --- handlers without a request parameter (Ray Serve calls them without one) ---


def no_arg() -> str:
    return "no request"


async def async_no_arg() -> str:
    return "async, no request"


def optional_arg(request: Any = None) -> Any:
    return request


class NoArgs:
    def __call__(self) -> str:
        return "call"

    async def ping(self) -> str:
        return "pong"

    def echo(self, request: Any) -> Any:
        return request

    def rest(self, *args: Any) -> Any:
        return args

    @turnout.accept_batch
    def batch(self, requests: list[Any]) -> list[int]:
        return [len(requests)] * len(requests)


def test_handlers_without_a_positional_parameter_get_no_request(load: Load) -> None:
    assert call(load(no_arg), "ignored") == "no request"
    assert call(load(async_no_arg), "ignored") == "async, no request"
    # Any positional parameter takes the request, with a default or not.
    assert call(load(optional_arg), "req") == "req"
    runtime = load(NoArgs)
    assert call(runtime, "ignored") == "call"
    assert call(runtime, "ignored", method="ping") == "pong"
    assert call(runtime, "req", method="echo") == "req"
    assert call(runtime, "req", method="rest") == ("req",)
    assert call(runtime, "one", method="batch") == 1


# --- lifecycle methods and the HTTP allow-list ---------------------------------


class Model:
    def __init__(self) -> None:
        self.config: Any = "initial"

    def __call__(self, request: Any) -> str:
        return "called"

    def predict(self, request: Any) -> str:
        return "predicted"

    def admin(self, request: Any) -> Any:
        return self.config

    def reconfigure(self, config: Any) -> None:
        self.config = config

    def check_health(self) -> None:
        pass

    def __del__(self) -> None:
        pass


@pytest.mark.parametrize(
    "name", ["reconfigure", "check_health", "__init__", "__del__", "__getattribute__"]
)
@pytest.mark.parametrize("web", [True, False])
def test_lifecycle_methods_are_never_called_for_a_request(load: Load, name: str, web: bool) -> None:
    runtime = load(Model)
    with pytest.raises(MethodNotFound, match=repr(name)):
        call(runtime, {"changed": True}, method=name, web=web)
    assert call(runtime, method="admin") == "initial"


def test_http_call_methods_limit_http_requests_but_not_handles(load: Load) -> None:
    runtime = load(Model, http_call_methods=["predict"])
    assert call(runtime, method="predict", web=True) == "predicted"
    for name in ("", "__call__", "admin"):
        with pytest.raises(MethodNotFound, match="http_call_methods"):
            call(runtime, method=name, web=True)
    assert call(runtime, method="admin") == "initial"
    assert call(runtime) == "called"


def test_http_call_methods_naming_what_the_class_lacks_is_refused_at_load() -> None:
    assert "'missing'" in load_error(Model, http_call_methods=["predict", "missing"]).message
    assert "function" in load_error(no_arg, http_call_methods=["predict"]).message


# --- live limits -----------------------------------------------------------------


class Batched:
    @turnout.accept_batch
    def __call__(self, requests: list[Any]) -> list[int]:
        return [len(requests)] * len(requests)


def test_resize_changes_batches_of_a_live_runtime(load: Load) -> None:
    runtime = load(Batched, max_batch_size=2, batch_wait_timeout=5.0)

    async def sizes(count: int) -> list[int]:
        return list(await asyncio.gather(*(runtime.handle("", i) for i in range(count))))

    async def scenario() -> tuple[list[int], list[int]]:
        before = await sizes(4)
        runtime.resize(max_batch_size=4)
        return before, await sizes(4)

    assert asyncio.run(scenario()) == ([2, 2, 2, 2], [4, 4, 4, 4])
    with pytest.raises(LoadError, match=">= 1"):
        runtime.resize(max_concurrent_queries=0)


def test_resize_of_a_runtime_without_batch_handlers_is_refused(load: Load) -> None:
    runtime = load(no_arg)
    with pytest.raises(LoadError, match="accept_batch"):
        runtime.resize(max_batch_size=2)
    assert runtime.max_batch_size == 1


def test_slots_admit_waiters_when_the_limit_grows() -> None:
    async def scenario() -> list[int]:
        slots = Slots(1)
        release = asyncio.Event()
        seen: list[int] = []

        async def hold() -> None:
            async with slots.hold():
                seen.append(slots.held)
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0)
        admitted_before = slots.held
        slots.resize(3)
        await asyncio.sleep(0)
        admitted_after = slots.held
        release.set()
        await asyncio.gather(*tasks)
        return [admitted_before, admitted_after, slots.held]

    assert asyncio.run(scenario()) == [1, 3, 0]


# --- stuck calls ----------------------------------------------------------------


def block(events: tuple[threading.Event, threading.Event]) -> str:
    started, release = events
    started.set()
    release.wait(30)
    return "done"


def test_a_sync_call_whose_caller_gave_up_counts_as_stuck_until_it_returns(load: Load) -> None:
    started, release = threading.Event(), threading.Event()
    runtime = load(block)

    async def give_up() -> None:
        task = asyncio.create_task(runtime.handle("", (started, release)))
        await asyncio.to_thread(started.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert runtime.stuck_calls(0) == 0
    asyncio.run(give_up())
    assert runtime.stuck_calls(0) == 1
    assert runtime.stuck_calls(3600) == 0  # not stuck for that long yet
    release.set()
    for _ in range(300):
        if runtime.running_in_threads == 0:
            break
        threading.Event().wait(0.01)
    assert runtime.stuck_calls(0) == 0


# --- load errors that say where and why ---------------------------------------------


def test_an_import_error_says_where_the_replica_imported_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    message = load_error(import_path="no_such_module_here:App").message
    assert "No module named 'no_such_module_here'" in message
    assert repr(os.getcwd()) in message and "/somewhere/else" in message
    assert "PYTHONPATH" in message and "directory that holds the module" in message


class Unhealthy:
    def check_health(self) -> None:
        raise RuntimeError("database unreachable")


def test_check_health_at_start_fails_like_a_constructor(load: Load) -> None:
    runtime = load(Unhealthy)
    with pytest.raises(LoadError) as raised:
        asyncio.run(runtime.check_health_at_start(5.0))
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.message == (
        "Unhealthy.check_health raised RuntimeError: database unreachable"
    )
    assert "database unreachable" in raised.value.traceback


class SlowBatch:
    def __init__(self) -> None:
        self.cancelled = 0

    @turnout.accept_batch
    async def __call__(self, requests: list[Any]) -> list[int]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [0] * len(requests)

    @turnout.accept_batch
    async def count(self, requests: list[Any]) -> list[int]:
        return [self.cancelled] * len(requests)


def test_a_batch_is_cancelled_once_every_caller_in_it_gave_up(load: Load) -> None:
    runtime = load(SlowBatch, max_batch_size=2)

    async def scenario() -> int:
        calls = [asyncio.wait_for(runtime.handle("", i), 0.2) for i in range(2)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results)
        seen = 0
        for _ in range(500):  # the cancellation reaches the handler within a few loop turns
            seen = await asyncio.wait_for(runtime.handle("count", None), 5)
            if seen:
                break
            await asyncio.sleep(0.01)
        return seen

    assert asyncio.run(scenario()) == 1
