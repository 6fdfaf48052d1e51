"""``turnout logs``: the last lines of log files, and new ones as they are written."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
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


@dataclass
class Position:
    """Where reading a file stopped: the file (inode) and the byte offset."""

    inode: int
    offset: int


def last_lines(path: Path, count: int, end: int | None = None) -> tuple[list[str], int]:
    """The last ``count`` complete lines of ``path`` before byte ``end`` (default: its
    size), and the offset just after them, where following it should go on.

    A last line still being written (no line end yet) is left for the follower.

    Example::

        lines, offset = last_lines(Path("/var/log/x.log"), 20)
    """
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END) if end is None else end
        position, data = size, b""
        # One more line end than lines wanted: the first line may be partial.
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    complete = data[: data.rfind(b"\n") + 1]
    stop = position + len(complete)
    if count <= 0:
        return [], stop
    lines = complete.decode("utf-8", errors="replace").splitlines()
    return lines[-count:], stop


def print_tail(sources: Sequence[LogSource], count: int, out: TextIO) -> dict[Path, Position]:
    """Print each source's last ``count`` lines, one file after another; returns where
    each file was read up to, so ``follow`` loses no line written meanwhile."""
    positions = {}
    for source in sources:
        stat = source.path.stat()
        lines, stop = last_lines(source.path, count, stat.st_size)
        positions[source.path] = Position(stat.st_ino, stop)
        for line in lines:
            out.write(source.prefix(line) + "\n")
    out.flush()
    return positions


@dataclass
class _Follower:
    source: LogSource
    inode: int
    offset: int
    partial: bytes = b""


def follow(
    sources: Sequence[LogSource],
    out: TextIO,
    start: Mapping[Path, Position],
    refresh: Callable[[], Sequence[LogSource]] | None = None,
    refresh_every_s: float = 2.0,
) -> None:
    """Print lines appended to ``sources`` from ``start`` on (what ``print_tail``
    returned) until interrupted (Ctrl-C returns).

    A file that is rotated (replaced, or cut shorter) is read again from its
    start. ``refresh``, if given, is asked now and then for the current list
    of sources, so replicas started later are followed too; files that are
    new then are read from their start.

    Example::

        sources = [LogSource(Path("logs/proxy.log"))]
        follow(sources, sys.stdout, print_tail(sources, 10, sys.stdout))
    """
    followers = {
        s.path: _Follower(s, start[s.path].inode, start[s.path].offset)
        for s in sources
        if s.path in start
    }
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


# ---- logs read through the controller (GetReplicaLog) ---------------------------

# (replica id, byte offset or None for the end) -> (bytes read, next offset).
Fetch = Callable[[str, "int | None"], tuple[bytes, int]]
REMOTE_POLL_S = 1.0


def remote_tail(
    fetch: Fetch, replica_ids: Sequence[str], count: int, out: TextIO
) -> dict[str, int]:
    """Print the last ``count`` complete lines of each replica's log, read
    through the controller (the log may be on another machine); returns the
    offset after the last complete line of each, where ``remote_follow`` goes on.

    Example::

        offsets = remote_tail(lambda r, o: (b"a\\nb\\n", 4), ["model#1"], 10, sys.stdout)
    """
    offsets = {}
    for replica_id in replica_ids:
        data, next_offset = fetch(replica_id, None)
        start = next_offset - len(data)
        complete = data[: data.rfind(b"\n") + 1]
        lines = complete.decode("utf-8", errors="replace").splitlines()
        if start > 0 and lines:
            lines = lines[1:]  # the chunk began inside a line
        for line in lines[-count:] if count > 0 else []:
            out.write(f"{replica_id} | {line}\n")
        offsets[replica_id] = start + len(complete)
    out.flush()
    return offsets


def remote_follow(
    fetch: Fetch,
    offsets: Mapping[str, int],
    out: TextIO,
    refresh: Callable[[], Sequence[str]] | None = None,
    gone: tuple[type[BaseException], ...] = (),
) -> None:
    """Print what is appended to each replica's log from ``offsets`` on (what
    ``remote_tail`` returned), polling the controller, until Ctrl-C. A
    replica whose read raises one of ``gone`` is dropped; ``refresh`` gives
    the replica ids now (new ones are read from their start)."""
    at = dict(offsets)
    partial: dict[str, bytes] = {}
    try:
        while True:
            for replica_id, offset in list(at.items()):
                try:
                    data, next_offset = fetch(replica_id, offset)
                except gone:
                    del at[replica_id]
                    continue
                if next_offset - len(data) < offset:  # rotated: read from the start
                    partial[replica_id] = b""
                at[replica_id] = next_offset
                *lines, partial[replica_id] = (partial.get(replica_id, b"") + data).split(b"\n")
                for line in lines:
                    out.write(f"{replica_id} | {line.decode('utf-8', errors='replace')}\n")
            out.flush()
            if refresh is not None:
                for replica_id in refresh():
                    at.setdefault(replica_id, 0)
            time.sleep(REMOTE_POLL_S)
    except KeyboardInterrupt:
        return
