"""The replica's command line: its options, parsed (``parse``, in
``python -m turnout.replica``) and built (``to_argv``, by a launcher) in one
place.

Example::

    options = ReplicaArgs(replica_id="model#1", spec_fd=0, ready_fd=5, stuck_call_grace_s=9.0)
    assert parse(to_argv(options)) == options
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import child_process, tls_options
from .errors import TurnoutError
from .rpc import Security

MODULE = "turnout.replica"
# Seconds a sync handler call may go on running after its caller stopped
# waiting (a deadline passed) before the replica reports NOT_SERVING, so that
# the controller replaces it: a thread cannot be stopped, only its process.
STUCK_CALL_GRACE_S = 30.0
# The environment variable that changes it (e.g. in a backend's replica_options).
STUCK_CALL_GRACE_ENV = "TURNOUT_STUCK_CALL_GRACE_S"


@dataclass(frozen=True)
class ReplicaArgs:
    """Everything ``python -m turnout.replica`` takes; see its ``--help``."""

    replica_id: str
    # Where the spec (a serialized CreateBackendRequest) comes from: a
    # descriptor read to its end (the launcher passes stdin, 0), or a file.
    spec_fd: int | None = None
    spec_file: Path | None = None
    host: str = "127.0.0.1"
    ready_fd: int | None = None
    parent_pid: int | None = None
    # Rotated log file; None = stderr.
    log_file: Path | None = None
    # None: the replica's $TURNOUT_STUCK_CALL_GRACE_S, else STUCK_CALL_GRACE_S
    # (``parse`` gives the value in force).
    stuck_call_grace_s: float | None = None
    # TLS material of the replica's port, and the opt-out of the exposure rule.
    security: Security = field(default_factory=Security)
    credentials_file: Path | None = None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m turnout.replica", description="Serve one Turnout backend over gRPC."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--spec-fd", type=int, help="descriptor to read a serialized CreateBackendRequest from"
    )
    source.add_argument("--spec-file", type=Path, help="a serialized CreateBackendRequest")
    parser.add_argument("--replica-id", required=True, help="id used in logs, e.g. 'backend#1'")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (port is chosen)")
    parser.add_argument("--ready-fd", type=int, help="pipe to report readiness on")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    parser.add_argument("--log-file", type=Path, help="rotated log file (default: stderr)")
    parser.add_argument(
        "--stuck-call-grace",
        type=child_process.seconds_arg,
        default=os.environ.get(STUCK_CALL_GRACE_ENV, str(STUCK_CALL_GRACE_S)),
        help=f"seconds a handler call may run on after its caller gave up before the replica "
        f"reports NOT_SERVING (default: ${STUCK_CALL_GRACE_ENV}, else {STUCK_CALL_GRACE_S:g})",
    )
    tls_options.add_arguments(parser, server=True)
    parser.add_argument(
        "--credentials-file", type=Path, help="tokens to accept and present (0600 JSON)"
    )
    return parser


def parse(argv: Sequence[str]) -> ReplicaArgs:
    """The options ``argv`` gives; exits with a usage error (status 2) if they are bad."""
    p = parser()
    ns = p.parse_args(list(argv))
    try:
        security = Security(tls=tls_options.from_args(ns), insecure=ns.insecure)
    except TurnoutError as exc:
        p.error(str(exc))
    return ReplicaArgs(
        replica_id=ns.replica_id,
        spec_fd=ns.spec_fd,
        spec_file=ns.spec_file,
        host=ns.host,
        ready_fd=ns.ready_fd,
        parent_pid=ns.parent_pid,
        log_file=ns.log_file,
        stuck_call_grace_s=ns.stuck_call_grace,
        security=security,
        credentials_file=ns.credentials_file,
    )


def to_argv(options: ReplicaArgs) -> list[str]:
    """The flags that give a replica ``options`` (what ``parse`` reads back)."""
    args = ["--replica-id", options.replica_id, "--host", options.host]
    for flag, value in (
        ("--spec-fd", options.spec_fd),
        ("--spec-file", options.spec_file),
        ("--ready-fd", options.ready_fd),
        ("--parent-pid", options.parent_pid),
        ("--log-file", options.log_file),
        ("--stuck-call-grace", options.stuck_call_grace_s),
        ("--credentials-file", options.credentials_file),
    ):
        if value is not None:
            args += [flag, str(value)]
    args += tls_options.argv(options.security)
    if options.security.insecure:
        args.append("--insecure")
    return args


def command(options: ReplicaArgs) -> list[str]:
    """The whole command line: this interpreter running a replica."""
    return child_process.child_argv(MODULE, to_argv(options))
