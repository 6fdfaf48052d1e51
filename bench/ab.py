"""A/B of two Turnout set-ups under wrk, robust to a machine whose speed drifts.

Run from the repository root, in the project's virtualenv, with wrk on PATH::

    python bench/ab.py --env-b GRPC_EXPERIMENTS=-event_engine_client --connections 1,64
    python bench/ab.py --workers-b 2 --connections 16,64 --rounds 6

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
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

from http_noop import PATH, _wrk_ms, cpu_seconds, noop, turnout_processes

from turnout import Client
from turnout.instance import LocalInstance

WARMUP_S = 1
RUN_S = 3


@dataclass
class Side:
    label: str
    client: Client
    pids: list[int]
    runs: dict[int, list[tuple[float, float, float]]] = field(default_factory=dict)


def start(label: str, env: dict[str, str], proxy_workers: int) -> Side:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        instance = LocalInstance.start("127.0.0.1", 0, proxy_workers=proxy_workers)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    client = Client(instance.address, _instance=instance)
    client.create_backend("noop", noop)
    client.create_endpoint("noop", "noop", route=PATH)
    return Side(label, client, [pid for _, pid in turnout_processes(client)])


def wrk_run(wrk: str, side: Side, connections: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, server CPU µs per request) of one short run."""
    url = side.client.http_address + PATH
    base = [wrk, "-t", "1", "-c", str(connections)]
    subprocess.run([*base, "-d", f"{WARMUP_S}s", url], capture_output=True, check=True)
    before = sum(cpu_seconds(pid) for pid in side.pids)
    out = subprocess.run(
        [*base, "-d", f"{RUN_S}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    used = sum(cpu_seconds(pid) for pid in side.pids) - before
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
    count = int(_find(r"(\d+) requests in", out))
    p50_ms = _wrk_ms(_find(r"50%\s+(\S+)", out))
    return rps, p50_ms, used / max(count, 1) * 1e6


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    return match.group(1)


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


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
    parser.add_argument("--connections", default="16,64", help="comma list (default 16,64)")
    parser.add_argument("--rounds", type=int, default=4, help="A B / B A rounds (default 4)")
    return parser.parse_args(argv)


def setups(args: argparse.Namespace) -> list[tuple[str, dict[str, str], int]]:
    found = []
    for side in ("a", "b"):
        env = dict(getattr(args, f"env_{side}"))
        workers = getattr(args, f"workers_{side}")
        settings = [f"{name}={value!r}" for name, value in env.items()]
        label = " ".join([f"{side.upper()}:", *settings, f"proxy_workers={workers}"])
        found.append((label, env, workers))
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
        for label, env, workers in setups(args):
            sides.append(start(label, env, workers))
        for round_ in range(args.rounds):
            for c in connections:
                for side in sides if round_ % 2 == 0 else sides[::-1]:
                    side.runs.setdefault(c, []).append(wrk_run(wrk, side, c))
        for c in connections:
            for side in sides:
                runs = side.runs[c]
                print(
                    f"c={c:<3} {side.label:40} req/s {statistics.median(r[0] for r in runs):7.0f}"
                    f"  p50 {statistics.median(r[1] for r in runs):6.2f} ms"
                    f"  CPU {statistics.median(r[2] for r in runs):5.0f} us/req"
                    f"  runs {[round(r[0]) for r in runs]}"
                )
    finally:
        for side in sides:
            side.client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
