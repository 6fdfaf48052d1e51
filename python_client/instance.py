"""A Turnout instance started by, and owned by, this Python process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from turnout import _process
from turnout.errors import TurnoutError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass
class LocalInstance:
    """The controller process this interpreter started, and where it lives."""

    process: subprocess.Popen[bytes]
    address: str
    http_address: str
    instance_dir: Path

    @classmethod
    def start(
        cls,
        http_host: str,
        http_port: int,
        host: str = "127.0.0.1",
        state_path: Path | None = None,
        access_log: bool = False,
        proxy_workers: int = 1,
        max_replicas: int | None = None,
    ) -> LocalInstance:
        instance_dir = Path(tempfile.mkdtemp(prefix="turnout-"))
        (instance_dir / "logs").mkdir()
        log_path = instance_dir / "logs" / "controller.log"
        # The controller writes (and rotates) controller.log itself; its raw
        # stdout and stderr (a crash, a traceback before logging is set up) go here.
        out_path = instance_dir / "logs" / "controller.out"
        read_fd, write_fd = os.pipe()
        argv = _process.child_argv(
            "turnout.controller",
            [
                "--host", host,
                "--port", "0",
                "--http-host", http_host,
                "--http-port", str(http_port),
                "--instance-dir", str(instance_dir),
                "--ready-fd", str(write_fd),
                "--owner-pid", str(os.getpid()),
                "--access-log" if access_log else "--no-access-log",
                "--proxy-workers", str(proxy_workers),
                *(["--state", str(state_path)] if state_path is not None else []),
                *(["--max-replicas", str(max_replicas)] if max_replicas is not None else []),
            ],
        )  # fmt: skip
        try:
            with out_path.open("ab") as log:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                    # Its own session: a Ctrl-C in the terminal reaches this
                    # process, which then shuts the instance down in order.
                    start_new_session=True,
                    env=_child_env(),
                )
        finally:
            os.close(write_fd)
        report = _process.read_report(read_fd, START_TIMEOUT_S)
        if not report.get("ok"):
            _terminate(process)
            raise TurnoutError(
                f"could not start Turnout: {report.get('message')} "
                f"(log: {log_path}, output: {out_path})"
            )
        return cls(
            process=process,
            address=str(report["address"]),
            http_address=str(report["http_address"]),
            instance_dir=instance_dir,
        )

    def wait_stopped(self) -> None:
        """After a Shutdown call: reap the controller, killing what is left if needed."""
        _terminate(self.process, graceful=False)


def _terminate(process: subprocess.Popen[bytes], graceful: bool = True) -> None:
    if graceful and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _child_env() -> dict[str, str]:
    """Environment whose PYTHONPATH lets replicas import what this process imports.

    Backends pickled by reference (a class defined in the user's own module)
    must be importable in the replica, as they are here. The interpreter's own
    directories (stdlib, site-packages) are found by the child anyway.
    """
    env = dict(os.environ)
    own = tuple({os.path.abspath(sys.prefix), os.path.abspath(sys.base_prefix)})
    extra: list[str] = []
    for entry in sys.path:
        path = os.path.abspath(entry or os.curdir)
        if path.startswith(own) or path in extra or not os.path.isdir(path):
            continue
        extra.append(path)
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(extra)
    return env
