"""ReplicaService.Handle answers, called directly (no sockets)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any, NoReturn, cast

import cloudpickle
import grpc
import pytest
from werkzeug.exceptions import abort
from werkzeug.wrappers import Request

from turnout._internal.batching import context
from turnout.replica.runtime import BackendRuntime, LoadedBackend
from turnout.replica.servicer import Context, ReplicaServicer
from turnout.v1 import http_pb2, replica_pb2


class Model:
    def __call__(self, request: Request) -> Any:
        action = request.args.get("action", "echo")
        if action == "raise":
            raise ValueError("model exploded")
        if action == "abort":
            abort(404, description="no such item")
        if action == "set":
            return {1, 2}
        if action == "lock":
            return threading.Lock()
        return {"path": request.path, "data": request.get_json(silent=True)}

    def describe(self, request: Request) -> dict[str, Any]:
        return {"method": request.method, "data": request.data, "args": dict(request.args)}


@pytest.fixture
def servicer() -> Iterator[ReplicaServicer]:
    runtime = BackendRuntime(LoadedBackend(tag="model", target=Model(), is_instance=True), 4)
    yield ReplicaServicer(runtime)
    runtime.close()


class AbortingContext:
    """Stands in for grpc's ServicerContext: no deadline, abort raises."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise RuntimeError(f"{code.name}: {details}")


def handle(servicer: ReplicaServicer, request: replica_pb2.HandleRequest) -> Any:
    context = cast(Context, AbortingContext())
    return asyncio.run(servicer.Handle(request, context))


def http_request(query: str = "", method_name: str = "") -> replica_pb2.HandleRequest:
    return replica_pb2.HandleRequest(
        request_id="req-7",
        method_name=method_name,
        http=http_pb2.HttpRequest(
            method="POST",
            host="localhost",
            path="/items",
            query_string=query,
            headers=[http_pb2.Header(name="Content-Type", value="application/json")],
            body=b'{"x": 1}',
        ),
    )


def call_request(
    data: Any = None, method_name: str = "", **kwargs: Any
) -> replica_pb2.HandleRequest:
    return replica_pb2.HandleRequest(
        request_id="req-8",
        method_name=method_name,
        call=replica_pb2.PythonCall(
            pickled_data=cloudpickle.dumps(data), pickled_kwargs=cloudpickle.dumps(kwargs)
        ),
    )


def body(response: replica_pb2.HandleResponse) -> Any:
    assert response.WhichOneof("result") == "http"
    return json.loads(response.http.body)


# --- HTTP payloads ------------------------------------------------------------


def test_http_request_is_answered_with_json(servicer: ReplicaServicer) -> None:
    response = handle(servicer, http_request())
    assert response.http.status == 200
    assert body(response) == {"path": "/items", "data": {"x": 1}}


def test_http_handler_error_is_a_500_and_the_traceback_is_logged(
    servicer: ReplicaServicer, caplog: pytest.LogCaptureFixture
) -> None:
    response = handle(servicer, http_request("action=raise"))
    assert response.http.status == 500
    assert body(response) == {
        "error": "ValueError",
        "message": "model exploded",
        "request_id": "req-7",
    }
    assert b"Traceback" not in response.http.body
    [record] = [r for r in caplog.records if r.exc_info]
    assert "req-7" in record.getMessage()
    assert "model exploded" in caplog.text
    assert 'raise ValueError("model exploded")' in caplog.text


def test_http_abort_keeps_its_status(servicer: ReplicaServicer) -> None:
    response = handle(servicer, http_request("action=abort"))
    assert response.http.status == 404
    assert body(response)["message"] == "no such item"


def test_http_unknown_method_is_a_404(servicer: ReplicaServicer) -> None:
    response = handle(servicer, http_request(method_name="train"))
    assert response.http.status == 404
    assert body(response)["error"] == "MethodNotFound"
    assert "'train'" in body(response)["message"]


def test_http_unencodable_return_is_a_500(
    servicer: ReplicaServicer, caplog: pytest.LogCaptureFixture
) -> None:
    response = handle(servicer, http_request("action=set"))
    assert response.http.status == 500
    assert body(response)["error"] == "BadReturnValue"
    assert "req-7" in caplog.text


# --- Python calls -------------------------------------------------------------


def test_call_returns_the_pickled_object(servicer: ReplicaServicer) -> None:
    response = handle(servicer, call_request({"a": b"\x00"}, method_name="describe", k=[1]))
    assert response.WhichOneof("result") == "pickled"
    assert cloudpickle.loads(response.pickled) == {
        "method": "GET",
        "data": {"a": b"\x00"},
        "args": {"k": [1]},
    }


