"""The one place where the controller starts and stops OS processes.

Everything else asks the launcher for a ``ChildProcess`` and never touches
``subprocess`` or signals itself, so the supervision logic can be exercised
with another launcher (a container or Kubernetes launcher can come later).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from turnout._internal import auth, child_process, logs, tls_options
from turnout._internal.processes import AdoptedProcess, start_time
from turnout._internal.rpc import Security
from turnout.v1 import controller_pb2 as pb

from .store import PROXY, ChildRecord, Store

logger = logging.getLogger(__name__)

# How long a child may take to load and report readiness (imports of large
# models happen here).
READY_TIMEOUT_S = 120.0
# How long SIGTERM gets to end a child gracefully before SIGKILL.
STOP_TIMEOUT_S = 10.0
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


class SpawnError(Exception):
    """The OS refused to start a child (bad environment, no memory, no such
    interpreter); ``code`` is the gRPC status name the caller should see."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class ChildProcess:
    """A child (started or re-adopted) and what it reported when it came up."""

    name: str
    process: OsProcess
    log_path: Path
    report: dict[str, Any] = field(default_factory=dict)
    # How the store knows it; None until recorded.
    record: ChildRecord | None = None
    # It leads a process group of its own (pgid == pid): stopping it stops
    # what its code started too (a handler's subprocess).
    group: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok"))

    @property
    def address(self) -> str:
        return str(self.report.get("address", ""))

    @property
    def adopted(self) -> bool:
        return isinstance(self.process, AdoptedProcess)

    async def wait(self) -> int:
        return await self.process.wait()

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
    first characters), and a backend would then load another's spec file
    after a restart and write into its log.
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{_UNSAFE.sub('_', text)[:FILE_PREFIX_CHARS]}-{digest}"


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def out_path(log_path: Path) -> Path:
    """Where a child's stdout and stderr go: next to its log, never into it
    (see ``turnout._internal.logs``)."""
    return log_path.with_suffix(".out")


