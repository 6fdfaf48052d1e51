"""``turnout logs``: the last lines of log files, and new ones as they are written."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

_BLOCK = 8192
FOLLOW_POLL_S = 0.2


@dataclass(frozen=True)
class LogSource:
    """One log file and the prefix its lines get ("" = none)."""

    path: Path
    label: str = ""

    def prefix(self, line: str) -> str:
        return f"{self.label} | {line}" if self.label else line


def last_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (without line ends), reading from the end.

    Example::

        last_lines(Path("/var/log/x.log"), 20)
    """
    if count <= 0:
        return []
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        position = file.tell()
        data = b""
        # One more line end than lines wanted: the first line may be partial.
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def print_tail(sources: Sequence[LogSource], count: int, out: TextIO) -> None:
    """Print each source's last ``count`` lines, one file after another."""
    for source in sources:
        for line in last_lines(source.path, count):
            out.write(source.prefix(line) + "\n")
    out.flush()


@dataclass
class _Follower:
    source: LogSource
    inode: int
    offset: int
    partial: bytes = b""


def _open_at_end(source: LogSource) -> _Follower:
    stat = source.path.stat()
    return _Follower(source, stat.st_ino, stat.st_size)


def follow(
    sources: Sequence[LogSource],
    out: TextIO,
    refresh: Callable[[], Sequence[LogSource]] | None = None,
    refresh_every_s: float = 2.0,
) -> None:
    """Print lines appended to ``sources`` until interrupted (Ctrl-C returns).

    A file that is rotated (replaced, or cut shorter) is read again from its
    start. ``refresh``, if given, is asked now and then for the current list
    of sources, so replicas started later are followed too; files that are
    new then are read from their start.

    Example::

        follow([LogSource(Path("logs/proxy.log"))], sys.stdout)
    """
    followers = {s.path: _open_at_end(s) for s in sources if s.path.exists()}
    next_refresh = time.monotonic() + refresh_every_s
    try:
        while True:
            for follower in list(followers.values()):
                _pump(follower, out)
            out.flush()
            if refresh is not None and time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + refresh_every_s
                for source in refresh():
                    if source.path not in followers and source.path.exists():
                        followers[source.path] = _Follower(source, source.path.stat().st_ino, 0)
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return


def _pump(follower: _Follower, out: TextIO) -> None:
    try:
        stat = follower.source.path.stat()
    except FileNotFoundError:
        return
    if stat.st_ino != follower.inode or stat.st_size < follower.offset:
        follower.inode, follower.offset, follower.partial = stat.st_ino, 0, b""
    if stat.st_size == follower.offset:
        return
    with follower.source.path.open("rb") as file:
        file.seek(follower.offset)
        data = follower.partial + file.read(stat.st_size - follower.offset)
    follower.offset = stat.st_size
    *lines, follower.partial = data.split(b"\n")
    for line in lines:
        out.write(follower.source.prefix(line.decode("utf-8", errors="replace")) + "\n")
