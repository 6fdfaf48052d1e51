"""HTTP overhead of Turnout against a bare aiohttp server, on a no-op handler.

Run from the repository root, in the project's virtualenv::

    python bench/http_noop.py [--duration SECONDS] [--connections 1,16,64] [--json PATH]

It starts a bare aiohttp "hello world" server (the baseline) and a Turnout
instance serving ``def noop(request): return "ok"`` on ``/noop``, drives both
with the same load generator (``wrk`` when it is on PATH, else a small asyncio
HTTP/1.1 client in its own process), and prints requests/s, p50 and p99 for
each, the Turnout/bare ratios, the replica's idle RSS and the time from
``turnout.init()`` to the first 200. The issue's targets are printed next to
the numbers for information: nothing here fails on a threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from turnout import Client

HOST = "127.0.0.1"
PATH = "/noop"
# Where the bare server (and bench/compare.py's Turnout) echo a POSTed body.
ECHO_PATH = "/echo"
# Children are started with "spawn" so they inherit no threads, sockets or
# gRPC state from this process (fork after grpc is imported is unsafe).
_SPAWN = multiprocessing.get_context("spawn")
_CHILD_START_TIMEOUT_S = 30.0
# Slack on top of warm-up + duration before a load run counts as hung.
_LOAD_GRACE_S = 30.0
_FIRST_RESPONSE_TIMEOUT_S = 60.0

# The targets, shown beside the measurements; informational only.
TARGET_THROUGHPUT_RATIO_AT_64 = 0.50
TARGET_P50_RATIO_AT_1 = 4.0
TARGET_REPLICA_RSS_MIB = 60.0
TARGET_INIT_TO_FIRST_RESPONSE_S = 2.0


def noop(request: object) -> str:
    """The backend under test: the cheapest handler there is."""
    return "ok"


# ---- results ---------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """One load run against one server at one connection count."""

    server: str
    connections: int
    requests: int  # answered 200 within the measured window
    errors: int  # anything else: other statuses, broken or hung connections
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    # CPU the server's processes used in the measured window, per request: on
    # a shared 2-core machine this moves less with neighbours than req/s does.
    server_cpu_us_per_req: float = math.nan
    # The same split by process (controller, proxy, replica): where the time goes.
    cpu_us_per_req_by_process: dict[str, float] = field(default_factory=dict)
    loadavg_1m_after: float = field(default_factory=lambda: os.getloadavg()[0])


@dataclass
class StartupTimes:
    """Seconds from calling ``turnout.init()`` to each milestone."""

    init_s: float = math.nan
    create_backend_s: float = math.nan
    create_endpoint_s: float = math.nan
    first_response_s: float = math.nan


@dataclass
class Report:
    """Everything one benchmark run measured, as printed and written to JSON."""

    date: str
    machine: dict[str, Any]
    loadgen: str
    proxy_workers: int
    warmup_s: float
    duration_s: float
    runs: list[LoadResult] = field(default_factory=list)
    startup: StartupTimes = field(default_factory=StartupTimes)
    replica_rss_idle_mib: float = math.nan
    replica_rss_after_load_mib: float = math.nan
    proxy_rss_after_load_mib: float = math.nan

    def find(self, server: str, connections: int) -> LoadResult | None:
        for run in self.runs:
            if run.server == server and run.connections == connections:
                return run
        return None

    def ratios(self, connections: int) -> tuple[float, float]:
        """(throughput, p50) of Turnout over bare; NaN where a side is missing."""
        bare, turnout = self.find("bare", connections), self.find("turnout", connections)
        if bare is None or turnout is None:
            return math.nan, math.nan
        return _ratio(turnout.rps, bare.rps), _ratio(turnout.p50_ms, bare.p50_ms)


def _ratio(numerator: float, denominator: float) -> float:
    # NaN compares false, so a missing side gives NaN rather than a wrong ratio.
    return numerator / denominator if denominator > 0 else math.nan


# (role, pid) of each process of a server under test, e.g. ("proxy", 1234).
Processes = tuple[tuple[str, int], ...]
T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by a process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    # Fields after the command name, which may hold spaces: 14 utime, 15 stime.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(processes: Processes) -> dict[str, float]:
    return {role: cpu_seconds(pid) for role, pid in processes}


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in before}


def with_cpu(result: LoadResult, cpu_s: dict[str, float]) -> LoadResult:
    """``result`` with the servers' CPU seconds of its window turned into us/request."""
    if not result.requests:
        return result
    per_request = {role: cpu / result.requests * 1e6 for role, cpu in cpu_s.items()}
    return dataclasses.replace(
        result,
        server_cpu_us_per_req=sum(per_request.values()) if per_request else math.nan,
        cpu_us_per_req_by_process=per_request,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: a latency some request really had."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


# ---- built-in load generator (runs in its own process) ---------------------


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    path: str
    connections: int
    warmup_s: float
    duration_s: float
    processes: Processes = ()
    # > 0: each request is a POST with a body of this many bytes (wrk only).
    body_bytes: int = 0


@dataclass
class _ConnStats:
    """Per-connection tallies, mutated in place so a cancelled task keeps them."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; return (status, connection stays open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])  # "HTTP/1.1 200 OK": fixed offsets, no split needed
    lowered = head.lower()
    if b"\r\ntransfer-encoding: chunked" in lowered:
        await _skip_chunked(reader)
    else:
        start = lowered.find(b"\r\ncontent-length:")
        if start >= 0:
            end = lowered.index(b"\r\n", start + 2)
            await reader.readexactly(int(lowered[start + 17 : end]))
    return status, b"\r\nconnection: close" not in lowered


async def _skip_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)  # the chunk and its CRLF
        if size == 0:
            return


async def _drive_connection(
    spec: LoadSpec, measure_from: float, until: float, stats: _ConnStats
) -> None:
    """Send requests back-to-back on one keep-alive connection until ``until``."""
    request = f"GET {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    try:
        while (sent := time.perf_counter()) < until:
            writer.write(request)
            try:
                status, keep_alive = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status, keep_alive = 0, False
            done = time.perf_counter()
            if sent >= measure_from:
                if status == 200:
                    stats.latencies.append(done - sent)
                else:
                    stats.errors += 1
            if not keep_alive:
                writer.close()
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
    finally:
        writer.close()


async def _window_cpu(processes: Processes, measure_from: float, until: float) -> dict[str, float]:
    """CPU seconds each server process spent between ``measure_from`` and ``until``."""
    await asyncio.sleep(measure_from - time.perf_counter())
    start = cpu_by_role(processes)
    await asyncio.sleep(until - time.perf_counter())
    return _cpu_delta(start, cpu_by_role(processes))


async def _run_load(spec: LoadSpec) -> tuple[list[float], int, dict[str, float]]:
    """All connections at once; returns (latencies in s, errors, server CPU s by role)."""
    measure_from = time.perf_counter() + spec.warmup_s
    until = measure_from + spec.duration_s
    cpu = asyncio.create_task(_window_cpu(spec.processes, measure_from, until))
    stats = [_ConnStats() for _ in range(spec.connections)]
    tasks = [asyncio.create_task(_drive_connection(spec, measure_from, until, s)) for s in stats]
    # A request the server never answers must not hang the benchmark: give the
    # last requests a grace period, then count what is still open as errors.
    _, pending = await asyncio.wait(tasks, timeout=until - time.perf_counter() + 10.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task, conn in zip(tasks, stats, strict=True):
        if task.cancelled() or task.exception() is not None:
            conn.errors += 1  # a hung or broken connection: its last request failed
    latencies = sorted(lat for conn in stats for lat in conn.latencies)
    return latencies, sum(conn.errors for conn in stats), await cpu


def _loadgen_child(spec: LoadSpec, out: Connection) -> None:
    """Entry point of the load generator process: run, then send back a summary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        latencies, errors, cpu_s = asyncio.run(_run_load(spec))
        p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
        out.send(("ok", (len(latencies), errors, cpu_s, p50, p99)))
    except BaseException as exc:  # report anything: the parent decides
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


def builtin_load(server: str, spec: LoadSpec) -> LoadResult:
    """Run the asyncio load generator in a separate process (own GIL, own core)."""
    if spec.body_bytes:
        raise RuntimeError("the built-in load generator sends no bodies: install wrk")
    receive, send = _SPAWN.Pipe(duplex=False)
    process = _SPAWN.Process(target=_loadgen_child, args=(spec, send), daemon=True)
    process.start()
    send.close()
    deadline_s = _CHILD_START_TIMEOUT_S + spec.warmup_s + spec.duration_s + _LOAD_GRACE_S
    try:
        if not receive.poll(deadline_s):
            raise RuntimeError(f"load generator hung ({server}, {spec.connections} connections)")
        kind, payload = receive.recv()
    finally:
        _stop_process(process)
    if kind != "ok":
        raise RuntimeError(f"load generator failed against {server}: {payload}")
    count, errors, cpu_s, p50, p99 = payload
    result = LoadResult(
        server=server,
        connections=spec.connections,
        requests=count,
        errors=errors,
        duration_s=spec.duration_s,
        rps=count / spec.duration_s,
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
    )
    return with_cpu(result, cpu_s)


# ---- wrk --------------------------------------------------------------------

_WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _WRK_UNITS_MS[match[2]]


def parse_wrk(output: str, server: str, connections: int) -> LoadResult:
    """Read requests/s, percentiles and errors out of ``wrk --latency`` output."""
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.M))
    requests = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if requests is None or rps is None or set(percentiles) != {"50", "99"}:
        raise ValueError(f"cannot parse wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx is not None:
        errors += int(non_2xx[1])
    return LoadResult(
        server=server,
        connections=connections,
        requests=int(requests[1]),
        errors=errors,
        duration_s=_wrk_ms(requests[2] + requests[3]) / 1000,
        rps=float(rps[1]),
        p50_ms=_wrk_ms(percentiles["50"]),
        p99_ms=_wrk_ms(percentiles["99"]),
    )


def wrk_load(wrk: str, server: str, spec: LoadSpec) -> LoadResult:
    """wrk cannot skip a warm-up inside one run, so warm up with a separate short run."""
    url = f"http://{spec.host}:{spec.port}{spec.path}"
    threads = str(max(1, min(spec.connections, os.cpu_count() or 1)))
    base = [wrk, "-t", threads, "-c", str(spec.connections)]
    timeout = spec.warmup_s + spec.duration_s + _LOAD_GRACE_S
    with contextlib.ExitStack() as stack:
        if spec.body_bytes:
            script = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".lua"))
            script.write(_post_script(spec.body_bytes))
            script.flush()
            base += ["-s", script.name]
        return _wrk_runs(base, url, server, spec, timeout)


