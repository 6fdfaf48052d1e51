"""What the proxy makes of requests and of replica answers, on real sockets:
a real proxy server (in this process) in front of a small real grpc.aio
replica that answers what each test tells it to."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from turnout.proxy.app import ProxyState, build_server
from turnout.proxy.front_door import AccessLog, JsonAccessLog
from turnout.replica.call_stream import serve_stream
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import http_pb2, replica_pb2, replica_pb2_grpc

Answer = Callable[[replica_pb2.HandleRequest], http_pb2.HttpResponse]


def echo(request: replica_pb2.HandleRequest) -> http_pb2.HttpResponse:
    """The request as the replica got it, in JSON."""
    seen = {
        "method": request.http.method,
        "host": request.http.host,
        "headers": [[h.name, h.value] for h in request.http.headers],
        "body": request.http.body.decode("latin-1"),
        "method_name": request.method_name,
    }
    return http_pb2.HttpResponse(status=200, body=json.dumps(seen).encode())


class Replica(replica_pb2_grpc.ReplicaServiceServicer):
    """Answers each call on the stream with ``answer(request)``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    async def Handle(
        self, request: replica_pb2.HandleRequest, context: Any
    ) -> replica_pb2.HandleResponse:
        return await self.respond(request)

    async def Reconfigure(
        self, request: replica_pb2.ReconfigureRequest, context: Any
    ) -> replica_pb2.ReconfigureResponse:
        return replica_pb2.ReconfigureResponse()

    async def respond(self, message: replica_pb2.HandleRequest) -> replica_pb2.HandleResponse:
        return replica_pb2.HandleResponse(http=self.answer(message))

    async def HandleStream(
        self, request_iterator: AsyncIterator[replica_pb2.HandleStreamRequest], context: Any
    ) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        async for batch in serve_stream(self.respond, request_iterator):
            yield batch


def snapshot(address: str) -> pb.RoutingSnapshot:
    return pb.RoutingSnapshot(
        version=1,
        endpoints=[
            pb.Endpoint(
                name="app",
                route="/app",
                methods=["GET", "POST"],
                traffic=[pb.TrafficWeight(backend="a", weight=1.0)],
            )
        ],
        backends=[
            pb.BackendTargets(
                tag="a", replicas=[pb.ReplicaTarget(replica_id="a#0", address=address)]
            )
        ],
    )


