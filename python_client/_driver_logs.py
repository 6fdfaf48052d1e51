"""Replica output in the owner's terminal, as Ray streams worker logs to the driver.

With ``turnout.init()`` the user's handlers run in other processes, whose logs
are files under ``<instance dir>/logs/replicas/``. ``DriverLogs`` follows those
files from a daemon thread of the owning process (as ``tail -F`` does: a file
rotated away is read to its end, then the new one from its start) and writes
to ``sys.stderr`` what a developer wants to see at once: every record at
WARNING or above (a handler's traceback included) and whatever handlers print.
Each line is prefixed with the replica id (``(<backend>#<n>)``), the way Ray
prefixes ``(pid=...)``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

POLL_S = 0.2
# Bytes read from one file per poll, so one chatty replica cannot starve the others.
READ_CHUNK = 1 << 20

# A record's first line, as turnout.replica formats it:
# "<date> <time> replica <id> <LEVEL> <logger>: <message>"; other lines continue it.
_RECORD = re.compile(r"^\S+ \S+ replica (?P<replica>\S+) (?P<level>[A-Z]+) (?P<logger>\S+): ")
_SHOWN_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
# The loggers a replica's print() and sys.stderr writes go to (turnout._internal.logs).
_PRINT_LOGGERS = frozenset({"print.stdout", "print.stderr"})


@dataclass
class _Followed:
    file: BinaryIO
    inode: int
    pending: bytes = b""
    # Whether the record the next continuation line belongs to is shown, and its prefix.
    showing: bool = False
    prefix: str = ""


class DriverLogs:
    """Follows ``<log_dir>/replicas/**/*.log`` and echoes the interesting lines."""

    def __init__(self, log_dir: Path) -> None:
        self._root = log_dir / "replicas"
        self._files: dict[Path, _Followed] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="turnout-driver-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Echo what is left, then stop following."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_S):
                self.poll()
            self.poll()
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the files (``stop`` does; for a follower polled by hand)."""
        for followed in self._files.values():
            followed.file.close()
        self._files.clear()

    def poll(self) -> None:
        """One pass over every log file: new lines out, rotations followed."""
        with contextlib.suppress(OSError):
            for path in sorted(self._root.rglob("*.log")):
                if path not in self._files:
                    self._open(path)
        for path, followed in list(self._files.items()):
            self._drain(followed)
            try:
                inode = os.stat(path).st_ino
            except OSError:
                inode = -1
            if inode != followed.inode:
                # Rotated (or removed): the old file was read to its end above.
                followed.file.close()
                del self._files[path]
                if inode != -1:
                    self._open(path)
                    self._drain(self._files[path])

    def _open(self, path: Path) -> None:
        try:
            file = path.open("rb")
        except OSError:
            return
        self._files[path] = _Followed(file=file, inode=os.fstat(file.fileno()).st_ino)

    def _drain(self, followed: _Followed) -> None:
        try:
            data = followed.file.read(READ_CHUNK)
        except OSError:
            return
        if not data:
            return
        *complete, followed.pending = (followed.pending + data).split(b"\n")
        out: list[str] = []
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            match = _RECORD.match(line)
            if match is not None:
                followed.showing = (
                    match["level"] in _SHOWN_LEVELS or match["logger"] in _PRINT_LOGGERS
                )
                followed.prefix = f"({match['replica']}) "
                line = line[match.end() :]
                if match["logger"] not in _PRINT_LOGGERS:
                    line = f"{match['level']} {line}"
            if followed.showing:
                out.append(followed.prefix + line + "\n")
        if out:
            stream = sys.stderr
            with contextlib.suppress(OSError, ValueError):
                stream.write("".join(out))
                stream.flush()
