"""Loading a backend and calling its handlers (no sockets)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from turnout.replica.runtime import BackendRuntime, LoadError, MethodNotFound
from turnout.v1 import controller_pb2


def create_request(
    target: object = None,
    *,
    import_path: str = "",
    pickled: bytes = b"",
    init_args: tuple[Any, ...] | None = None,
    init_args_json: str = "",
    max_concurrent_queries: int | None = None,
    user_config_json: str | None = None,
) -> controller_pb2.CreateBackendRequest:
    spec = controller_pb2.BackendSpec(init_args_json=init_args_json)
    if import_path:
        spec.import_path = import_path
    elif pickled:
        spec.pickled_callable = pickled
    elif target is not None:
        spec.pickled_callable = cloudpickle.dumps(target)
    if init_args is not None:
        spec.pickled_init_args = cloudpickle.dumps(init_args)
    config = controller_pb2.BackendConfig()
    if max_concurrent_queries is not None:
        config.max_concurrent_queries = max_concurrent_queries
    if user_config_json is not None:
        config.user_config_json = user_config_json
    return controller_pb2.CreateBackendRequest(tag="backend", spec=spec, config=config)


@pytest.fixture
def load() -> Iterator[Callable[..., BackendRuntime]]:
    """Loads runtimes from create_request() arguments and closes them afterwards."""
    loaded: list[BackendRuntime] = []

    def load(*args: Any, **kwargs: Any) -> BackendRuntime:
        loaded.append(BackendRuntime.load(create_request(*args, **kwargs)))
        return loaded[-1]

    yield load
    for runtime in loaded:
        runtime.close()


Load = Callable[..., BackendRuntime]


def call(runtime: BackendRuntime, request: object = None, method_name: str = "") -> Any:
    return asyncio.run(runtime.handle(method_name, request))


def load_error(*args: Any, **kwargs: Any) -> LoadError:
    with pytest.raises(LoadError) as raised:
        BackendRuntime.load(create_request(*args, **kwargs)).close()
    assert raised.value.code == "INVALID_ARGUMENT"
    return raised.value


# --- backends used below ------------------------------------------------------


def echo(request: object) -> object:
    return ("echo", request)


class Counter:
    def __init__(self, start: int = 0, step: int = 1) -> None:
        self.count = start
        self.step = step

    def __call__(self, request: object) -> int:
        self.count += self.step
        return self.count

    def predict(self, request: object) -> str:
        return f"predict {request}"

    def _secret(self, request: object) -> str:
        return "secret"


class NoCall:
    def predict(self, request: object) -> str:
        return "predicted"


class Broken:
    def __init__(self) -> None:
        1 / 0  # noqa: B018


# --- functions and classes ----------------------------------------------------


def test_function_backend_gets_the_request_and_returns_its_value(load: Load) -> None:
    runtime = load(echo)
    assert call(runtime, "hello") == ("echo", "hello")


def test_class_is_constructed_once_and_keeps_state_across_calls(load: Load) -> None:
    runtime = load(Counter)
    assert [call(runtime) for _ in range(3)] == [1, 2, 3]


def test_init_args_by_pickle_may_be_any_python_objects(load: Load) -> None:
    class Holder:
        def __init__(self, items: set[int], scale: float) -> None:
            self.items, self.scale = items, scale

        def __call__(self, request: object) -> tuple[set[int], float]:
            return self.items, self.scale

    runtime = load(Holder, init_args=({1, 2}, 0.5))
    assert call(runtime) == ({1, 2}, 0.5)


def test_init_args_by_json(load: Load) -> None:
    runtime = load(Counter, init_args_json="[10, 5]")
    assert call(runtime) == 15
    assert call(runtime) == 20


def test_class_from_import_path_in_the_working_directory(
    load: Load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "replica_test_model.py").write_text(
        textwrap.dedent(
            """
            class Model:
                def __init__(self, greeting):
                    self.greeting = greeting

                def __call__(self, request):
                    return f"{self.greeting}, {request}"
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "replica_test_model", raising=False)
    runtime = load(import_path="replica_test_model:Model", init_args_json='["hi"]')
    assert call(runtime, "ada") == "hi, ada"


def test_import_path_of_a_package_module_and_a_dotted_attribute(load: Load) -> None:
    decoder = load(import_path="json.decoder:JSONDecoder")
    assert call(decoder, '{"a": [1]}', method_name="decode") == {"a": [1]}
    assert call(load(import_path="os:path.basename"), "/models/v2.bin") == "v2.bin"


# --- load errors --------------------------------------------------------------


@pytest.mark.parametrize("path", ["json", "json:", ":dumps", "json:dumps:x"])
def test_malformed_import_path(path: str) -> None:
    assert "package.module:attribute" in load_error(import_path=path).message


def test_module_not_importable() -> None:
    error = load_error(import_path="no_such_module_xyz:handler")
    assert "no_such_module_xyz" in error.message
    assert "ModuleNotFoundError" in error.traceback


def test_module_that_raises_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "replica_test_raises.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    error = load_error(import_path="replica_test_raises:f")
    assert "RuntimeError: boom at import" in error.message
    assert "boom at import" in error.traceback


def test_attribute_missing() -> None:
    error = load_error(import_path="json:no_such_attribute")
    assert error.message == "module 'json' has no attribute 'no_such_attribute'"