class ProcessLauncher:
    """Starts proxies and replicas, records them, and adopts recorded ones."""

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

    @property
    def control_token(self) -> str | None:
        """What the controller presents to replicas (Reconfigure): its own
        token, whose control role no handle (user code) holds."""
        return None if self.credentials is None else self.credentials(auth.CONTROLLER).token

    def _credentials_args(self, principal: str) -> list[str]:
        """``--credentials-file`` naming a 0600 file with ``principal``'s
        credentials in the run directory: never the environment."""
        if self.credentials is None:
            return []
        path = self.run_dir / f"credentials-{principal}.json"
        if not path.exists():
            self.credentials(principal).write(path)
        return ["--credentials-file", str(path)]

    @property
    def proxy_log_path(self) -> Path:
        return self.log_dir / "proxy.log"

    @property
    def access_log_path(self) -> Path:
        return self.log_dir / "proxy-access.log"

    def replica_log_path(self, backend: str, replica_id: str) -> Path:
        return self.log_dir / "replicas" / file_key(backend) / f"{file_key(replica_id)}.log"

    def write_spec(self, request: pb.CreateBackendRequest, version: int) -> Path:
        """Persist what a replica loads; replicas read it at start."""
        path = self.run_dir / f"backend-{file_key(request.tag)}-{version}.pb"
        path.write_bytes(request.SerializeToString())
        return path

    async def start_replica(
        self,
        record: ChildRecord,
        spec_path: Path,
        env: dict[str, str] | None = None,
    ) -> ChildProcess:
        """Start the replica ``record`` names (id, backend, digest, resources;
        pid and start time are filled in here) with extra environment
        variables, pinned to the record's cores."""
        replica_id = record.name
        args = ["--spec-file", str(spec_path), "--replica-id", replica_id]
        args += tls_options.argv(self.security)
        args += self._credentials_args("handle")
        log_path = self.replica_log_path(record.backend, replica_id)
        async with self._spawn_slots:
            return await self._start(
                "turnout.replica", f"replica {replica_id}", args, log_path, record, env, record.cpus
            )

    async def start_proxy(
        self,
        controller_address: str,
        host: str,
        port: int,
        access_log: bool = True,
        workers: int = 1,
        system_token_file: Path | None = None,
    ) -> ChildProcess:
        args = ["--controller", controller_address, "--host", host, "--port", str(port)]
        args += tls_options.argv(self.security)
        args += self._credentials_args("proxy")
        if access_log:
            args += ["--access-log", str(self.access_log_path)]
        # Only when asked for: a proxy of an older build knows no --workers.
        if workers > 1:
            args += ["--workers", str(workers)]
        if system_token_file is not None:
            args += ["--protect-system-paths", "--system-token-file", str(system_token_file)]
        if self.https is not None:
            args += ["--https-cert", str(self.https[0]), "--https-key", str(self.https[1])]
        template = ChildRecord(name=PROXY, kind=PROXY, pid=0, start_time=0)
        return await self._start("turnout.proxy", "proxy", args, self.proxy_log_path, template)

    async def _start(
        self,
        module: str,
        name: str,
        args: list[str],
        log_path: Path,
        template: ChildRecord,
        env: dict[str, str] | None = None,
        cpus: tuple[int, ...] = (),
    ) -> ChildProcess:
        read_fd, write_fd = os.pipe()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        extra = ["--ready-fd", str(write_fd), "--log-file", str(log_path)]
        if not self.durable:
            extra += ["--parent-pid", str(os.getpid())]
        argv = child_process.child_argv(module, [*args, *extra])
        try:
            logs.trim_output_file(out_path(log_path))
            with out_path(log_path).open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    pass_fds=(write_fd,),
                    env=child_environment(os.environ, env),
                    # Durable: a session of its own, so that no signal to the
                    # controller's group reaches it. Owned: a group of its own,
                    # so that stopping it can stop its whole process tree.
                    start_new_session=self.durable,
                    process_group=None if self.durable else 0,
                )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            os.close(read_fd)
            # A value exec() refuses (NUL in the environment, too large) is the
            # caller's; anything else (no memory, no processes left) is ours.
            too_big = isinstance(exc, OSError) and exc.errno == errno.E2BIG
            code = "INVALID_ARGUMENT" if isinstance(exc, ValueError) or too_big else "INTERNAL"
            raise SpawnError(code, f"cannot start {name}: {exc}") from exc
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        if cpus:
            # Set from here rather than in the child: the threads it starts
            # while importing inherit the mask.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(process.pid, cpus)
        child = ChildProcess(name=name, process=process, log_path=log_path, group=True)
        # Recorded before it can serve: a controller killed from here on leaves
        # a record that the next one uses to find (and stop) the process.
        self._record(
            child,
            dataclasses.replace(
                template,
                pid=process.pid,
                start_time=start_time(process.pid) or 0,
                log_path=str(log_path),
            ),
        )
        self._track(child)
        try:
            child.report = await asyncio.wait_for(
                child_process.read_report_async(read_fd), READY_TIMEOUT_S
            )
        except TimeoutError:
            child.report = {
                "ok": False,
                "code": "DEADLINE_EXCEEDED",
                "message": f"{name} did not start within {READY_TIMEOUT_S:.0f} s",
            }
        except BaseException:
            # Cancelled while the child was booting: it must not live on unowned.
            child.kill()
            raise
        if not child.ok:
            child.kill()
            await process.wait()
            logger.warning("%s failed to start: %s", name, child.report.get("message"))
        else:
            capabilities = json.dumps(child.report.get("capabilities", {}), sort_keys=True)
            self.relabel(child, address=child.address, capabilities=capabilities)
        return child

    def adopt(self, record: ChildRecord) -> ChildProcess | None:
        """Take over a recorded child that is still alive (same pid, same
        start time); None if it is gone. Its health is the caller's to check."""
        process = AdoptedProcess.open(record.pid, record.start_time)
        if process is None:
            self._forget(record.name, record.pid)
            return None
        name = "proxy" if record.kind == PROXY else f"replica {record.name}"
        report: dict[str, Any] = {"ok": True, "address": record.address}
        with contextlib.suppress(ValueError):
            report["capabilities"] = json.loads(record.capabilities)
        child = ChildProcess(
            name=name,
            process=process,
            log_path=Path(record.log_path),
            report=report,
            group=_leads_group(record.pid),
        )
        child.record = record
        self._track(child)
        logger.info("adopted %s (pid %d) at %s", name, record.pid, record.address or "-")
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

    def relabel(self, child: ChildProcess, **changes: Any) -> None:
        """Change what the store says about a running child (e.g. its digest)."""
        if child.record is not None and child.process.returncode is None:
            self._record(child, dataclasses.replace(child.record, **changes))

    def _record(self, child: ChildProcess, record: ChildRecord) -> None:
        self._store.put_child(record)
        child.record = record

    def _forget(self, name: str, pid: int) -> None:
        # Only its own record: a restarted replica reuses the name.
        current = self._store.children().get(name)
        if current is not None and current.pid == pid:
            self._store.delete_child(name)

    def _track(self, child: ChildProcess) -> None:
        async def reap() -> None:
            # Not in a ``finally``: cancelled (the controller exiting without a
            # shutdown), the child lives on and its record must stay.
            await child.wait()
            # Whatever its code started dies with it, however it ended.
            child.kill_group()
            self._children.pop(child, None)
            if child.record is not None:
                self._forget(child.record.name, child.pid)

        self._children[child] = asyncio.create_task(reap(), name=f"reap {child.name}")

    async def stop_all(self) -> None:
        """Stop every child, and wait until their records are gone."""
        children = dict(self._children)
        await asyncio.gather(*(child.stop() for child in children))
        await asyncio.gather(*children.values(), return_exceptions=True)
