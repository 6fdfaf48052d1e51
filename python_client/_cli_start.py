"""``turnout start`` and ``turnout stop``: run a long-lived controller, find it again.

A started instance keeps its desired state in a SQLite file and its logs and
pid file in an instance directory, by default both under the user's data
directory (``$XDG_DATA_HOME/turnout``, else ``~/.local/share/turnout``)::

    ~/.local/share/turnout/
        state.db          desired state (backends, endpoints, traffic)
        turnout.pid       pid of the controller `turnout start` runs
        logs/             controller.log, proxy.log, one file per replica
        run/              files the controller writes for its children

The controller runs with ``--durable``: when it dies, the proxy and replicas
keep serving, and the next ``turnout start`` on the same state and gRPC port
adopts them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from turnout._internal import controller_args, tls_options
from turnout._internal.controller_args import ControllerArgs
from turnout._internal.processes import command_line, start_time
from turnout._internal.readiness import Readiness
from turnout._internal.rpc import Security, TLSConfig
from turnout._internal.spawn import popen, spawn_detached
from turnout.errors import TurnoutError
from turnout.instance import START_TIMEOUT_S, _child_env, port_in_use_hint

PID_FILE = "turnout.pid"
STOP_TIMEOUT_S = 60.0


class StartError(TurnoutError):
    """``turnout start`` refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class StartOptions:
    """What ``turnout start`` was told; see ``turnout start --help``."""

    instance_dir: Path
    state_path: Path
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    access_log: bool = True
    # "text" or "json" (docs/operations.md "Access log").
    access_log_format: str = "text"
    proxy_workers: int = 1
    # None: the controller's default (docs/operations.md "Limits").
    max_replicas: int | None = None
    # TLS material of every gRPC hop; None = plaintext (loopback or a Unix socket only).
    tls: TLSConfig | None = None
    # Plaintext beyond loopback anyway (labs only).
    insecure: bool = False
    # None: on when the gRPC host is loopback or a Unix socket.
    allow_pickled_code: bool | None = None
    # The proxy's system paths want the token (of this file; None: the admin token's).
    protect_system_paths: bool = False
    system_token_file: Path | None = None
    # The proxy serves HTTPS with this certificate and key; None = HTTP.
    https: tuple[Path, Path] | None = None
    # A Ray cluster that runs the replicas (docs/ray-cluster.md); None = local processes.
    ray_address: str | None = None
    # Ray's runtime_env of every replica (JSON); needs ray_address.
    ray_runtime_env: str | None = None
    # Proxies prefer their node's replicas; which nodes get a proxy (docs/ray-cluster.md).
    ray_prefer_local_replicas: bool = False
    ray_proxy_location: str = "WithReplicas"

    @property
    def pid_file(self) -> Path:
        return self.instance_dir / PID_FILE

    @property
    def log_dir(self) -> Path:
        return self.instance_dir / "logs"


def controller_argv(options: StartOptions, ready_fd: int) -> list[str]:
    """The controller's command line for ``options``.

    Example::

        controller_argv(StartOptions(Path("/srv/t"), Path("/srv/t/state.db")), ready_fd=5)
    """
    return controller_args.command(
        ControllerArgs(
            host=options.grpc_host,
            port=options.grpc_port,
            http_host=options.http_host,
            http_port=options.http_port,
            instance_dir=options.instance_dir,
            state=options.state_path,
            ready_fd=ready_fd,
            durable=True,
            access_log=options.access_log,
            access_log_format=options.access_log_format,
            proxy_workers=options.proxy_workers,
            max_replicas=options.max_replicas,
            tls=options.tls,
            insecure=options.insecure,
            allow_pickled_code=options.allow_pickled_code,
            protect_system_paths=options.protect_system_paths,
            system_token_file=options.system_token_file,
            https_cert=None if options.https is None else options.https[0],
            https_key=None if options.https is None else options.https[1],
            ray_address=options.ray_address,
            ray_runtime_env=options.ray_runtime_env,
            ray_prefer_local_replicas=options.ray_prefer_local_replicas,
            ray_proxy_location=options.ray_proxy_location,
        )
    )


def _controller_alive(pid: int) -> bool:
    # start_time is None for a process that is gone or a zombie.
    return start_time(pid) is not None and any(
        "turnout.controller" in arg for arg in command_line(pid)
    )


