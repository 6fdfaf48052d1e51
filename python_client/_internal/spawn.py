"""Start a child process and wait for its readiness report: the one helper
behind every parent/child pair (client → controller, controller → proxy and
replicas, proxy → its workers).

The child gets the write end of a pipe as ``--ready-fd`` (``argv`` is called
with its number) and reports on it once (``turnout._internal.readiness``).
What the parent does with a child that failed (kill it, reap it, retry) stays
the parent's: these helpers only start and listen.

Example::

    child = await spawn_async(lambda fd: ["python", "-m", "turnout.proxy", "--ready-fd", str(fd)])
    report = await child.ready(60.0, "proxy")
    if not report.ok:
        child.process.kill()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import readiness
from .readiness import Readiness

Argv = Callable[[int], Sequence[str]]


class ReadyPipe:
    """The pipe a child reports on; the parent closes its copy of the write
    end once the child is started (``started``), and the read end once read."""

    def __init__(self, inheritable: bool = False) -> None:
        self.read_fd, self.write_fd = os.pipe()
        if inheritable:  # for posix_spawn, which has no pass_fds
            os.set_inheritable(self.write_fd, True)
        self._read_open = True

    def started(self) -> None:
        os.close(self.write_fd)

    def handed_over(self) -> None:
        """The read end is someone else's to close now."""
        self._read_open = False

    def close(self) -> None:
        if self._read_open:
            self._read_open = False
            os.close(self.read_fd)

    def read(self, timeout: float, what: str) -> Readiness:
        """Block until the child reports or dies, at most ``timeout`` seconds."""
        self._read_open = False
        return readiness.read(self.read_fd, timeout, what)

    async def read_async(self, timeout: float, what: str) -> Readiness:
        """As ``read``, without blocking the event loop."""
        self._read_open = False
        return await readiness.read_async(self.read_fd, timeout, what)


class AsyncChild:
    """A child started by ``spawn_async``, its report not read yet."""

    def __init__(
        self, process: asyncio.subprocess.Process, pipe: ReadyPipe, feeder: asyncio.Task[None]
    ) -> None:
        self.process = process
        self._pipe = pipe
        self._feeder = feeder

    async def ready(self, timeout: float, what: str) -> Readiness:
        """Its report; a timeout or a crash before it reported is a failure."""
        try:
            return await self._pipe.read_async(timeout, what)
        finally:
            self._input_done()

    def take_ready_fd(self) -> int:
        """The read end of its ready pipe, for a caller that reads the report
        itself (a program in another language, whose failures it words); the
        caller closes it."""
        self._pipe.handed_over()
        self._input_done()
        return self._pipe.read_fd

    def _input_done(self) -> None:
        # Whatever of its input it did not read by now it never will.
        self._feeder.cancel()
        if self.process.stdin is not None:
            self.process.stdin.close()


async def _feed(process: asyncio.subprocess.Process, data: bytes | None) -> None:
    """Write ``data`` to the child's stdin and close it: its input (a spec)
    arrives however large, while the parent waits for the report."""
    stdin = process.stdin
    if stdin is None:
        return
    # A child that died (or stopped reading) reports that on its ready pipe.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            stdin.write(data)
            await stdin.drain()
        stdin.close()


async def spawn_async(
    argv: Argv,
    *,
    stdin_data: bytes | None = None,
    ready_env: Callable[[int], Mapping[str, str]] | None = None,
    **kwargs: Any,
) -> AsyncChild:
    """Start ``argv(ready_fd)`` (``kwargs`` as for ``create_subprocess_exec``);
    ``stdin_data`` is written to its stdin (else stdin is /dev/null);
    ``ready_env(ready_fd)`` is added to ``kwargs["env"]``, for a program that
    finds the fd in its environment rather than its arguments. Raises what
    the OS raised when it cannot start."""
    pipe = ReadyPipe()
    pass_fds = (*kwargs.pop("pass_fds", ()), pipe.write_fd)
    stdin = asyncio.subprocess.DEVNULL if stdin_data is None else asyncio.subprocess.PIPE
    if ready_env is not None:
        kwargs["env"] = {**kwargs.get("env", os.environ), **ready_env(pipe.write_fd)}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv(pipe.write_fd), stdin=stdin, pass_fds=pass_fds, **kwargs
        )
    except BaseException:
        pipe.close()
        raise
    finally:
        pipe.started()
    feeder = asyncio.create_task(_feed(process, stdin_data), name=f"stdin of {process.pid}")
    return AsyncChild(process, pipe, feeder)


def popen(argv: Argv, **kwargs: Any) -> tuple[subprocess.Popen[bytes], ReadyPipe]:
    """Start ``argv(ready_fd)`` (``kwargs`` as for ``Popen``; stdin is
    /dev/null); its report is the returned pipe's to read."""
    pipe = ReadyPipe()
    pass_fds = (*kwargs.pop("pass_fds", ()), pipe.write_fd)
    try:
        process = subprocess.Popen(
            list(argv(pipe.write_fd)), stdin=subprocess.DEVNULL, pass_fds=pass_fds, **kwargs
        )
    except BaseException:
        pipe.close()
        raise
    finally:
        pipe.started()
    return process, pipe


def spawn(
    argv: Argv, timeout: float, what: str, **kwargs: Any
) -> tuple[subprocess.Popen[bytes], Readiness]:
    """``popen``, then wait for its report, at most ``timeout`` seconds."""
    process, pipe = popen(argv, **kwargs)
    return process, pipe.read(timeout, what)


def spawn_detached(
    argv: Argv, timeout: float, what: str, *, env: dict[str, str], output: Path
) -> tuple[int, Readiness]:
    """As ``spawn``, for a child nothing here will wait for (it outlives this
    process): a session of its own, stdout and stderr appended to ``output``.
    posix_spawn rather than Popen, which would warn that it still runs."""
    pipe = ReadyPipe(inheritable=True)
    append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        args = list(argv(pipe.write_fd))
        pid = os.posix_spawn(
            args[0],
            args,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(output), append, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
    except BaseException:
        pipe.close()
        raise
    finally:
        pipe.started()
    return pid, pipe.read(timeout, what)
