"""TLS flags of every Turnout process, and the rule on where plaintext may listen.

The controller, the proxy and the replicas take the same ``--tls-cert``,
``--tls-key``, ``--tls-ca`` and ``--tls-server-name`` flags; the controller
hands its own to every child it starts (``argv``), so one set of files
protects every hop of an instance. Only paths travel: the files stay where
the operator put them, with the modes they have.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from turnout._internal.errors import InvalidArgumentError
from turnout._internal.rpc import Security, TLSConfig

logger = logging.getLogger(__name__)

UNIX_PREFIX = "unix:"
# The client-side flags may come from the environment instead (the CLI's).
ENV = {"ca": "TURNOUT_TLS_CA", "cert": "TURNOUT_TLS_CERT", "key": "TURNOUT_TLS_KEY"}


def add_arguments(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """Add the TLS flags (and, for a server, ``--insecure``) to ``parser``."""
    role = "this process's certificate (PEM)" if server else "client certificate (PEM), for mTLS"
    parser.add_argument("--tls-cert", metavar="PEM", type=Path, help=role)
    parser.add_argument("--tls-key", metavar="PEM", type=Path, help="the certificate's key (PEM)")
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        type=Path,
        help="CA that peers' certificates must be signed by: turns on mutual TLS"
        if server
        else "CA that signed the server's certificate (default: the system's)",
    )
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to check the server's certificate against (default: the address's host)",
    )
    if server:
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="allow listening beyond loopback without TLS (labs only; logged as a warning)",
        )


def from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> TLSConfig | None:
    """The TLS material the flags (else ``environ``, when given) name; None = no TLS.

    Raises ``InvalidArgumentError`` for a key without a certificate (or the
    reverse) or a file that cannot be read.
    """
    env = environ or {}
    paths: dict[str, Path | None] = {}
    for field in ("cert", "key", "ca"):
        value = getattr(args, f"tls_{field}", None) or env.get(ENV[field])
        paths[field] = None if value is None else Path(value)
    return checked(TLSConfig(server_name=getattr(args, "tls_server_name", None), **paths))


def checked(tls: TLSConfig | None) -> TLSConfig | None:
    """``tls`` as flags gave it, checked (``check``); None when it names no file."""
    if tls is None:
        return None
    if not any((tls.cert, tls.key, tls.ca)):
        if tls.server_name:
            raise InvalidArgumentError("--tls-server-name needs TLS: add --tls-ca or --tls-cert")
        return None
    return check(tls)


def check(tls: TLSConfig) -> TLSConfig:
    """``tls`` with its paths made absolute, once its files are known readable."""
    if (tls.cert is None) != (tls.key is None):
        raise InvalidArgumentError(
            "TLS needs both a certificate and its key (--tls-cert, --tls-key)"
        )
    paths: dict[str, Path | None] = {}
    for field in ("cert", "key", "ca"):
        value = getattr(tls, field)
        if value is not None and not isinstance(value, str | os.PathLike):
            raise TypeError(f"TLS {field} must be a path, got {type(value).__name__}")
        path = None if value is None else Path(value).absolute()
        if path is not None and not os.access(path, os.R_OK):
            raise InvalidArgumentError(f"cannot read the TLS {field} file {str(path)!r}")
        paths[field] = path
    return TLSConfig(server_name=tls.server_name, **paths)


def argv(security: Security) -> list[str]:
    """The flags that give a child process the same TLS material."""
    tls = security.tls
    if tls is None:
        return []
    args: list[str] = []
    for field in ("cert", "key", "ca"):
        value = getattr(tls, field)
        if value is not None:
            args += [f"--tls-{field}", str(value)]
    if tls.server_name:
        args += ["--tls-server-name", tls.server_name]
    return args


def is_unix(address: str) -> bool:
    return address.startswith(UNIX_PREFIX)


def unix_path(address: str) -> Path:
    """The socket file of a "unix:/path" (or "unix:///path") address."""
    return Path(address[len(UNIX_PREFIX) :].removeprefix("//"))


def is_local(host: str) -> bool:
    """True for a Unix socket or a loopback host: nothing beyond this machine reaches it."""
    if is_unix(host):
        return True
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def refuse_exposed(host: str, security: Security, what: str) -> None:
    """Raise ``InvalidArgumentError`` if ``what`` would listen on ``host``,
    beyond loopback, without TLS, unless the operator said ``--insecure``."""
    if is_local(host) or security.tls is not None:
        return
    if security.insecure:
        logger.warning(
            "%s listens on %s WITHOUT TLS (--insecure): anyone who can reach it reads and "
            "forges its traffic; use this on an isolated lab network only",
            what,
            host,
        )
        return
    raise InvalidArgumentError(
        f"refusing to listen on {host} without TLS: {what} runs code on request, and "
        "beyond loopback its traffic must be encrypted and its callers authenticated. Add "
        "--tls-cert PEM --tls-key PEM (and --tls-ca PEM for mutual TLS), listen on "
        "127.0.0.1 or a unix:/path socket, or pass --insecure on an isolated lab network"
    )


def prepare_unix_socket(address: str) -> None:
    """Make the directory of a Unix socket address private (0700), creating it.

    An existing directory that others can enter is refused rather than
    changed: it may be shared (``/tmp``), and its mode is its owner's choice.
    """
    directory = unix_path(address).parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = directory.stat().st_mode & 0o777
    if mode & 0o077:
        raise InvalidArgumentError(
            f"the socket's directory {str(directory)!r} has mode {mode:o}: others could "
            f"reach the socket; use a directory of mode 0700 (chmod 700 {directory})"
        )
