"""The local launcher: children as OS processes on the controller's machine.

The first implementation of ``base.Launcher``, and the only place where the
controller starts and stops OS processes.

Every child is recorded in the store (``ChildRecord``) from the moment it is
spawned until it exits, so a controller restarted after a crash knows which
processes were its own: it re-adopts them (``adopt``) or stops them
(``stop_recorded``). In durable mode children do not die with the controller
(no ``--parent-pid``) and run in their own session, so a signal sent to the
controller's process group does not reach them either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import grpc
from google.protobuf.message import DecodeError

from turnout._internal import auth, command_replica, logs, proxy_args, replica_args
from turnout._internal.processes import AdoptedProcess, command_line, start_time
from turnout._internal.proxy_args import ProxyArgs
from turnout._internal.readiness import Readiness
from turnout._internal.replica_args import ReplicaArgs
from turnout._internal.rpc import Security, aio_channel
from turnout._internal.spawn import AsyncChild, spawn_async
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import replica_pb2, replica_pb2_grpc

from ..log_tail import LogChunk, read_chunk
from ..store import LOCAL, PROXY, ChildRecord, Store
from .base import STOP_TIMEOUT_S, Child, ProxySpec, ReconfigureError, SpawnError
from .health_channels import HealthChannels

logger = logging.getLogger(__name__)

# How long a child may take to load and report readiness (imports of large
# models happen here).
READY_TIMEOUT_S = 120.0
# gRPC's default I/O engine (EventEngine) passes each message between threads
# of its own before grpc.aio's poller thread sees it; the older engine does
# the socket I/O on the poller thread itself. On the proxy-to-replica hop that
# is about 10 % less CPU and latency per request at one connection
# (bench/RESULTS.md). A default only: the environment may choose otherwise.
CHILD_ENV_DEFAULTS = {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"}
# What a child inherits of the controller's environment: these names, and
# names with these prefixes (locale, gRPC, Python, CUDA and Turnout's own
# settings). Nothing else: user code runs in replicas, and a secret in the
# controller's environment (a token, a cloud key) must not reach it. What a
# backend needs besides goes in its replica_options env.
CHILD_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
     "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_DATA_HOME", "XDG_CACHE_HOME"}
)  # fmt: skip
CHILD_ENV_PREFIXES = ("LC_", "GRPC_", "PYTHON", "CUDA_", "TURNOUT_", "COVERAGE_")
# Never passed on, whatever the prefix: the client-side token settings.
CHILD_ENV_REFUSED = frozenset({auth.TOKEN_ENV, auth.TOKEN_FILE_ENV})


def child_environment(
    environ: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child: the defaults, what ``environ`` (the
    controller's) holds of the names above, then ``extra`` (the backend's own
    env, CUDA_VISIBLE_DEVICES as its GPUs say).

    Example::

        child_environment({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x"})
        # {"GRPC_EXPERIMENTS": "...", "PATH": "/bin"}
    """
    env = dict(CHILD_ENV_DEFAULTS)
    for name, value in environ.items():
        if name in CHILD_ENV_REFUSED:
            continue
        if name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES):
            env[name] = value
    env.update(extra or {})
    return env


# Replicas starting at once (fork to readiness report), per instance.
SPAWN_CONCURRENCY = min(8, max(2, os.cpu_count() or 1))


class OsProcess(Protocol):
    """What supervision needs of a process: a spawned one
    (``asyncio.subprocess.Process``) or an adopted one (``AdoptedProcess``)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def local_handle(pid: int, start: int) -> str:
    """The ``ChildRecord.handle`` of a local process: pid and start time
    (clock ticks since boot, /proc/<pid>/stat field 22), which together name
    one process for good (a reused pid has a later start time)."""
    return json.dumps({"pid": pid, "start_time": start})


def parse_local_handle(record: ChildRecord) -> tuple[int, int] | None:
    """pid and start time of a record the local launcher made; None otherwise."""
    if record.launcher != LOCAL:
        return None
    try:
        held = json.loads(record.handle)
        return int(held["pid"]), int(held["start_time"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(eq=False)
class ChildProcess:
    """A child (started or re-adopted) and what it reported when it came up."""

    name: str
    process: OsProcess
    log_path: str
    report: Readiness = field(default_factory=Readiness.crashed)
    # How the store knows it; None until recorded.
    record: ChildRecord | None = None
    # It leads a process group of its own (pgid == pid): stopping it stops
    # what its code started too (a handler's subprocess).
    group: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def node(self) -> str:
        return ""  # the controller's own machine

    @property
    def node_id(self) -> str:
        return ""

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def address(self) -> str:
        return self.report.address

    @property
    def adopted(self) -> bool:
        return isinstance(self.process, AdoptedProcess)

    async def wait(self) -> int | None:
        code = await self.process.wait()
        # Not being its parent, a restarted controller never learns the status.
        return None if self.adopted else code

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL (to its whole group) if it has not exited
        within ``timeout``; what is left of its group is killed once it exited.

        SIGTERM goes to the process alone: while it drains, the requests it
        finishes may still need the processes their handlers started.
        """
        if self.process.returncode is not None:
            return  # its group went when it was reaped
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
            self.kill()
            await self.process.wait()
        self.kill_group()

    def kill(self) -> None:
        """SIGKILL to it and its group."""
        if self.process.returncode is None:
            # Through the pidfd first when adopted: a reused pid is never hit.
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        self.kill_group()

    def kill_group(self) -> None:
        """SIGKILL what is left of its process group (its own children)."""
        if self.group:
            # The group id stays reserved while any member lives, so this
            # cannot reach a stranger's group; with no member left it fails.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