def test_not_callable() -> None:
    assert "not float" in load_error(import_path="math:pi").message


def test_function_with_init_args() -> None:
    error = load_error(echo, init_args=(1,))
    assert "echo is a function" in error.message
    assert "echo is a function" in load_error(echo, init_args_json="[1]").message


def test_bad_pickle() -> None:
    error = load_error(pickled=b"not a pickle")
    assert error.message.startswith("cannot unpickle the backend")
    assert error.traceback


def test_both_kinds_of_init_args() -> None:
    error = load_error(Counter, init_args=(1,), init_args_json="[1]")
    assert "at most one" in error.message


@pytest.mark.parametrize("text", ["{bad json", '{"start": 1}'])
def test_init_args_json_must_be_an_array(text: str) -> None:
    assert "init_args_json" in load_error(Counter, init_args_json=text).message


def test_no_source() -> None:
    assert "neither" in load_error().message


def test_constructor_raised_names_the_class_and_keeps_the_traceback() -> None:
    error = load_error(Broken)
    assert error.message == "Broken.__init__ raised ZeroDivisionError: division by zero"
    assert "Traceback" in error.traceback
    assert "1 / 0" in error.traceback


def test_constructor_given_the_wrong_number_of_args() -> None:
    error = load_error(Counter, init_args_json="[1, 2, 3]")
    assert error.message.startswith("Counter.__init__ raised TypeError")


# --- dispatch -----------------------------------------------------------------


def test_method_name_dispatch(load: Load) -> None:
    runtime = load(Counter)
    assert call(runtime, "x", method_name="predict") == "predict x"
    assert call(runtime, method_name="__call__") == 1
    assert call(runtime, method_name="") == 2


@pytest.mark.parametrize("name", ["missing", "_secret", "__init__", "count"])
def test_unknown_or_private_method(load: Load, name: str) -> None:
    runtime = load(Counter)
    with pytest.raises(MethodNotFound, match=repr(name)):
        call(runtime, method_name=name)


def test_class_without_call_serves_its_named_methods_only(load: Load) -> None:
    runtime = load(NoCall)
    assert call(runtime, method_name="predict") == "predicted"
    with pytest.raises(MethodNotFound, match="__call__"):
        call(runtime)


def test_function_has_no_named_methods(load: Load) -> None:
    with pytest.raises(MethodNotFound, match="function"):
        call(load(echo), method_name="predict")


def test_handler_exception_propagates(load: Load) -> None:
    def fails(request: object) -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        call(load(fails))


# --- sync and async handlers --------------------------------------------------


def test_async_function_and_async_method(load: Load) -> None:
    async def double(request: int) -> int:
        await asyncio.sleep(0)
        return request * 2

    class AsyncModel:
        async def __call__(self, request: int) -> int:
            await asyncio.sleep(0)
            return request + 1

        async def predict(self, request: int) -> int:
            return request - 1

    assert call(load(double), 21) == 42
    model = load(AsyncModel)
    assert call(model, 1) == 2
    assert call(model, 1, method_name="predict") == 0


def test_sync_callable_returning_a_coroutine_is_awaited(load: Load) -> None:
    async def later(request: int) -> int:
        return request * 3

    def wrapper(request: int) -> Coroutine[Any, Any, int]:
        return later(request)

    assert call(load(wrapper), 2) == 6


def test_async_handler_runs_on_the_event_loop(load: Load) -> None:
    async def where(request: object) -> int:
        return threading.get_ident()

    assert call(load(where)) == threading.get_ident()


def meet(barrier: threading.Barrier) -> int:
    # Returns only once two calls are in at the same time.
    barrier.wait()
    return threading.get_ident()


def test_sync_handlers_run_off_the_loop_and_concurrently(load: Load) -> None:
    runtime = load(meet)
    barrier = threading.Barrier(2, timeout=10)

    async def both() -> list[Any]:
        return list(await asyncio.gather(*(runtime.handle("", barrier) for _ in range(2))))

    idents = asyncio.run(both())
    assert threading.get_ident() not in idents


@dataclass
class Gauge:
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    peak: int = 0


def occupy(gauge: Gauge) -> None:
    with gauge.lock:
        gauge.running += 1
        gauge.peak = max(gauge.peak, gauge.running)
    time.sleep(0.02)
    with gauge.lock:
        gauge.running -= 1


def test_max_concurrent_queries_of_one_runs_sync_handlers_one_at_a_time(load: Load) -> None:
    runtime = load(occupy, max_concurrent_queries=1)
    gauge = Gauge()

    async def several() -> None:
        await asyncio.gather(*(runtime.handle("", gauge) for _ in range(6)))

    asyncio.run(several())
    assert gauge.peak == 1


def test_user_config_is_passed_to_reconfigure(load: Load) -> None:
    class Configurable:
        def __init__(self) -> None:
            self.threshold = 0.0

        def reconfigure(self, config: dict[str, float]) -> None:
            self.threshold = config["threshold"]

        def __call__(self, request: object) -> float:
            return self.threshold

    runtime = load(Configurable, user_config_json=json.dumps({"threshold": 0.7}))
    assert call(runtime) == 0.7


def test_user_config_needs_a_reconfigure_method() -> None:
    assert "reconfigure" in load_error(Counter, user_config_json="{}").message
    assert "reconfigure" in load_error(echo, user_config_json="{}").message
