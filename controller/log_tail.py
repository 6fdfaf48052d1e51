"""Reading part of a log file by byte offset, for GetReplicaLog: the local
launcher reads its replicas' files with it, and a Ray node's replica actor
its replica's (the file is on that node)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from turnout._internal.errors import InvalidArgumentError

# What GetReplicaLog returns when the request does not say (max_bytes 0),
# and the most it returns: well under gRPC's 4 MiB message limit.
DEFAULT_LOG_BYTES = 64 * 1024
MAX_LOG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a log from some offset on, where to go on, and its size now."""

    data: bytes = b""
    next_offset: int = 0
    size: int = 0


def checked_max_bytes(max_bytes: int) -> int:
    """The byte count to read: ``max_bytes``, or the default for 0.
    Raises InvalidArgumentError above MAX_LOG_BYTES."""
    if max_bytes > MAX_LOG_BYTES:
        raise InvalidArgumentError(f"max_bytes is {max_bytes}; at most {MAX_LOG_BYTES} (1 MiB)")
    return max_bytes or DEFAULT_LOG_BYTES


def read_chunk(path: Path, offset: int | None, max_bytes: int) -> LogChunk:
    """Up to ``max_bytes`` of ``path`` from ``offset`` (None: its last
    ``max_bytes``). An offset past the end (the file was rotated, so it is
    shorter now) reads from the start; a missing file reads as empty.

    Example::

        chunk = read_chunk(Path("logs/model#1.log"), None, 4096)
        more = read_chunk(Path("logs/model#1.log"), chunk.next_offset, 4096)
    """
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return LogChunk()
    with file:
        size = file.seek(0, os.SEEK_END)
        if offset is None:
            start = max(0, size - max_bytes)
        else:
            start = offset if offset <= size else 0
        file.seek(start)
        data = file.read(max_bytes)
    return LogChunk(data=data, next_offset=start + len(data), size=size)
