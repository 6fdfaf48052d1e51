"""The proxy's command line: its options, parsed (``parse``, in
``python -m turnout.proxy``) and built (``to_argv``, by the controller's
launcher and by a lead proxy for its workers) in one place.

Example::

    options = ProxyArgs(controller="127.0.0.1:50051", port=0, ready_fd=5)
    assert parse(to_argv(options)) == options
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import child_process, tls_options
from .rpc import Security, TLSConfig

MODULE = "turnout.proxy"
# What the proxy's limits are when its command line does not say.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Largest answer body passed on; a larger one is a 502 ResponseTooLarge.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_IDLE_TIMEOUT_S = 75.0
DEFAULT_MAX_CONNECTIONS = 10_000
# File descriptors kept free of client connections: replica channels, the
# controller's, log files.
FD_RESERVE = 256
# How the access log writes each request: a line of text, or a JSON object.
ACCESS_LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ProxyArgs:
    """Everything ``python -m turnout.proxy`` takes; see its ``--help``."""

    controller: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    # None: DEFAULT_MAX_CONNECTIONS, or fewer if the open-file limit is lower.
    max_connections: int | None = None
    workers: int = 1
    # Set by a lead proxy for the workers it starts (``turnout.proxy.workers``).
    worker_index: int = 0
    stats_dir: Path | None = None
    # What it follows routes and reports stats under ("-<n>" added for a
    # worker): each proxy of an instance needs its own (a node's proxy on Ray).
    subscriber_id: str = "proxy"
    # The Ray node id of the node it runs on ("" = not on a Ray cluster), and
    # whether it sends to replicas of that node first (ReplicaPool.prefer_node).
    node_id: str = ""
    prefer_local_replicas: bool = False
    credentials_file: Path | None = None
    ready_fd: int | None = None
    parent_pid: int | None = None
    log_file: Path | None = None
    access_log: Path | None = None
    access_log_format: str = "text"
    protect_system_paths: bool = False
    system_token_file: Path | None = None
    # Both or neither (the parser refuses one alone).
    https_cert: Path | None = None
    https_key: Path | None = None
    # As given, the client side of the gRPC hops; checked by the proxy
    # (``tls_options.checked``), which reports a bad one on its ready pipe.
    tls: TLSConfig | None = None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m turnout.proxy")
    parser.add_argument(
        "--controller", required=True, help="controller gRPC address host:port or unix:/path"
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port; 0 = any free port")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted; larger ones get 413 (default 16 MiB)",
    )
    parser.add_argument(
        "--max-response-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_RESPONSE_BYTES,
        help="largest answer body passed on; larger ones get 502 (default 64 MiB)",
    )
    parser.add_argument(
        "--read-timeout",
        type=child_process.seconds_arg,
        default=DEFAULT_READ_TIMEOUT_S,
        help="seconds a request's head, and then its body, may take to arrive; 0 = no limit "
        f"(default {DEFAULT_READ_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=child_process.seconds_arg,
        default=DEFAULT_IDLE_TIMEOUT_S,
        help="seconds a connection may wait for its next (or first) request; 0 = no limit "
        f"(default {DEFAULT_IDLE_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        help=f"client connections open at once; more get 503 (default {DEFAULT_MAX_CONNECTIONS}, "
        f"fewer if the open-file limit is lower: that limit less {FD_RESERVE})",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="proxy processes sharing the port through SO_REUSEPORT (default 1)",
    )
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stats-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--subscriber-id",
        default="proxy",
        help="name it follows routes and reports stats under; unique per proxy of an "
        "instance (default 'proxy')",
    )
    parser.add_argument(
        "--node-id", default="", help="the Ray node id of its node (set by the Ray launcher)"
    )
    parser.add_argument(
        "--prefer-local-replicas",
        action="store_true",
        help="send to replicas on its own node (--node-id) while one there has room",
    )
    parser.add_argument(
        "--credentials-file", type=Path, help="the proxy's token (0600 JSON, from the controller)"
    )
    parser.add_argument("--ready-fd", type=int, help="pipe to report readiness on")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    parser.add_argument("--log-file", type=Path, help="rotated log file (default: stderr)")
    parser.add_argument(
        "--access-log", type=Path, help="rotated access log, one line per request (default: none)"
    )
    parser.add_argument(
        "--access-log-format",
        choices=ACCESS_LOG_FORMATS,
        default="text",
        help="text: one line per request; json: one JSON object per line (default text)",
    )
    parser.add_argument(
        "--protect-system-paths",
        action="store_true",
        help="/-/routes, /-/routing and /-/metrics answer 401 without "
        "'Authorization: Bearer <token>' (/-/healthz stays open)",
    )
    parser.add_argument(
        "--system-token-file",
        type=Path,
        metavar="PATH",
        help="file holding the token --protect-system-paths wants (read on each request)",
    )
    parser.add_argument(
        "--https-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate"
    )
    parser.add_argument("--https-key", type=Path, metavar="PEM", help="the HTTPS certificate's key")
    tls_options.add_arguments(parser, server=False)
    return parser


def parse(argv: Sequence[str]) -> ProxyArgs:
    """The options ``argv`` gives; exits with a usage error (status 2) if they
    contradict each other."""
    p = parser()
    ns = p.parse_args(list(argv))
    if (ns.https_cert is None) != (ns.https_key is None):
        p.error("HTTPS needs both --https-cert and --https-key")
    if ns.protect_system_paths and ns.system_token_file is None:
        p.error("--protect-system-paths needs --system-token-file")
    if ns.prefer_local_replicas and not ns.node_id:
        p.error("--prefer-local-replicas needs --node-id")
    tls = None
    if any((ns.tls_cert, ns.tls_key, ns.tls_ca, ns.tls_server_name)):
        tls = TLSConfig(
            cert=ns.tls_cert, key=ns.tls_key, ca=ns.tls_ca, server_name=ns.tls_server_name
        )
    values = {name: getattr(ns, name) for name in ProxyArgs.__dataclass_fields__ if name != "tls"}
    return ProxyArgs(**values, tls=tls)


def to_argv(options: ProxyArgs) -> list[str]:
    """The flags that give a proxy ``options`` (what ``parse`` reads back)."""
    args = ["--controller", options.controller, "--host", options.host]
    args += ["--port", str(options.port)]
    defaults = ProxyArgs(controller=options.controller)
    for name in (
        "max_body_bytes", "max_response_bytes", "read_timeout", "idle_timeout",
        "max_connections", "workers", "worker_index", "stats_dir", "subscriber_id",
        "node_id", "credentials_file",
        "ready_fd", "parent_pid", "log_file", "access_log", "access_log_format",
        "system_token_file",
        "https_cert", "https_key",
    ):  # fmt: skip
        value = getattr(options, name)
        # Only what differs: a proxy of an older build may not know a newer flag.
        if value is not None and value != getattr(defaults, name):
            args += [
                f"--{name.replace('_', '-')}",
                repr(value) if isinstance(value, float) else str(value),
            ]
    if options.protect_system_paths:
        args.append("--protect-system-paths")
    if options.prefer_local_replicas:
        args.append("--prefer-local-replicas")
    args += tls_options.argv(Security(tls=options.tls))
    return args


def command(options: ProxyArgs) -> list[str]:
    """The whole command line: this interpreter running a proxy."""
    return child_process.child_argv(MODULE, to_argv(options))
