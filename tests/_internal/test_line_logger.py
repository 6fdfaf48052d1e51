"""What a replica's print() becomes: log records, one per line, bounded."""

import logging
import os

import pytest

from turnout._internal.logs import MAX_CAPTURED_LINE, LineLogger


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> tuple[LineLogger, pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="test.prints")
    read, write = os.pipe()
    os.close(read)
    stream = LineLogger(logging.getLogger("test.prints"), logging.INFO, write)
    return stream, caplog


def test_each_complete_line_is_one_record_and_flush_logs_the_rest(
    captured: tuple[LineLogger, pytest.LogCaptureFixture],
) -> None:
    stream, caplog = captured
    stream.write("one\ntw")
    stream.write("o\nthree")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]
    stream.flush()
    assert [r.getMessage() for r in caplog.records] == ["one", "two", "three"]


def test_output_that_never_ends_a_line_is_logged_in_pieces(
    captured: tuple[LineLogger, pytest.LogCaptureFixture],
) -> None:
    stream, caplog = captured
    for _ in range(5):
        stream.write("x" * (MAX_CAPTURED_LINE // 2))
    pieces = [r.getMessage() for r in caplog.records]
    assert pieces == ["x" * MAX_CAPTURED_LINE] * 2
    stream.flush()
    assert len(caplog.records[-1].getMessage()) == MAX_CAPTURED_LINE // 2
