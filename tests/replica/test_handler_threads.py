"""The threads that run synchronous handlers: few threads for quick calls,
a thread of its own for a call stuck behind a blocking one."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from turnout.replica.handler_threads import STALL_S, HandlerThreads


def quick(value: int) -> int:
    return value * 2


def test_quick_calls_arriving_together_share_few_threads() -> None:
    threads = HandlerThreads(100, "quick")

    async def batches() -> list[int]:
        results: list[int] = []
        for start in range(0, 400, 40):
            calls = (threads.run(quick, i) for i in range(start, start + 40))
            results += await asyncio.gather(*calls)
        return results

    assert asyncio.run(batches()) == [i * 2 for i in range(400)]
    # One thread per call (what waking a thread per call gives) would be 40.
    assert threads.started <= 8
    threads.close()


def test_a_call_does_not_wait_for_a_blocking_handler_to_finish() -> None:
    threads = HandlerThreads(100, "blocking")
    release = threading.Event()

    def blocks() -> str:
        release.wait(10)
        return "blocked"

    async def scenario() -> tuple[str, bool]:
        first = asyncio.ensure_future(threads.run(blocks))
        await asyncio.sleep(0)
        second = await asyncio.wait_for(threads.run(quick, 21), 5)
        still_blocked = not first.done()
        release.set()
        assert second == 42
        return await first, still_blocked

    assert asyncio.run(scenario()) == ("blocked", True)
    threads.close()


def test_blocking_handlers_run_side_by_side_up_to_max_threads() -> None:
    threads = HandlerThreads(3, "limited")
    lock = threading.Lock()
    running = peak = 0

    def sleeps() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)
        with lock:
            running -= 1

    async def scenario() -> float:
        start = time.monotonic()
        await asyncio.gather(*(threads.run(sleeps) for _ in range(6)))
        return time.monotonic() - start

    took = asyncio.run(scenario())
    assert peak == 3
    assert threads.started == 3
    # Two rounds of three, not six calls one after another (0.6 s).
    assert took < 0.5
    threads.close()


def test_exceptions_reach_the_caller() -> None:
    threads = HandlerThreads(2, "failing")

    def fails() -> None:
        raise ValueError("handler failed")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="handler failed"):
            await threads.run(fails)
        assert await threads.run(quick, 1) == 2

    asyncio.run(scenario())
    threads.close()


def test_close_refuses_new_calls_and_lets_idle_threads_exit() -> None:
    threads = HandlerThreads(4, "closing")

    async def scenario() -> None:
        await asyncio.gather(*(threads.run(time.sleep, STALL_S * 5) for _ in range(3)))
        threads.close()
        with pytest.raises(RuntimeError, match="closed"):
            await threads.run(quick, 1)

    asyncio.run(scenario())
    assert threads.started == 3
    deadline = time.monotonic() + 5
    while any(t.name.startswith("closing-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "idle handler threads did not exit after close()"
        time.sleep(0.01)


def test_resize_lets_surplus_idle_threads_exit_and_caps_new_ones() -> None:
    threads = HandlerThreads(4, "resized")
    barrier = threading.Barrier(4, timeout=10)

    async def scenario() -> None:
        # Four calls that meet: four threads.
        await asyncio.gather(*(threads.run(barrier.wait) for _ in range(4)))
        threads.resize(1)
        # One thread is left, and calls still run.
        assert await threads.run(quick, 2) == 4

    asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while sum(t.name.startswith("resized-") for t in threading.enumerate()) > 1:
        assert time.monotonic() < deadline, "surplus threads did not exit after resize()"
        time.sleep(0.01)
    assert threads.started == 1
    threads.close()
