"""``turnout dashboard``: serve the dashboard of the instance at --address
until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from turnout.client import Client
from turnout.errors import InvalidArgumentError

from . import DEFAULT_PORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's own options (the connection's come from the CLI)."""
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to serve the page on ({DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve it on (127.0.0.1); beyond loopback it needs --https-cert",
    )
    parser.add_argument("--https-cert", metavar="PEM", type=Path, help="serve HTTPS with this")
    parser.add_argument("--https-key", metavar="PEM", type=Path, help="the certificate's key")


def run(client: Client, args: argparse.Namespace) -> int:
    """Serve until a signal; returns the exit status. Raises
    ``InvalidArgumentError`` for options that cannot work together."""
    if (args.https_cert is None) != (args.https_key is None):
        raise InvalidArgumentError("HTTPS needs both --https-cert and --https-key")
    from .server import Dashboard

    https = None if args.https_cert is None else (args.https_cert, args.https_key)
    dashboard = Dashboard(client, host=args.host, port=args.port, https=https)

    def stop(signum: int, frame: FrameType | None) -> None:
        dashboard.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"Turnout dashboard of {client.controller_address}: {dashboard.url}", flush=True)
    print("Whoever opens this URL acts with your credentials. Ctrl-C stops it.", file=sys.stderr)
    dashboard.wait()
    return 0
