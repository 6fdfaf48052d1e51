"""The proxy's HTTP answers that need no replica, on a real socket."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from yarl import URL

from turnout.proxy import app as app_module
from turnout.proxy import http_codec
from turnout.proxy.app import ProxyState, build_server
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import http_pb2, replica_pb2

SNAPSHOT = pb.RoutingSnapshot(
    version=5,
    endpoints=[
        pb.Endpoint(
            name="model",
            route="/model",
            methods=["POST"],
            traffic=[pb.TrafficWeight(backend="a", weight=1.0)],
        ),
        pb.Endpoint(name="idle", route="/idle", methods=["GET"]),
    ],
    backends=[pb.BackendTargets(tag="a")],
)

Scenario = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def serve(app: web.Application | ProxyState, scenario: Scenario) -> None:
    """Run ``app`` (or a proxy with this state) on an ephemeral port while
    ``scenario`` talks to it."""

    async def main() -> None:
        runner: web.BaseRunner
        if isinstance(app, ProxyState):
            runner = web.ServerRunner(build_server(app, access_log=None))
        else:
            runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(session, f"http://{host}:{port}")
        finally:
            await runner.cleanup()
            if isinstance(app, ProxyState):
                await app.close()

    asyncio.run(main())


def run_proxy(scenario: Scenario, max_body_bytes: int = 1024) -> None:
    state = ProxyState(max_body_bytes)
    state.apply(SNAPSHOT)
    serve(state, scenario)


def test_system_paths() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(base + "/-/healthz") as reply:
            assert reply.status == 200
            assert await reply.json() == {
                "status": "ok",
                "routes_version": 5,
                "worker": 0,
                "pid": os.getpid(),
            }
        # Ray Serve's shape, which Ray's tests and readiness scripts poll.
        async with session.get(base + "/-/routes") as reply:
            assert await reply.json() == {"/idle": ["idle", ["GET"]], "/model": ["model", ["POST"]]}
        async with session.get(base + "/-/routing") as reply:
            assert await reply.json() == {
                "version": 5,
                "routes": {
                    "/idle": {
                        "endpoint": "idle",
                        "methods": ["GET"],
                        "traffic": {},
                        "shadows": {},
                    },
                    "/model": {
                        "endpoint": "model",
                        "methods": ["POST"],
                        "traffic": {"a": 1.0},
                        "shadows": {},
                    },
                },
            }

    run_proxy(scenario)


def test_errors_are_json_with_the_right_status() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(base + "/nowhere") as reply:
            assert reply.status == 404
            assert (await reply.json())["error"] == "NotFound"
            assert reply.headers["X-Request-Id"]
        async with session.get(base + "/model") as reply:
            assert reply.status == 405
            assert reply.headers["Allow"] == "POST"
            assert (await reply.json())["error"] == "MethodNotAllowed"
        async with session.post(base + "/model", data=b"x" * 2048) as reply:
            assert reply.status == 413
            body = await reply.json()
            assert body["error"] == "PayloadTooLarge" and "1024" in body["message"]
        async with session.post(base + "/model", data=b"small") as reply:
            assert reply.status == 503
            assert (await reply.json())["error"] == "NoReplica"
        async with session.get(base + "/idle", headers={"X-Request-Id": "req-1"}) as reply:
            assert reply.status == 503
            assert await reply.json() == {
                "error": "NoBackend",
                "message": "endpoint 'idle' has no backend",
                "request_id": "req-1",
            }

    run_proxy(scenario)


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_replicas(version: int, addresses: list[str]) -> pb.RoutingSnapshot:
    snapshot = pb.RoutingSnapshot()
    snapshot.CopyFrom(SNAPSHOT)
    snapshot.version = version
    del snapshot.backends[:]
    snapshot.backends.add(
        tag="a",
        replicas=[
            pb.ReplicaTarget(replica_id=f"a#{i}", address=address)
            for i, address in enumerate(addresses)
        ],
    )
    return snapshot


def test_unreachable_replica_is_a_prompt_503() -> None:
    state = ProxyState(1024)

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        # Applied on the loop, as the routes watcher does: it opens the channels.
        state.apply(with_replicas(6, [f"127.0.0.1:{closed_port()}"]))
        async with session.post(
            base + "/model", data=b"hi", timeout=aiohttp.ClientTimeout(total=10)
        ) as reply:
            assert reply.status == 503
            body = await reply.json()
            assert body["error"] == "ReplicaUnavailable"
            assert "'a'" in body["message"]
            assert re.fullmatch("[0-9a-f]{32}", reply.headers["X-Request-Id"])
            assert body["request_id"] == reply.headers["X-Request-Id"]
        (conn,) = state.router.pool.replicas("a")
        assert conn.outstanding == 0

    serve(state, scenario)


def test_a_replica_that_leaves_the_snapshot_gets_no_more_requests() -> None:
    state = ProxyState(1024)

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        state.apply(with_replicas(6, [f"127.0.0.1:{closed_port()}"]))
        state.apply(with_replicas(7, []))
        async with session.post(base + "/model", data=b"hi") as reply:
            assert reply.status == 503
            assert (await reply.json())["error"] == "NoReplica"
        async with session.get(base + "/-/healthz") as reply:
            assert (await reply.json())["routes_version"] == 7

    serve(state, scenario)


def test_system_paths_are_read_only_and_known() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(base + "/-/healthz") as reply:
            assert reply.status == 405
            assert reply.headers["Allow"] == "GET, HEAD"
            assert (await reply.json())["error"] == "MethodNotAllowed"
        async with session.get(base + "/-/nothing") as reply:
            assert reply.status == 404
            assert (await reply.json())["error"] == "NotFound"
        async with session.get(base + "/-/metrics") as reply:
            assert reply.status == 200
            assert "turnout_routes_version 5.0" in await reply.text()

    run_proxy(scenario)


def test_replica_answers_become_http_responses() -> None:
    reply = http_pb2.HttpResponse(
        status=418,
        headers=[
            http_pb2.Header(name="X-B", value="2"),
            http_pb2.Header(name="X-A", value="1"),
            http_pb2.Header(name="x-a", value="3"),
            http_pb2.Header(name="Transfer-Encoding", value="chunked"),
            http_pb2.Header(name="Connection", value="close"),
        ],
        body=b"teapot",
    )
    response = http_codec.from_proto(reply, "rid")
    assert response.status == 418
    assert list(response.headers.items()) == [
        ("X-B", "2"),
        ("X-A", "1"),
        ("x-a", "3"),
        ("X-Request-Id", "rid"),
    ]
    assert response.body == b"teapot"
    assert not http_codec.valid_status(0) and not http_codec.valid_status(600)
    assert http_codec.valid_status(200) and http_codec.valid_status(599)


def test_request_reaches_the_proto_intact() -> None:
    seen: list[http_pb2.HttpRequest] = []

    async def capture(request: web.Request) -> web.Response:
        framed = http_codec.encode(request, await request.read(), "rid")
        seen.append(framed.message().http)
        reply = http_pb2.HttpResponse(
            status=201,
            headers=[
                http_pb2.Header(name="Set-Cookie", value="a=1"),
                http_pb2.Header(name="Set-Cookie", value="b=2"),
                http_pb2.Header(name="Content-Length", value="999"),
            ],
            body=b"made",
        )
        return http_codec.from_proto(reply, "rid")

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        # encoded=True: the client must send the path and query as written.
        url = URL(f"{base}/a%20b/c?x=1&x=2&y=%2F", encoded=True)
        headers = [("X-Multi", "1"), ("X-Multi", "2")]
        async with session.put(url, data=b"payload", headers=headers) as reply:
            assert reply.status == 201
            assert reply.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert reply.headers["Content-Length"] == "4"
            assert reply.headers["X-Request-Id"] == "rid"
            assert await reply.read() == b"made"

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", capture)
    serve(app, scenario)
    (message,) = seen
    assert message.method == "PUT"
    assert message.path == "/a%20b/c"
    assert message.query_string == "x=1&x=2&y=%2F"
    assert message.body == b"payload"
    assert [h.value for h in message.headers if h.name == "X-Multi"] == ["1", "2"]
    assert message.remote_addr.startswith("127.0.0.1:")
    assert message.scheme == "http"


def test_a_request_framed_by_hand_is_the_message_protobuf_would_build() -> None:
    seen: list[replica_pb2.HandleRequest] = []
    expected: list[replica_pb2.HandleRequest] = []

    async def capture(request: web.Request) -> web.Response:
        body = await request.read()
        framed = http_codec.encode(request, body, "rid", "predict", "/app")
        seen.append(framed.message())
        # What protobuf builds from the same request, field by field.
        message = replica_pb2.HandleRequest(request_id="rid", method_name="predict")
        http = message.http
        http.method, http.scheme, http.host = request.method, request.scheme, request.host
        http.path, _, query = request.raw_path.partition("?")
        http.query_string = query
        http.body = body
        for name, value in request.raw_headers:
            http.headers.add(name=name.decode("latin-1"), value=value.decode("latin-1"))
        assert request.transport is not None
        http.remote_addr = "{}:{}".format(*request.transport.get_extra_info("peername")[:2])
        http.script_name = "/app"
        expected.append(message)
        # Byte for byte as protobuf writes it (fields in number order).
        assert b"".join(framed.part[0]) == message.SerializeToString()
        assert framed.part[1] == message.ByteSize()
        return web.Response(text="ok")

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        url = URL(f"{base}/x/%C3%A9?q=%C3%A9&empty=", encoded=True)
        # A header value with bytes above 127 (the client sends é as UTF-8; HTTP
        # headers are read as Latin-1), an empty value, a long one.
        headers = {"X-Latin": "caf\u00e9", "X-Empty": "", "X-Long": "v" * 300}
        async with session.post(url, data=b"\x00\xff" * 100, headers=headers) as reply:
            assert reply.status == 200

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", capture)
    serve(app, scenario)
    assert seen == expected
    (message,) = seen
    assert [h.value for h in message.http.headers if h.name == "X-Latin"] == ["caf\u00c3\u00a9"]
    assert message.http.body == b"\x00\xff" * 100


def test_answer_headers_are_checked_on_every_answer() -> None:
    good = http_pb2.HttpResponse(
        status=200,
        headers=[
            http_pb2.Header(name="Content-Type", value="text/plain"),
            http_pb2.Header(name="Content-Length", value="999"),
        ],
    )
    bad = http_pb2.HttpResponse(
        status=200, headers=[http_pb2.Header(name="Content-Type", value="text/plain\r\nX-Evil: 1")]
    )
    for _ in range(3):
        # The same pairs again: kept, skipped and refused as the first time.
        response = http_codec.from_proto(good, "rid")
        assert list(response.headers.items()) == [
            ("Content-Type", "text/plain"),
            ("X-Request-Id", "rid"),
        ]
        with pytest.raises(http_codec.BadResponse):
            http_codec.from_proto(bad, "rid")


def test_a_replica_sending_new_header_values_cannot_grow_the_proxy() -> None:
    for i in range(http_codec._CHECKED_MAX + 100):
        reply = http_pb2.HttpResponse(
            status=200, headers=[http_pb2.Header(name="X-Count", value=str(i))]
        )
        assert http_codec.from_proto(reply, "rid").headers["X-Count"] == str(i)
    long_value = http_pb2.HttpResponse(
        status=200, headers=[http_pb2.Header(name="X-Long", value="v" * 10_000)]
    )
    assert http_codec.from_proto(long_value, "rid").headers["X-Long"] == "v" * 10_000
    assert len(http_codec._checked) <= http_codec._CHECKED_MAX


def test_a_chunked_body_over_the_limit_is_refused_and_one_within_is_read_whole() -> None:
    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"x" * 100
            await asyncio.sleep(0)

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(base + "/model", data=chunks(11)) as reply:
            assert reply.status == 413
            assert (await reply.json())["error"] == "PayloadTooLarge"
        # Within the limit, the whole body is read: the request goes on to
        # find no replica (this proxy has none), not a 400 or 413.
        async with session.post(base + "/model", data=chunks(10)) as reply:
            assert reply.status == 503
            assert (await reply.json())["error"] == "NoReplica"

    run_proxy(scenario)


def test_a_body_in_many_pieces_is_joined_in_order() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        content = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        for piece in (b"ab", b"", b"cd", b"e"):
            content.feed_data(piece)
        content.feed_eof()
        return await app_module._read_all(content, 5)

    assert asyncio.run(main()) == b"abcde"
