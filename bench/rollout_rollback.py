"""How fast a rollout to a bad backend is rolled back, and how much reached it.

Starts an instance with a healthy backend and one that fails 1 request in 5,
sends a steady load from one client thread, and starts a rollout to the bad
backend (first step ``--share``, SLO ``max_error_rate`` 0.01, ``min_requests``
``--min-requests``) ``--rounds`` times. Per round it prints:

- seconds from ``StartRollout`` to the traffic being back, and the ratio to
  the ideal: the time the bad backend needs to answer ``min_requests`` at the
  measured request rate and the step's share (what no judge can beat);
- the share of the round's requests that reached the bad backend, and its
  ratio to the first step's share (1.0: bounded by the step, as promised).

Usage: python bench/rollout_rollback.py [--rounds 3] [--share 0.1] [--rate 200]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import requests

import turnout

# Every loop is bounded: a round gives up after this long.
ROUND_LIMIT_S = 120.0


class Version:
    def __init__(self, name: str, fail_every: int = 0) -> None:
        self.name, self.fail_every, self.calls = name, fail_every, 0

    def __call__(self, request: Any) -> str:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("bad")
        return self.name


class Load:
    """One client thread, about ``rate`` requests a second; counts by answer."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.pause = url, 1.0 / rate
        self.counts = {"old": 0, "bad": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        until = time.monotonic() + ROUND_LIMIT_S * 10
        with requests.Session() as session:
            while not self._stop.is_set() and time.monotonic() < until:
                reply = session.get(self.url, timeout=10)
                # Only the bad backend fails.
                self.counts["old" if reply.text == "old" else "bad"] += 1
                time.sleep(self.pause)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--min-requests", type=int, default=20)
    args = parser.parse_args()

    client = turnout.init(http_port=0)
    client.create_backend("old", Version, "old")
    client.create_backend("bad", Version, "bad", 5)
    client.create_endpoint("app", "old", route="/app")
    load = Load(f"{client.http_address}/app", args.rate)
    try:
        time.sleep(2)  # the load settles; the stats book has a rate
        seconds, ideal, shares = [], [], []
        for round_ in range(args.rounds):
            before, began = load.snapshot(), time.monotonic()
            rollout = client.rollout(
                "app",
                "bad",
                steps=[args.share, 1.0],
                step_s=60,
                slo={"max_error_rate": 0.01, "min_requests": args.min_requests},
            )
            state = rollout.wait(timeout=ROUND_LIMIT_S)
            took = time.monotonic() - began
            after = load.snapshot()
            total = sum(after.values()) - sum(before.values())
            reached = after["bad"] - before["bad"]
            rate = total / took
            floor = args.min_requests / (rate * args.share)
            seconds.append(took)
            ideal.append(took / floor)
            shares.append(reached / total / args.share)
            print(
                f"round {round_ + 1}: {state} after {took:.2f} s ({took / floor:.2f}x the "
                f"{floor:.2f} s floor at {rate:.0f} req/s); {reached} of {total} requests "
                f"reached it = {reached / total:.3f}, {reached / total / args.share:.2f}x the "
                f"first step's share {args.share}"
            )
        print(
            f"median: rolled back {statistics.median(seconds):.2f} s after the start, "
            f"{statistics.median(ideal):.2f}x the floor; reached share "
            f"{statistics.median(shares):.2f}x the first step's"
        )
    finally:
        load.stop()
        turnout.shutdown()


if __name__ == "__main__":
    main()
