"""``turnout``: the operator's command line.

::

    turnout start [--detach]          run an instance (controller, HTTP proxy, replicas)
    turnout status [--json]           endpoints, backends, replicas
    turnout deploy FILE [--prune]     make the instance match a YAML or JSON file
    turnout logs BACKEND [-f]         tail a backend's (or one replica's) logs, or controller, proxy
    turnout rollout start|status|pause|resume|abort   rollouts the controller runs
    turnout stop                      shut the instance down
    turnout replica-check ADDRESS     check a replica (any language) against the contract

Every command but ``start`` finds the controller at ``--address``, else
``$TURNOUT_ADDRESS``, else 127.0.0.1:50051. Exit status: 0 done, 1 failed
(no instance, a refused change), 2 bad usage or a bad deploy file (nothing
changed). docs/operations.md has the full reference.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from turnout import _cli_logs, _cli_render, _cli_rollout, _cli_start
from turnout._conformance import check as replica_check
from turnout._deploy_apply import Instance, apply
from turnout._internal import auth, controller_args, logs, paths, tls_options, validation
from turnout._internal.proxy_args import ACCESS_LOG_FORMATS
from turnout._internal.version import __version__
from turnout.client import Client
from turnout.deploy import DeployFileError, Plan, load_file, plan
from turnout.errors import InvalidArgumentError, NotRunningError, TurnoutError

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "TURNOUT_ADDRESS"
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """Ends the command with one line on stderr and ``status``."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# ---- connecting -----------------------------------------------------------------


def _address(args: argparse.Namespace) -> str:
    return str(args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS)


def _token_file(args: argparse.Namespace) -> Path | None:
    """--token-file, else the token of --instance-dir when one is named (None:
    the client's own lookup, see ``turnout._internal.auth.find_token``)."""
    if getattr(args, "token_file", None):
        return Path(args.token_file)
    if getattr(args, "instance_dir", None):
        return Path(args.instance_dir) / auth.TOKEN_FILE
    return None


def _connect(args: argparse.Namespace) -> Client:
    address = _address(args)
    try:
        tls = tls_options.from_args(args, os.environ)
    except TurnoutError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        return Client(address, tls=tls, token_file=_token_file(args))
    except NotRunningError:
        raise CliError(
            f"no Turnout instance at {address}: start one with `turnout start`"
        ) from None


# ---- start / stop ---------------------------------------------------------------


def _https(args: argparse.Namespace) -> tuple[Path, Path] | None:
    if (args.https_cert is None) != (args.https_key is None):
        raise CliError("HTTPS needs both --https-cert and --https-key", EXIT_USAGE)
    if args.https_cert is None:
        return None
    return Path(args.https_cert).absolute(), Path(args.https_key).absolute()


def _start_options(args: argparse.Namespace) -> _cli_start.StartOptions:
    instance_dir = Path(args.instance_dir or paths.data_dir()).absolute()
    if args.access_log_format != "text" and not args.access_log:
        raise CliError(
            f"--access-log-format {args.access_log_format} needs the access log "
            "(drop --no-access-log)",
            EXIT_USAGE,
        )
    for flag, given in (
        ("--ray-runtime-env", args.ray_runtime_env is not None),
        ("--ray-prefer-local-replicas", args.ray_prefer_local_replicas),
        ("--ray-proxy-location", args.ray_proxy_location != controller_args.WITH_REPLICAS),
    ):
        if given and args.ray_address is None:
            raise CliError(f"{flag} needs --ray-address", EXIT_USAGE)
    if args.ray_runtime_env is not None:
        try:
            validation.runtime_env(args.ray_runtime_env, instance=True)
        except TurnoutError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    try:
        tls = tls_options.from_args(args)
    except TurnoutError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return _cli_start.StartOptions(
        instance_dir=instance_dir,
        state_path=Path(args.state or instance_dir / "state.db").absolute(),
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
        http_host=args.http_host,
        http_port=args.http_port,
        access_log=args.access_log,
        access_log_format=args.access_log_format,
        proxy_workers=args.proxy_workers,
        max_replicas=args.max_replicas,
        tls=tls,
        insecure=args.insecure,
        allow_pickled_code=args.allow_pickled_code,
        protect_system_paths=args.protect_system_paths,
        https=_https(args),
        system_token_file=(
            None if args.system_token_file is None else Path(args.system_token_file).absolute()
        ),
        ray_address=args.ray_address,
        ray_runtime_env=args.ray_runtime_env,
        ray_prefer_local_replicas=args.ray_prefer_local_replicas,
        ray_proxy_location=args.ray_proxy_location,
    )


