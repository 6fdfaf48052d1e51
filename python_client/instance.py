"""A Turnout instance started by, and owned by, this Python process.

The owned controller runs durable (``--durable --owner-pid``): its proxy and
replicas do not die with it. This process is its supervisor: a daemon thread
waits on the controller and, when it dies any other way than an orderly
shutdown, starts a new one on the same state file and the same port, which
re-adopts the proxy and the replicas (docs/architecture.md, "Crash
recovery"). Everything still ends with this process, however it ends: the
controller watches this pid and stops everything when it exits, and the proxy
and replicas watch it too (``TURNOUT_OWNER_PID``), for when both are gone.

The instance directory (a fresh ``/tmp/turnout-*``, mode 0700, every file in
it 0600) holds the logs, run files and, unless ``state_path`` was given, the
state. It is removed when the instance stops in order or its owner dies,
unless it is to be kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from turnout._driver_logs import DriverLogs
from turnout._internal import auth, child_process, controller_args, replica_context, tls_options
from turnout._internal.backoff import Backoff
from turnout._internal.controller_args import ControllerArgs
from turnout._internal.processes import start_time
from turnout._internal.readiness import Readiness
from turnout._internal.rpc import TLSConfig
from turnout._internal.spawn import spawn
from turnout.errors import TurnoutError

logger = logging.getLogger("turnout")

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# How long a controller that answered Shutdown may take to exit.
EXIT_AFTER_SHUTDOWN_S = 10.0
# A dead controller is restarted at once, then after 0.5, 1, 2, ... s, and
# given up on after this many starts in a row that failed.
RESTART_ATTEMPTS = 6
RESTART_BACKOFF_S = 0.5
# Attempts wait 0.5 s, 1 s, 2 s... up to this.
RESTART_BACKOFF_MAX_S = 8.0
# How long a controller whose connection broke may take to be seen dead.
_DYING_S = 0.5
# Files the instance's processes create are theirs alone.
_UMASK = 0o077


class LocalInstance:
    """The controller process this interpreter started (and restarts), and where it lives."""

    def __init__(
        self,
        options: ControllerArgs,
        process: subprocess.Popen[bytes],
        report: Readiness,
        instance_dir: Path,
        keep_dir: bool,
        logs: DriverLogs | None,
    ) -> None:
        self._options = options
        self._process = process
        self.address = report.address
        self.http_address = report.http_address
        self.instance_dir = instance_dir
        # The admin token, made here and handed to the controller in a 0600
        # file of the 0700 instance directory (never its environment).
        self.token = auth.read_private(instance_dir / auth.TOKEN_FILE)
        self._keep_dir = keep_dir
        self._logs = logs
        # Set once the owner shuts the instance down: no restart after that.
        self._stopping = threading.Event()
        # Set when no controller runs and none will be started again.
        self._gone = threading.Event()
        self._restarts = 0
        self._thread = threading.Thread(
            target=self._supervise, name="turnout-controller-supervisor", daemon=True
        )
        self._thread.start()

    @classmethod
    def start(
        cls,
        http_host: str,
        http_port: int,
        host: str = "127.0.0.1",
        state_path: Path | None = None,
        access_log: bool = False,
        proxy_workers: int = 1,
        *,
        access_log_format: str = "text",
        log_to_driver: bool = False,
        keep_dir: bool = False,
        max_replicas: int | None = None,
        tls: TLSConfig | None = None,
        ray_address: str | None = None,
        ray_runtime_env: str | None = None,
        ray_prefer_local_replicas: bool = False,
        ray_proxy_location: str = "WithReplicas",
    ) -> LocalInstance:
        """Start an instance; ``keep_dir`` keeps the instance directory after it stops."""
        instance_dir = Path(tempfile.mkdtemp(prefix="turnout-"))
        (instance_dir / "logs").mkdir(mode=0o700)
        auth.write_private(instance_dir / auth.TOKEN_FILE, auth.new_token())
        options = ControllerArgs(
            host=host,
            http_host=http_host,
            http_port=http_port,
            instance_dir=instance_dir,
            state=state_path or instance_dir / "state.db",
            durable=True,
            owner_pid=os.getpid(),
            access_log=access_log,
            access_log_format=access_log_format,
            proxy_workers=proxy_workers,
            remove_instance_dir=not keep_dir,
            max_replicas=max_replicas,
            tls=tls,
            ray_address=ray_address,
            ray_runtime_env=ray_runtime_env,
            ray_prefer_local_replicas=ray_prefer_local_replicas,
            ray_proxy_location=ray_proxy_location,
        )
        try:
            process, report = _spawn(options, instance_dir, 0)
        except BaseException:
            if not keep_dir:
                shutil.rmtree(instance_dir, ignore_errors=True)
            raise
        if not report.ok:
            process.wait()
            kept = (
                f" (logs: {instance_dir / 'logs'})"
                if keep_dir
                else "; init(keep_instance_dir=True) keeps its logs"
            )
            if not keep_dir:
                shutil.rmtree(instance_dir, ignore_errors=True)
            reason = _reason(report, http_host, http_port)
            raise TurnoutError(f"could not start Turnout: {reason}{kept}")
        logs = DriverLogs(instance_dir / "logs") if log_to_driver else None
        if logs is not None:
            logs.start()
        return cls(options, process, report, instance_dir, keep_dir, logs)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The controller running now (a new one after each restart)."""
        return self._process

    @property
    def restarts(self) -> int:
        """How many times the controller was restarted after dying."""
        return self._restarts

    def lost(self, pid: int) -> bool:
        """True if the controller ``pid`` died (or was replaced after dying).

        Asked right after a call failed: a killed process closes its sockets
        a moment before it is a zombie, so a live one gets that moment.
        """
        deadline = time.monotonic() + _DYING_S
        while self._process.pid == pid and start_time(pid) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def gone(self) -> bool:
        """True when no controller runs and none will be started again."""
        return self._gone.is_set()

    def wait_stopped(self) -> None:
        """After a Shutdown call: wait for the controller's exit, killing it if it
        takes too long, then stop echoing logs and remove the instance directory."""
        self._stopping.set()
        # A controller still running here never got the Shutdown (a restart
        # that came too late): SIGTERM is the same orderly stop, SIGKILL the last resort.
        for sig, wait in ((None, EXIT_AFTER_SHUTDOWN_S), (signal.SIGTERM, STOP_TIMEOUT_S)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(sig)
            if self._gone.wait(wait):
                break
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._gone.wait(STOP_TIMEOUT_S)
        if self._logs is not None:
            self._logs.stop()
        if not self._keep_dir:
            shutil.rmtree(self.instance_dir, ignore_errors=True)

    def _supervise(self) -> None:
        try:
            while True:
                code = self._process.wait()
                if code == 0 or self._stopping.is_set():
                    return
                logger.warning(
                    "turnout: the controller (pid %d) died (%s); restarting it on %s",
                    self._process.pid,
                    _exit_reason(code),
                    self.address,
                )
                if not self._restart():
                    return
        finally:
            self._gone.set()

    def _restart(self) -> bool:
        # A Unix socket is its own address; a TCP one keeps its port.
        port = 0 if tls_options.is_unix(self.address) else int(self.address.rpartition(":")[2])
        backoff = Backoff(RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S)
        for attempt in range(RESTART_ATTEMPTS):
            if attempt:
                time.sleep(backoff.next())
            if self._stopping.is_set():
                return False
            process: subprocess.Popen[bytes] | None
            try:
                process, report = _spawn(self._options, self.instance_dir, port)
            except OSError as exc:
                report, process = Readiness.failed("INTERNAL", str(exc)), None
            if process is not None and report.ok:
                self._process = process
                self._restarts += 1
                logger.warning("turnout: controller restarted (pid %d)", process.pid)
                return True
            if process is not None:
                process.wait()
            logger.warning("turnout: controller restart failed: %s", report.message)
        logger.error("turnout: the controller could not be restarted; the instance is down")
        return False


def _spawn(
    options: ControllerArgs, instance_dir: Path, port: int
) -> tuple[subprocess.Popen[bytes], Readiness]:
    """Start a controller on ``port`` and wait for its readiness report."""
    # The controller writes (and rotates) controller.log itself; its raw
    # stdout and stderr (a crash, a traceback before logging is set up) go here.
    out_path = instance_dir / "logs" / "controller.out"
    with out_path.open("ab") as out:
        process, report = spawn(
            lambda ready_fd: controller_args.command(
                dataclasses.replace(options, port=port, ready_fd=ready_fd)
            ),
            START_TIMEOUT_S,
            "the controller",
            stdout=out,
            stderr=out,
            # Its own session: a Ctrl-C in the terminal reaches this
            # process, which then shuts the instance down in order.
            start_new_session=True,
            env=_child_env(owner_pid=os.getpid()),
            umask=_UMASK,
        )
    if not report.ok and process.poll() is None:
        _terminate(process)
    return process, report


def _reason(report: Readiness, http_host: str, http_port: int) -> str:
    return port_in_use_hint(
        report.message,
        http_host,
        http_port,
        "pick another with init(http_port=...), or http_port=0 for any free port",
    )


def port_in_use_hint(message: str, http_host: str, http_port: int, fix: str) -> str:
    """A start failure's message, said plainly when the HTTP port is taken."""
    if "address already in use" in message.lower() and http_port != 0:
        return (
            f"HTTP port {http_port} on {http_host} is already in use (another Turnout "
            f"instance or server?); {fix}"
        )
    return message


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


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


def _child_env(owner_pid: int | None = None) -> dict[str, str]:
    """Environment whose PYTHONPATH lets replicas import what this process imports.

    Backends pickled by reference (a class defined in the user's own module)
    must be importable in the replica, as they are here. The interpreter's own
    directories (stdlib, site-packages) are found by the child anyway.
    A new instance belongs to ``owner_pid`` (None: to nobody, ``turnout
    start``), never to the instance this process may itself run in.
    """
    env = dict(os.environ)
    replica_context.without_context(env)
    env.pop(child_process.OWNER_PID_ENV, None)
    if owner_pid is not None:
        env[child_process.OWNER_PID_ENV] = str(owner_pid)
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
