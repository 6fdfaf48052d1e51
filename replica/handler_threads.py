"""The threads that run synchronous handlers, with a cheap way there and back.

``loop.run_in_executor`` costs a concurrent Future, an asyncio Future chained
to it and one self-pipe wake-up of the loop per call: about a quarter of a
replica's CPU per request on a no-op handler (bench/RESULTS.md). Here a call
is a tuple in a deque, and results travel back in batches: a thread that
finishes while the loop has not yet collected earlier results adds to them
instead of waking the loop again.

Threads are woken sparingly, too. Waking one thread per call made a batch of
30 calls wake (or start) 30 threads that then took turns at the GIL, and a
replica under load kept about as many threads as ``max_threads``. So a call
wakes a thread only when no thread is awake; an awake thread takes the next call as soon as it
finishes one. Calls must still not wait behind a handler that blocks (a
sleep, a network call): when a call has waited ``STALL_S`` and every awake
thread has been in its handler for ``STALL_S`` or more, each waiting call
gets a thread of its own, as many as ``max_threads`` allows. (A thread that
is awake but not in a handler is only waiting for the GIL; it will take the
call.)
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Any

# How long a call may wait for a busy thread before it gets one of its own.
STALL_S = 0.001

# (when it was queued (time.monotonic), future to resolve, callable, its arguments)
_Job = tuple[float, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]
# (future, succeeded, result or exception)
_Result = tuple["asyncio.Future[Any]", bool, Any]


class HandlerThreads:
    """Up to ``max_threads`` daemon threads, started as calls need them.

    Daemon threads, because a handler stuck in a blocking call must not keep
    a replica that was told to stop from exiting.
    """

    def __init__(self, max_threads: int, name: str, stall_s: float = STALL_S) -> None:
        self._max_threads = max_threads
        self._name = name
        self._stall_s = stall_s
        self._lock = threading.Lock()
        self._jobs: collections.deque[_Job] = collections.deque()
        # One lock per parked thread, held while it sleeps: releasing it wakes
        # exactly that thread. Last parked, first woken (its cache is warm).
        self._parked: list[threading.Lock] = []
        # Threads running a call or about to look for one (not parked).
        self._awake = 0
        self._started = 0
        # When each awake thread's current call started (time.monotonic).
        self._in_call: dict[int, float] = {}
        self._results: list[_Result] = []
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stall_check: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def started(self) -> int:
        """Threads started so far (they are kept, parked, when idle)."""
        return self._started

    def resize(self, max_threads: int) -> None:
        """At most ``max_threads`` from now on. Surplus idle threads exit;
        busy ones finish their call first."""
        with self._lock:
            self._max_threads = max_threads
            surplus = min(len(self._parked), self._started - max_threads)
            retiring = [self._parked.pop() for _ in range(max(0, surplus))]
            self._awake += len(retiring)
        for parking in retiring:
            parking.release()  # it finds no job, or takes one, and then exits

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` in a thread; its result or exception here."""
        if self._closed:
            raise RuntimeError("handler threads are closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._stall_check = None  # a timer of a loop that is gone never fires
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._jobs.append((time.monotonic(), future, func, args))
            none_awake = self._awake == 0
            to_start = self._wake_locked(1) if none_awake else 0
        self._start_threads(to_start)
        if not none_awake and self._stall_check is None:
            self._stall_check = loop.call_later(self._stall_s, self._check_stall)
        return await future

    def _wake_locked(self, count: int) -> int:
        """Wake up to ``count`` parked threads; returns how many new threads
        the caller must start (outside the lock) to make up the rest."""
        to_start = 0
        for _ in range(count):
            if self._parked:
                self._parked.pop().release()
            elif self._started + to_start < self._max_threads:
                to_start += 1
            else:
                break
            self._awake += 1
        self._started += to_start
        return to_start

    def _start_threads(self, count: int) -> None:
        for index in range(self._started - count, self._started):
            parking = threading.Lock()
            parking.acquire()
            threading.Thread(
                target=self._work,
                args=(parking,),
                name=f"{self._name}-{index}",
                daemon=True,
            ).start()

    def _check_stall(self) -> None:
        """On the loop, every ``STALL_S`` while calls wait behind busy threads."""
        self._stall_check = None
        with self._lock:
            if not self._jobs:
                return
            now = time.monotonic()
            # The awake threads are stuck in their handlers: every waiting
            # call gets a thread, as it would have had with nothing queued.
            stuck = (
                now - self._jobs[0][0] >= self._stall_s
                and len(self._in_call) >= self._awake
                and all(now - since >= self._stall_s for since in self._in_call.values())
            )
            to_start = self._wake_locked(len(self._jobs)) if stuck else 0
        self._start_threads(to_start)
        if self._loop is not None and not self._closed:
            self._stall_check = self._loop.call_later(self._stall_s, self._check_stall)

    def _work(self, parking: threading.Lock) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                if self._jobs:
                    _, future, func, args = self._jobs.popleft()
                    self._in_call[me] = time.monotonic()
                else:
                    self._awake -= 1
                    if self._closed:
                        return
                    if self._started > self._max_threads:
                        self._started -= 1  # the pool was made smaller
                        return
                    self._parked.append(parking)
                    future = None
            if future is None:
                parking.acquire()  # until _wake_locked (or close) releases it
                continue
            try:
                result: _Result = (future, True, func(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                result = (future, False, exc)
            del future, func, args
            with self._lock:
                del self._in_call[me]
                self._results.append(result)
                wake = not self._wake_pending
                self._wake_pending = True
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
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None
        with self._lock:
            jobs, self._jobs = list(self._jobs), collections.deque()
            parked, self._parked = self._parked, []
            self._awake += len(parked)
        for _, future, _, _ in jobs:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(future.cancel)
        for parking in parked:
            parking.release()