def _ready_text(started: _cli_start.Started, options: _cli_start.StartOptions) -> str:
    lines = [
        f"Turnout is running (controller pid {started.pid})",
        f"  gRPC:  {started.address}",
        f"  HTTP:  {started.http_address}",
        f"  state: {options.state_path}",
        f"  logs:  {started.log_dir or options.log_dir}",
        f"  token: {options.instance_dir / auth.TOKEN_FILE} (admin; `turnout token` prints it)",
    ]
    if started.address != DEFAULT_ADDRESS:
        lines.append(
            f"Other commands need --address {started.address} (or {ADDRESS_ENV}={started.address})."
        )
    return "\n".join(lines)


def cmd_start(args: argparse.Namespace) -> int:
    if args.grpc_port == 0:
        # Clients find the instance again by its port; 0 would pick a new one each time.
        raise CliError("--grpc-port must be a fixed port, not 0", EXIT_USAGE)
    options = _start_options(args)
    try:
        if args.detach:
            started = _cli_start.start_detached(options)
            print(_ready_text(started, options))
            print("Stop it with `turnout stop`.")
            return 0

        def on_ready(started: _cli_start.Started) -> None:
            print(_ready_text(started, options))
            print("Press Ctrl-C to stop.", flush=True)

        return _cli_start.run_foreground(options, on_ready)
    except _cli_start.StartError as exc:
        raise CliError(str(exc)) from None


def cmd_stop(args: argparse.Namespace) -> int:
    client = _connect(args)
    pid = client.controller_pid
    address = client.controller_address
    client.shutdown()
    pid_file = Path(args.instance_dir or paths.data_dir()) / _cli_start.PID_FILE
    # The pid is only ours to wait for when the controller runs on this machine.
    if _cli_start.read_pid_file(pid_file) == pid or _is_local(address):
        if not _cli_start.wait_gone(pid, args.timeout):
            raise CliError(f"asked Turnout at {address} to stop, but pid {pid} still runs")
    _cli_start.remove_pid_file(pid_file, pid)
    print(f"Stopped Turnout at {address} (controller pid {pid}).")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    path = Path(args.instance_dir or paths.data_dir()) / auth.TOKEN_FILE
    if args.rotate:
        token = auth.rotate(path)
    elif path.exists():
        token = auth.read_private(path)
    else:
        raise CliError(f"no token at {path}: `turnout start` creates it")
    print(token)
    return 0


def _is_local(address: str) -> bool:
    if tls_options.is_unix(address):
        return True
    host = address.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1", "0.0.0.0", "::") or host.startswith("127.")


# ---- status -----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    snapshot = _cli_render.Snapshot.read(_connect(args))
    print(_cli_render.to_json(snapshot) if args.json else _cli_render.to_text(snapshot))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from turnout._dashboard import command

    try:
        return command.run(_connect(args), args)
    except InvalidArgumentError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


# ---- deploy -----------------------------------------------------------------------


def _summary(steps: Plan, dry_run: bool) -> str:
    counts = steps.counts()
    parts = [
        f"{counts['create']} created",
        f"{counts['update']} updated",
        f"{counts['unchanged']} unchanged",
        f"{counts['delete']} removed",
    ]
    if counts["kept"]:
        parts.append(f"{counts['kept']} not in the file (kept; --prune removes them)")
    text = ", ".join(parts)
    if dry_run:
        return f"Dry run, nothing changed. Would be: {text}."
    if not steps.changed:
        return f"Nothing changed: {text}."
    return f"Deployed: {text}."


