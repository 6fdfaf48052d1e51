"""The batcher hands every caller an outcome, whatever the handler does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from turnout.replica.batcher import Batcher


async def submit_all(call: Any, count: int) -> list[Any]:
    batcher = Batcher("model", call, max_size=count, wait_timeout=0.05)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(batcher.submit(n, web=True) for n in range(count)), return_exceptions=True
        ),
        timeout=5,
    )
    return list(results)


def test_each_caller_gets_its_own_result() -> None:
    async def double(requests: list[int], web: bool) -> list[int]:
        return [2 * r for r in requests]

    assert asyncio.run(submit_all(double, 4)) == [0, 2, 4, 6]


def test_a_handler_that_is_cancelled_from_inside_fails_its_callers_instead_of_leaving_them() -> (
    None
):
    async def cancelled(requests: list[int], web: bool) -> list[int]:
        raise asyncio.CancelledError  # e.g. it awaited something that was cancelled

    results = asyncio.run(submit_all(cancelled, 3))
    assert len(results) == 3
    for result in results:
        assert isinstance(result, RuntimeError)
        assert "cancelled" in str(result)


def test_stopping_the_runner_cancels_the_callers_of_its_batch() -> None:
    async def scenario() -> list[Any]:
        started = asyncio.Event()

        async def slow(requests: list[int], web: bool) -> list[int]:
            started.set()
            await asyncio.sleep(60)
            return requests

        batcher = Batcher("model", slow, max_size=2, wait_timeout=0.01)
        callers = [asyncio.ensure_future(batcher.submit(n, web=True)) for n in range(2)]
        await started.wait()
        assert batcher._runner is not None
        batcher._runner.cancel()
        return list(
            await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), timeout=5)
        )

    for result in asyncio.run(scenario()):
        assert isinstance(result, asyncio.CancelledError)


@pytest.mark.parametrize("returned", [None, [1]])
def test_a_handler_returning_the_wrong_shape_fails_every_caller(returned: Any) -> None:
    async def wrong(requests: list[int], web: bool) -> Any:
        return returned

    for result in asyncio.run(submit_all(wrong, 2)):
        assert isinstance(result, Exception) and "batch handler 'model'" in str(result)
