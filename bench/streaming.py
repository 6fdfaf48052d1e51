"""What a streamed answer costs against the same bytes answered whole: MiB/s
through the proxy and the proxy's RSS growth, in alternating short rounds.

Run from the repository root, in the project's virtualenv::

    python bench/streaming.py                    # 48 MiB, 1 MiB chunks, 4 rounds
    python bench/streaming.py --size 60 --rounds 6

It starts its own instance (``turnout.init(http_port=0)``) with two
endpoints: ``/whole`` returns ``--size`` MiB as one ``bytes``, ``/stream``
yields the same bytes in 1 MiB chunks. Rounds alternate (whole, stream;
stream, whole; ...) so a slow phase of a shared machine hits both. It prints
each side's median MiB/s and the largest RSS growth of the proxy during a
transfer (sampled every 20 ms), and the ratios stream / whole. It never
fails on a number.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

import turnout

MIB = 1024 * 1024
# Below the proxy's default limit on a whole answer (64 MiB).
SIZE_MIB = 48


def whole(request: Any) -> bytes:
    return b"x" * (SIZE_MIB * MIB)


def stream(request: Any) -> Iterator[bytes]:
    chunk = b"x" * MIB
    for _ in range(SIZE_MIB):
        yield chunk


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def transfer(url: str, pid: int) -> tuple[float, float]:
    """MiB/s of one GET, and the proxy's RSS growth (MiB) while it ran."""
    before = peak = rss(pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    got = 0
    with requests.get(url, stream=True, timeout=120) as response:
        for chunk in response.iter_content(MIB):
            got += len(chunk)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return got / MIB / seconds, (peak - before) / MIB


def main() -> None:
    global SIZE_MIB
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=SIZE_MIB, help="MiB per answer (default 48)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    args = parser.parse_args()
    SIZE_MIB = args.size
    client = turnout.init(http_port=0)
    try:
        for name, handler in (("whole", whole), ("stream", stream)):
            client.create_backend(name, handler)
            client.create_endpoint(name, name, route=f"/{name}")
        pid = requests.get(client.http_address + "/-/healthz", timeout=30).json()["pid"]
        results: dict[str, list[tuple[float, float]]] = {"whole": [], "stream": []}
        for round_ in range(args.rounds):
            order = ["whole", "stream"] if round_ % 2 == 0 else ["stream", "whole"]
            for name in order:
                results[name].append(transfer(f"{client.http_address}/{name}", pid))
        summary = {}
        for name, runs in results.items():
            speed = statistics.median(r[0] for r in runs)
            growth = max(r[1] for r in runs)
            summary[name] = (speed, growth)
            print(
                f"{name:6} {args.size} MiB: {speed:7.1f} MiB/s (median)  "
                f"proxy RSS growth {growth:6.1f} MiB (max)  "
                f"runs {[round(r[0]) for r in runs]}"
            )
        (ws, wg), (ss, sg) = summary["whole"], summary["stream"]
        print(f"stream/whole: speed x{ss / ws:.2f}, proxy RSS growth x{sg / wg if wg else 0:.2f}")
    finally:
        turnout.shutdown()


if __name__ == "__main__":
    main()
