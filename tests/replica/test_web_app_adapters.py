"""The replica's WSGI and ASGI adapters, without sockets: what an app sees
and what its answer becomes (replica/wsgi_app.py, replica/asgi_app.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from turnout.replica.asgi_app import AppStartError, AsgiApp
from turnout.replica.streams import AppStream
from turnout.replica.wsgi_app import AppAnswerError, WsgiApp, WsgiStream
from turnout.v1 import http_pb2


def request(path: str, script_name: str = "", **fields: Any) -> http_pb2.HttpRequest:
    return http_pb2.HttpRequest(
        method="POST", path=path, script_name=script_name, host="h.example:8080", **fields
    )


def test_a_wsgi_app_sees_its_mount_point_and_the_rest_of_the_path() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("201 Created", [("X-A", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return [b"he", b"llo"]

    answer = WsgiApp(app).call(request("/api/a%20b", "/api", query_string="x=1", body=b"data"))
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"], seen["QUERY_STRING"]) == ("/api", "/a b", "x=1")
    assert seen["wsgi.input"].read() == b"data"
    assert answer.status == 201 and answer.body == b"hello"
    assert [(h.name, h.value) for h in answer.headers][1:] == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_a_wsgi_apps_iterable_is_closed_and_its_rule_breaks_are_errors() -> None:
    closed = []

    class Body(list[bytes]):
        def close(self) -> None:
            closed.append(True)

    def silent(environ: Any, start_response: Any) -> Body:
        return Body([])

    with pytest.raises(AppAnswerError, match="without calling start_response"):
        WsgiApp(silent).call(request("/"))
    assert closed == [True]

    def text(environ: Any, start_response: Any) -> list[str]:
        start_response("200 OK", [])
        return ["not bytes"]

    with pytest.raises(AppAnswerError, match="yielded a str, not bytes"):
        WsgiApp(text).call(request("/"))  # type: ignore[arg-type]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_an_asgi_app_gets_an_http_scope_and_the_whole_body() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["scope"] = scope
        seen["message"] = await receive()
        await send({"type": "http.response.start", "status": 202, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"par", "more_body": True})
        await send({"type": "http.response.body", "body": b"ts"})
        seen["after"] = await receive()

    async def scenario() -> tuple[AppStream, list[bytes]]:
        answer = await AsgiApp(app).call(
            request(
                "/api/a%20b", "/api", query_string="x=1", body=b"data", remote_addr="10.0.0.1:5"
            )
        )
        # more_body: the answer streams.
        assert isinstance(answer, AppStream)
        return answer, [chunk async for chunk in answer.chunks]

    answer, chunks = run(scenario())
    scope = seen["scope"]
    assert (scope["type"], scope["path"], scope["root_path"]) == ("http", "/api/a b", "/api")
    assert (scope["raw_path"], scope["query_string"]) == (b"/api/a%20b", b"x=1")
    assert scope["server"] == ("h.example", 8080) and scope["client"] == ("10.0.0.1", 5)
    assert seen["message"] == {"type": "http.request", "body": b"data", "more_body": False}
    assert seen["after"] == {"type": "http.disconnect"}
    assert (answer.start.status, chunks) == (202, [b"par", b"ts"])
    assert [(h.name, h.value) for h in answer.start.headers] == [("x-a", "1")]


def test_an_asgi_app_that_never_answers_is_an_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(AppAnswerError, match="without sending http.response.start"):
        run(AsgiApp(app).call(request("/")))


def test_an_error_after_the_answer_went_out_keeps_the_answer() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"Internal Server Error"})
        raise RuntimeError("re-raised for the server's log")

    answer = run(AsgiApp(app).call(request("/")))
    assert (answer.status, answer.body) == (500, b"Internal Server Error")


def lifespan_app(fail: bool = False, events: list[str] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["state"]["name"].encode()})
            return
        while True:
            message = await receive()
            if events is not None:
                events.append(message["type"])
            if message["type"] == "lifespan.startup":
                if fail:
                    await send(
                        {"type": "lifespan.startup.failed", "message": "Traceback\nOops: no"}
                    )
                    return
                scope["state"]["name"] = "from lifespan"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def test_lifespan_state_reaches_requests_and_shutdown_is_sent() -> None:
    events: list[str] = []

    async def scenario() -> bytes:
        served = AsgiApp(lifespan_app(events=events))
        await served.startup(5)
        answer = await served.call(request("/"))
        await served.shutdown(5)
        assert isinstance(answer, http_pb2.HttpResponse)
        return answer.body

    assert run(scenario()) == b"from lifespan"
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def test_a_failed_startup_says_the_apps_last_line() -> None:
    with pytest.raises(AppStartError, match="^Oops: no$") as caught:
        run(AsgiApp(lifespan_app(fail=True)).startup(5))
    assert caught.value.detail == "Traceback\nOops: no"


def test_an_app_without_lifespan_support_is_served_without_it() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise ValueError("only http")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body"})

    async def scenario() -> int:
        served = AsgiApp(app)
        await served.startup(5)
        answer = await served.call(request("/"))
        await served.shutdown(5)
        assert isinstance(answer, http_pb2.HttpResponse)
        return answer.status

    assert run(scenario()) == 204


def test_a_startup_that_never_answers_times_out() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(3600)

    with pytest.raises(AppStartError, match="within 0.05 s"):
        run(AsgiApp(app).startup(0.05))


def test_work_after_the_answer_does_not_hold_the_answer_back() -> None:
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"now"})
        await asyncio.sleep(0.05)  # a background task, as FastAPI runs them
        done.set()

    async def scenario() -> tuple[bytes, bool]:
        answer = await AsgiApp(app).call(request("/"))
        assert isinstance(answer, http_pb2.HttpResponse)
        finished_first = done.is_set()
        await asyncio.wait_for(done.wait(), 5)
        return answer.body, finished_first

    assert run(scenario()) == (b"now", False)


def test_an_endless_wsgi_body_stops_once_its_caller_gave_up() -> None:
    stop = threading.Event()
    read: list[int] = []

    def endless(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for n in itertools.count():
            read.append(n)
            if n == 100:
                stop.set()  # as the runtime does when the deadline passes
            yield b"data: tick\n\n"

    with pytest.raises(AppAnswerError, match="abandoned"):
        WsgiApp(endless).call(request("/"), stop)
    assert len(read) == 101


def test_a_wsgi_body_of_unknown_length_streams_and_a_sized_one_does_not() -> None:
    closed: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        kind = environ["PATH_INFO"]
        headers = [("Content-Length", "2")] if kind == "/sized" else []

        def body() -> Iterator[bytes]:
            try:
                yield b""  # PEP 3333: the head waits for a non-empty chunk
                start_response("200 OK", headers)(b"w")  # write() goes first
                yield b"a"
                yield b"b"
            finally:
                closed.append(kind)

        if kind == "/list":
            start_response("200 OK", [])
            return [b"a", b"b"]
        return body()

    served = WsgiApp(app)
    for kind in ("/list", "/sized"):
        answer = served.start(request(kind))
        assert isinstance(answer, http_pb2.HttpResponse), kind
    stream = served.start(request("/stream"))
    assert isinstance(stream, WsgiStream)
    assert stream.first == [b"w", b"", b"a"]
    assert list(stream.rest) == [b"b"]
    stream.close()
    assert closed == ["/sized", "/stream"]
    # Closed part-way: the generator's finally runs (the client went away).
    stream = served.start(request("/stream"))
    assert isinstance(stream, WsgiStream)
    stream.close()
    assert closed[-1] == "/stream"


def test_an_asgi_stream_waits_for_its_reader_and_hears_it_leave() -> None:
    sent: list[int] = []
    heard: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for n in range(100):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                sent.append(n)
        except OSError:
            heard.append((await receive())["type"])

    async def scenario() -> tuple[int, int]:
        answer = await AsgiApp(app).call(request("/"))
        assert isinstance(answer, AppStream)
        chunks = answer.chunks
        await anext(chunks)
        await asyncio.sleep(0.05)
        ahead = len(sent)  # a queue of one chunk: the app waits
        await chunks.aclose()  # type: ignore[attr-defined]
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.01)
        return ahead, len(sent)

    ahead, total = run(scenario())
    assert ahead <= 3 and total == ahead
    assert heard == ["http.disconnect"]


def test_a_starlette_stream_cut_off_in_send_has_its_body_closed_at_once() -> None:
    from starlette.responses import StreamingResponse

    closed: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x"  # faster than its reader: it waits in send
                await asyncio.sleep(0)
        finally:
            closed.append(True)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await StreamingResponse(body())(scope, receive, send)

    async def scenario() -> bool:
        answer = await AsgiApp(app).call(request("/"))
        assert isinstance(answer, AppStream)
        await anext(answer.chunks)
        await answer.chunks.aclose()  # type: ignore[attr-defined]
        # Left to the collector, the generator's finally waited seconds or more.
        for _ in range(50):
            if closed:
                break
            await asyncio.sleep(0.01)
        return bool(closed)

    assert run(scenario())