Scenario = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def serve(
    answer: Answer,
    scenario: Scenario,
    server_options: dict[str, Any] | None = None,
    **state_options: Any,
) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        replica_pb2_grpc.add_ReplicaServiceServicer_to_server(Replica(answer), server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        state = ProxyState(**state_options)
        state.apply(snapshot(f"127.0.0.1:{grpc_port}"))
        options = server_options or {"access_log": None}
        runner = web.ServerRunner(build_server(state, **options))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
                await scenario(session, f"http://{host}:{port}")
        finally:
            await runner.cleanup()
            await state.close()
            await server.stop(None)

    asyncio.run(main())


async def raw(base: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte; the status, headers and body of the answer."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, rest


def test_head_answers_like_get_without_a_body() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(base + "/app?500") as reply:
            assert len(await reply.read()) == 500
        status, headers, rest = await raw(
            base, b"HEAD /app?500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 200
        assert headers["Content-Length"] == "500"
        assert rest == b""
        async with session.delete(base + "/app") as reply:
            assert reply.status == 405
            assert reply.headers["Allow"] == "GET, POST, HEAD"

    serve(sized, scenario)


def test_a_header_that_is_not_utf8_is_a_400_in_json() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for header in (
            b"Host: caf\xe9",
            b"X-Serve-Call-Method: caf\xe9",
            b"X-Serve-Shard-Key: caf\xe9",
        ):
            head = b"GET /app HTTP/1.1\r\n" + header + b"\r\nConnection: close\r\n\r\n"
            if not header.startswith(b"Host"):
                head = head.replace(b"\r\n", b"\r\nHost: x\r\n", 1)
            status, headers, body = await raw(base, head)
            assert status == 400, header
            assert headers["Content-Type"].startswith("application/json")
            assert json.loads(body)["error"] == "BadRequest"
        # An id that is not ours to use is replaced, and the request is served.
        head = b"GET /app HTTP/1.1\r\nHost: x\r\nX-Request-Id: caf\xe9\r\nConnection: close\r\n\r\n"
        status, headers, _ = await raw(base, head)
        assert status == 200 and len(headers["X-Request-Id"]) == 32

    serve(echo, scenario)


def test_client_request_ids_are_used_only_when_short_and_safe() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for sent in ("req-1.A_b", "x" * 128):
            async with session.get(base + "/app", headers={"X-Request-Id": sent}) as reply:
                assert reply.headers["X-Request-Id"] == sent
        for sent in ("x" * 129, 'a" 500 "forged', "a b", "é"):
            async with session.get(base + "/app", headers={"X-Request-Id": sent}) as reply:
                made = reply.headers["X-Request-Id"]
                assert made != sent and len(made) == 32

    serve(echo, scenario)


def test_the_timeout_header_takes_only_ascii_digits() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for sent in ("5_000", "\uff15\uff10\uff10\uff10", "+5000", "1e3", "0", "-1"):
            async with session.get(base + "/app", headers={"X-Serve-Timeout-Ms": sent}) as reply:
                assert reply.status == 400, sent
                assert (await reply.json())["error"] == "BadRequest"
        async with session.get(base + "/app", headers={"X-Serve-Timeout-Ms": "5000"}) as reply:
            assert reply.status == 200

    serve(echo, scenario)


def test_a_gzip_body_reaches_the_handler_as_sent() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        headers = {"Content-Encoding": "gzip"}
        for body in (gzip.compress(b"hello"), b"\x1f\x8b not gzip at all"):
            async with session.post(base + "/app", data=body, headers=headers) as reply:
                assert reply.status == 200
                seen = json.loads(await reply.read())
                assert seen["body"].encode("latin-1") == body
                assert ["Content-Encoding", "gzip"] in seen["headers"]

    serve(echo, scenario)


def bad_header(request: replica_pb2.HandleRequest) -> http_pb2.HttpResponse:
    name, value = {
        "value": ("X-Evil", "a\r\nSet-Cookie: forged=1"),
        "name": ("X Evil", "1"),
        "nul": ("X-Evil", "a\x00b"),
    }.get(request.http.query_string, ("X-Fine", "1"))
    return http_pb2.HttpResponse(
        status=200, headers=[http_pb2.Header(name=name, value=value)], body=b"ok"
    )


def test_an_answer_header_http_cannot_carry_is_a_502_in_json() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for case in ("value", "name", "nul"):
            async with session.get(f"{base}/app?{case}") as reply:
                assert reply.status == 502, case
                body = await reply.json()
                assert body["error"] == "BadResponse"
                assert "Set-Cookie" not in reply.headers
        # The connection and the replica still serve.
        async with session.post(base + "/app", data=b"x") as reply:
            assert reply.status == 200

    serve(bad_header, scenario)


def sized(request: replica_pb2.HandleRequest) -> http_pb2.HttpResponse:
    return http_pb2.HttpResponse(status=200, body=b"x" * int(request.http.query_string))


def test_answers_past_the_response_limit_are_a_502_in_json() -> None:
    limit = 1000

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(f"{base}/app?{limit}") as reply:
            assert reply.status == 200 and len(await reply.read()) == limit
        # Past the limit; then so far past it that gRPC refuses the message.
        for size in (limit + 1, 3 * 1024 * 1024):
            async with session.get(f"{base}/app?{size}") as reply:
                assert reply.status == 502, size
                body = await reply.json()
                assert body["error"] == "ResponseTooLarge"
                assert str(limit) in body["message"]
        async with session.get(f"{base}/app?10") as reply:
            assert reply.status == 200

    serve(sized, scenario, max_response_bytes=limit)


def test_a_large_answer_arrives_whole_with_its_headers() -> None:
    size = 5 * 1024 * 1024 + 3

    def large(request: replica_pb2.HandleRequest) -> http_pb2.HttpResponse:
        return http_pb2.HttpResponse(
            status=201,
            headers=[http_pb2.Header(name="Content-Type", value="application/x-big")],
            body=bytes(range(256)) * (size // 256) + b"end",
        )

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(base + "/app") as reply:
            assert reply.status == 201
            assert reply.headers["Content-Type"] == "application/x-big"
            assert reply.headers["Content-Length"] == str(size - size % 256 + 3)
            body = await reply.read()
            assert body.endswith(b"end") and body[:256] == bytes(range(256))

    serve(large, scenario)


def test_nothing_is_routed_before_the_first_snapshot() -> None:
    async def main() -> None:
        state = ProxyState()
        runner = web.ServerRunner(build_server(state, access_log=None))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{host}:{port}/app") as reply:
                    assert reply.status == 503
                    assert reply.headers["Retry-After"] == "1"
                    assert (await reply.json())["error"] == "Starting"
                async with session.get(f"http://{host}:{port}/-/healthz") as reply:
                    assert reply.status == 503
                    assert (await reply.json())["status"] == "starting"
        finally:
            await runner.cleanup()
            await state.close()

    asyncio.run(main())


def test_a_body_that_does_not_arrive_in_time_is_a_408() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        # The head says 100 bytes; 10 come, then nothing (the connection stays open).
        head = b"POST /app HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head + b"x" * 10)
            async with asyncio.timeout(10):
                head_part = await reader.readuntil(b"\r\n\r\n")
                length = int(head_part.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
        finally:
            writer.close()
        assert head_part.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head_part.lower()
        assert json.loads(body)["error"] == "RequestTimeout"
        async with session.post(base + "/app", data=b"x" * 100) as reply:
            assert reply.status == 200

    serve(echo, scenario, read_timeout=0.5)


# time, client, "request line" (only escaped quotes inside), status, bytes,
# seconds, request id: nothing else.
ACCESS_LINE = re.compile(
    r'\[[^\]]+\] 127\.0\.0\.1 "(?:[^"\\]|\\.)*" \d{3} \d+ \d+\.\d+ rid=[A-Za-z0-9._-]+'
)


FORGED = b'" 200 0 0.1 rid=forged "'


def captured_access_log(name: str) -> tuple[logging.Logger, list[str]]:
    """A logger for the proxy's access log, and the lines it will write."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access = logging.getLogger(name)
    access.handlers[:] = [Capture()]
    access.setLevel(logging.INFO)
    access.propagate = False
    return access, lines


def forged_access_lines(access_log_class: type[AbstractAccessLogger]) -> list[str]:
    """What the access log wrote for three requests that try to forge fields."""
    access, lines = captured_access_log("test.access")

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for head in (
            b"GET /app?q=" + FORGED.replace(b" ", b"%20") + b'\\"x HTTP/1.1\r\n',
            b"GET /app?\xff\xfe\x01 HTTP/1.1\r\n",
            b"GET /nowhere HTTP/1.1\r\nX-Request-Id: " + FORGED + b"\r\n",
        ):
            status, _, _ = await raw(base, head + b"Host: x\r\nConnection: close\r\n\r\n")
            assert status in (200, 400, 404)

    serve(
        echo,
        scenario,
        server_options={"access_log": access, "access_log_class": access_log_class},
    )
    return lines


def test_no_client_can_forge_an_access_log_field() -> None:
    lines = forged_access_lines(AccessLog)
    assert len(lines) == 3
    for line in lines:
        assert ACCESS_LINE.fullmatch(line), line
        assert "rid=forged" not in line.split('"')[-1]
    # The quotes a client sent are in the line, escaped.
    assert '\\"%20200%200%200.1%20rid=forged%20\\"' in lines[0]


def test_no_client_can_forge_a_json_access_log_field() -> None:
    lines = forged_access_lines(JsonAccessLog)
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    assert all("\n" not in line for line in lines)
    # What the client sent is a value, whole; the request id is the proxy's own.
    assert entries[0]["path"] == "/app?q=" + FORGED.replace(b" ", b"%20").decode() + '\\"x'
    assert entries[0]["endpoint"] == "app" and entries[0]["replica"] == "a#0"
    assert entries[2]["request_id"] != FORGED.decode() and entries[2]["endpoint"] is None
    assert [e["status"] for e in entries] == [200, entries[1]["status"], 404]


# Answers a replica may send, by request target: the proxy writes their heads
# itself (``http_codec.send``), and must write what aiohttp's Response would.
ANSWERS = {
    "/app?typed": http_pb2.HttpResponse(
        status=201,
        headers=[
            http_pb2.Header(name="Content-Type", value="text/plain; charset=utf-8"),
            http_pb2.Header(name="Set-Cookie", value="a=1"),
            http_pb2.Header(name="Set-Cookie", value="b=2"),
        ],
        body=b"made",
    ),
    "/app?untyped": http_pb2.HttpResponse(status=200, body=b"\x00\xffbin"),
    "/app?empty": http_pb2.HttpResponse(status=200),
    "/app?dated": http_pb2.HttpResponse(
        status=404,
        headers=[
            http_pb2.Header(name="Date", value="Tue, 01 Dec 2026 10:00:00 GMT"),
            http_pb2.Header(name="Server", value="model/1"),
        ],
        body=b"gone",
    ),
    "/app?unnamed": http_pb2.HttpResponse(status=299, body=b"?"),
}


def by_path(request: replica_pb2.HandleRequest) -> http_pb2.HttpResponse:
    return ANSWERS[f"{request.http.path}?{request.http.query_string}"]


async def aiohttp_answers() -> dict[str, tuple[str, list[tuple[str, str]], bytes]]:
    """What a bare aiohttp server writes for each of ``ANSWERS``, with the
    proxy's X-Request-Id: the status line, the headers in order, the body."""

    async def answer(request: web.BaseRequest) -> web.Response:
        reply = ANSWERS[request.raw_path]
        headers = [(h.name, h.value) for h in reply.headers] + [("X-Request-Id", "rid")]
        return web.Response(status=reply.status, headers=headers, body=reply.body)

    runner = web.ServerRunner(web.Server(answer), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        return {path: await raw_answer(f"http://{host}:{port}", path) for path in ANSWERS}
    finally:
        await runner.cleanup()


async def raw_answer(base: str, path: str) -> tuple[str, list[tuple[str, str]], bytes]:
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: rid\r\nConnection: close\r\n\r\n"
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode())
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    head_part, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head_part.decode("latin-1").split("\r\n")
    pairs = [(name, value) for name, value in (line.split(": ", 1) for line in lines)]
    return status_line, pairs, body


def test_a_replica_answer_has_the_head_aiohttp_would_write() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        expected = await aiohttp_answers()
        for path in ANSWERS:
            status_line, pairs, body = await raw_answer(base, path)
            want_line, want_pairs, want_body = expected[path]
            assert (status_line, body) == (want_line, want_body), path
            # Date changes by the second; the proxy's must be one, and current.
            dates = [value for name, value in pairs if name == "Date"]
            assert len(dates) == 1, path
            if path == "/app?dated":
                assert dates == ["Tue, 01 Dec 2026 10:00:00 GMT"]
            pairs = [(n, "DATE" if n == "Date" else v) for n, v in pairs]
            want_pairs = [(n, "DATE" if n == "Date" else v) for n, v in want_pairs]
            assert pairs == want_pairs, path
        assert ("Content-Type", "application/octet-stream") in expected["/app?untyped"][1]

    serve(by_path, scenario)


def test_answers_on_one_connection_keep_it_open_until_the_client_closes_it() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            # Three requests in one write (pipelined); the last asks to close.
            writer.write(
                b"GET /app?typed HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /app?empty HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /app?dated HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            async with asyncio.timeout(10):
                data = await reader.read()  # returns once the proxy closes
        finally:
            writer.close()
        answers = data.split(b"HTTP/1.1 ")[1:]
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [
            b"201 Created",
            b"200 OK",
            b"404 Not Found",
        ]
        assert answers[0].endswith(b"\r\n\r\nmade") and answers[2].endswith(b"\r\n\r\ngone")
        assert b"Connection: close" not in answers[0] + answers[1]
        assert b"\r\nConnection: close\r\n" in answers[2]

    serve(by_path, scenario)


def test_http_1_0_and_head_requests_are_answered_as_aiohttp_answers_them() -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        status, headers, body = await raw(base, b"GET /app?typed HTTP/1.0\r\nHost: x\r\n\r\n")
        assert (status, body) == (201, b"made")
        assert headers["Content-Length"] == "4"
        status, headers, body = await raw(
            base,
            b"GET /app?typed HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
            b"GET /app?empty HTTP/1.0\r\nHost: x\r\n\r\n",
        )
        # Kept alive for the second request, which HTTP/1.0 then closes.
        assert headers["Connection"] == "keep-alive"
        first, _, second = body.partition(b"HTTP/1.0 200 OK\r\n")
        assert first == b"made" and b"Content-Length: 0\r\n" in second
        status, headers, body = await raw(
            base, b"HEAD /app?typed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert (status, headers["Content-Length"], body) == (201, "4", b"")

    serve(by_path, scenario)


def test_an_answer_the_client_left_before_is_dropped_and_the_proxy_serves_on(
    caplog: Any,
) -> None:
    def slow(request: replica_pb2.HandleRequest) -> http_pb2.HttpResponse:
        if request.http.query_string == "slow":
            time.sleep(0.3)
        return http_pb2.HttpResponse(status=200, body=b"late")

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /app?slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            writer.close()  # gone before the answer
            await writer.wait_closed()
        await asyncio.sleep(0.6)
        async with session.get(base + "/app?fast") as reply:
            assert reply.status == 200 and await reply.read() == b"late"

    with caplog.at_level(logging.WARNING):
        serve(slow, scenario)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_json_access_log_counts_what_a_replica_answer_wrote() -> None:
    access, lines = captured_access_log("test.access.bytes")

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for path in ("/app?typed", "/app?empty"):
            async with session.get(base + path) as reply:
                await reply.read()

    serve(
        by_path,
        scenario,
        server_options={"access_log": access, "access_log_class": JsonAccessLog},
    )
    entries = [json.loads(line) for line in lines]
    assert [(e["status"], e["bytes_out"], e["replica"]) for e in entries] == [
        (201, 4, "a#0"),
        (200, 0, "a#0"),
    ]
