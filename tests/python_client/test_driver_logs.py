"""DriverLogs: replica warnings, tracebacks and prints reach the owner's stderr,
prefixed with the replica id, across a log rotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout._driver_logs import DriverLogs

TIME = "2026-12-01 10:00:00,000"


def record(replica: str, level: str, logger: str, message: str) -> str:
    return f"{TIME} replica {replica} {level} {logger}: {message}\n"


def test_warnings_tracebacks_and_prints_are_echoed_across_a_rotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "replicas" / "model" / "model_1.log"
    log.parent.mkdir(parents=True)
    follower = DriverLogs(tmp_path / "logs")
    log.write_text(
        record("model#1", "INFO", "turnout.replica", "serving on 127.0.0.1:1")
        + record("model#1", "ERROR", "turnout.replica.servicer", "request r1: handler raised")
        + "Traceback (most recent call last):\n"
        + "ValueError: boom\n"
        + record("model#1", "INFO", "print.stdout", "hello from print")
        + record("model#1", "INFO", "turnout.replica", "not shown")
        + "continuation of a hidden record\n"
    )
    follower.poll()
    with log.open("a") as file:
        file.write(record("model#1", "WARNING", "turnout.replica", "before rotation"))
    log.rename(log.with_name("model_1.log.1"))
    log.write_text(record("model#1", "WARNING", "print.stderr", "after rotation"))
    follower.poll()
    follower.poll()
    follower.close()
    assert capsys.readouterr().err.splitlines() == [
        "(model#1) ERROR request r1: handler raised",
        "(model#1) Traceback (most recent call last):",
        "(model#1) ValueError: boom",
        "(model#1) hello from print",
        "(model#1) WARNING before rotation",
        "(model#1) after rotation",
    ]
