"""The replica process: load one backend, serve it over gRPC, stop on SIGTERM.

::

    python -m turnout.replica (--spec-fd N | --spec-file PATH) --replica-id ID
        [--host 127.0.0.1] [--ready-fd N] [--parent-pid PID] [--log-file PATH]
        [--stuck-call-grace SECONDS] [--credentials-file PATH]

The spec is a serialized ``turnout.v1.CreateBackendRequest``, read to its end
from an inherited descriptor (the controller's launcher passes it on stdin,
``--spec-fd 0``) or from a file (by hand, in tests). Readiness
(or the reason for giving up) is reported on ``--ready-fd`` as described in
``turnout._internal.child_process``; a class's ``check_health()`` runs once before that, and
its failure is reported like a failing constructor.

The credentials file (0600, written by the controller) holds the tokens this
replica accepts (the proxy's and handles': the data role, never admin) and
its own, which handles created by the backend's code present. A replica
started without one (by hand, in tests) checks no token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from turnout._internal import (
    auth,
    logs,
    readiness,
    replica_args,
    replica_context,
    rpc,
    tls_options,
)
from turnout._internal.child_process import die_with_parent, exit_with_owner, set_memory_limit
from turnout._internal.errors import TokenFileError, TurnoutError
from turnout._internal.readiness import Readiness
from turnout._internal.replica_args import STUCK_CALL_GRACE_S, ReplicaArgs
from turnout._internal.rpc import SERVER_OPTIONS, add_port, aio_server
from turnout.replica.runtime import INVALID_ARGUMENT, BackendRuntime, LoadError
from turnout.replica.servicer import ReplicaServicer, add_to_server
from turnout.v1 import controller_pb2, replica_pb2

log = logging.getLogger("turnout.replica")

REPLICA_SERVICE = replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Seconds in-flight requests get to finish after SIGTERM, unless the backend's
# graceful_shutdown_timeout says otherwise.
SHUTDOWN_GRACE = 5.0
# After SIGTERM, how long no call may have been open before the server stops
# accepting new ones (see ReplicaServicer.drain): longer than a stream that
# was opened just before the replica left the routing snapshot takes to come.
DRAIN_QUIET_S = 0.2
# A check_health() that takes longer than this counts as failed.
HEALTH_CHECK_TIMEOUT = 10.0
# Seconds an ASGI app may take for its lifespan startup, and for its shutdown.
APP_LIFESPAN_TIMEOUT_S = 60.0


class BackendHealth(health.aio.HealthServicer):  # type: ignore[misc]  # untyped base
    """The standard health service, which also asks the backend's check_health().

    The controller's periodic Check therefore tells a dead or hung replica
    (no answer in time) from one whose own check fails (NOT_SERVING). A
    replica with handler calls stuck ``stuck_call_grace`` seconds past the
    moment their callers gave up is NOT_SERVING too.
    """

    def __init__(
        self,
        runtime: BackendRuntime,
        stuck_call_grace: float = STUCK_CALL_GRACE_S,
        verifier: auth.Verifier | None = None,
    ) -> None:
        super().__init__()
        self._runtime = runtime
        self._stuck_call_grace = stuck_call_grace
        self._verifier = verifier
        self._check: asyncio.Future[bool] | None = None
        self._healthy = True  # what the last check_health() said

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ],
    ) -> health_pb2.HealthCheckResponse:
        stuck = self._runtime.stuck_calls(self._stuck_call_grace)
        if stuck and request.service in ("", REPLICA_SERVICE):
            log.warning(
                "%d handler call(s) still running %.0f s after their callers gave up; "
                "reporting NOT_SERVING so that this replica is replaced",
                stuck,
                self._stuck_call_grace,
            )
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._runtime.has_check_health and request.service in ("", REPLICA_SERVICE):
            if not await self._backend_healthy(context.invocation_metadata()):
                return health_pb2.HealthCheckResponse(
                    status=health_pb2.HealthCheckResponse.NOT_SERVING
                )
        reply: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return reply

    async def _backend_healthy(self, metadata: Any) -> bool:
        """What the backend's check_health() says. Health is open to probes,
        but only a caller with a token makes user code run, and callers at the
        same time share one run: anyone else gets the last result."""
        if self._verifier is not None and self._verifier.roles(auth.bearer(metadata)) is None:
            return self._healthy
        if self._check is None or self._check.done():
            self._check = asyncio.ensure_future(self._run_check())
        # Shielded: a caller that gives up must not cancel the others' check.
        return await asyncio.shield(self._check)

    async def _run_check(self) -> bool:
        try:
            await asyncio.wait_for(self._runtime.check_health(), HEALTH_CHECK_TIMEOUT)
            self._healthy = True
        except Exception as exc:
            log.warning("check_health failed: %s: %s", type(exc).__name__, exc)
            self._healthy = False
        return self._healthy


def main(argv: Sequence[str] | None = None) -> int:
    """Run a replica until SIGTERM/SIGINT; the process exit status."""
    options = replica_args.parse(sys.argv[1:] if argv is None else argv)
    if options.parent_pid is not None:
        die_with_parent(options.parent_pid)
    exit_with_owner()
    configure_logging(options.replica_id, options.log_file)
    try:
        # Before any user code loads: an exposed plaintext port is refused.
        tls_options.refuse_exposed(options.host, options.security, "a replica")
    except TurnoutError as exc:
        return _give_up(options, "INVALID_ARGUMENT", str(exc))
    controller = replica_context.controller_address()
    if controller is not None:
        # Handles inside the backend reach their instance as the replica does.
        rpc.remember(controller, options.security)
    try:
        verifier = load_credentials(options.credentials_file)
        spec = read_spec(options.spec_file, options.spec_fd)
        if spec.replica_options.memory_bytes:
            # Before the backend loads: its imports and constructor count.
            set_memory_limit(spec.replica_options.memory_bytes)
        runtime = BackendRuntime.load(spec)
    except LoadError as exc:
        log.error("cannot load the backend: %s\n%s", exc.message, exc.traceback)
        if options.ready_fd is not None:
            readiness.write(
                options.ready_fd, Readiness.failed(exc.code, exc.message, exc.traceback)
            )
        return 1
    try:
        grace = (
            spec.config.graceful_shutdown_timeout
            if spec.config.HasField("graceful_shutdown_timeout")
            else SHUTDOWN_GRACE
        )
        return asyncio.run(serve(options, runtime, grace, verifier))
    finally:
        runtime.close()
        _stop_own_group()
        busy = runtime.running_in_threads
        if busy:
            # Handler threads cannot be interrupted, and the interpreter would
            # wait for them at exit: a hung handler must not keep us alive.
            log.warning("%d handler calls still running; exiting without them", busy)
            logging.shutdown()
            os._exit(0)


def _stop_own_group() -> None:
    """SIGTERM to what this replica's handlers started (its process group,
    which the launcher made its own): it ends with the replica even when no
    controller is left to kill the group (PDEATHSIG after a controller crash)."""
    if os.getpgrp() != os.getpid():
        return  # started by hand, in someone else's group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(os.getpgrp(), signal.SIGTERM)


def configure_logging(replica_id: str, log_file: Path | None = None) -> None:
    logs.configure(
        log_file,
        "%(asctime)s replica %(replica_id)s %(levelname)s %(name)s: %(message)s",
        defaults={"replica_id": replica_id},
    )
    if log_file is not None:
        # What handlers print is rotated with the rest of the replica's log.
        logs.capture_prints("print", descriptors=True)


def load_credentials(path: Path | None) -> auth.Verifier | None:
    """What checks callers' tokens (None: no file, no checks); the replica's own
    token is kept for the handles its backend creates (before any user code runs)."""
    if path is None:
        return None
    try:
        credentials = auth.ChildCredentials.read(path)
    except (TokenFileError, ValueError, KeyError) as exc:
        raise LoadError(INVALID_ARGUMENT, f"cannot read credentials {str(path)!r}: {exc}") from exc
    auth.set_process_token(credentials.token)
    return auth.Verifier(credentials.accept)


def read_spec(path: Path | None, fd: int | None = None) -> controller_pb2.CreateBackendRequest:
    """The spec from descriptor ``fd`` (read to its end, then closed) or ``path``."""
    where = f"descriptor {fd}" if fd is not None else f"file {str(path)!r}"
    try:
        if fd is not None:
            with os.fdopen(fd, "rb", closefd=True) as stream:
                raw = stream.read()
            if fd == 0:
                # Whatever user code reads from stdin later finds it empty.
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
        else:
            assert path is not None
            raw = path.read_bytes()
        return controller_pb2.CreateBackendRequest.FromString(raw)
    except (OSError, DecodeError) as exc:
        raise LoadError(INVALID_ARGUMENT, f"cannot read the spec from {where}: {exc}") from exc


async def serve(
    options: ReplicaArgs,
    runtime: BackendRuntime,
    grace: float = SHUTDOWN_GRACE,
    verifier: auth.Verifier | None = None,
) -> int:
    try:
        await runtime.start_app(APP_LIFESPAN_TIMEOUT_S)
    except LoadError as exc:
        log.error("%s\n%s", exc.message, exc.traceback)
        return _give_up(options, exc.code, exc.message, exc.traceback, logged=True)
    if runtime.has_check_health:
        # On the loop the later checks run on: an async check_health() may
        # create loop-bound objects the first time.
        try:
            await runtime.check_health_at_start(HEALTH_CHECK_TIMEOUT)
        except LoadError as exc:
            log.error("the backend is not healthy: %s\n%s", exc.message, exc.traceback)
            return _give_up(options, exc.code, exc.message, exc.traceback, logged=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    server = aio_server(options.security, SERVER_OPTIONS, auth.interceptors(verifier, "replica"))
    servicer = ReplicaServicer(runtime)
    add_to_server(servicer, server)
    grace_s = options.stuck_call_grace_s
    health_servicer = BackendHealth(
        runtime, STUCK_CALL_GRACE_S if grace_s is None else grace_s, verifier
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [REPLICA_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server
    )
    host = options.host
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        port = add_port(server, f"{bind_host}:0", options.security)
    except RuntimeError as exc:
        return _give_up(options, "UNAVAILABLE", f"cannot bind {host}: {exc}")
    await server.start()
    for service in ("", REPLICA_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    address = f"{bind_host}:{port}"
    log.info("serving backend %r on %s (pid %d)", runtime.backend.tag, address, os.getpid())
    if options.ready_fd is not None:
        try:
            readiness.write(
                options.ready_fd,
                Readiness(
                    ok=True,
                    address=address,
                    pid=os.getpid(),
                    capabilities=runtime.capabilities(),
                ),
            )
        except OSError as exc:
            log.error("cannot report readiness: %s", exc)
            await server.stop(grace=None)
            return 1

    await stop.wait()
    log.info("shutting down; in-flight requests get %.1fs", grace)
    await health_servicer.enter_graceful_shutdown()
    began = loop.time()
    await servicer.drain(DRAIN_QUIET_S, grace)
    await server.stop(grace=max(0.0, grace - (loop.time() - began)))
    await runtime.stop_app(APP_LIFESPAN_TIMEOUT_S)
    log.info("stopped")
    return 0


def _give_up(
    options: ReplicaArgs, code: str, message: str, traceback: str = "", logged: bool = False
) -> int:
    if not logged:
        log.error("%s", message)
    if options.ready_fd is not None:
        readiness.write(options.ready_fd, Readiness.failed(code, message, traceback))
    return 1
