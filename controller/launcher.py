"""The one place where the controller starts and stops OS processes.

Everything else asks the launcher for a ``ChildProcess`` and never touches
``subprocess`` or signals itself, so the supervision logic can be exercised
with another launcher (a container or Kubernetes launcher can come later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout import _process
from turnout.v1 import controller_pb2 as pb

logger = logging.getLogger(__name__)

# How long a child may take to load and report readiness (imports of large
# models happen here).
READY_TIMEOUT_S = 120.0
# How long SIGTERM gets to end a child gracefully before SIGKILL.
STOP_TIMEOUT_S = 10.0


@dataclass(eq=False)
class ChildProcess:
    """A started child and what it reported when it came up."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok"))

    @property
    def address(self) -> str:
        return str(self.report.get("address", ""))

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:100]


class ProcessLauncher:
    """Starts proxies and replicas as children that die with the controller."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        self._children: set[ChildProcess] = set()

    def write_spec(self, request: pb.CreateBackendRequest, version: int) -> Path:
        """Persist what a replica loads; replicas read it at start."""
        path = self.run_dir / f"backend-{_file_safe(request.tag)}-{version}.pb"
        path.write_bytes(request.SerializeToString())
        return path

    async def start_replica(
        self,
        replica_id: str,
        spec_path: Path,
        env: dict[str, str] | None = None,
        cpus: tuple[int, ...] = (),
    ) -> ChildProcess:
        """Start a replica with extra environment variables, pinned to ``cpus``."""
        args = ["--spec-file", str(spec_path), "--replica-id", replica_id]
        return await self._start("turnout.replica", f"replica {replica_id}", args, env, cpus)

    async def start_proxy(self, controller_address: str, host: str, port: int) -> ChildProcess:
        args = ["--controller", controller_address, "--host", host, "--port", str(port)]
        return await self._start("turnout.proxy", "proxy", args)

    async def _start(
        self,
        module: str,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cpus: tuple[int, ...] = (),
    ) -> ChildProcess:
        read_fd, write_fd = os.pipe()
        log_path = self.log_dir / f"{_file_safe(name.replace(' ', '-'))}.log"
        argv = _process.child_argv(
            module, [*args, "--ready-fd", str(write_fd), "--parent-pid", str(os.getpid())]
        )
        try:
            with log_path.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                    env={**os.environ, **env} if env else None,
                )
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
        child = ChildProcess(name=name, process=process, log_path=log_path)
        self._children.add(child)
        process_done = asyncio.ensure_future(process.wait())
        process_done.add_done_callback(lambda _: self._children.discard(child))
        try:
            child.report = await asyncio.wait_for(
                _process.read_report_async(read_fd), READY_TIMEOUT_S
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
        return child

    async def stop_all(self) -> None:
        await asyncio.gather(*(child.stop() for child in list(self._children)))