def cmd_deploy(args: argparse.Namespace) -> int:
    # The whole file is checked before the instance is even asked.
    wanted = load_file(args.file)
    instance = Instance(_connect(args))
    try:
        try:
            steps = plan(wanted, instance.state(), prune=args.prune)
        except DeployFileError as exc:
            raise DeployFileError(args.file, exc.problems) from None
        try:
            apply(steps, instance, sys.stdout, dry_run=args.dry_run)
        except TurnoutError as exc:
            raise CliError(
                f"error: {exc}\nThe changes listed above as done stay; fix the cause and deploy "
                "again to finish."
            ) from None
    finally:
        instance.close()
    print(_summary(steps, args.dry_run))
    return 0


# ---- logs ---------------------------------------------------------------------------

# Each process logs to <name>.log (rotated) and leaves what it prints, and a
# crash's traceback, in <name>.out beside it.
_PROCESS_LOGS = {
    "controller": ("controller.log", "controller.out"),
    "proxy": ("proxy.log", "proxy.out"),
    "access": ("proxy-access.log",),
}


def _with_output(log: Path, label: str) -> list[_cli_logs.LogSource]:
    out_label = f"{label} out" if label else "out"
    return [
        _cli_logs.LogSource(log, label),
        _cli_logs.LogSource(logs.out_path(log), out_label),
    ]


def _replica_ids(client: Client, name: str) -> list[str]:
    """The running replicas ``name`` means: a backend's, or one replica id."""
    if name in client.list_backends():
        replicas = client.list_replicas(name)
    else:
        replicas = [r for r in client.list_replicas() if r.replica_id == name]
    return sorted(r.replica_id for r in replicas if r.state == "RUNNING")


def _remote_logs(client: Client, args: argparse.Namespace) -> int:
    """``turnout logs`` through the controller (GetReplicaLog): for replicas
    whose log files are not on this machine (a Ray node's, or a controller
    elsewhere), or a replica named by its id."""
    replica_ids = _replica_ids(client, args.name)
    if not replica_ids:
        raise CliError(f"{args.name!r} has no running replica to read the log of")

    def fetch(replica_id: str, offset: int | None) -> tuple[bytes, int]:
        chunk = client.replica_log(replica_id, offset=offset)
        return chunk.data, chunk.next_offset

    offsets = _cli_logs.remote_tail(fetch, replica_ids, args.lines, sys.stdout)
    if args.follow:

        def refresh() -> list[str]:
            try:
                return _replica_ids(client, args.name)
            except TurnoutError:
                return []  # the controller may be restarting; keep following

        _cli_logs.remote_follow(fetch, offsets, sys.stdout, refresh, gone=(TurnoutError,))
    return 0


def _log_sources(client: Client, name: str) -> list[_cli_logs.LogSource]:
    if name in _PROCESS_LOGS:
        log_dir = Path(client.log_dir)
        return [
            _cli_logs.LogSource(log_dir / file, "out" if file.endswith(".out") else "")
            for file in _PROCESS_LOGS[name]
        ]
    backends = client.list_backends()
    if name not in backends:
        if _replica_ids(client, name):
            return []  # one replica, by its id: read through the controller
        known = ", ".join(sorted(backends)) or "none"
        raise CliError(
            f"no backend or running replica named {name!r} (backends: {known}; also: "
            f"{', '.join(_PROCESS_LOGS)})"
        )
    replicas = sorted(client.list_replicas(name), key=lambda r: r.replica_id)
    return [
        source
        for r in replicas
        if r.log_path
        for source in _with_output(Path(r.log_path), r.replica_id)
    ]


def cmd_logs(args: argparse.Namespace) -> int:
    client = _connect(args)
    sources = _log_sources(client, args.name)
    present = [s for s in sources if s.path.exists()]
    if args.name not in _PROCESS_LOGS and not present:
        # Not on this machine (replicas on a Ray cluster's nodes, a controller
        # elsewhere), or one replica by id: the controller reads them.
        return _remote_logs(client, args)
    if not present:
        raise CliError(
            f"cannot read {sources[0].path}: no such file here (does the controller run on "
            "another machine?)"
        )
    positions = _cli_logs.print_tail(present, args.lines, sys.stdout)
    if args.follow:

        def refresh() -> list[_cli_logs.LogSource]:
            try:
                return _log_sources(client, args.name)
            except (TurnoutError, CliError):
                return []  # the controller may be restarting; keep following

        by_backend = refresh if args.name not in _PROCESS_LOGS else None
        _cli_logs.follow(present, sys.stdout, positions, by_backend)
    return 0


