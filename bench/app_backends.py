"""What serving a whole web app costs against a plain handler, through one proxy.

Run from the repository root, in the project's virtualenv (wrk on PATH, else
the builtin load generator)::

    python bench/app_backends.py [--duration 3] [--connections 1,16] [--rounds 4]

One Turnout instance serves the same "ok" three ways: a handler on
``/handler``, a Flask app (WSGI) on ``/flask`` and a FastAPI app (ASGI) on
``/fastapi`` (bench/bench_apps.py). They are loaded in turn, in short runs
whose order flips each round, and the median requests/s of each is printed
with its ratio to the handler's, measured in the same run. Nothing fails on
a threshold.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from http_noop import (
    HOST,
    LoadResult,
    LoadSpec,
    _connection_list,
    _http_port,
    _load_runner,
    _log,
    in_turn,
    turnout_processes,
)

SIDES = ("handler", "flask", "fastapi")


def ok(request: object) -> str:
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=_connection_list, default=[1, 16])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--loadgen", choices=("auto", "wrk", "builtin"), default="auto")
    args = parser.parse_args(argv)

    import turnout

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    loadgen, load = _load_runner(args.loadgen)
    client = turnout.init(http_port=0)
    try:
        client.create_backend("handler", ok)
        client.create_backend("flask", "bench_apps:flask_app")
        client.create_backend("fastapi", "bench_apps:fastapi_app")
        for side in SIDES:
            client.create_endpoint(side, side, route=f"/{side}")
        port, processes = _http_port(client), turnout_processes(client)
        runs: dict[tuple[str, int], list[LoadResult]] = {}
        for connections, side in in_turn(SIDES, args.connections, args.rounds):
            path = "/handler" if side == "handler" else f"/{side}/"
            spec = LoadSpec(HOST, port, path, connections, args.warmup, args.duration, processes)
            result = load(side, spec)
            if result.requests == 0 or result.errors:
                raise RuntimeError(f"{side} at c={connections}: {result}")
            runs.setdefault((side, connections), []).append(result)
            _log(f"{side:8} c={connections:<3} {result.rps:9.0f} req/s  p50 {result.p50_ms:.3f} ms")
    finally:
        turnout.shutdown()

    print(f"\nload generator: {loadgen}; {args.rounds} rounds of {args.duration:g} s each")
    print(f"{'side':8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'vs handler':>11}")
    for connections in args.connections:
        base = statistics.median(r.rps for r in runs["handler", connections])
        for side in SIDES:
            rps = statistics.median(r.rps for r in runs[side, connections])
            p50 = statistics.median(r.p50_ms for r in runs[side, connections])
            print(f"{side:8} {connections:>5} {rps:9.0f} {p50:8.3f} {rps / base:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