def _post_script(body_bytes: int) -> str:
    """A wrk script that POSTs ``body_bytes`` bytes with every request."""
    return (
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {body_bytes})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )


def _wrk_runs(base: list[str], url: str, server: str, spec: LoadSpec, timeout: float) -> LoadResult:
    if spec.warmup_s > 0:
        warm = [*base, "-d", f"{max(1, round(spec.warmup_s))}s", url]
        subprocess.run(warm, check=True, capture_output=True, timeout=timeout)
    measured = [*base, "-d", f"{max(1, round(spec.duration_s))}s", "--latency", url]
    before = cpu_by_role(spec.processes)
    done = subprocess.run(measured, check=True, capture_output=True, text=True, timeout=timeout)
    cpu_s = _cpu_delta(before, cpu_by_role(spec.processes))
    return with_cpu(parse_wrk(done.stdout, server, spec.connections), cpu_s)


# ---- the bare aiohttp baseline (runs in its own process) -------------------


async def _serve_bare(out: Connection) -> None:
    from aiohttp import web  # imported here: the load generator child never needs it

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    # Bodies up to Turnout's default limit (16 MiB), not aiohttp's 1 MiB.
    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_get(PATH, hello)
    app.router.add_post(ECHO_PATH, echo)
    # No access log, as Turnout's proxy: compare the HTTP paths, not logging.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    out.send(runner.addresses[0][1])
    out.close()
    await asyncio.Event().wait()  # serve until the parent terminates us


