"""Groups concurrent requests for one batch handler into lists.

One runner task per method takes the first waiting request, waits up to
``wait_timeout`` seconds for more (up to ``max_size``), calls the handler once
with the list and hands each caller its own result. Batches of one method run
one after another, which is what a model on one device wants.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class BadBatch(Exception):
    """A batch handler returned something other than one result per request."""


@dataclass
class _Item:
    request: Any
    web: bool
    future: asyncio.Future[Any]


# Calls the handler with the batch; the bool says whether every request came over HTTP.
BatchCall = Callable[[list[Any], bool], Awaitable[Any]]


class Batcher:
    def __init__(self, name: str, call: BatchCall, max_size: int, wait_timeout: float) -> None:
        self.name = name
        self._call = call
        self.max_size = 1
        self.wait_timeout = 0.0
        self.resize(max_size, wait_timeout)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None

    def resize(self, max_size: int, wait_timeout: float) -> None:
        """New limits, from the next batch on (the one filling up included)."""
        self.max_size = max(1, max_size)
        self.wait_timeout = max(0.0, wait_timeout)

    async def submit(self, request: Any, web: bool) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(request, web, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"batcher-{self.name}")
        return await future

    async def _run(self) -> None:
        try:
            while not self._queue.empty():
                batch = await self._collect()
                if batch:
                    await self._execute(batch)
        except asyncio.CancelledError:
            # Stopped (the replica is going): nobody left waiting for ever.
            while not self._queue.empty():
                self._queue.get_nowait().future.cancel()
            raise

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_timeout
        while len(batch) < self.max_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        # A caller whose deadline passed while it waited has gone: skip it.
        return [item for item in batch if not item.future.done()]

    async def _execute(self, batch: list[_Item]) -> None:
        call = asyncio.ensure_future(
            self._call([i.request for i in batch], all(i.web for i in batch))
        )
        waiting = len(batch)

        def gone(_: asyncio.Future[Any]) -> None:
            # Once every caller has stopped waiting (deadlines passed), the call
            # is cancelled like a lone request's would be.
            nonlocal waiting
            waiting -= 1
            if waiting == 0 and not call.done():
                call.cancel()

        for item in batch:
            item.future.add_done_callback(gone)
        try:
            try:
                results = await call
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    for item in batch:  # the runner itself is being stopped
                        item.future.cancel()
                    raise
                # Every caller left (nothing to tell), or the handler itself
                # raised CancelledError: its callers get an error, not silence.
                raise RuntimeError(f"batch handler {self.name!r} was cancelled") from None
            if not _is_sequence(results):
                raise BadBatch(
                    f"batch handler {self.name!r} must return a sequence with one result per "
                    f"request, got {type(results).__name__}"
                )
            if len(results) != len(batch):
                raise BadBatch(
                    f"batch handler {self.name!r} got {len(batch)} requests but returned "
                    f"{len(results)} results"
                )
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)


def _is_sequence(value: object) -> bool:
    """A list, tuple, NumPy array or the like: sized and indexable, not text or a dict."""
    if isinstance(value, str | bytes | bytearray | Mapping):
        return False
    return isinstance(value, Sequence) or (
        hasattr(value, "__len__") and hasattr(value, "__getitem__")
    )
