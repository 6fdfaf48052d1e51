"""The floor of Turnout's data plane: the least an aiohttp proxy speaking gRPC
to a replica can cost on this machine, whatever Turnout's own code does.

Run from the repository root, in the project's virtualenv::

    python bench/floor.py                 # wrk if installed, else the built-in generator
    python bench/floor.py --connections 1,64 --rounds 3

It loads, with the same generator and side by side (in turn, order flipped
each round), three servers answering ``GET /noop`` with ``ok``:

- ``bare``: the aiohttp server ``http_noop.py`` compares Turnout with;
- ``floor``: an aiohttp low-level server that forwards each request's path
  over one long-lived grpc.aio bidirectional stream to a grpc.aio server,
  which answers at once. Both sides batch whatever waits into one message, as
  Turnout does; there is no protobuf, routing, admission or werkzeug at all;
- ``floor+thread``: the same, but the replica runs each call through
  Turnout's ``HandlerThreads``, the hop a synchronous handler needs so that it
  cannot block the replica's event loop.

No Turnout configuration can beat ``floor+thread`` for a synchronous
handler, or ``floor`` for an async one: where a target of issue 6 lies
beyond them, it lies beyond the design (DESIGN.md: an aiohttp proxy that
speaks gRPC to replicas), not beyond the implementation. It prints medians
and each run's figures; it never fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

# Older gRPC engine, as Turnout's launcher sets for its proxy and replicas.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")

from http_noop import (  # noqa: E402  (the environment must be set before grpc loads)
    HOST,
    PATH,
    LoadResult,
    LoadSpec,
    _load_runner,
    _stop_process,
    in_turn,
    start_bare_server,
)

_METHOD = "/floor.Floor/Stream"
# Batches of large bodies (compare.py's) pass gRPC's default 4 MiB limit.
_NO_LIMITS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
_START_TIMEOUT_S = 30.0
WARMUP_S = 1.0
RUN_S = 3.0


def pack(calls: list[tuple[int, bytes]]) -> bytes:
    """Calls as one message: (id, length, payload) after one another."""
    return b"".join(struct.pack("<II", i, len(p)) + p for i, p in calls)


def unpack(message: bytes) -> list[tuple[int, bytes]]:
    calls, offset = [], 0
    while offset < len(message):
        call_id, size = struct.unpack_from("<II", message, offset)
        offset += 8
        calls.append((call_id, message[offset : offset + size]))
        offset += size
    return calls


def _same(data: bytes) -> bytes:
    return data


def noop(payload: bytes) -> bytes:
    """``ok``, or for ``/echo`` the request's body (``compare.py``'s large bodies)."""
    path, _, body = payload.partition(b"\n")
    return body if path == b"/echo" else b"ok"


# ---- the replica: a grpc.aio server answering every call ---------------------


async def serve_replica(thread_hop: bool) -> None:
    import grpc

    from turnout.replica.handler_threads import HandlerThreads

    threads = HandlerThreads(100, "floor")

    async def stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        ready: asyncio.Queue[list[tuple[int, bytes]] | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def through_thread(call_id: int, payload: bytes) -> None:
            ready.put_nowait([(call_id, await threads.run(noop, payload))])

        async def read() -> None:
            async for message in requests:
                calls = unpack(message)
                if not thread_hop:
                    ready.put_nowait([(i, noop(p)) for i, p in calls])
                    continue
                for call_id, payload in calls:
                    task = asyncio.create_task(through_thread(call_id, payload))
                    running.add(task)
                    task.add_done_callback(running.discard)
            ready.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answers := await ready.get()) is not None:
                while not ready.empty() and (more := ready.get_nowait()) is not None:
                    answers += more
                yield pack(answers)
        finally:
            reader.cancel()

    handler = grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=_same, response_serializer=_same
    )
    server = grpc.aio.server(options=_NO_LIMITS)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("floor.Floor", {"Stream": handler}),)
    )
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


# ---- the proxy: aiohttp's low-level server, one stream to the replica --------


async def serve_proxy(replica_port: int) -> None:
    import grpc
    from aiohttp import web

    channel = grpc.aio.insecure_channel(f"{HOST}:{replica_port}", options=_NO_LIMITS)
    call = channel.stream_stream(_METHOD, request_serializer=_same, response_deserializer=_same)(
        wait_for_ready=True
    )
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[bytes]] = {}
    outbox: list[tuple[int, bytes]] = []
    wake = asyncio.Event()
    next_id = 0

    async def write() -> None:
        nonlocal outbox
        while True:
            await wake.wait()
            wake.clear()
            calls, outbox = outbox, []
            await call.write(pack(calls))

    async def read() -> None:
        async for message in call:
            for call_id, payload in unpack(message):
                waiting.pop(call_id).set_result(payload)

    async def handle(request: web.BaseRequest) -> web.Response:
        nonlocal next_id
        body = await request.read()
        next_id += 1
        answer = waiting[next_id] = loop.create_future()
        outbox.append((next_id, b"%s\n%s" % (request.raw_path.encode(), body)))
        wake.set()
        return web.Response(body=await answer)

    tasks = [asyncio.create_task(write()), asyncio.create_task(read())]

    def make_request(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        # Bodies up to Turnout's default limit (16 MiB), not aiohttp's 1 MiB.
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=16 * 2**20
        )

    server = web.Server(handle, request_factory=make_request)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.gather(*tasks)


# ---- orchestration -----------------------------------------------------------


def _spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``python bench/floor.py ARGS``; returns it and the port it printed."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__)), *args], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"floor.py {' '.join(args)} did not start")
    return process, int(line)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--connections", default="1,64", help="comma list (default 1,64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of runs (default 3)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "builtin"), default="auto")
    # How the script starts its own servers.
    parser.add_argument("--serve-replica", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--thread-hop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", type=int, metavar="REPLICA_PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_replica or args.serve_proxy:
        # Stopped by the parent with SIGTERM: no traceback on the way out.
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    if args.serve_replica:
        asyncio.run(serve_replica(args.thread_hop))
        return 0
    if args.serve_proxy:
        asyncio.run(serve_proxy(args.serve_proxy))
        return 0
    loadgen, load = _load_runner(args.loadgen)
    connections = [int(c) for c in args.connections.split(",")]
    started: list[subprocess.Popen[str]] = []
    bare_process, bare_port = start_bare_server()
    try:
        servers: dict[str, tuple[int, tuple[tuple[str, int], ...]]] = {
            "bare": (bare_port, (("server", bare_process.pid or 0),))
        }
        for name, hop in (("floor", []), ("floor+thread", ["--thread-hop"])):
            replica, replica_port = _spawn("--serve-replica", *hop)
            started.append(replica)
            proxy, port = _spawn("--serve-proxy", str(replica_port))
            started.append(proxy)
            servers[name] = (port, (("proxy", proxy.pid), ("replica", replica.pid)))
        results = _run(servers, connections, args.rounds, load)
    finally:
        # Each proxy before its replica: a proxy whose replica went first
        # prints the broken stream's traceback.
        for process in reversed(started):
            _stop(process)
        _stop_process(bare_process)
    print(
        f"load generator: {loadgen}; {args.rounds} rounds of {RUN_S:.0f} s; nproc {os.cpu_count()}"
    )
    _print(results, connections)
    return 0


Results = dict[tuple[str, int], list[LoadResult]]


def _run(
    servers: dict[str, tuple[int, tuple[tuple[str, int], ...]]],
    connections: list[int],
    rounds: int,
    load: Callable[[str, LoadSpec], LoadResult],
) -> Results:
    results: Results = {}
    for c, name in in_turn(list(servers), connections, rounds):
        port, processes = servers[name]
        spec = LoadSpec(HOST, port, PATH, c, WARMUP_S, RUN_S, processes)
        results.setdefault((name, c), []).append(load(name, spec))
    return results


def _print(results: Results, connections: list[int]) -> None:
    print(
        f"{'server':13} {'c':>3} {'req/s':>7} {'x bare':>6} {'p50 ms':>7} {'x bare':>6}  runs req/s"
    )
    for c in connections:
        bare = results[("bare", c)]
        bare_rps = statistics.median(r.rps for r in bare)
        bare_p50 = statistics.median(r.p50_ms for r in bare)
        for (name, conns), runs in results.items():
            if conns != c:
                continue
            rps = statistics.median(r.rps for r in runs)
            p50 = statistics.median(r.p50_ms for r in runs)
            print(
                f"{name:13} {c:>3} {rps:7.0f} {rps / bare_rps:6.2f}"
                f" {p50:7.3f} {p50 / bare_p50:6.2f}  {[round(r.rps) for r in runs]}"
            )


if __name__ == "__main__":
    sys.exit(main())
