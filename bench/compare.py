"""The whole comparison in one command: bare aiohttp, the design's floor and
Turnout (sync and async handlers, 1 MB bodies), one table of ratios.

Run from the repository root, in the project's virtualenv, with wrk on PATH
(``apt-get install wrk``)::

    python bench/compare.py                  # 3 rounds of 3 s runs, about 4 minutes
    python bench/compare.py --rounds 5 --body-bytes 262144

What it loads, all side by side and in turn (the servers' order flips each
round, so a slow phase of a shared machine hits all of them):

- ``GET /noop`` at 1 and 64 connections on: ``bare`` (aiohttp answering
  ``ok``), ``floor`` and ``floor+thread`` (bench/floor.py's stripped chains:
  no Turnout code at all), ``sync`` (Turnout, ``def noop(request)``) and
  ``async`` (Turnout, ``async def``);
- ``POST /echo`` with a body of ``--body-bytes`` (default 1 MiB) that comes
  back as the answer, at 1 and 8 connections, on ``bare``, ``floor+thread``
  (its replica returns the body it got) and ``sync``
  (``def echo(request): return request.get_data()``).

Each ratio is the median over rounds of the ratio of two runs of the same
round, with its range: on a 2-core machine shared with other work single
runs vary by a third, and a ratio from one round carries that swing. The
issue's targets (issue 21) are printed beside them; nothing fails on them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from floor import _spawn, _stop  # sets the gRPC engine as Turnout's launcher does
from http_noop import (
    ECHO_PATH,
    HOST,
    PATH,
    LoadResult,
    LoadSpec,
    Processes,
    _http_port,
    _stop_process,
    _wait_first_ok,
    start_bare_server,
    wrk_load,
)

ASYNC_PATH = "/anoop"
WARMUP_S = 1.0
RUN_S = 3.0
DEFAULT_BODY_BYTES = 2**20


def noop(request: object) -> str:
    return "ok"


async def anoop(request: object) -> str:
    return "ok"


def echo(request: object) -> bytes:
    data: bytes = request.get_data()  # type: ignore[attr-defined]
    return data


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    path: str
    processes: Processes


@dataclass(frozen=True)
class Cell:
    """One load shape, run on each of its servers in turn."""

    label: str
    connections: int
    body_bytes: int
    servers: tuple[str, ...]


# (measure, cell label, numerator, denominator, target text, check of the ratio)
Ratio = tuple[str, str, str, str, str, Callable[[float], bool] | None]


def cells(body_bytes: int) -> list[Cell]:
    noop_servers = ("bare", "floor", "floor+thread", "sync", "async")
    body = f"{body_bytes // 1024} KiB"
    return [
        Cell("c=1", 1, 0, noop_servers),
        Cell("c=64", 64, 0, noop_servers),
        Cell(f"{body} c=1", 1, body_bytes, ("bare", "floor+thread", "sync")),
        Cell(f"{body} c=8", 8, body_bytes, ("bare", "floor+thread", "sync")),
    ]


def ratios(body_bytes: int) -> list[Ratio]:
    body = f"{body_bytes // 1024} KiB"
    return [
        ("p50", "c=1", "sync", "floor+thread", "<= 1.1", lambda r: r <= 1.1),
        ("p50", "c=1", "async", "floor", "<= 1.1", lambda r: r <= 1.1),
        ("req/s", "c=64", "sync", "floor+thread", ">= 0.85", lambda r: r >= 0.85),
        ("req/s", "c=64", "async", "floor", ">= 0.85", lambda r: r >= 0.85),
        ("req/s", f"{body} c=8", "sync", "bare", ">= 0.8", lambda r: r >= 0.8),
        ("CPU/req", f"{body} c=8", "sync", "bare", "<= 1.5", lambda r: r <= 1.5),
        ("req/s", f"{body} c=1", "sync", "bare", "", None),
        ("CPU/req", f"{body} c=1", "sync", "bare", "", None),
        ("req/s", f"{body} c=8", "sync", "floor+thread", "", None),
        ("CPU/req", f"{body} c=8", "sync", "floor+thread", "", None),
        ("req/s", f"{body} c=8", "floor+thread", "bare", "", None),
        ("CPU/req", f"{body} c=8", "floor+thread", "bare", "", None),
        ("p50", "c=1", "floor", "bare", "", None),
        ("p50", "c=1", "floor+thread", "bare", "", None),
        ("p50", "c=1", "sync", "bare", "", None),
        ("p50", "c=1", "async", "bare", "", None),
        ("req/s", "c=64", "floor", "bare", "", None),
        ("req/s", "c=64", "floor+thread", "bare", "", None),
        ("req/s", "c=64", "sync", "bare", "", None),
        ("req/s", "c=64", "async", "bare", "", None),
    ]


def _value(result: LoadResult, measure: str) -> float:
    if measure == "p50":
        return result.p50_ms
    if measure == "req/s":
        return result.rps
    return result.server_cpu_us_per_req


def start_turnout() -> tuple[object, dict[str, Server]]:
    import turnout

    client = turnout.init(http_port=0)
    for name, handler, path, methods in (
        ("noop", noop, PATH, ["GET"]),
        ("anoop", anoop, ASYNC_PATH, ["GET"]),
        ("echo", echo, ECHO_PATH, ["POST"]),
    ):
        client.create_backend(name, handler)
        client.create_endpoint(name, name, route=path, methods=methods)
    port = _http_port(client)
    _wait_first_ok(f"http://{HOST}:{port}{PATH}")
    _wait_first_ok(f"http://{HOST}:{port}{ASYNC_PATH}")
    proxy = _proxy_pid(client.controller_pid)

    def processes(backend: str) -> Processes:
        replicas = tuple(("replica", r.pid) for r in client.list_replicas(backend) if r.pid)
        return (("controller", client.controller_pid), ("proxy", proxy), *replicas)

    return client, {
        "sync": Server("sync", port, PATH, processes("noop")),
        "async": Server("async", port, ASYNC_PATH, processes("anoop")),
        "sync-echo": Server("sync", port, ECHO_PATH, processes("echo")),
    }


def _proxy_pid(controller: int) -> int:
    from http_noop import _children_of

    for pid, cmdline in _children_of(controller):
        if "-m turnout.proxy" in cmdline:
            return pid
    raise RuntimeError("no proxy process under the controller")


Results = dict[tuple[str, str], list[LoadResult]]


def run(wrk: str, servers: dict[str, Server], rounds: int, body_bytes: int) -> Results:
    results: Results = {}
    for round_ in range(rounds):
        for cell in cells(body_bytes):
            order = cell.servers if round_ % 2 == 0 else cell.servers[::-1]
            for name in order:
                echo = cell.body_bytes and name in ("sync", "async")
                server = servers[f"{name}-echo" if echo else name]
                path = ECHO_PATH if cell.body_bytes else server.path
                spec = LoadSpec(
                    HOST,
                    server.port,
                    path,
                    cell.connections,
                    WARMUP_S,
                    RUN_S,
                    server.processes,
                    cell.body_bytes,
                )
                result = wrk_load(wrk, name, spec)
                if result.errors or not result.requests:
                    raise RuntimeError(f"{name} {cell.label}: {result.errors} errors")
                results.setdefault((cell.label, name), []).append(result)
        print(f"round {round_ + 1} of {rounds} done", file=sys.stderr, flush=True)
    return results


def print_table(results: Results, body_bytes: int, rounds: int) -> None:
    print(f"\nmedians of {rounds} rounds of {RUN_S:.0f} s (wrk); range over rounds in brackets")
    print(f"{'load':13} {'server':13} {'req/s':>16} {'p50 ms':>20} {'CPU us/req':>16}")
    for cell in cells(body_bytes):
        for name in cell.servers:
            runs = results[(cell.label, name)]
            columns = []
            for measure, digits in (("req/s", 0), ("p50", 3), ("CPU/req", 0)):
                values = [_value(r, measure) for r in runs]
                columns.append(
                    f"{statistics.median(values):.{digits}f}"
                    f" [{min(values):.{digits}f}-{max(values):.{digits}f}]"
                )
            print(f"{cell.label:13} {name:13} {columns[0]:>16} {columns[1]:>20} {columns[2]:>16}")
    print(f"\n{'ratio':44} {'median':>6}  {'range':13} {'target':8} met")
    for measure, label, top, bottom, target, check in ratios(body_bytes):
        pairs = zip(results[(label, top)], results[(label, bottom)], strict=True)
        per_round = [_value(a, measure) / _value(b, measure) for a, b in pairs]
        ratio = statistics.median(per_round)
        met = "-" if check is None else ("yes" if check(ratio) else "no")
        name = f"{label} {measure} {top} / {bottom}"
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}"
        print(f"{name:44} {ratio:6.2f}  {spread:13} {target:8} {met}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of runs (default 3)")
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=DEFAULT_BODY_BYTES,
        help=f"request and answer body of the echo runs (default {DEFAULT_BODY_BYTES})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench/compare.py needs wrk on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.body_bytes < 1:
        print("--rounds and --body-bytes must be positive", file=sys.stderr)
        return 2
    import turnout

    began = time.monotonic()
    started: list[subprocess.Popen[str]] = []
    bare_process, bare_port = start_bare_server()
    try:
        servers = {"bare": Server("bare", bare_port, PATH, (("server", bare_process.pid or 0),))}
        for name, hop in (("floor", []), ("floor+thread", ["--thread-hop"])):
            replica, replica_port = _spawn("--serve-replica", *hop)
            started.append(replica)
            proxy, port = _spawn("--serve-proxy", str(replica_port))
            started.append(proxy)
            servers[name] = Server(
                name, port, PATH, (("proxy", proxy.pid), ("replica", replica.pid))
            )
        _, turnout_servers = start_turnout()
        servers.update(turnout_servers)
        results = run(wrk, servers, args.rounds, args.body_bytes)
    finally:
        turnout.shutdown()
        for process in reversed(started):  # each proxy before its replica
            _stop(process)
        _stop_process(bare_process)
    print_table(results, args.body_bytes, args.rounds)
    print(f"\ntook {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