def cmd_replica_check(args: argparse.Namespace) -> int:
    if args.list:
        for name, _ in replica_check.RULES:
            print(f"{name}: {replica_check.describe(name)}")
        return 0
    try:
        tls = tls_options.from_args(args)
        token, control = args.token_file, args.control_token_file
        tokens = replica_check.tokens_from(
            token_file=Path(token) if token else None,
            control_token_file=Path(control) if control else None,
            credentials_file=Path(args.credentials_file) if args.credentials_file else None,
        )
    except (TurnoutError, OSError, ValueError, KeyError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    target = replica_check.Target(
        args.address, token=tokens[0], control_token=tokens[1], stop_pid=args.stop_pid, tls=tls
    )
    only = args.only or []
    results = replica_check.run(
        target, lambda rule: not only or any(rule.startswith(o) for o in only)
    )
    print(replica_check.render(results), flush=True)
    return EXIT_FAILED if any(r.verdict == "fail" for r in results) else 0


# ---- parser ---------------------------------------------------------------------------


def _at_least_one(text: str) -> int:
    """An argparse ``type``: an int >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout",
        description="Run and operate a Turnout instance: serve Python functions and classes "
        "over HTTP, with weighted traffic between backends.",
        epilog="Commands other than start find the controller at --address, else "
        f"${ADDRESS_ENV}, else {DEFAULT_ADDRESS}. See docs/operations.md.",
    )
    parser.add_argument("--version", action="version", version=f"turnout {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    connect = argparse.ArgumentParser(add_help=False)
    connect.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="the controller's gRPC address, host:port or unix:/path "
        f"(default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})",
    )
    tls = connect.add_argument_group(
        "TLS", "for an instance started with --tls-cert (default: $TURNOUT_TLS_CA, ...)"
    )
    tls.add_argument(
        "--tls-ca", metavar="PEM", type=Path, help="CA that signed the controller's certificate"
    )
    tls.add_argument(
        "--tls-cert", metavar="PEM", type=Path, help="client certificate, for mutual TLS"
    )
    tls.add_argument("--tls-key", metavar="PEM", type=Path, help="the client certificate's key")
    tls.add_argument(
        "--tls-server-name", metavar="NAME", help="name the controller's certificate must have"
    )
    connect.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"the admin token's file (default: ${auth.TOKEN_FILE_ENV}, else ${auth.TOKEN_ENV}, "
        "else INSTANCE_DIR/token of the default instance)",
    )
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--instance-dir",
        metavar="DIR",
        help="logs, pid file and run files (default: $XDG_DATA_HOME/turnout, "
        "else ~/.local/share/turnout)",
    )

    start = commands.add_parser(
        "start",
        parents=[home],
        help="run an instance: controller, HTTP proxy and the replicas of its state",
        description="Run a Turnout controller, which starts the HTTP proxy and the replicas of "
        "every backend in its state file. In the foreground (the default; right for systemd) "
        "it runs until Ctrl-C, SIGTERM or `turnout stop`; with --detach it runs in the "
        "background and the command returns once it serves. The controller is durable: if it "
        "dies, the proxy and replicas keep serving, and the next `turnout start` with the "
        "same --state and --grpc-port adopts them.",
    )
    start.add_argument("--http-host", default="127.0.0.1", help="HTTP bind host (127.0.0.1)")
    start.add_argument("--http-port", type=int, default=8000, help="HTTP port (8000)")
    start.add_argument(
        "--grpc-host",
        default="127.0.0.1",
        help="gRPC bind host (127.0.0.1), or unix:/path for a Unix socket; creating a backend "
        "runs code, so beyond loopback TLS is required (see docs/security.md)",
    )
    start.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (50051)")
    start.add_argument(
        "--state",
        metavar="PATH",
        help="SQLite file of desired state (default: INSTANCE_DIR/state.db)",
    )
    start.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="do not write the proxy's access log",
    )
    start.add_argument(
        "--access-log-format",
        choices=ACCESS_LOG_FORMATS,
        default="text",
        help="each access log entry is a text line or a JSON object (text)",
    )
    start.add_argument(
        "--proxy-workers",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="run the HTTP proxy as N processes sharing the HTTP port (1); see docs/operations.md",
    )
    start.add_argument(
        "--max-replicas",
        type=_at_least_one,
        default=None,
        metavar="N",
        help="most replicas of all backends together (default: from CPUs and memory; "
        "see docs/operations.md)",
    )
    start.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run replicas as Ray actors on this Ray cluster (pip install 'turnout[ray]'; "
        "run turnout start on one of its nodes); see docs/ray-cluster.md",
    )
    start.add_argument(
        "--ray-runtime-env",
        metavar="JSON",
        help="Ray runtime_env of every replica (working_dir, py_modules, pip, env_vars): the code "
        "import-path backends need, on every node; see docs/ray-cluster.md",
    )
    start.add_argument(
        "--ray-prefer-local-replicas",
        action="store_true",
        help="each node's proxy sends to replicas on its own node while one there has room",
    )
    start.add_argument(
        "--ray-proxy-location",
        choices=controller_args.RAY_PROXY_LOCATIONS,
        default=controller_args.WITH_REPLICAS,
        help="which nodes of the Ray cluster get an HTTP proxy: those with replicas "
        "(WithReplicas, the default) or every live node (EveryNode)",
    )
    tls_options.add_arguments(start, server=True)
    start.add_argument(
        "--allow-pickled-code",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept backends sent as pickled code (default: on when --grpc-host is loopback "
        "or a Unix socket, off otherwise); import-path backends always work",
    )
    start.add_argument(
        "--protect-system-paths",
        action="store_true",
        help="the proxy's /-/routes, /-/routing and /-/metrics answer 401 without "
        "'Authorization: Bearer <token>' (/-/healthz stays open)",
    )
    start.add_argument(
        "--system-token-file",
        metavar="PATH",
        help="file holding the token --protect-system-paths wants (default: the instance's "
        "token file, INSTANCE_DIR/token)",
    )
    start.add_argument(
        "--https-cert", metavar="PEM", help="the HTTP proxy serves HTTPS with this certificate"
    )
    start.add_argument("--https-key", metavar="PEM", help="the HTTPS certificate's key")
    start.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; writes INSTANCE_DIR/turnout.pid, logs to "
        "INSTANCE_DIR/logs/controller.log",
    )
    start.set_defaults(func=cmd_start)

    stop = commands.add_parser(
        "stop",
        parents=[connect, home],
        help="shut the instance down: replicas, proxy, controller",
        description="Ask the controller to stop every replica and the proxy, then itself, and "
        "wait until it has exited. Removes the pid file `turnout start` wrote.",
    )
    stop.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for it to exit (60)"
    )
    stop.set_defaults(func=cmd_stop)

    token = commands.add_parser(
        "token",
        parents=[home],
        help="print the instance's admin token (for grpcurl), or replace it",
        description="Print the admin token in INSTANCE_DIR/token, which every gRPC call to the "
        "controller must present (grpcurl -H 'authorization: Bearer ...'). With --rotate, "
        "replace it with a new one first: the running controller accepts the new token at its "
        "next call and refuses the old one; the proxy and replicas keep working.",
    )
    token.add_argument("--rotate", action="store_true", help="replace the token, then print it")
    token.set_defaults(func=cmd_token)

    status = commands.add_parser(
        "status",
        parents=[connect],
        help="show endpoints, backends and replicas",
        description="Endpoints (route, methods, traffic, shadows), backends (wanted replicas, "
        "replicas by state, config that differs from the defaults) and replicas (state, pid, "
        "address, error).",
    )
    status.add_argument("--json", action="store_true", help="print stable JSON instead")
    status.set_defaults(func=cmd_status)

    dashboard = commands.add_parser(
        "dashboard",
        parents=[connect],
        help="serve a web page with the live instance (endpoints, replicas, charts, logs)",
        description="Serve the operators' dashboard of the instance on 127.0.0.1 and print "
        "its URL, which carries the token that opens it; the page acts with this command's "
        "credentials, like `kubectl proxy`. See docs/dashboard.md.",
    )
    from turnout._dashboard import command as dashboard_command

    dashboard_command.add_arguments(dashboard)
    dashboard.set_defaults(func=cmd_dashboard)

    deploy = commands.add_parser(
        "deploy",
        parents=[connect],
        help="make the instance match a YAML or JSON deploy file",
        description="Create, update and (with --prune) remove backends and endpoints so that "
        "the instance matches FILE, and report what changed; applying the same file again "
        "changes nothing. The whole file is checked first: a bad file changes nothing and "
        "exits with status 2. Format: docs/operations.md.",
    )
    deploy.add_argument("file", metavar="FILE", help="deploy file: .yaml, .yml or .json")
    deploy.add_argument(
        "--prune",
        action="store_true",
        help="remove backends and endpoints that the file does not name",
    )
    deploy.add_argument(
        "--dry-run", action="store_true", help="show what would change, change nothing"
    )
    deploy.set_defaults(func=cmd_deploy)

    logs = commands.add_parser(
        "logs",
        parents=[connect],
        help="print a backend's replica logs (or the controller's, proxy's, access log)",
        description="Print the last lines of the log files of each replica of BACKEND, each "
        "line prefixed with the replica id: its log (<id> | ...) and what it printed "
        "(<id> out | ...). `controller`, `proxy` and `access` (the proxy's access log) name "
        "those logs instead. The files are read on this machine; a replica's log that is not "
        "here (a Ray node's replica, a controller elsewhere), or a replica named by its id, is "
        "read through the controller (GetReplicaLog).",
    )
    logs.add_argument(
        "name",
        metavar="BACKEND",
        help="a backend tag, a replica id (model#1), or controller, proxy, access",
    )
    logs.add_argument(
        "-n", "--lines", type=int, default=20, help="lines per file to print first (20)"
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C"
    )
    logs.set_defaults(func=cmd_logs)

    check = commands.add_parser(
        "replica-check",
        help="check a running replica, in any language, against the replica contract",
        description="Drive the replica at ADDRESS through the replica contract "
        "(docs/replica-protocol.md) and print PASS, FAIL or SKIP per rule; exit status 1 if "
        "any rule fails. The replica must serve the conformance handler that document "
        "describes. Rules needing a token or the replica's pid are skipped without them.",
    )
    check.add_argument("address", metavar="ADDRESS", help="the replica's gRPC host:port")
    check.add_argument(
        "--token-file", metavar="PATH", help="file holding a token the replica accepts (data role)"
    )
    check.add_argument(
        "--control-token-file",
        metavar="PATH",
        help="file holding the controller's token (control role), for the Reconfigure rules",
    )
    check.add_argument(
        "--credentials-file",
        metavar="PATH",
        help="the replica's own credentials file (0600 JSON): its data and control tokens",
    )
    check.add_argument(
        "--stop-pid",
        type=int,
        metavar="PID",
        help="the replica's pid: run the graceful-stop rule last, which sends it SIGTERM",
    )
    check.add_argument(
        "--only", action="append", metavar="RULE", help="run only rules starting with RULE"
    )
    check.add_argument("--list", action="store_true", help="list the rules and exit")
    tls_options.add_arguments(check, server=False)
    check.set_defaults(func=cmd_replica_check)

    _cli_rollout.add_parser(commands, [connect], _connect)
    return parser


def _fail(message: str, status: int, err: TextIO) -> int:
    err.write(f"turnout: {message}\n")
    err.flush()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``turnout`` command line; returns the exit status.

    Example::

        main(["status", "--json"])
    """
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        return _fail(str(exc), exc.status, sys.stderr)
    except DeployFileError as exc:
        lines = "\n".join(f"  {problem}" for problem in exc.problems)
        return _fail(f"{exc.source}: nothing was changed:\n{lines}", EXIT_USAGE, sys.stderr)
    except NotRunningError as exc:
        return _fail(str(exc), EXIT_FAILED, sys.stderr)
    except TurnoutError as exc:
        return _fail(f"error: {exc}", EXIT_FAILED, sys.stderr)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
