"""``python -m turnout.controller``: run a controller (started by turnout.init,
or by ``turnout start`` as a durable service).

With ``--durable`` the proxy and replicas outlive the controller: a controller
restarted on the same ``--state`` and ``--port`` re-adopts them, so a crash of
the control plane never interrupts serving. ``turnout.init()`` runs it durable
*and* with ``--owner-pid``: the owning process restarts a dead controller (on
the port the first one bound, hence ``--port 0`` is allowed there), and
everything stops when the owner exits. Without ``--durable`` every child dies
with the controller.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import traceback
from pathlib import Path

from turnout._internal import child_process, logs, tls_options
from turnout._internal.errors import TurnoutError
from turnout._internal.rpc import Security

from .resources import default_max_replicas
from .server import Controller, ControllerOptions

OWNER_POLL_S = 0.5


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m turnout.controller")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="gRPC bind host, or unix:/path for a Unix socket (default 127.0.0.1); beyond "
        "loopback it needs TLS",
    )
    parser.add_argument("--port", type=int, default=0, help="gRPC port; 0 = any free port")
    parser.add_argument("--http-host", default="127.0.0.1", help="HTTP proxy bind host")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP proxy port; 0 = any")
    parser.add_argument(
        "--instance-dir",
        type=Path,
        help="logs and run files (default: a temp dir; with --durable, the folder of --state)",
    )
    parser.add_argument(
        "--state", type=Path, help="SQLite file of desired state, kept across restarts"
    )
    parser.add_argument("--ready-fd", type=int, help="pipe to report readiness on")
    parser.add_argument(
        "--owner-pid", type=int, help="shut down when this process (the parent) exits"
    )
    parser.add_argument(
        "--remove-instance-dir",
        action="store_true",
        help="delete the instance directory (logs, run files) once stopped in order",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="proxy and replicas survive a controller crash and are re-adopted by a "
        "controller restarted with the same --state and --port (both required)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the proxy writes logs/proxy-access.log, one line per request (default on)",
    )
    parser.add_argument(
        "--proxy-workers",
        type=int,
        default=1,
        metavar="N",
        help="run the HTTP proxy as N processes sharing its port (SO_REUSEPORT; default 1)",
    )
    parser.add_argument(
        "--max-replicas",
        type=int,
        metavar="N",
        help="most replicas of all backends together; more are refused "
        "(default: max(16, min(4 x CPUs, 2 x memory GiB)))",
    )
    parser.add_argument(
        "--allow-pickled-code",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept backends sent as pickled code (default: on when --host is loopback or "
        "a Unix socket, off otherwise); import-path backends are always accepted",
    )
    parser.add_argument(
        "--protect-system-paths",
        action="store_true",
        help="the proxy's /-/routes, /-/routing and /-/metrics want the token "
        "(Authorization: Bearer); /-/healthz stays open",
    )
    parser.add_argument(
        "--system-token-file",
        type=Path,
        metavar="PATH",
        help="file holding the token --protect-system-paths wants (default: the instance's "
        "admin token file)",
    )
    parser.add_argument(
        "--https-cert",
        type=Path,
        metavar="PEM",
        help="the proxy serves HTTPS with this certificate",
    )
    parser.add_argument("--https-key", type=Path, metavar="PEM", help="the HTTPS certificate's key")
    tls_options.add_arguments(parser, server=True)
    args = parser.parse_args(argv)
    if (args.https_cert is None) != (args.https_key is None):
        parser.error("HTTPS needs both --https-cert and --https-key")
    if args.max_replicas is not None and args.max_replicas < 1:
        parser.error(f"--max-replicas must be >= 1, got {args.max_replicas}")
    if args.proxy_workers < 1:
        parser.error(f"--proxy-workers must be >= 1, got {args.proxy_workers}")
    if args.durable:
        if args.state is None:
            parser.error("--durable needs --state: re-adoption reads the state file")
        # An owner restarts its controller on the port the first one bound.
        if args.port == 0 and args.owner_pid is None and not tls_options.is_unix(args.host):
            parser.error(
                "--durable needs a fixed --port: surviving proxies reconnect to that address"
            )
    return args


def _instance_dir(args: argparse.Namespace) -> Path:
    if args.instance_dir is not None:
        return Path(args.instance_dir)
    if args.durable:
        # Beside the state file, so that a restart finds the same logs and run files.
        return Path(args.state).resolve().parent
    return Path(tempfile.mkdtemp(prefix="turnout-"))


async def _watch_owner(owner_pid: int, stop: asyncio.Event) -> None:
    # Polling the parent id works whichever thread of the owner started us,
    # unlike PR_SET_PDEATHSIG, which fires when that *thread* exits.
    while os.getppid() == owner_pid:
        await asyncio.sleep(OWNER_POLL_S)
    logging.getLogger(__name__).info("owner process %d exited; shutting down", owner_pid)
    stop.set()


def _give_up(args: argparse.Namespace, exc: BaseException) -> int:
    """Tell the owner (ready pipe) and the operator (stderr, log) why we stop."""
    logging.getLogger(__name__).error("cannot start: %s", exc)
    if args.ready_fd is not None:
        child_process.report_failure(args.ready_fd, "UNAVAILABLE", str(exc), traceback.format_exc())
    print(f"turnout controller: {exc}", file=sys.stderr)
    return 1


def _security(args: argparse.Namespace) -> Security:
    """The instance's TLS material; refuses an exposed plaintext port."""
    security = Security(tls=tls_options.from_args(args), insecure=args.insecure)
    tls_options.refuse_exposed(args.host, security, "the controller")
    if tls_options.is_unix(args.host):
        tls_options.prepare_unix_socket(args.host)
    return security


