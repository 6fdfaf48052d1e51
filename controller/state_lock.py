"""One controller per state file.

Two controllers on one state would each reconcile toward it and adopt or stop
each other's processes. The first takes an exclusive ``flock`` on
``<state>.lock`` for its lifetime; the kernel drops it when the process dies,
``kill -9`` included, so a crashed controller never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from turnout._internal.errors import TurnoutError


class StateInUseError(TurnoutError):
    pass


class StateLock:
    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_name(state_path.name + ".lock")
        state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateInUseError(
                f"state file {state_path} is in use by another controller (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
