"""The proxy process against slow, idle and too many clients, on real sockets.

Each proxy here follows a controller that is not there: it listens, answers
its system paths and 503 "Starting" for the rest, which is all these tests
need; small limits keep their waits short.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from turnout._internal import child_process


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def proxy(
    *options: str, fd_limit: int | None = None
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A proxy process on a free port, once it listens; yields the port and the process."""
    port = unused_port()
    controller = f"127.0.0.1:{unused_port()}"
    argv = child_process.child_argv(
        "turnout.proxy", ["--controller", controller, "--port", str(port), *options]
    )
    if fd_limit is not None:
        # Set by a small launcher that then execs the proxy: a preexec_fn is
        # not safe in this (threaded) test process.
        launcher = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({fd_limit}, {fd_limit})); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        argv = [sys.executable, "-c", launcher, *argv]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "the proxy exited"
                assert time.monotonic() < deadline, "the proxy did not listen"
                time.sleep(0.05)
        yield port, process
    finally:
        process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def ask(sock: socket.socket, path: str) -> tuple[int, dict[str, str]]:
    """A keep-alive GET on ``sock``; the status and the JSON body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, "closed before an answer"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, "closed before the whole body"
        body += piece
    return int(head.split()[1]), json.loads(body)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the proxy closes ``sock`` within ``seconds`` (what it sends is read and dropped)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def test_a_starting_proxy_says_so_instead_of_404() -> None:
    with proxy() as (port, _), connect(port) as sock:
        status, body = ask(sock, "/any-route")
        assert status == 503 and body["error"] == "Starting"
        status, body = ask(sock, "/-/healthz")
        assert status == 503 and body["status"] == "starting"


def test_slow_and_idle_clients_are_closed_while_others_are_served() -> None:
    with proxy("--read-timeout", "1", "--idle-timeout", "2") as (port, _):
        with connect(port) as idle, connect(port) as slow:
            # One byte of a request head every 0.2 s: complete only after 16 s.
            head = b"GET /-/routes HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 80
            sent = 0
            closed = False
            deadline = time.monotonic() + 10
            while sent < len(head) and time.monotonic() < deadline:
                try:
                    slow.sendall(head[sent : sent + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                sent += 1
                if sent == 3:
                    # Meanwhile a normal client is answered.
                    with connect(port) as normal:
                        assert ask(normal, "/-/routes") == (200, {})
                if closed_within(slow, 0.2):
                    closed = True
                    break
            assert closed and sent < len(head)
            # A connection that never sent a request is closed too.
            assert closed_within(idle, 10)
            # And new clients are still served.
            with connect(port) as normal:
                assert ask(normal, "/-/routes") == (200, {})


def served_pair(port: int) -> tuple[socket.socket, socket.socket]:
    """Two connections both answered: both count against the limit."""
    deadline = time.monotonic() + 10
    while True:
        pair = connect(port), connect(port)
        # The listening probe may still be counted for a moment: then one of
        # these two is refused; try again.
        if all(ask(sock, "/-/routes") == (200, {}) for sock in pair):
            return pair
        for sock in pair:
            sock.close()
        assert time.monotonic() < deadline, "two connections were never both served"
        time.sleep(0.1)


def test_past_the_connection_limit_new_clients_get_503_and_old_ones_are_served() -> None:
    with proxy("--max-connections", "2") as (port, _):
        first, second = served_pair(port)
        with first, second:
            with connect(port) as third:
                data = b""
                while piece := third.recv(65536):
                    data += piece
                head, _, body = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 ")
                assert json.loads(body)["error"] == "TooManyConnections"
            # The connections already open keep working.
            assert ask(first, "/-/healthz")[1]["status"] == "starting"
            assert ask(second, "/-/routes") == (200, {})
        # Once they are closed, new clients are served again.
        first, second = served_pair(port)
        first.close()
        second.close()


def test_running_out_of_file_descriptors_is_logged_once() -> None:
    with proxy("--max-connections", "1000", fd_limit=64) as (port, process):
        with connect(port) as kept:
            # Far more connections than descriptors: accepts fail for a while.
            opened = []
            try:
                for _ in range(100):
                    opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                time.sleep(3)  # the loop retries accepting every second
                assert ask(kept, "/-/routes") == (200, {})
            finally:
                for sock in opened:
                    sock.close()
        process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        log = process.stderr.read()
    assert log.count("cannot accept connections") == 1
    assert "Too many open files" in log