async def _main(args: argparse.Namespace, instance_dir: Path) -> int:
    try:
        security = _security(args)
    except TurnoutError as exc:
        return _give_up(args, exc)
    allow_pickled = args.allow_pickled_code
    if allow_pickled is None:
        allow_pickled = tls_options.is_local(args.host)
    options = ControllerOptions(
        instance_dir=instance_dir,
        host=args.host,
        port=args.port,
        http_host=args.http_host,
        http_port=args.http_port,
        state_path=args.state,
        durable=args.durable,
        access_log=args.access_log,
        proxy_workers=args.proxy_workers,
        max_replicas=args.max_replicas or default_max_replicas(),
        security=security,
        allow_pickled_code=allow_pickled,
        protect_system_paths=args.protect_system_paths,
        system_token_file=args.system_token_file,
        https=None
        if args.https_cert is None
        else (args.https_cert.absolute(), args.https_key.absolute()),
    )
    try:
        controller = Controller(options)
    except (TurnoutError, OSError, sqlite3.Error) as exc:
        return _give_up(args, exc)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await controller.start()
    except Exception as exc:  # whatever it is, the owner must hear why we gave up
        if not options.durable or args.owner_pid is not None:
            await controller.shutdown()
        # A durable controller that cannot start exits as if it crashed: what
        # runs keeps serving, recorded for the next start to re-adopt. An owned
        # one stops what it started: its owner retries from the state alone.
        await controller.close()
        return _give_up(args, exc)
    if args.ready_fd is not None:
        child_process.report_ready(
            args.ready_fd,
            address=controller.address,
            http_address=controller.http_address,
            pid=os.getpid(),
            log_dir=str(options.log_dir),
        )
    tasks = [asyncio.create_task(stop.wait()), asyncio.create_task(controller.wait_stopped())]
    if args.owner_pid is not None:
        tasks.append(asyncio.create_task(_watch_owner(args.owner_pid, stop)))
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await controller.shutdown()
    await controller.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    instance_dir = _instance_dir(args)
    logs.configure(
        instance_dir / "logs" / "controller.log",
        "%(asctime)s %(levelname)s controller %(name)s: %(message)s",
        also_tty=True,
    )
    code = asyncio.run(_main(args, instance_dir))
    if code == 0 and args.remove_instance_dir:
        # Everything it started has stopped: nothing writes there any more.
        logging.shutdown()
        shutil.rmtree(instance_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