def _bare_child(out: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    asyncio.run(_serve_bare(out))


def start_bare_server() -> tuple[BaseProcess, int]:
    """Start the baseline server; return its process and the port it bound."""
    receive, send = _SPAWN.Pipe(duplex=False)
    process = _SPAWN.Process(target=_bare_child, args=(send,), daemon=True)
    process.start()
    send.close()
    if not receive.poll(_CHILD_START_TIMEOUT_S):
        _stop_process(process)
        raise RuntimeError("the bare aiohttp server did not start")
    return process, int(receive.recv())


def _stop_process(process: BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()


# ---- Turnout ----------------------------------------------------------------


def _wait_first_ok(url: str) -> None:
    """Poll until ``url`` answers 200: routes reach the proxy asynchronously."""
    deadline = time.perf_counter() + _FIRST_RESPONSE_TIMEOUT_S
    last = "no answer"
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:  # 404/503 until route and replica are live
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.002)
    raise RuntimeError(f"no 200 from {url} within {_FIRST_RESPONSE_TIMEOUT_S:.0f} s ({last})")


def start_turnout(startup: StartupTimes, proxy_workers: int = 1) -> Client:
    """init → create_backend → create_endpoint → first 200, timing each step.

    The import is done before the clock starts: the target is about the
    instance coming up, not Python loading modules.
    """
    import turnout

    start = time.perf_counter()
    client = turnout.init(http_port=0, proxy_workers=proxy_workers)
    startup.init_s = time.perf_counter() - start
    client.create_backend("noop", noop)
    startup.create_backend_s = time.perf_counter() - start
    client.create_endpoint("noop", "noop", route=PATH, methods=["GET"])
    startup.create_endpoint_s = time.perf_counter() - start
    _wait_first_ok(client.http_address + PATH)
    startup.first_response_s = time.perf_counter() - start
    return client


def _http_port(client: Client) -> int:
    return int(client.http_address.rsplit(":", 1)[1].strip("/"))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    return math.nan


def replica_rss_mib(client: Client) -> float:
    """RSS of the largest replica (there is one unless the defaults change)."""
    pids = [r.pid for r in client.list_replicas("noop") if r.state == "RUNNING" and r.pid]
    return max((_rss_mib(pid) for pid in pids), default=math.nan)


def _children_of(parent: int) -> Iterator[tuple[int, str]]:
    """(pid, command line) of ``parent``'s direct children, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # The command name may hold spaces and parentheses: skip past the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                yield int(entry.name), cmdline.decode(errors="replace")


def turnout_processes(client: Client) -> Processes:
    """Every process of the instance, named by role: the controller, what it
    started, and the proxy's workers (``--proxy-workers``: proxy#2, ...)."""
    processes = [("controller", client.controller_pid)]
    children = sorted(_children_of(client.controller_pid))
    proxies = [pid for pid, cmdline in children if "-m turnout.proxy" in cmdline]
    for proxy in proxies:
        children += sorted(_children_of(proxy))
    for pid, cmdline in children:
        role = next((r for r in ("proxy", "replica") if f"-m turnout.{r}" in cmdline), "other")
        taken = sum(1 for name, _ in processes if name.split("#")[0] == role)
        processes.append((f"{role}#{taken + 1}" if taken else role, pid))
    return tuple(processes)


def proxy_pid(client: Client) -> int | None:
    """The proxy is the controller's child started with ``-m turnout.proxy``."""
    for pid, cmdline in _children_of(client.controller_pid):
        if "-m turnout.proxy" in cmdline:
            return pid
    return None


# ---- orchestration ----------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "turnout_source": _turnout_source(),
    }


