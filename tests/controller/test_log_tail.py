"""Reading a replica's log by byte offset (GetReplicaLog's reading, on the
controller's machine or a Ray node): the tail, following, rotation, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.controller.log_tail import (
    DEFAULT_LOG_BYTES,
    MAX_LOG_BYTES,
    checked_max_bytes,
    read_chunk,
)
from turnout.errors import InvalidArgumentError


def test_the_tail_then_what_is_appended(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    tail = read_chunk(log, None, 6)
    assert (tail.data, tail.next_offset, tail.size) == (b"three\n", 14, 14)
    with log.open("ab") as file:
        file.write(b"four\n")
    more = read_chunk(log, tail.next_offset, 1024)
    assert (more.data, more.next_offset, more.size) == (b"four\n", 19, 19)
    # Caught up: nothing, same offset.
    assert read_chunk(log, more.next_offset, 1024).data == b""
    # A small max_bytes reads the log in pieces.
    assert read_chunk(log, 0, 4).data == b"one\n"


def test_a_rotated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_bytes(b"a long first file\n")
    log.write_bytes(b"new\n")  # shorter than the offset the reader had
    chunk = read_chunk(log, 18, 1024)
    assert (chunk.data, chunk.next_offset) == (b"new\n", 4)


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    chunk = read_chunk(tmp_path / "none.log", None, 1024)
    assert (chunk.data, chunk.next_offset, chunk.size) == (b"", 0, 0)


def test_max_bytes_has_a_default_and_a_cap() -> None:
    assert checked_max_bytes(0) == DEFAULT_LOG_BYTES == 64 * 1024
    assert checked_max_bytes(MAX_LOG_BYTES) == MAX_LOG_BYTES == 1024 * 1024
    with pytest.raises(InvalidArgumentError, match="at most 1048576"):
        checked_max_bytes(MAX_LOG_BYTES + 1)
