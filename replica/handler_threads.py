"""The threads that run synchronous handlers, with a cheap way back to the loop.

``loop.run_in_executor`` costs a concurrent Future, an asyncio Future chained
to it and one self-pipe wake-up of the loop per call: about a quarter of a
replica's CPU per request on a no-op handler (bench/RESULTS.md). Here a call
is a tuple on a queue, and results travel back in batches: a thread that
finishes while the loop has not yet collected earlier results adds to them
instead of waking the loop again.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

# (future to resolve, callable, its arguments)
_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]
# (future, succeeded, result or exception)
_Result = tuple["asyncio.Future[Any]", bool, Any]


class HandlerThreads:
    """Up to ``max_threads`` daemon threads, started as calls need them.

    Daemon threads, because a handler stuck in a blocking call must not keep
    a replica that was told to stop from exiting.
    """

    def __init__(self, max_threads: int, name: str) -> None:
        self._max_threads = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._results: list[_Result] = []
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` in a thread; its result or exception here."""
        if self._closed:
            raise RuntimeError("handler threads are closed")
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            # A thread waiting for work takes it; else start one if allowed;
            # else the call waits in the queue for the first thread free.
            if self._idle:
                self._idle -= 1
                start = False
            else:
                start = len(self._threads) < self._max_threads
        if start:
            self._start_thread()
        self._jobs.put((future, func, args))
        return await future

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, func, args = job
            try:
                result: _Result = (future, True, func(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                result = (future, False, exc)
            del job, func, args
            with self._lock:
                self._results.append(result)
                wake = not self._wake_pending
                self._wake_pending = True
                self._idle += 1
            del result
            if wake and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return

    def _deliver(self) -> None:
        with self._lock:
            results, self._results = self._results, []
            self._wake_pending = False
        for future, ok, value in results:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def close(self) -> None:
        """Take no more calls; calls still running are not waited for."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(job[0].cancel)
        for _ in self._threads:
            self._jobs.put(None)