def read_pid_file(path: Path) -> int | None:
    """The pid in ``path`` if that process is a live controller, else None."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _controller_alive(pid) else None


def remove_pid_file(path: Path, pid: int) -> None:
    """Remove ``path`` if it still names ``pid`` (a newer instance may own it now)."""
    try:
        if int(path.read_text().strip()) == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _check_can_start(options: StartOptions) -> None:
    running = read_pid_file(options.pid_file)
    if running is not None:
        raise StartError(
            f"Turnout is already running from {options.instance_dir} (pid {running}); "
            "stop it with `turnout stop`, or pick another --instance-dir"
        )
    if tls_options.is_unix(options.grpc_host):
        _check_socket_free(options.grpc_host)
        return
    # Only the controller's own port is checked here: after a controller crash
    # its proxy still holds the HTTP port, and the new controller adopts it.
    family = socket.AF_INET6 if ":" in options.grpc_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the gRPC server itself binds: a crashed controller's connections
        # linger on the port (TIME_WAIT) for a minute and must not block its
        # restart; a socket that listens there still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((options.grpc_host, options.grpc_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartError(
                    f"port {options.grpc_port} on {options.grpc_host} is already in use; "
                    "is another Turnout running? Pick another with --grpc-port"
                ) from None
            where = f"{options.grpc_host}:{options.grpc_port}"
            raise StartError(f"cannot listen on {where}: {exc}") from None


def _check_socket_free(address: str) -> None:
    """Refuse a Unix socket a live server answers on; a stale file is fine
    (the controller replaces it)."""
    path = tls_options.unix_path(address)
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return
    raise StartError(
        f"{path} already has a server listening; is another Turnout running? "
        "Pick another --grpc-host unix:/path"
    )


@dataclass(frozen=True)
class Started:
    """A controller that reported ready."""

    pid: int
    address: str
    http_address: str
    log_dir: str


def _env() -> dict[str, str]:
    # Replicas import backends named by path ("myapp.models:Model"): from the
    # directory `turnout start` runs in, as `python -m` would, and PYTHONPATH.
    env = _child_env()
    paths = [os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _started(report: Readiness, pid: int) -> Started:
    return Started(
        pid=pid,
        address=report.address,
        http_address=report.http_address,
        log_dir=report.log_dir,
    )


def _failure(report: Readiness, log: Path, options: StartOptions) -> StartError:
    fix = "pick another with --http-port, or --http-port 0 for any free port"
    message = port_in_use_hint(report.message, options.http_host, options.http_port, fix)
    return StartError(f"Turnout did not start: {message} (log: {log})")


def _prepare(options: StartOptions) -> None:
    # Before anything is bound, even the probe of _check_can_start.
    try:
        security = Security(tls=options.tls, insecure=options.insecure)
        tls_options.refuse_exposed(options.grpc_host, security, "the controller")
    except TurnoutError as exc:
        raise StartError(str(exc)) from None
    # The token lives here: a new instance directory is its owner's alone.
    options.instance_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    options.log_dir.mkdir(parents=True, exist_ok=True)
    options.state_path.parent.mkdir(parents=True, exist_ok=True)
    _check_can_start(options)


def start_detached(options: StartOptions) -> Started:
    """Start a controller in its own session and return once it serves.

    It logs to ``<instance dir>/logs/controller.log`` itself; its raw stdout
    and stderr (a crash before logging is set up) go to ``controller.out``
    beside it. The pid file is written before returning. Raises ``StartError``
    with the reason otherwise.

    Example::

        started = start_detached(StartOptions(Path("/srv/t"), Path("/srv/t/state.db")))
        print(started.address)
    """
    _prepare(options)
    pid, report = spawn_detached(
        lambda ready_fd: controller_argv(options, ready_fd),
        START_TIMEOUT_S,
        "the controller",
        env=_env(),
        output=options.log_dir / "controller.out",
    )
    if not report.ok:
        _kill_and_reap(pid)
        raise _failure(report, options.log_dir / "controller.log", options)
    options.pid_file.write_text(f"{pid}\n")
    return _started(report, pid)


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@contextlib.contextmanager
def _forwarding(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Pass SIGINT, SIGTERM and SIGHUP on to the controller while it runs here."""

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_foreground(options: StartOptions, on_ready: Callable[[Started], None]) -> int:
    """Run a controller until it exits; returns the exit status to exit with.

    It logs to ``<instance dir>/logs/controller.log`` (and to this terminal,
    if stderr is one); its raw stdout and stderr are this process's (the
    journal, under systemd). SIGINT, SIGTERM and SIGHUP are passed on to it,
    so it shuts down in order. If this process is killed outright the
    controller lives on, durable, and `turnout stop` stops it.

    Example::

        sys.exit(run_foreground(options, lambda s: print("serving on", s.http_address)))
    """
    _prepare(options)
    # Its own session: a terminal's Ctrl-C reaches it once, from us.
    process, pipe = popen(
        lambda ready_fd: controller_argv(options, ready_fd), start_new_session=True, env=_env()
    )
    with process, _forwarding(process):
        report = pipe.read(START_TIMEOUT_S, "the controller")
        if not report.ok:
            if process.poll() is None:
                process.terminate()
            process.wait()
            raise _failure(report, options.log_dir / "controller.log", options)
        options.pid_file.write_text(f"{process.pid}\n")
        try:
            on_ready(_started(report, process.pid))
            code = process.wait()
        finally:
            remove_pid_file(options.pid_file, process.pid)
    # A controller killed by a signal: exit as a shell reports it.
    return code if code >= 0 else 128 - code


def wait_gone(pid: int, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Wait until ``pid`` is no live controller; False if it still is after ``timeout``."""
    deadline = time.monotonic() + timeout
    while _controller_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