# Characters of a tag kept as they are in file names; the rest become "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
FILE_PREFIX_CHARS = 40


def file_key(text: str) -> str:
    """A file name for ``text`` (a backend tag, a replica id) that no other
    text gets: a readable prefix and a digest of the exact text.

    The prefix alone would collide ("x y" and "x_y", or two tags sharing their
    first characters), and a backend would then write into another's log.
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{_UNSAFE.sub('_', text)[:FILE_PREFIX_CHARS]}-{digest}"


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


async def proxy_healthz(address: str, timeout: float, https: bool = False) -> bool:
    """True when the proxy at host:port answers ``GET /-/healthz`` with 200.

    Over HTTPS the certificate is not checked: this asks our own proxy, on
    the address we recorded, whether it lives; no secret is sent."""
    url = f"{'https' if https else 'http'}://{address}/-/healthz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, ssl=False if https else True) as reply,
        ):
            return reply.status == 200
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("health check of the proxy at %s failed: %s", address, exc)
        return False


def _local(child: Child) -> ChildProcess:
    assert isinstance(child, ChildProcess), f"{child.name} was not started by the local launcher"
    return child


# What a failed command's error quotes of its output, at most.
COMMAND_OUTPUT_SHOWN = 1000
# How long a command that closed its readiness pipe gets to exit, so that its
# exit status can be told.
COMMAND_EXIT_WAIT_S = 2.0


def command_spec(spec: bytes) -> pb.CreateBackendRequest | None:
    """The spec when it is a command backend's; None for a Python backend's
    (and for one that cannot be read: the Python replica says why)."""
    try:
        request = pb.CreateBackendRequest.FromString(spec)
    except DecodeError:
        return None
    return request if request.spec.HasField("command") else None


async def command_report(
    fd: int, process: asyncio.subprocess.Process, argv: list[str], timeout: float, output: Path
) -> Readiness:
    """What a command replica reported on ``fd`` (closed after); a silence, a
    crash or a line that is no report is an INVALID_ARGUMENT failure."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
    except TimeoutError:
        return _command_failed(
            f"the command {argv} did not report readiness on $TURNOUT_READY_FD within "
            f"{timeout:g} s",
            output,
        )
    finally:
        transport.close()
    if not line.strip():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), COMMAND_EXIT_WAIT_S)
        code = process.returncode
        status = "exited" if code is None else f"exited with status {code}"
        return _command_failed(f"the command {argv} {status} before it reported readiness", output)
    try:
        payload = json.loads(line)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("ok"), bool):
        return _command_failed(
            f"the command {argv} wrote {line.decode(errors='replace').strip()[:200]!r} on "
            '$TURNOUT_READY_FD, which is no readiness report (one JSON line: {"ok": true, '
            '"address": "host:port"}, see docs/replica-protocol.md)',
            output,
        )
    report = Readiness.from_json(line)
    if report.ok and not report.address:
        return _command_failed(f"the command {argv} reported ok without an address", output)
    return report


def _command_failed(reason: str, output: Path) -> Readiness:
    """An INVALID_ARGUMENT failure: ``reason``, and the end of what it printed."""
    try:
        with output.open("rb") as out:
            out.seek(max(0, out.seek(0, os.SEEK_END) - COMMAND_OUTPUT_SHOWN))
            printed = out.read().decode(errors="replace").strip()
    except OSError:
        printed = ""
    said = f"; it printed: {printed}" if printed else "; it printed nothing"
    return Readiness.failed("INVALID_ARGUMENT", reason + said)


