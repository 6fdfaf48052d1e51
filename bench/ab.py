"""A/B of two Turnout set-ups under wrk, robust to a machine whose speed drifts.

Run from the repository root, in the project's virtualenv, with wrk on PATH::

    python bench/ab.py --env-b GRPC_EXPERIMENTS=-event_engine_client --connections 1,64
    python bench/ab.py --workers-b 2 --connections 16,64 --rounds 6
    python bench/ab.py --tls-b cert.pem,cert.key,ca.pem --connections 1,64
    python bench/ab.py --body-bytes 1048576 --connections 1,8
    python bench/ab.py --env-b PYTHONPATH="$(bench/tree_at.sh main)" --connections 1,64

``--body-bytes N`` loads ``POST /echo`` with an N-byte body that the handler
(``def echo(request): return request.get_data()``) sends back, instead of
``GET /noop``. ``bench/tree_at.sh REV`` builds an importable tree of another
commit: on set-up B's ``PYTHONPATH`` it runs that commit's controller, proxy
and replicas against the working tree's.

``--tls-b CERT,KEY,CA`` runs set-up B with mutual TLS on every gRPC hop
(``CA`` may be left out: TLS without client certificates); the certificate
must name 127.0.0.1 (docs/operations.md, "TLS").

Both instances run side by side (each serving ``noop`` on ``/noop``, as in
``http_noop.py``) and are loaded in turn, in short runs whose order flips each
round (A B, B A, ...), so a slow phase of a shared machine hits both. It prints
the median requests/s, p50 and server CPU per request of each at each
connection count, and every run's requests/s: when one side wins round after
round, the difference is real even where single runs vary by a third.
A set-up is told apart by environment variables (which the controller, proxy
and replicas inherit) and its number of proxy processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from http_noop import (
    ECHO_PATH,
    HOST,
    PATH,
    LoadResult,
    LoadSpec,
    Processes,
    _http_port,
    in_turn,
    noop,
    turnout_processes,
    wrk_load,
)

from turnout import Client, TLSConfig
from turnout.instance import LocalInstance

WARMUP_S = 1
RUN_S = 3


@dataclass
class Side:
    label: str
    client: Client
    processes: Processes
    runs: dict[int, list[LoadResult]] = field(default_factory=dict)

    def load(self, wrk: str, connections: int, body_bytes: int = 0) -> LoadResult:
        """One short wrk run (after its own warm-up), as ``http_noop.py`` makes them."""
        spec = LoadSpec(
            HOST,
            _http_port(self.client),
            ECHO_PATH if body_bytes else PATH,
            connections,
            WARMUP_S,
            RUN_S,
            self.processes,
            body_bytes,
        )
        return wrk_load(wrk, self.label, spec)


def _by_process(runs: list[LoadResult]) -> str:
    """Median CPU per request of each kind of process (proxy, replica, ...)."""
    names = sorted({name for r in runs for name in r.cpu_us_per_req_by_process})
    medians = (
        (name, statistics.median(r.cpu_us_per_req_by_process.get(name, 0.0) for r in runs))
        for name in names
    )
    return " ".join(f"{name} {value:.0f}" for name, value in medians)


def echo(request: object) -> bytes:
    """The body handler of ``--body-bytes``: the request's body back."""
    data: bytes = request.get_data()  # type: ignore[attr-defined]
    return data


def start(
    label: str, env: dict[str, str], proxy_workers: int, tls: TLSConfig | None = None
) -> Side:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        instance = LocalInstance.start(HOST, 0, proxy_workers=proxy_workers, tls=tls)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    client = Client(instance.address, tls=tls, _instance=instance)
    client.create_backend("noop", noop)
    client.create_endpoint("noop", "noop", route=PATH)
    client.create_backend("echo", echo)
    client.create_endpoint("echo", "echo", route=ECHO_PATH, methods=["POST"])
    return Side(label, client, turnout_processes(client))


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _tls(text: str) -> TLSConfig:
    cert, key, *ca = text.split(",")
    if not cert or not key or len(ca) > 1:
        raise argparse.ArgumentTypeError(f"expected CERT,KEY[,CA], got {text!r}")
    return TLSConfig(cert=Path(cert), key=Path(key), ca=Path(ca[0]) if ca else None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    for side in ("a", "b"):
        parser.add_argument(
            f"--env-{side}",
            type=_assignment,
            action="append",
            default=[],
            help=f"NAME=VALUE in set-up {side.upper()}'s environment (repeatable)",
        )
        parser.add_argument(
            f"--workers-{side}",
            type=int,
            default=1,
            help=f"set-up {side.upper()}'s proxy processes",
        )
        parser.add_argument(
            f"--tls-{side}",
            type=_tls,
            metavar="CERT,KEY[,CA]",
            help=f"set-up {side.upper()} runs TLS (mutual with CA) on every gRPC hop",
        )
    parser.add_argument("--connections", default="16,64", help="comma list (default 16,64)")
    parser.add_argument("--rounds", type=int, default=4, help="A B / B A rounds (default 4)")
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=0,
        help="POST bodies of this many bytes to an echo handler (default 0: GET /noop)",
    )
    return parser.parse_args(argv)


def setups(
    args: argparse.Namespace,
) -> list[tuple[str, dict[str, str], int, TLSConfig | None]]:
    found = []
    for side in ("a", "b"):
        env = dict(getattr(args, f"env_{side}"))
        workers = getattr(args, f"workers_{side}")
        tls: TLSConfig | None = getattr(args, f"tls_{side}")
        settings = [f"{name}={value!r}" for name, value in env.items()]
        if tls is not None:
            settings.append("mTLS" if tls.ca is not None else "TLS")
        label = " ".join([f"{side.upper()}:", *settings, f"proxy_workers={workers}"])
        found.append((label, env, workers, tls))
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("bench/ab.py needs wrk on PATH", file=sys.stderr)
        return 2
    connections = [int(c) for c in args.connections.split(",")]
    sides: list[Side] = []
    try:
        for label, env, workers, tls in setups(args):
            sides.append(start(label, env, workers, tls))
        for c, side in in_turn(sides, connections, args.rounds):
            side.runs.setdefault(c, []).append(side.load(wrk, c, args.body_bytes))
        for c in connections:
            for side in sides:
                runs = side.runs[c]
                print(
                    f"c={c:<3} {side.label:40} req/s {statistics.median(r.rps for r in runs):7.0f}"
                    f"  p50 {statistics.median(r.p50_ms for r in runs):6.2f} ms"
                    f"  CPU {statistics.median(r.server_cpu_us_per_req for r in runs):5.0f} us/req"
                    f" ({_by_process(runs)})"
                    f"  runs {[round(r.rps) for r in runs]}"
                )
    finally:
        for side in sides:
            side.client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
