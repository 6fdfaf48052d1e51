"""The proxy process: bind, follow the controller's routes, serve until told to stop.

It outlives a controller that crashes (when started without ``--parent-pid``):
the routing stream reconnects to the same address forever, and requests are
served on the last snapshot meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from turnout._internal import (
    auth,
    child_process,
    logs,
    proxy_args,
    readiness,
    subscribers,
    tls_options,
)
from turnout._internal.errors import TokenFileError, TurnoutError
from turnout._internal.proxy_args import FD_RESERVE, ProxyArgs
from turnout._internal.readiness import Readiness
from turnout._internal.rpc import Security
from turnout._sending.controller_link import StatsReporter, watch_routes

from .app import ProxyState, build_server
from .front_door import (
    AcceptErrors,
    AccessLog,
    ConnectionLimits,
    JsonAccessLog,
    default_max_connections,
    raise_fd_limit,
)
from .workers import SharedCounters, Workers, WorkerSpec, new_stats_dir

logger = logging.getLogger("turnout.proxy")

FIRST_SNAPSHOT_TIMEOUT_S = 30.0


def https_context(args: ProxyArgs) -> ssl.SSLContext | None:
    """The server-side TLS context ``--https-cert``/``--https-key`` ask for; None = HTTP."""
    if args.https_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.https_cert, args.https_key)
    return context


def system_token(args: ProxyArgs) -> auth.Verifier | None:
    """What checks the token the protected system paths want (re-read when
    its file changes, as the controller does); None = unprotected."""
    if not args.protect_system_paths:
        return None
    return auth.Verifier({}, args.system_token_file)


def connection_limits(args: ProxyArgs) -> ConnectionLimits:
    """The limits ``args`` ask for; raises the open-file limit as far as allowed."""
    if args.max_connections is None:
        max_connections = default_max_connections()
    else:
        max_connections = args.max_connections
        room = raise_fd_limit() - FD_RESERVE
        if max_connections > room:
            logger.warning(
                "--max-connections %d is more than the open-file limit allows (%d); "
                "accepts will fail with 'Too many open files' before it is reached",
                max_connections,
                room,
            )
    return ConnectionLimits(args.read_timeout, args.idle_timeout, max_connections)


def access_logger(path: Path | None) -> logging.Logger | None:
    """The logger aiohttp writes access lines to, alone in its rotated file."""
    if path is None:
        return None
    log = logging.getLogger("turnout.proxy.access")
    handler = logs.rotating_handler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def _fail(args: ProxyArgs, code: str, message: str) -> int:
    logger.error("%s", message)
    if args.ready_fd is not None:
        readiness.write(args.ready_fd, Readiness.failed(code, message))
    return 1


async def serve(args: ProxyArgs) -> int:
    try:
        tls = tls_options.checked(args.tls)
        https = https_context(args)
    except TurnoutError as exc:
        return _fail(args, "INVALID_ARGUMENT", str(exc))
    except (OSError, ssl.SSLError) as exc:
        return _fail(args, "INVALID_ARGUMENT", f"cannot load the HTTPS certificate: {exc}")
    # The proxy's own token (router and data roles), for the controller and replicas.
    token = None
    if args.credentials_file is not None:
        try:
            token = auth.ChildCredentials.read(args.credentials_file).token
        except (TokenFileError, ValueError, KeyError) as exc:
            return _fail(args, "INVALID_ARGUMENT", f"cannot read the credentials file: {exc}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.set_exception_handler(AcceptErrors())

    index = args.worker_index
    lead_of_workers = index == 0 and args.workers > 1
    stats_dir = new_stats_dir() if lead_of_workers else args.stats_dir
    state = ProxyState(
        args.max_body_bytes,
        worker_index=index,
        max_response_bytes=args.max_response_bytes,
        read_timeout=args.read_timeout,
        security=Security(tls=tls, token=token),
        system_token=system_token(args),
    )
    if args.prefer_local_replicas:
        state.router.pool.prefer_node = args.node_id
    counters = None
    if stats_dir is not None:
        counters = SharedCounters(stats_dir, index, state.router.stats, state.gauges)
        state.count_with(counters)
    runner = web.ServerRunner(
        build_server(
            state,
            connection_limits(args),
            access_log=access_logger(args.access_log),
            access_log_class=JsonAccessLog if args.access_log_format == "json" else AccessLog,
        )
    )
    await runner.setup()
    # Sharing the port only when asked to: otherwise a port in use is an error.
    site = web.TCPSite(
        runner, args.host, args.port, reuse_port=stats_dir is not None, ssl_context=https
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await state.close()
        if lead_of_workers and stats_dir is not None:
            shutil.rmtree(stats_dir, ignore_errors=True)
        return _fail(args, "UNAVAILABLE", f"cannot listen on {args.host}:{args.port}: {exc}")
    host, port = runner.addresses[0][:2]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    name = subscribers.proxy(index, args.subscriber_id)
    watcher = asyncio.create_task(watch_routes(args.controller, state.apply, name, state.security))
    reporter = StatsReporter(
        args.controller, state.sender.stats, name, state.security, state.sender.load
    )
    state.spawn(reporter.run())
    if counters is not None:
        state.spawn(counters.share_forever())
    workers = None
    starting: asyncio.Task[None] | None = None
    if lead_of_workers and stats_dir is not None:
        workers = Workers(WorkerSpec(args, port, stats_dir), args.workers)
        # Started now, so that they load and get their routes while this one does.
        starting = asyncio.create_task(workers.start())
    if not await _first_snapshot_or_stop(state, stop):
        if starting is not None:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        await _shut_down(watcher, runner, state, workers)
        if stop.is_set():
            _fail(args, "UNAVAILABLE", "stopped before the first routing snapshot arrived")
            return 0
        return _fail(
            args,
            "UNAVAILABLE",
            f"no routes from the controller at {args.controller} "
            f"within {FIRST_SNAPSHOT_TIMEOUT_S:.0f} s",
        )
    if starting is not None:
        try:
            await starting
        except (RuntimeError, OSError) as exc:
            await _shut_down(watcher, runner, state, workers)
            return _fail(args, "UNAVAILABLE", str(exc))
    if args.ready_fd is not None:
        readiness.write(args.ready_fd, Readiness(ok=True, address=address, pid=os.getpid()))
    who = f"proxy worker {index}" if index else "proxy"
    logger.info("%s listening on %s://%s", who, "https" if https else "http", address)

    await stop.wait()
    logger.info("%s stopping", who)
    await _shut_down(watcher, runner, state, workers)
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
    watcher: asyncio.Task[None],
    runner: web.ServerRunner,
    state: ProxyState,
    workers: Workers | None = None,
) -> None:
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    # The workers drain their requests while this process drains its own.
    stopping = asyncio.create_task(workers.stop()) if workers is not None else None
    # Stops accepting and lets in-flight requests finish; only then may the
    # replica streams they use be closed.
    await runner.cleanup()
    await state.close()
    if stopping is not None:
        await stopping


def main(argv: list[str] | None = None) -> int:
    args = proxy_args.parse(sys.argv[1:] if argv is None else argv)
    if args.parent_pid is not None:
        child_process.die_with_parent(args.parent_pid)
    child_process.exit_with_owner()
    logs.configure(args.log_file, "%(asctime)s %(levelname)s proxy %(name)s: %(message)s")
    return asyncio.run(serve(args))
