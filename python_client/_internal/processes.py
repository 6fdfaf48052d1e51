"""OS processes the controller did not spawn itself but supervises anyway.

A restarted controller is no longer the parent of the proxy and replicas it
re-adopts, so it cannot ``waitpid`` them. It holds a pidfd instead (Linux 5.3
and later): the descriptor pins the process, so neither a signal nor the exit
notice can reach another process that reused the pid, and it becomes readable
when the process exits. Where pidfds are missing it polls ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

POLL_S = 0.5
# What ``wait`` returns for an adopted process: not being its parent, the
# controller never learns the real exit status.
UNKNOWN_EXIT = -1


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone.

    Together with the pid this names one process for good: a reused pid has a
    later start time. A zombie counts as gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields
    # after its closing parenthesis start at field 3 (state).
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


class AdoptedProcess:
    """A live process found by pid and start time; the subset of
    ``asyncio.subprocess.Process`` that supervision uses."""

    def __init__(self, pid: int, expected_start: int, pidfd: int | None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._start = expected_start
        self._pidfd = pidfd
        self._exited: asyncio.Future[int] | None = None

    @classmethod
    def open(cls, pid: int, expected_start: int) -> AdoptedProcess | None:
        """The process, if ``pid`` is still the one that started at ``expected_start``."""
        pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(pid)
        # Checked after opening the pidfd: from here on the pid cannot be reused.
        if start_time(pid) != expected_start:
            if pidfd is not None:
                os.close(pidfd)
            return None
        return cls(pid, expected_start, pidfd)

    def _alive(self) -> bool:
        return start_time(self.pid) == self._start

    def _mark_exited(self) -> None:
        if self.returncode is not None:
            return
        self.returncode = UNKNOWN_EXIT
        if self._pidfd is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(UNKNOWN_EXIT)

    async def wait(self) -> int:
        """Until the process exits; returns ``UNKNOWN_EXIT``."""
        if self.returncode is not None:
            return self.returncode
        if self._exited is None:
            loop = asyncio.get_running_loop()
            self._exited = loop.create_future()
            if self._pidfd is not None:
                loop.add_reader(self._pidfd, self._mark_exited)
            else:
                loop.create_task(self._poll())
        return await asyncio.shield(self._exited)

    async def _poll(self) -> None:
        while self._alive():
            await asyncio.sleep(POLL_S)
        self._mark_exited()

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)
        elif self._alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