class LocalLauncher:
    """Starts proxies and replicas as local processes, records them, and
    adopts recorded ones (``base.Launcher``)."""

    def __init__(
        self,
        run_dir: Path,
        log_dir: Path,
        store: Store,
        *,
        durable: bool = False,
        security: Security | None = None,
    ) -> None:
        self.run_dir = run_dir
        # How this process reaches its children (health checks, reconfigure).
        self.security = security or Security()
        # The proxy's HTTPS certificate and key; None = plain HTTP.
        self.https: tuple[Path, Path] | None = None
        self.log_dir = log_dir
        self.durable = durable
        self._store = store
        run_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        # child -> the task that forgets it once it exited
        self._children: dict[ChildProcess, asyncio.Task[None]] = {}
        # Replicas starting at once (spawn to readiness): a big scale-up
        # loads the machine a few at a time instead of forking all at once.
        self._spawn_slots = asyncio.Semaphore(SPAWN_CONCURRENCY)
        # principal -> its credentials (set by the controller); None: no checks.
        self.credentials: Callable[[str], auth.ChildCredentials] | None = None
        # Health checks of its replicas, and of the Ray launcher's.
        self.health_channels = HealthChannels()

    @property
    def control_token(self) -> str | None:
        """What the controller presents to replicas (Reconfigure): its own
        token, whose control role no handle (user code) holds."""
        return None if self.credentials is None else self.credentials(auth.CONTROLLER).token

    def _credentials_file(self, principal: str) -> Path | None:
        """A 0600 file with ``principal``'s credentials in the run directory
        (never the environment); None when tokens are not checked."""
        if self.credentials is None:
            return None
        path = self.run_dir / f"credentials-{principal}.json"
        if not path.exists():
            self.credentials(principal).write(path)
        return path

    @property
    def proxy_log_path(self) -> Path:
        return self.log_dir / "proxy.log"

    @property
    def access_log_path(self) -> Path:
        return self.log_dir / "proxy-access.log"

    def replica_log_path(self, backend: str, replica_id: str) -> Path:
        return self.log_dir / "replicas" / file_key(backend) / f"{file_key(replica_id)}.log"

    @property
    def _parent_pid(self) -> int | None:
        # Durable children outlive the controller; owned ones die with it.
        return None if self.durable else os.getpid()

    async def start_replica(
        self, record: ChildRecord, spec: bytes, env: dict[str, str] | None = None
    ) -> ChildProcess:
        """Start the replica ``record`` names (id, backend, digest, resources;
        its handle is filled in here) with extra environment variables, pinned
        to the record's cores. The spec reaches it on its stdin, so nothing
        of the backend's code is written to the controller's disk."""
        command = command_spec(spec)
        if command is not None:
            return await self._start_command(record, command, env)
        log_path = self.replica_log_path(record.backend, record.name)
        options = ReplicaArgs(
            replica_id=record.name,
            spec_fd=0,
            parent_pid=self._parent_pid,
            log_file=log_path,
            security=Security(tls=self.security.tls),
            credentials_file=self._credentials_file("handle"),
        )

        def argv(ready_fd: int) -> list[str]:
            return replica_args.command(dataclasses.replace(options, ready_fd=ready_fd))

        async with self._spawn_slots:
            return await self._start(
                f"replica {record.name}", argv, log_path, record, env, record.cpus, spec
            )

    async def _start_command(
        self, record: ChildRecord, request: pb.CreateBackendRequest, env: dict[str, str] | None
    ) -> ChildProcess:
        """Start a command backend's replica: its program with the variables of
        ``turnout._internal.command_replica`` (docs/replica-protocol.md). A
        program that cannot start, exits, says nothing or something that is no
        readiness report gets an INVALID_ARGUMENT report quoting what it printed."""
        command = request.spec.command
        argv = list(command.argv)
        name = f"replica {record.name}"
        log_path = self.replica_log_path(record.backend, record.name)
        output = logs.out_path(log_path)
        timeout = command.ready_timeout if command.HasField("ready_timeout") else READY_TIMEOUT_S
        async with self._spawn_slots:
            # The controller's own TURNOUT_* settings never stand in for the
            # replica's (a client-side TURNOUT_TLS_CA, say).
            inherited = {k: v for k, v in os.environ.items() if k not in command_replica.NAMES}

            def ready_env(ready_fd: int) -> dict[str, str]:
                return command_replica.environment(
                    replica_id=record.name,
                    backend=record.backend,
                    config=request.config,
                    ready_fd=ready_fd,
                    credentials_file=self._credentials_file("handle"),
                    parent_pid=self._parent_pid,
                    tls=self.security.tls,
                )

            log_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                logs.trim_output_file(output)
                with output.open("ab") as out:
                    spawned = await spawn_async(
                        lambda _: argv,
                        ready_env=ready_env,
                        stdout=out,
                        stderr=out,
                        env=child_environment(inherited, {**(env or {}), **command.env}),
                        cwd=command.cwd or None,
                        start_new_session=self.durable,
                        process_group=None if self.durable else 0,
                    )
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                # No such program or folder, not executable: the command's fault.
                raise SpawnError(
                    "INVALID_ARGUMENT", f"cannot start the command {argv}: {exc}"
                ) from exc

            def report() -> Awaitable[Readiness]:
                fd = spawned.take_ready_fd()
                return command_report(fd, spawned.process, argv, timeout, output)

            return await self._take(name, spawned, log_path, record, record.cpus, report)

    async def start_proxy(self, spec: ProxySpec) -> ChildProcess:
        https = self.https
        options = ProxyArgs(
            controller=spec.controller_address,
            host=spec.host,
            port=spec.port,
            workers=spec.workers,
            credentials_file=self._credentials_file("proxy"),
            parent_pid=self._parent_pid,
            log_file=self.proxy_log_path,
            access_log=self.access_log_path if spec.access_log else None,
            access_log_format=spec.access_log_format,
            protect_system_paths=spec.system_token_file is not None,
            system_token_file=spec.system_token_file,
            node_id=spec.node_id,
            prefer_local_replicas=spec.prefer_local_replicas,
            https_cert=None if https is None else https[0],
            https_key=None if https is None else https[1],
            tls=self.security.tls,
        )

        def argv(ready_fd: int) -> list[str]:
            return proxy_args.command(dataclasses.replace(options, ready_fd=ready_fd))

        template = ChildRecord(name=PROXY, kind=PROXY)
        return await self._start("proxy", argv, self.proxy_log_path, template)

    async def _start(
        self,
        name: str,
        argv: Callable[[int], list[str]],
        log_path: Path,
        template: ChildRecord,
        env: dict[str, str] | None = None,
        cpus: tuple[int, ...] = (),
        stdin_data: bytes | None = None,
    ) -> ChildProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            logs.trim_output_file(logs.out_path(log_path))
            with logs.out_path(log_path).open("ab") as out:
                spawned = await spawn_async(
                    argv,
                    stdin_data=stdin_data,
                    stdout=out,
                    stderr=out,
                    env=child_environment(os.environ, env),
                    # Durable: a session of its own, so that no signal to the
                    # controller's group reaches it. Owned: a group of its own,
                    # so that stopping it can stop its whole process tree.
                    start_new_session=self.durable,
                    process_group=None if self.durable else 0,
                )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # A value exec() refuses (NUL in the environment, too large) is the
            # caller's; anything else (no memory, no processes left) is ours.
            too_big = isinstance(exc, OSError) and exc.errno == errno.E2BIG
            code = "INVALID_ARGUMENT" if isinstance(exc, ValueError) or too_big else "INTERNAL"
            raise SpawnError(code, f"cannot start {name}: {exc}") from exc
        return await self._take(
            name, spawned, log_path, template, cpus, lambda: spawned.ready(READY_TIMEOUT_S, name)
        )

    async def _take(
        self,
        name: str,
        spawned: AsyncChild,
        log_path: Path,
        template: ChildRecord,
        cpus: tuple[int, ...],
        report: Callable[[], Awaitable[Readiness]],
    ) -> ChildProcess:
        """A child just started: pinned, recorded, watched, then its
        ``report()`` awaited; one that failed is killed and reaped."""
        process = spawned.process
        if cpus:
            # Set from here rather than in the child: the threads it starts
            # while importing inherit the mask.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(process.pid, cpus)
        child = ChildProcess(name=name, process=process, log_path=str(log_path), group=True)
        # Recorded before it can serve: a controller killed from here on leaves
        # a record that the next one uses to find (and stop) the process.
        self._record(
            child,
            dataclasses.replace(
                template,
                launcher=LOCAL,
                handle=local_handle(process.pid, start_time(process.pid) or 0),
                log_path=str(log_path),
            ),
        )
        self._track(child)
        try:
            child.report = await report()
        except BaseException:
            # Cancelled while the child was booting: it must not live on unowned.
            child.kill()
            raise
        if not child.ok:
            child.kill()
            await process.wait()
            logger.warning("%s failed to start: %s", name, child.report.message)
        else:
            capabilities = json.dumps(child.report.capabilities, sort_keys=True)
            self._relabel(child, address=child.address, capabilities=capabilities)
        return child

    def adopt(self, record: ChildRecord) -> ChildProcess | None:
        """Take over a recorded child that is still alive (same pid, same
        start time); None if it is gone. Its health is the caller's to check."""
        held = parse_local_handle(record)
        process = None if held is None else AdoptedProcess.open(*held)
        if process is None:
            if held is None:
                logger.warning("%s was not started by a local launcher; forgetting it", record.name)
            self._forget(record)
            return None
        name = "proxy" if record.kind == PROXY else f"replica {record.name}"
        capabilities: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            capabilities = json.loads(record.capabilities)
        child = ChildProcess(
            name=name,
            process=process,
            log_path=record.log_path,
            report=Readiness(
                ok=True, address=record.address, pid=process.pid, capabilities=capabilities
            ),
            group=_leads_group(process.pid),
        )
        child.record = record
        self._track(child)
        logger.info("adopted %s (pid %d) at %s", name, process.pid, record.address or "-")
        return child

    async def stop_recorded(self, record: ChildRecord, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop a recorded child that is still alive, and drop its record."""
        child = self.adopt(record)
        if child is not None:
            logger.info("stopping %s (pid %d): no longer wanted", child.name, child.pid)
            await child.stop(timeout)
            reaper = self._children.get(child)
            if reaper is not None:
                await reaper

    def relabel(self, child: Child, digest: str) -> None:
        self._relabel(_local(child), digest=digest)

    def _relabel(self, child: ChildProcess, **changes: Any) -> None:
        """Change what the store says about a running child."""
        if child.record is not None and child.process.returncode is None:
            self._record(child, dataclasses.replace(child.record, **changes))

    def follows(self, child: Child, controller_address: str) -> bool:
        """True when the proxy was told to follow ``controller_address``."""
        args = command_line(child.pid)
        return any(
            flag == "--controller" and value == controller_address
            for flag, value in zip(args, args[1:], strict=False)
        )

    async def healthy(self, child: Child, timeout: float) -> bool:
        return await self.health_channels.check(
            child, child.address, self.security, self.control_token, timeout
        )

    async def proxy_healthy(self, child: Child, timeout: float) -> bool:
        return await proxy_healthz(child.address, timeout, https=self.https is not None)

    async def reconfigure(
        self, child: Child, request: replica_pb2.ReconfigureRequest, timeout: float
    ) -> None:
        async with aio_channel(child.address, self.security) as channel:
            stub = replica_pb2_grpc.ReplicaServiceStub(channel)
            try:
                await stub.Reconfigure(
                    request, timeout=timeout, metadata=auth.metadata(self.control_token)
                )
            except grpc.aio.AioRpcError as exc:
                raise ReconfigureError(exc.details() or exc.code().name) from None

    async def read_log(self, child: Child, offset: int | None, max_bytes: int) -> LogChunk:
        if not child.log_path:
            return LogChunk()
        return await asyncio.to_thread(read_chunk, Path(child.log_path), offset, max_bytes)

    def _record(self, child: ChildProcess, record: ChildRecord) -> None:
        self._store.put_child(record)
        child.record = record

    def _forget(self, record: ChildRecord) -> None:
        # Only its own record: a restarted replica reuses the name.
        current = self._store.children().get(record.name)
        if current is not None and current.handle == record.handle:
            self._store.delete_child(record.name)

    def _track(self, child: ChildProcess) -> None:
        async def reap() -> None:
            # Not in a ``finally``: cancelled (the controller exiting without a
            # shutdown), the child lives on and its record must stay.
            await child.process.wait()
            # Whatever its code started dies with it, however it ended.
            child.kill_group()
            self._children.pop(child, None)
            if child.record is not None:
                self._forget(child.record)
            await self.health_channels.forget(child)

        self._children[child] = asyncio.create_task(reap(), name=f"reap {child.name}")

    async def stop_all(self) -> None:
        """Stop every child, and wait until their records are gone."""
        children = dict(self._children)
        await asyncio.gather(*(child.stop() for child in children))
        await asyncio.gather(*children.values(), return_exceptions=True)
        await self.health_channels.close()
