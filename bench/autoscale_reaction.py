"""How fast autoscaling reacts to a load step: seconds from the step (one to
``--clients`` concurrent slow clients) to the autoscaler's decision, and to
every new replica serving requests.

Run from the repository root, in the project's virtualenv::

    python bench/autoscale_reaction.py                  # 2 rounds, 8 clients, up to 3 replicas
    python bench/autoscale_reaction.py --rounds 3 --upscale-delay 1

The baseline, in alternating rounds of the same run: the same step on a
backend with a fixed count, scaled by hand (``update_backend_config``) at the
moment of the step, so that the ratio is what deciding costs on top of
starting the replicas. Between rounds the load stops and the autoscaled
backend scales back down. It starts its own instance
(``turnout.init(http_port=0)``) and never fails on a number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

import requests

import turnout

LOAD_LIMIT_S = 120.0
WAIT_LIMIT_S = 90.0


def slow(request: object) -> int:
    time.sleep(0.2)
    return os.getpid()


class Load:
    """``clients`` threads GETting ``url`` until stopped; when each pid first answered."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.first_answer: dict[int, float] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        give_up = time.monotonic() + LOAD_LIMIT_S
        with requests.Session() as session:
            while not self._stop.is_set() and time.monotonic() < give_up:
                try:
                    reply = session.get(self.url, timeout=30)
                except requests.RequestException:
                    self.failures += 1
                    continue
                if reply.status_code != 200:
                    self.failures += 1
                    continue
                self.first_answer.setdefault(int(reply.text), time.monotonic())

    def start(self) -> float:
        for thread in self._threads:
            thread.start()
        return time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(35)

    def serving(self, count: int) -> float | None:
        """When the ``count``-th replica first answered, if it has."""
        times = sorted(self.first_answer.values())
        return times[count - 1] if len(times) >= count else None


def wait(condition: Callable[[], bool]) -> bool:
    give_up = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.1)
    return True


def step(client: turnout.Client, name: str, clients: int, replicas: int, manual: bool) -> float:
    """Seconds from the load step to ``replicas`` replicas serving (nan: not in time)."""
    load = Load(f"{client.http_address}/{name}", clients)
    began = load.start()
    if manual:
        client.update_backend_config(name, {"num_replicas": replicas})
    done = wait(lambda: load.serving(replicas) is not None)
    served = load.serving(replicas)
    load.stop()
    if load.failures:
        print(f"  ({name}: {load.failures} failed requests)")
    if manual:
        client.update_backend_config(name, {"num_replicas": 1})
    else:
        wait(lambda: (client.autoscaling_status(name) or {}).get("desired_replicas") == 1)
        wait(lambda: len(client.list_replicas(name)) == 1)
    return served - began if done and served is not None else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=3, help="max_replicas of the step")
    parser.add_argument("--upscale-delay", type=float, default=0.0)
    parser.add_argument("--look-back", type=float, default=1.0)
    args = parser.parse_args()
    client = turnout.init(http_port=0)
    try:
        rules = {
            "min_replicas": 1,
            "max_replicas": args.replicas,
            "target_ongoing_requests": max(1, args.clients // args.replicas),
            "upscale_delay_s": args.upscale_delay,
            "downscale_delay_s": 1,
            "look_back_period_s": args.look_back,
        }
        client.create_backend("auto", slow, config={"autoscaling_config": rules})
        client.create_endpoint("auto", "auto", route="/auto")
        client.create_backend("fixed", slow, config={"num_replicas": 1})
        client.create_endpoint("fixed", "fixed", route="/fixed")
        auto: list[float] = []
        fixed: list[float] = []
        for index in range(args.rounds):
            fixed.append(step(client, "fixed", args.clients, args.replicas, manual=True))
            auto.append(step(client, "auto", args.clients, args.replicas, manual=False))
            print(
                f"round {index + 1}: by hand {fixed[-1]:.2f} s, autoscaled {auto[-1]:.2f} s "
                f"(upscale_delay_s {args.upscale_delay:g}, look_back_period_s {args.look_back:g})"
            )
        by_hand, scaled = statistics.median(fixed), statistics.median(auto)
        print(
            f"1 -> {args.replicas} replicas serving after a step to {args.clients} clients: "
            f"autoscaled {scaled:.2f} s, by hand {by_hand:.2f} s, ratio {scaled / by_hand:.2f}"
        )
    finally:
        turnout.shutdown()


if __name__ == "__main__":
    main()