def _turnout_source() -> str:
    """Where the measured code came from, with its commit when that is a git checkout.

    Results are only comparable across runs of the same code, and the package
    may be an editable install of a tree with uncommitted changes.
    """
    import turnout

    where = Path(turnout.__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "-C", str(where), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(where)
    return f"{where} (git {described})"


def _raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the cleanup in ``finally`` blocks runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _load_runner(choice: str) -> tuple[str, Callable[[str, LoadSpec], LoadResult]]:
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        raise RuntimeError("--loadgen wrk: wrk is not on PATH")
    if choice != "builtin" and wrk is not None:
        return f"wrk ({wrk})", lambda server, spec: wrk_load(wrk, server, spec)
    return "builtin asyncio HTTP/1.1 client, 1 process", builtin_load


def measure(args: argparse.Namespace, report: Report, stack: contextlib.ExitStack) -> None:
    """Start both servers, run the load matrix, fill ``report``."""
    _, load = _load_runner(args.loadgen)
    stack.callback(_shutdown_turnout)  # registered first: a half-started instance stops too
    client = start_turnout(report.startup, args.proxy_workers)
    _log(f"turnout up: first 200 after {report.startup.first_response_s:.3f} s")
    time.sleep(1.0)  # let start-up work (imports, first GC) settle before "idle"
    report.replica_rss_idle_mib = replica_rss_mib(client)
    proxy = proxy_pid(client)
    replicas = [r.pid for r in client.list_replicas("noop")]
    _log(f"pids: controller {client.controller_pid}, proxy {proxy}, replicas {replicas}")

    bare_process, bare_port = start_bare_server()
    stack.callback(_stop_process, bare_process)
    servers = {
        "bare": (bare_port, (("server", bare_process.pid or 0),)),
        "turnout": (_http_port(client), turnout_processes(client)),
    }
    _run_matrix(args, servers, load, report)

    time.sleep(1.0)
    report.replica_rss_after_load_mib = replica_rss_mib(client)
    if proxy is not None:
        report.proxy_rss_after_load_mib = _rss_mib(proxy)


def _run_matrix(
    args: argparse.Namespace,
    servers: dict[str, tuple[int, Processes]],
    load: Callable[[str, LoadSpec], LoadResult],
    report: Report,
) -> None:
    """Each server at each connection count; ``servers`` maps name to (port, processes)."""
    for connections, server in in_turn(args.servers, args.connections, rounds=1):
        port, processes = servers[server]
        spec = LoadSpec(HOST, port, PATH, connections, args.warmup, args.duration, processes)
        result = load(server, spec)
        report.runs.append(result)
        _log(
            f"{server:8} c={connections:<3} {result.rps:9.0f} req/s  "
            f"p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms  "
            f"server CPU {result.server_cpu_us_per_req:6.0f} us/req  "
            f"errors {result.errors}  (load avg {result.loadavg_1m_after:.1f})"
        )
        if result.requests == 0:
            raise RuntimeError(f"no successful request to {server} at c={connections}")


def in_turn(sides: Sequence[T], connections: Sequence[int], rounds: int) -> Iterator[tuple[int, T]]:
    """(connection count, side) of each run when several sides are compared:
    every side at each count, the sides' order flipped every other round
    (A B, B A, ...), so a slow phase of a shared machine hits all of them."""
    for round_ in range(rounds):
        for count in connections:
            for side in sides if round_ % 2 == 0 else sides[::-1]:
                yield count, side


def _shutdown_turnout() -> None:
    import turnout

    turnout.shutdown()


# ---- output -----------------------------------------------------------------


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "no")


