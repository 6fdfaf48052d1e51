"""``python -m turnout.proxy`` as its parent sees it: the readiness report on
``--ready-fd`` and the exit status, for the cases that need no controller."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from turnout._internal import child_process, readiness


@contextmanager
def proxy_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The proxy with a readiness pipe; yields the process and the pipe's read end."""
    read_fd, write_fd = os.pipe()
    argv = child_process.child_argv("turnout.proxy", [*args, "--ready-fd", str(write_fd)])
    process = subprocess.Popen(
        argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    os.close(write_fd)
    try:
        yield process, read_fd
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_taken_port_is_reported_and_the_proxy_exits() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        controller = f"127.0.0.1:{unused_port()}"
        with proxy_process("--controller", controller, "--port", str(port)) as (process, fd):
            report = readiness.read(fd, 60)
            assert report.ok is False
            assert report.code == "UNAVAILABLE"
            assert report.message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
            assert process.wait(timeout=30) == 1


def test_sigterm_before_the_first_snapshot_stops_it_cleanly() -> None:
    controller = f"127.0.0.1:{unused_port()}"
    with proxy_process("--controller", controller, "--port", "0") as (process, fd):
        assert process.stderr is not None
        # The proxy is bound and retrying the controller, which is down.
        for line in process.stderr:
            if "routing stream from" in line:
                break
        process.send_signal(signal.SIGTERM)
        report = readiness.read(fd, 30)
        assert report.ok is False
        assert "stopped before" in report.message
        assert process.wait(timeout=30) == 0


def test_fewer_than_one_worker_is_refused() -> None:
    controller = f"127.0.0.1:{unused_port()}"
    for value in ("0", "two"):
        argv = child_process.child_argv(
            "turnout.proxy", ["--controller", controller, "--port", "0", "--workers", value]
        )
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert f"argument --workers: must be a whole number >= 1, got {value!r}" in result.stderr
