"""The proxy process: bind, follow the controller's routes, serve until told to stop.

It outlives a controller that crashes (when started without ``--parent-pid``):
the routing stream reconnects to the same address forever, and requests are
served on the last snapshot meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from turnout import _logging, _process

from .app import DEFAULT_MAX_BODY_BYTES, ProxyState, build_server
from .controller_link import SUBSCRIBER_ID, report_stats, watch_routes

logger = logging.getLogger("turnout.proxy")

FIRST_SNAPSHOT_TIMEOUT_S = 30.0

# One line per request, written by aiohttp's own access logger after the
# response (nothing added to the request path): time, client, request line
# (method, path, version), status, body bytes, duration in seconds, and the
# request id the proxy answered with ("-" for system paths).
ACCESS_LOG_FORMAT = '%t %a "%r" %s %b %Tf rid=%{X-Request-Id}o'


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m turnout.proxy")
    parser.add_argument("--controller", required=True, help="controller gRPC address host:port")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port; 0 = any free port")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted; larger ones get 413 (default 16 MiB)",
    )
    parser.add_argument("--ready-fd", type=int, help="pipe to report readiness on")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    parser.add_argument("--log-file", type=Path, help="rotated log file (default: stderr)")
    parser.add_argument(
        "--access-log", type=Path, help="rotated access log, one line per request (default: none)"
    )
    return parser.parse_args(argv)


def access_logger(path: Path | None) -> logging.Logger | None:
    """The logger aiohttp writes access lines to, alone in its rotated file."""
    if path is None:
        return None
    log = logging.getLogger("turnout.proxy.access")
    handler = _logging.rotating_handler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def _fail(args: argparse.Namespace, code: str, message: str) -> int:
    logger.error("%s", message)
    if args.ready_fd is not None:
        _process.report_failure(args.ready_fd, code, message)
    return 1


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    state = ProxyState(args.max_body_bytes)
    runner = web.ServerRunner(
        build_server(
            state,
            access_log=access_logger(args.access_log),
            access_log_format=ACCESS_LOG_FORMAT,
        )
    )
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_port=False)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await state.close()
        return _fail(args, "UNAVAILABLE", f"cannot listen on {args.host}:{args.port}: {exc}")
    host, port = runner.addresses[0][:2]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    watcher = asyncio.create_task(watch_routes(args.controller, state.apply))
    state.spawn(report_stats(args.controller, state.router.stats, SUBSCRIBER_ID))
    if not await _first_snapshot_or_stop(state, stop):
        await _shut_down(watcher, runner, state)
        if stop.is_set():
            _fail(args, "UNAVAILABLE", "stopped before the first routing snapshot arrived")
            return 0
        return _fail(
            args,
            "UNAVAILABLE",
            f"no routes from the controller at {args.controller} "
            f"within {FIRST_SNAPSHOT_TIMEOUT_S:.0f} s",
        )
    if args.ready_fd is not None:
        _process.report_ready(args.ready_fd, address=address, pid=os.getpid())
    logger.info("proxy listening on http://%s", address)

    await stop.wait()
    logger.info("proxy stopping")
    await _shut_down(watcher, runner, state)
    return 0


async def _first_snapshot_or_stop(state: ProxyState, stop: asyncio.Event) -> bool:
    """Wait for the first routing snapshot; False on timeout or a stop signal."""
    waits = [
        asyncio.create_task(state.first_snapshot.wait()),
        asyncio.create_task(stop.wait()),
    ]
    await asyncio.wait(waits, timeout=FIRST_SNAPSHOT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    return state.first_snapshot.is_set() and not stop.is_set()


async def _shut_down(
    watcher: asyncio.Task[None], runner: web.ServerRunner, state: ProxyState
) -> None:
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    # Stops accepting and lets in-flight requests finish; only then may the
    # replica streams they use be closed.
    await runner.cleanup()
    await state.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.parent_pid is not None:
        _process.die_with_parent(args.parent_pid)
    _logging.configure(args.log_file, "%(asctime)s %(levelname)s proxy %(name)s: %(message)s")
    return asyncio.run(serve(args))