def _compare(value: float, limit: float, at_least: bool) -> bool | None:
    if math.isnan(value):
        return None
    return value >= limit if at_least else value <= limit


# (label, LoadResult attribute, decimals) of the rows printed per connection count.
_LOAD_ROWS = (
    ("req/s", "rps", 0),
    ("p50 ms", "p50_ms", 3),
    ("p99 ms", "p99_ms", 3),
    ("server CPU us/req", "server_cpu_us_per_req", 0),
)


def _load_target(connections: int, attr: str, ratio: float) -> tuple[str, bool | None]:
    """The issue's target for this row, if it has one, and whether it is met."""
    if connections == 64 and attr == "rps":
        met = _compare(ratio, TARGET_THROUGHPUT_RATIO_AT_64, at_least=True)
        return f">= {TARGET_THROUGHPUT_RATIO_AT_64:.2f}x bare", met
    if connections == 1 and attr == "p50_ms":
        met = _compare(ratio, TARGET_P50_RATIO_AT_1, at_least=False)
        return f"<= {TARGET_P50_RATIO_AT_1:.1f}x bare", met
    return "", None


def _load_rows(report: Report, connections: int) -> list[list[str]]:
    bare, turnout = report.find("bare", connections), report.find("turnout", connections)
    rows = []
    for label, attr, digits in _LOAD_ROWS:
        bare_value = getattr(bare, attr) if bare else math.nan
        turnout_value = getattr(turnout, attr) if turnout else math.nan
        ratio = _ratio(turnout_value, bare_value)
        target, met = _load_target(connections, attr, ratio)
        rows.append(
            [
                f"c={connections:<3} {label}",
                _fmt(bare_value, digits),
                _fmt(turnout_value, digits),
                _fmt(ratio, 2),
                target,
                _met(met),
            ]
        )
    return rows


def summary_rows(report: Report) -> list[list[str]]:
    """Rows of the summary table: measure, bare, turnout, ratio, target, met."""
    rows: list[list[str]] = []
    for connections in sorted({run.connections for run in report.runs}):
        rows.extend(_load_rows(report, connections))
    rss, first = report.replica_rss_idle_mib, report.startup.first_response_s
    rows.append(
        [
            "replica RSS idle, MiB",
            "-",
            _fmt(rss, 1),
            "-",
            f"<= {TARGET_REPLICA_RSS_MIB:.0f} MB",
            _met(_compare(rss, TARGET_REPLICA_RSS_MIB, at_least=False)),
        ]
    )
    rows.append(
        ["replica RSS after load, MiB", "-", _fmt(report.replica_rss_after_load_mib, 1)]
        + ["-", "", "-"]
    )
    rows.append(
        [
            "init to first response, s",
            "-",
            _fmt(first, 3),
            "-",
            f"<= {TARGET_INIT_TO_FIRST_RESPONSE_S:.0f} s",
            _met(_compare(first, TARGET_INIT_TO_FIRST_RESPONSE_S, at_least=False)),
        ]
    )
    return rows


