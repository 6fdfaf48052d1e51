"""Streamed answers at the proxy, from a replica written to the protocol alone
(docs/replica-protocol.md, "Streamed answers"): hand-made frames on a real
grpc.aio server, a real proxy in front, a real HTTP client, and the JSON
access log line of each stream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from turnout.proxy.app import ProxyState, build_server
from turnout.proxy.front_door import JsonAccessLog
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import http_pb2, replica_pb2, replica_pb2_grpc

# More chunks than the proxy's window (8): the replica must wait for credit.
CHUNKS = [f"chunk {n}; ".encode() for n in range(20)]


class FrameReplica(replica_pb2_grpc.ReplicaServiceServicer):
    """Streams CHUNKS to every call with a window, each chunk only with
    credit for it; fails after them when the path is /app/fail. Records the
    windows and the credit it was given."""

    def __init__(self) -> None:
        self.windows: list[int] = []
        self.credits: list[int] = []

    async def Handle(
        self, request: replica_pb2.HandleRequest, context: Any
    ) -> replica_pb2.HandleResponse:
        raise NotImplementedError  # the proxy uses HandleStream

    async def Reconfigure(
        self, request: replica_pb2.ReconfigureRequest, context: Any
    ) -> replica_pb2.ReconfigureResponse:
        return replica_pb2.ReconfigureResponse()

    async def HandleStream(
        self, request_iterator: AsyncIterator[replica_pb2.HandleStreamRequest], context: Any
    ) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        calls: asyncio.Queue[replica_pb2.StreamCall] = asyncio.Queue()
        credit = {"available": 0}
        granted = asyncio.Event()

        async def read() -> None:
            async for message in request_iterator:
                for c in message.credits:
                    self.credits.append(c.chunks)
                    credit["available"] += c.chunks
                    granted.set()
                for call in message.calls:
                    calls.put_nowait(call)

        reader = asyncio.ensure_future(read())
        try:
            call = await calls.get()  # one call a test
            self.windows.append(call.stream_window)
            credit["available"] += call.stream_window
            yield frame(
                call.id,
                start=replica_pb2.StreamStart(
                    status=200,
                    headers=[
                        http_pb2.Header(name="Content-Type", value="text/plain"),
                        # Dropped by the proxy: the body goes out chunked.
                        http_pb2.Header(name="Content-Length", value="999"),
                    ],
                ),
            )
            for data in CHUNKS:
                while credit["available"] <= 0:
                    granted.clear()
                    await asyncio.wait_for(granted.wait(), 10)
                credit["available"] -= 1
                yield frame(call.id, chunk=replica_pb2.StreamChunk(data=data))
            end = replica_pb2.StreamEnd(handler_seconds=0.25)
            if call.request.http.path.endswith("/fail"):
                end.error.CopyFrom(replica_pb2.RemoteError(type="ValueError", message="no"))
            yield frame(call.id, end=end)
            await reader
        finally:
            reader.cancel()


def frame(call_id: int, **part: Any) -> replica_pb2.HandleStreamResponse:
    return replica_pb2.HandleStreamResponse(frames=[replica_pb2.StreamFrame(id=call_id, **part)])


def snapshot(address: str) -> pb.RoutingSnapshot:
    return pb.RoutingSnapshot(
        version=1,
        endpoints=[
            pb.Endpoint(
                name="app",
                route="/app",
                methods=["GET"],
                traffic=[pb.TrafficWeight(backend="a", weight=1.0)],
            ),
            pb.Endpoint(
                name="fail",
                route="/app/fail",
                methods=["GET"],
                traffic=[pb.TrafficWeight(backend="a", weight=1.0)],
            ),
        ],
        backends=[
            pb.BackendTargets(
                tag="a", replicas=[pb.ReplicaTarget(replica_id="a#0", address=address)]
            )
        ],
    )


def run(
    path: str,
) -> tuple[int, dict[str, str], bytes | Exception, list[dict[str, Any]], FrameReplica]:
    """One GET of ``path`` through the proxy: status, headers, the body (or
    the error reading it), the JSON access log entries, the replica."""
    entries: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            entries.append(json.loads(record.getMessage()))

    access = logging.getLogger("test.stream.access")
    access.handlers[:] = [Capture()]
    access.setLevel(logging.INFO)
    access.propagate = False
    replica = FrameReplica()
    result: dict[str, Any] = {}

    async def main() -> None:
        server = grpc.aio.server()
        replica_pb2_grpc.add_ReplicaServiceServicer_to_server(replica, server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        state = ProxyState()
        state.apply(snapshot(f"127.0.0.1:{grpc_port}"))
        runner = web.ServerRunner(
            build_server(state, access_log=access, access_log_class=JsonAccessLog)
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.get(f"http://{host}:{port}{path}") as reply:
                    result["status"], result["headers"] = reply.status, dict(reply.headers)
                    try:
                        result["body"] = await reply.read()
                    except aiohttp.ClientPayloadError as exc:
                        result["body"] = exc
            for _ in range(100):  # the access line follows the answer's end
                if entries:
                    break
                await asyncio.sleep(0.01)
        finally:
            await runner.cleanup()
            await state.close()
            await server.stop(None)

    asyncio.run(main())
    return result["status"], result["headers"], result["body"], entries, replica


def test_a_stream_of_frames_reaches_the_client_chunked_and_is_logged_at_its_end() -> None:
    status, headers, body, entries, replica = run("/app")
    assert status == 200 and body == b"".join(CHUNKS)
    assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
    assert replica.windows == [8]  # the proxy asks for streams with its window
    (entry,) = entries
    assert entry["status"] == 200 and entry["endpoint"] == "app" and entry["replica"] == "a#0"
    assert entry["handler_seconds"] == 0.25  # from the StreamEnd
    assert entry["bytes_out"] >= len(b"".join(CHUNKS))
    assert "stream_error" not in entry


def test_a_stream_that_fails_after_its_head_is_cut_off_and_logged_as_failed() -> None:
    status, _, body, entries, _ = run("/app/fail")
    assert status == 200  # went out with the head
    assert isinstance(body, aiohttp.ClientPayloadError)
    (entry,) = entries
    assert entry["stream_error"] == "UNKNOWN: no"


def test_the_proxy_grants_credit_as_it_consumes() -> None:
    # 20 chunks through a window of 8 arrive only because credit came back.
    _, _, body, _, replica = run("/app")
    assert body == b"".join(CHUNKS)
    assert replica.credits and all(n == 4 for n in replica.credits)
