"""What large answers cost the proxy in memory: its peak and remaining RSS
after ``--rounds`` rounds of ``--concurrent`` answers of ``--size`` MiB each.

Run from the repository root, in the project's virtualenv::

    python bench/large_answers.py                       # 4 at once, 50 MiB each, 2 rounds
    python bench/large_answers.py --size 50 --concurrent 2

It starts its own instance (``turnout.init(http_port=0)``), reads the
proxy's ``VmHWM`` (peak) and ``VmRSS`` from /proc, and prints them with the
ratio of the peak growth to the bytes in flight at once. It never fails on
a number.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
from pathlib import Path
from typing import Any

import requests

import turnout

MIB = 1024 * 1024


def proxy_pid() -> int:
    """The proxy this process's instance started (a child of its controller)."""
    parents: dict[int, int] = {}
    proxies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[1])
        if b"turnout.proxy" in cmdline:
            proxies.append(int(entry.name))
    for pid in proxies:
        ancestor = pid
        for _ in range(4):
            ancestor = parents.get(ancestor, 0)
            if ancestor == os.getpid():
                return pid
    raise RuntimeError("no proxy process found")


def memory_mib(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def fetch(url: str) -> int:
    # Read in pieces: the client must not be what holds the memory.
    size = 0
    with requests.get(url, stream=True, timeout=300) as reply:
        reply.raise_for_status()
        for piece in reply.iter_content(MIB):
            size += len(piece)
    return size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=50, help="MiB per answer (default 50)")
    parser.add_argument("--concurrent", type=int, default=4, help="answers at once (default 4)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    size = int(args.size) * MIB

    def big(request: Any) -> bytes:
        return b"x" * size

    client = turnout.init(http_port=0)
    try:
        client.create_backend("big", big, config={"max_concurrent_queries": args.concurrent})
        client.create_endpoint("big", backend="big", route="/big")
        url = client.http_address + "/big"
        pid = proxy_pid()
        before = memory_mib(pid)
        with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
            for _ in range(args.rounds):
                sizes = list(pool.map(fetch, [url] * args.concurrent))
                assert sizes == [size] * args.concurrent, sizes
        after = memory_mib(pid)
        in_flight = args.size * args.concurrent
        growth = after["VmHWM"] - before["VmRSS"]
        print(f"answers: {args.rounds} x {args.concurrent} x {args.size} MiB")
        print(f"proxy RSS before: {before['VmRSS']:.0f} MiB")
        print(f"proxy peak (VmHWM): {after['VmHWM']:.0f} MiB, growth {growth:.0f} MiB")
        print(f"  = {growth / in_flight:.2f} x the {in_flight} MiB in flight")
        print(f"proxy RSS after: {after['VmRSS']:.0f} MiB")
    finally:
        turnout.shutdown()


if __name__ == "__main__":
    main()
