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

from turnout._internal import controller_args, logs, readiness, tls_options
from turnout._internal.controller_args import ControllerArgs
from turnout._internal.errors import TurnoutError
from turnout._internal.readiness import Readiness
from turnout._internal.rpc import Security

from .resources import default_max_replicas
from .server import Controller, ControllerOptions

OWNER_POLL_S = 0.5


def _instance_dir(args: ControllerArgs) -> Path:
    if args.instance_dir is not None:
        return Path(args.instance_dir)
    if args.durable:
        # Beside the state file, so that a restart finds the same logs and run files.
        assert args.state is not None  # parse() refuses --durable without it
        return args.state.resolve().parent
    return Path(tempfile.mkdtemp(prefix="turnout-"))


async def _watch_owner(owner_pid: int, stop: asyncio.Event) -> None:
    # Polling the parent id works whichever thread of the owner started us,
    # unlike PR_SET_PDEATHSIG, which fires when that *thread* exits.
    while os.getppid() == owner_pid:
        await asyncio.sleep(OWNER_POLL_S)
    logging.getLogger(__name__).info("owner process %d exited; shutting down", owner_pid)
    stop.set()


def _give_up(args: ControllerArgs, exc: BaseException) -> int:
    """Tell the owner (ready pipe) and the operator (stderr, log) why we stop."""
    logging.getLogger(__name__).error("cannot start: %s", exc)
    if args.ready_fd is not None:
        failure = Readiness.failed("UNAVAILABLE", str(exc), traceback.format_exc())
        readiness.write(args.ready_fd, failure)
    print(f"turnout controller: {exc}", file=sys.stderr)
    return 1


def _security(args: ControllerArgs) -> Security:
    """The instance's TLS material; refuses an exposed plaintext port."""
    security = Security(tls=tls_options.checked(args.tls), insecure=args.insecure)
    tls_options.refuse_exposed(args.host, security, "the controller")
    if tls_options.is_unix(args.host):
        tls_options.prepare_unix_socket(args.host)
    return security


async def _main(args: ControllerArgs, instance_dir: Path) -> int:
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
        access_log_format=args.access_log_format,
        proxy_workers=args.proxy_workers,
        max_replicas=args.max_replicas or default_max_replicas(),
        security=security,
        allow_pickled_code=allow_pickled,
        protect_system_paths=args.protect_system_paths,
        system_token_file=args.system_token_file,
        https=None
        if args.https_cert is None or args.https_key is None
        else (args.https_cert.absolute(), args.https_key.absolute()),
        ray_address=args.ray_address,
        ray_runtime_env=args.ray_runtime_env,
        ray_prefer_local_replicas=args.ray_prefer_local_replicas,
        ray_proxy_location=args.ray_proxy_location,
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
        ready = Readiness(
            ok=True,
            address=controller.address,
            http_address=controller.http_address,
            pid=os.getpid(),
            log_dir=str(options.log_dir),
        )
        readiness.write(args.ready_fd, ready)
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
    args = controller_args.parse(sys.argv[1:] if argv is None else argv)
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
