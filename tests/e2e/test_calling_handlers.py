"""How replicas call user code, through the public API and real processes:
handlers without a request, NumPy answers, limits changed on live replicas,
lifecycle methods and the HTTP allow-list, stuck handlers, and errors that
say what and where."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Deploy, wait_until
from test_recovery import Durable

import turnout

# ---- handlers without a request parameter (as Ray Serve calls them) ----------


def no_request() -> str:
    return "no request"


class NoRequest:
    def __call__(self) -> str:
        return "call"

    async def ping(self) -> str:
        return "pong"


def test_handlers_without_a_request_parameter_are_called_without_one(
    client: turnout.Client, deploy: Deploy
) -> None:
    function = deploy(no_request)
    assert requests.get(function.url).text == "no request"
    assert client.get_handle(function.backend).remote().result(timeout=30) == "no request"
    cls = deploy(NoRequest)
    assert requests.get(cls.url).text == "call"
    assert requests.get(cls.url, headers={"X-Serve-Call-Method": "ping"}).text == "pong"
    handle = client.get_handle(cls.backend)
    assert handle.remote(data=1).result(timeout=30) == "call"
    assert handle.options(method_name="ping").remote().result(timeout=30) == "pong"


# ---- NumPy in answers --------------------------------------------------------------


def predict(request: Any) -> Any:
    import numpy as np

    return {"label": np.int64(1), "scores": np.array([0.25, 0.75], dtype=np.float32)}


def test_numpy_values_answer_json(deploy: Deploy) -> None:
    reply = requests.get(deploy(predict).url)
    assert reply.status_code == 200
    assert reply.json() == {"label": 1, "scores": [0.25, 0.75]}


# ---- limits changed on the running replicas ------------------------------------


class BatchSizes:
    @turnout.accept_batch
    def __call__(self, requests: list[Any]) -> list[int]:
        return [len(requests)] * len(requests)


class Meeting:
    """Each call waits (a while at most) until ``size`` calls have been inside
    at once, and answers the most it has seen inside."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.lock = threading.Condition()

    def __call__(self, request: Any) -> int:
        size = int(request.args["size"])
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.lock.notify_all()
            self.lock.wait_for(lambda: self.most >= size, timeout=10)
            self.inside -= 1
            return self.most


def _replicas(client: turnout.Client, backend: str) -> list[tuple[str, int]]:
    return sorted((r.replica_id, r.pid) for r in client.list_replicas(backend))


def test_batch_limits_change_on_the_running_replicas(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(BatchSizes, config={"max_batch_size": 2, "batch_wait_timeout": 5})
    handle = client.get_handle(app.backend)
    before = _replicas(client, app.backend)
    assert [f.result(timeout=30) for f in [handle.remote(i) for i in range(4)]] == [2] * 4
    client.update_backend_config(app.backend, {"max_batch_size": 4})
    assert _replicas(client, app.backend) == before
    assert [f.result(timeout=30) for f in [handle.remote(i) for i in range(4)]] == [4] * 4
    assert client.get_backend_config(app.backend).max_batch_size == 4


def test_max_concurrent_queries_changes_on_the_running_replicas(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(Meeting, config={"max_concurrent_queries": 1})
    before = _replicas(client, app.backend)
    client.update_backend_config(app.backend, {"max_concurrent_queries": 3})
    assert _replicas(client, app.backend) == before
    # Three HTTP requests at once now meet inside the same replica.
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: requests.get(app.url, params={"size": 3}), range(3)))
    assert [r.json() for r in replies] == [3, 3, 3]
    # And five calls from a handle, once the limit is five.
    client.update_backend_config(app.backend, {"max_concurrent_queries": 5})
    handle = client.get_handle(app.backend)
    assert [f.result(timeout=30) for f in [handle.remote(size=5) for _ in range(5)]] == [5] * 5
    assert _replicas(client, app.backend) == before


def batch_sizes_class() -> type:
    """BatchSizes, defined here so that it travels by value (a durable
    controller's replicas cannot import the test modules)."""

    class BatchSizesByValue:
        @turnout.accept_batch
        def __call__(self, requests: list[Any]) -> list[int]:
            return [len(requests)] * len(requests)

    return BatchSizesByValue


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Durable]:
    instance = Durable(tmp_path)
    try:
        yield instance
    finally:
        instance.cleanup()


def test_a_live_limit_change_is_kept_by_adoption_and_by_restarts(durable: Durable) -> None:
    client = durable.start()
    client.create_backend(
        "b", batch_sizes_class(), config={"max_batch_size": 2, "batch_wait_timeout": 5}
    )
    client.create_endpoint("b", "b")
    before = _replicas(client, "b")
    client.update_backend_config("b", {"max_batch_size": 4})
    durable.kill_controller()
    client = durable.start()
    # The restarted controller adopts the replica changed in place.
    assert _replicas(client, "b") == before
    handle = client.get_handle("b")
    assert [f.result(timeout=30) for f in [handle.remote(i) for i in range(4)]] == [4] * 4
    # A replica started later reads the new limit too.
    os.kill(before[0][1], signal.SIGKILL)
    wait_until(lambda: _running_pid(client, "b") not in (0, before[0][1]), timeout=60)
    assert [f.result(timeout=30) for f in [handle.remote(i) for i in range(4)]] == [4] * 4


# ---- lifecycle methods and the HTTP allow-list -----------------------------------