def test_call_error_carries_type_message_and_traceback(
    servicer: ReplicaServicer, caplog: pytest.LogCaptureFixture
) -> None:
    request = call_request()
    request.call.pickled_kwargs = cloudpickle.dumps({"action": "raise"})
    response = handle(servicer, request)
    error = response.error
    assert error.kind == replica_pb2.ERROR_KIND_USER
    assert (error.type, error.message) == ("ValueError", "model exploded")
    assert error.traceback.startswith("Traceback")
    assert 'raise ValueError("model exploded")' in error.traceback
    assert "req-8" in caplog.text


def test_call_unknown_method(servicer: ReplicaServicer) -> None:
    error = handle(servicer, call_request(method_name="_private")).error
    assert error.kind == replica_pb2.ERROR_KIND_METHOD_NOT_FOUND
    assert error.type == "MethodNotFound"


def test_call_unpicklable_return(servicer: ReplicaServicer) -> None:
    error = handle(servicer, call_request(action="lock")).error
    assert error.kind == replica_pb2.ERROR_KIND_BAD_RETURN
    assert error.type == "BadReturnValue"
    assert "_thread.lock" in error.message


def test_call_with_arguments_that_cannot_be_unpickled(servicer: ReplicaServicer) -> None:
    request = call_request()
    request.call.pickled_data = b"garbage"
    error = handle(servicer, request).error
    assert error.kind == replica_pb2.ERROR_KIND_USER
    assert error.type == "UnpicklingError"


def test_request_without_payload_is_invalid(servicer: ReplicaServicer) -> None:
    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
        handle(servicer, replica_pb2.HandleRequest(request_id="r"))


def test_servicer_logs_under_the_replica_logger(
    servicer: ReplicaServicer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="turnout.replica"):
        handle(servicer, http_request("action=abort"))
    assert [r.name for r in caplog.records] == ["turnout.replica"]


def test_reconfigure_with_limits_only_changes_them_without_calling_reconfigure(
    servicer: ReplicaServicer,
) -> None:
    # Model has no reconfigure(): an empty user_config_json must not need one.
    request = replica_pb2.ReconfigureRequest(max_concurrent_queries=2, batch_wait_timeout=0.5)
    context = cast(Any, AbortingContext())
    asyncio.run(servicer.Reconfigure(request, context))
    runtime = servicer._runtime
    assert (runtime.max_concurrent_queries, runtime.batch_wait_timeout) == (2, 0.5)
    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT: .*accept_batch"):
        asyncio.run(servicer.Reconfigure(replica_pb2.ReconfigureRequest(max_batch_size=4), context))
    assert runtime.max_batch_size == 1


# --- streams answered on unary Handle (a sender that cannot stream) ------------


class Streams:
    def __call__(self, request: Request) -> Iterator[str]:
        # Read lazily, after the handler returned: the request is still open.
        yield "body was "
        yield request.get_data(as_text=True)

    def items(self, request: Request) -> Iterator[int]:
        yield from range(3)

    def broken(self, request: Request) -> Iterator[str]:
        yield "one"
        raise ValueError("mid-stream")

    def web(self, request: Request) -> Iterator[str]:
        # Runs at each next(), on a handler thread: the call's context still holds.
        yield f"web={context.web}"


@pytest.fixture
def streaming() -> Iterator[ReplicaServicer]:
    runtime = BackendRuntime(LoadedBackend(tag="s", target=Streams(), is_instance=True), 4)
    yield ReplicaServicer(runtime)
    runtime.close()


def test_unary_handle_answers_a_stream_whole(streaming: ReplicaServicer) -> None:
    response = handle(streaming, http_request())
    assert response.http.status == 200
    assert response.http.body == b'body was {"x": 1}'
    assert [(h.name, h.value) for h in response.http.headers] == [
        ("Content-Type", "text/plain; charset=utf-8")
    ]
    assert response.handler_seconds > 0
    items = handle(streaming, call_request(method_name="items"))
    assert cloudpickle.loads(items.pickled) == [0, 1, 2]
    assert handle(streaming, http_request(method_name="web")).http.body == b"web=True"


def test_unary_handle_of_a_stream_that_fails_part_way_is_an_error(
    streaming: ReplicaServicer,
) -> None:
    response = handle(streaming, http_request(method_name="broken"))
    assert response.http.status == 500
    assert json.loads(response.http.body)["message"] == "mid-stream"
    failed = handle(streaming, call_request(method_name="broken"))
    assert (failed.error.type, failed.error.message) == ("ValueError", "mid-stream")