def format_table(report: Report) -> str:
    header = ["measure", "bare", "turnout", "turnout/bare", "target", "met"]
    rows = [header, *summary_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned, so digits line up.
    align = ["<", ">", ">", ">", "<", "<"]
    lines = [
        "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def print_summary(report: Report) -> None:
    s = report.startup
    print()
    print(
        f"Turnout HTTP no-op benchmark, {report.date}; nproc {report.machine['nproc']}, "
        f"Python {report.machine['python']}"
    )
    print(f"turnout from {report.machine['turnout_source']}; proxy workers {report.proxy_workers}")
    print(
        f"load generator: {report.loadgen}; warm-up {report.warmup_s:g} s, "
        f"measured {report.duration_s:g} s per run"
    )
    print(format_table(report))
    print(
        f"start-up (s after init() was called): init {s.init_s:.3f}, "
        f"create_backend {s.create_backend_s:.3f}, create_endpoint {s.create_endpoint_s:.3f}, "
        f"first 200 {s.first_response_s:.3f}"
    )
    for run in report.runs:
        if run.server == "turnout" and run.cpu_us_per_req_by_process:
            split = ", ".join(f"{r} {us:.0f}" for r, us in run.cpu_us_per_req_by_process.items())
            print(f"turnout CPU us/req at c={run.connections}, by process: {split}")
    errors = sum(run.errors for run in report.runs)
    if errors:
        print(f"note: {errors} failed requests in total (see the JSON for each run)")
    print("targets are informational: nothing fails on them")


def write_json(report: Report, path: Path) -> None:
    data = asdict(report)
    data["ratios"] = {
        str(c): dict(zip(("throughput", "p50"), report.ratios(c), strict=True))
        for c in sorted({run.connections for run in report.runs})
    }
    data["targets"] = {
        "throughput_ratio_at_64_min": TARGET_THROUGHPUT_RATIO_AT_64,
        "p50_ratio_at_1_max": TARGET_P50_RATIO_AT_1,
        "replica_rss_mib_max": TARGET_REPLICA_RSS_MIB,
        "init_to_first_response_s_max": TARGET_INIT_TO_FIRST_RESPONSE_S,
    }
    path.write_text(json.dumps(_nan_to_none(data), indent=2, allow_nan=False) + "\n")


def _nan_to_none(value: Any) -> Any:
    """NaN is not JSON: write null for what was not measured."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


# ---- command line -------------------------------------------------------------


def _connection_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("connection counts must be >= 1")
    return values


def _server_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or not set(values) <= {"bare", "turnout"}:
        raise argparse.ArgumentTypeError("servers: a comma list of bare, turnout")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=float, default=8.0, help="measured seconds per run (default 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)"
    )
    parser.add_argument(
        "--connections",
        type=_connection_list,
        default=[1, 16, 64],
        help="comma list of concurrent connections (default 1,16,64)",
    )
    parser.add_argument(
        "--servers",
        type=_server_list,
        default=["bare", "turnout"],
        help="which to load, e.g. 'turnout' alone while profiling (default bare,turnout)",
    )
    parser.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "builtin"],
        default="auto",
        help="auto: wrk if on PATH, else the built-in generator (default auto)",
    )
    parser.add_argument(
        "--proxy-workers",
        type=int,
        default=1,
        help="Turnout's proxy processes, turnout.init(proxy_workers=N) (default 1)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.proxy_workers < 1:
        parser.error("--proxy-workers must be >= 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_on_sigterm()
    loadgen, _ = _load_runner(args.loadgen)
    report = Report(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine=_machine(),
        loadgen=loadgen,
        proxy_workers=args.proxy_workers,
        warmup_s=args.warmup,
        duration_s=args.duration,
    )
    try:
        # Every process started is registered here as soon as it exists, and
        # stopped on the way out whatever the way out is (error, Ctrl-C, SIGTERM).
        with contextlib.ExitStack() as stack:
            measure(args, report, stack)
    except KeyboardInterrupt:
        _log("interrupted; everything started was shut down")
        return 130
    print_summary(report)
    if args.json is not None:
        write_json(report, args.json)
        _log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