class Guarded:
    def __init__(self) -> None:
        self.config: Any = "initial"

    def __call__(self, request: Any) -> Any:
        return {"config": self.config}

    def predict(self, request: Any) -> str:
        return "predicted"

    def reconfigure(self, config: Any) -> None:
        self.config = config

    def check_health(self) -> None:
        pass


def test_lifecycle_methods_are_never_callable_by_requests(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(Guarded, methods=["GET", "POST"])
    handle = client.get_handle(app.backend)
    for name in ("reconfigure", "check_health", "__init__", "__del__"):
        reply = requests.post(app.url, json={"evil": 1}, headers={"X-Serve-Call-Method": name})
        assert reply.status_code == 404, name
        assert reply.json()["error"] == "MethodNotFound"
        with pytest.raises(turnout.MethodNotFoundError):
            handle.options(method_name=name).remote({"evil": 1}).result(timeout=30)
    assert requests.get(app.url).json() == {"config": "initial"}


def test_http_call_methods_limit_what_http_may_call(client: turnout.Client, deploy: Deploy) -> None:
    app = deploy(Guarded, config={"http_call_methods": ["predict"]})
    call_predict = {"X-Serve-Call-Method": "predict"}
    assert requests.get(app.url, headers=call_predict).text == "predicted"
    refused = requests.get(app.url)
    assert refused.status_code == 404 and refused.json()["error"] == "MethodNotFound"
    # Handles are Python code of the same instance: not limited.
    assert client.get_handle(app.backend).remote().result(timeout=30) == {"config": "initial"}

    client.update_backend_config(app.backend, {"http_call_methods": ["__call__"]})
    # The list is replaced, not appended to.
    assert client.get_backend_config(app.backend).http_call_methods == ["__call__"]
    assert requests.get(app.url).json() == {"config": "initial"}
    assert requests.get(app.url, headers=call_predict).status_code == 404

    with pytest.raises(turnout.InvalidArgumentError, match="reconfigure"):
        client.update_backend_config(app.backend, {"http_call_methods": ["reconfigure"]})
    with pytest.raises(turnout.InvalidArgumentError, match="missing"):
        client.update_backend_config(app.backend, {"http_call_methods": ["missing"]})
    assert client.get_backend_config(app.backend).http_call_methods == ["__call__"]


# ---- a stuck handler ---------------------------------------------------------------


class Stuck:
    def __call__(self, request: Any) -> int:
        if request.args.get("hang"):
            time.sleep(10**6)
        return os.getpid()


def _running_pid(client: turnout.Client, backend: str) -> int:
    running = [r.pid for r in client.list_replicas(backend) if r.state == "RUNNING"]
    return running[0] if running else 0


def test_a_replica_with_a_stuck_handler_is_replaced(client: turnout.Client, unique: Any) -> None:
    name = unique("stuck")
    client.create_backend(
        name,
        Stuck,
        config={"health_check_period": 1, "health_check_failure_threshold": 1},
        replica_options={"env": {"TURNOUT_STUCK_CALL_GRACE_S": "0.5"}},
    )
    client.create_endpoint(name, name, route=f"/{name}")
    url = f"{client.http_address}/{name}"
    old = requests.get(url).json()
    reply = requests.get(url, params={"hang": 1}, headers={"X-Serve-Timeout-Ms": "300"})
    assert reply.status_code == 504
    wait_until(lambda: _running_pid(client, name) not in (0, old), timeout=60)
    assert requests.get(url).json() == _running_pid(client, name)


# ---- errors that say what and where ------------------------------------------------


def test_a_handler_traceback_names_the_users_file_and_line(
    client: turnout.Client, unique: Any
) -> None:
    def divide(request: Any) -> float:  # defined here, so sent by value
        return 1 / 0

    name = unique("divide")
    client.create_backend(name, divide)
    client.create_endpoint(name, name)
    with pytest.raises(turnout.BackendError) as raised:
        client.get_handle(name).remote().result(timeout=30)
    where = f'File "{__file__}", line {divide.__code__.co_firstlineno + 1}, in divide'
    assert where in raised.value.remote_traceback
    assert "<dynamic-code>" not in raised.value.remote_traceback
    (replica,) = client.list_replicas(name)
    assert where in Path(replica.log_path).read_text()


def test_an_import_error_says_where_the_replica_imported_from(
    client: turnout.Client, unique: Any
) -> None:
    with pytest.raises(turnout.InvalidArgumentError) as raised:
        client.create_backend(unique("nowhere"), "no_such_module_anywhere:App")
    message = str(raised.value)
    assert "No module named 'no_such_module_anywhere'" in message
    assert "working directory" in message and "PYTHONPATH" in message


class SickAtStart:
    def check_health(self) -> None:
        raise RuntimeError("database unreachable")

    def __call__(self, request: Any) -> str:
        return "never served"


def test_a_failing_check_health_refuses_the_backend_like_its_constructor(
    client: turnout.Client, unique: Any
) -> None:
    name = unique("sick")
    with pytest.raises(
        turnout.InvalidArgumentError,
        match="SickAtStart.check_health raised RuntimeError: database unreachable",
    ):
        client.create_backend(name, SickAtStart)
    assert name not in client.list_backends()


def read_json(request: Any) -> Any:
    return request.json


def test_a_malformed_json_body_is_a_camel_case_bad_request(deploy: Deploy) -> None:
    app = deploy(read_json, methods=["POST"])
    reply = requests.post(app.url, data=b"{oops", headers={"Content-Type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"] == "BadRequest"
