"""The controller's command line: its options, parsed (``parse``, in
``python -m turnout.controller``) and built (``to_argv``, by ``turnout.init``
and ``turnout start``) in one place, so the client starts a controller by
module name without importing ``turnout.controller``.

Example::

    options = ControllerArgs(state=Path("/srv/t/state.db"), port=50051, durable=True)
    assert parse(to_argv(options)) == options
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import child_process, tls_options, validation
from .errors import InvalidArgumentError
from .proxy_args import ACCESS_LOG_FORMATS
from .rpc import Security, TLSConfig

MODULE = "turnout.controller"
# Where node proxies run on a Ray cluster (like Ray Serve's proxy_location):
# on each node with replicas of the instance (the default), or on every live node.
WITH_REPLICAS = "WithReplicas"
EVERY_NODE = "EveryNode"
RAY_PROXY_LOCATIONS = (WITH_REPLICAS, EVERY_NODE)


@dataclass(frozen=True)
class ControllerArgs:
    """Everything ``python -m turnout.controller`` takes; see its ``--help``."""

    host: str = "127.0.0.1"
    port: int = 0
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    instance_dir: Path | None = None
    state: Path | None = None
    ready_fd: int | None = None
    owner_pid: int | None = None
    remove_instance_dir: bool = False
    durable: bool = False
    access_log: bool = True
    # "text" or "json" (proxy_args.ACCESS_LOG_FORMATS).
    access_log_format: str = "text"
    proxy_workers: int = 1
    max_replicas: int | None = None
    allow_pickled_code: bool | None = None
    protect_system_paths: bool = False
    system_token_file: Path | None = None
    # Both or neither (the parser refuses one alone).
    https_cert: Path | None = None
    https_key: Path | None = None
    # As given: its files are checked (``tls_options.check``) by the controller,
    # which reports a bad one on its ready pipe.
    tls: TLSConfig | None = None
    insecure: bool = False
    # A Ray cluster (host:port of its GCS) that runs the replicas; None = local processes.
    ray_address: str | None = None
    # Ray's runtime_env (JSON) of every replica actor: working_dir, py_modules, pip, env_vars.
    ray_runtime_env: str | None = None
    # Each proxy sends to replicas on its own node while one there has room.
    ray_prefer_local_replicas: bool = False
    # RAY_PROXY_LOCATIONS: which nodes get a proxy.
    ray_proxy_location: str = WITH_REPLICAS


def parser() -> argparse.ArgumentParser:
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
        "--access-log-format",
        choices=ACCESS_LOG_FORMATS,
        default="text",
        help="each access log line is text or a JSON object (default text)",
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
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run replicas as Ray actors on this Ray cluster (its GCS address; needs "
        "'turnout[ray]' and this machine a node of the cluster; default: local processes)",
    )
    parser.add_argument(
        "--ray-runtime-env",
        metavar="JSON",
        help='Ray runtime_env of every replica (e.g. \'{"working_dir": ".", "pip": '
        '["torch"]}\'): the code import-path backends need, on every node',
    )
    parser.add_argument(
        "--ray-prefer-local-replicas",
        action="store_true",
        help="each proxy sends to replicas on its own node while one there has room "
        "(default: to any node's)",
    )
    parser.add_argument(
        "--ray-proxy-location",
        choices=RAY_PROXY_LOCATIONS,
        default=WITH_REPLICAS,
        help=f"which nodes get an HTTP proxy: those with replicas ({WITH_REPLICAS}, the "
        f"default) or every live node ({EVERY_NODE})",
    )
    tls_options.add_arguments(parser, server=True)
    return parser


def parse(argv: Sequence[str]) -> ControllerArgs:
    """The options ``argv`` gives; exits with a usage error (status 2) if they
    contradict each other."""
    p = parser()
    ns = p.parse_args(list(argv))
    if (ns.https_cert is None) != (ns.https_key is None):
        p.error("HTTPS needs both --https-cert and --https-key")
    if ns.ray_runtime_env is not None:
        if ns.ray_address is None:
            p.error("--ray-runtime-env needs --ray-address")
        try:
            validation.runtime_env(ns.ray_runtime_env, instance=True)
        except InvalidArgumentError as exc:
            p.error(str(exc))
    for flag, given in (
        ("--ray-prefer-local-replicas", ns.ray_prefer_local_replicas),
        ("--ray-proxy-location", ns.ray_proxy_location != WITH_REPLICAS),
    ):
        if given and ns.ray_address is None:
            p.error(f"{flag} needs --ray-address")
    if ns.max_replicas is not None and ns.max_replicas < 1:
        p.error(f"--max-replicas must be >= 1, got {ns.max_replicas}")
    if ns.proxy_workers < 1:
        p.error(f"--proxy-workers must be >= 1, got {ns.proxy_workers}")
    if ns.durable:
        if ns.state is None:
            p.error("--durable needs --state: re-adoption reads the state file")
        # An owner restarts its controller on the port the first one bound.
        if ns.port == 0 and ns.owner_pid is None and not tls_options.is_unix(ns.host):
            p.error("--durable needs a fixed --port: surviving proxies reconnect to that address")
    tls = None
    if any((ns.tls_cert, ns.tls_key, ns.tls_ca, ns.tls_server_name)):
        tls = TLSConfig(
            cert=ns.tls_cert, key=ns.tls_key, ca=ns.tls_ca, server_name=ns.tls_server_name
        )
    return ControllerArgs(
        host=ns.host,
        port=ns.port,
        http_host=ns.http_host,
        http_port=ns.http_port,
        instance_dir=ns.instance_dir,
        state=ns.state,
        ready_fd=ns.ready_fd,
        owner_pid=ns.owner_pid,
        remove_instance_dir=ns.remove_instance_dir,
        durable=ns.durable,
        access_log=ns.access_log,
        access_log_format=ns.access_log_format,
        proxy_workers=ns.proxy_workers,
        max_replicas=ns.max_replicas,
        allow_pickled_code=ns.allow_pickled_code,
        protect_system_paths=ns.protect_system_paths,
        system_token_file=ns.system_token_file,
        https_cert=ns.https_cert,
        https_key=ns.https_key,
        tls=tls,
        insecure=ns.insecure,
        ray_address=ns.ray_address,
        ray_runtime_env=ns.ray_runtime_env,
        ray_prefer_local_replicas=ns.ray_prefer_local_replicas,
        ray_proxy_location=ns.ray_proxy_location,
    )


def _optional(flag: str, value: object | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def to_argv(options: ControllerArgs) -> list[str]:
    """The flags that give a controller ``options`` (what ``parse`` reads back)."""
    args = ["--host", options.host, "--port", str(options.port)]
    args += ["--http-host", options.http_host, "--http-port", str(options.http_port)]
    args += _optional("--instance-dir", options.instance_dir)
    args += _optional("--state", options.state)
    args += _optional("--ready-fd", options.ready_fd)
    args += _optional("--owner-pid", options.owner_pid)
    flags = {
        "--remove-instance-dir": options.remove_instance_dir,
        "--durable": options.durable,
        "--no-access-log": not options.access_log,
        "--protect-system-paths": options.protect_system_paths,
        "--insecure": options.insecure,
        "--ray-prefer-local-replicas": options.ray_prefer_local_replicas,
    }
    args += [flag for flag, on in flags.items() if on]
    if options.access_log_format != "text":
        args += ["--access-log-format", options.access_log_format]
    if options.proxy_workers != 1:
        args += ["--proxy-workers", str(options.proxy_workers)]
    args += _optional("--max-replicas", options.max_replicas)
    if options.allow_pickled_code is not None:
        args.append(
            "--allow-pickled-code" if options.allow_pickled_code else "--no-allow-pickled-code"
        )
    args += _optional("--system-token-file", options.system_token_file)
    args += _optional("--https-cert", options.https_cert)
    args += _optional("--https-key", options.https_key)
    args += _optional("--ray-address", options.ray_address)
    args += _optional("--ray-runtime-env", options.ray_runtime_env)
    if options.ray_proxy_location != WITH_REPLICAS:
        args += ["--ray-proxy-location", options.ray_proxy_location]
    args += tls_options.argv(Security(tls=options.tls))
    return args


def command(options: ControllerArgs) -> list[str]:
    """The whole command line: this interpreter running the controller."""
    return child_process.child_argv(MODULE, to_argv(options))
