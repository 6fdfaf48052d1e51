"""The event loop the handles of a process send on: one daemon thread per process.

The sender is asyncio code; a handle is called from any thread, and from any
event loop or none. Each call is handed to this loop
(``asyncio.run_coroutine_threadsafe``) and its result comes back as a
``concurrent.futures.Future``, which blocks (``.result()``) or is awaited
from another loop (``asyncio.wrap_future``).

One loop for the process, never one per caller: grpc.aio serves every loop
of a process from one completion queue, and client calls made from two
loops at once fail spuriously (CANCELLED; grpc/grpc#25364). A replica's own
loop runs only a gRPC *server*, which this loop's client calls do not
disturb (tests/e2e/test_sending.py proves both).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

# How long the process's exit waits for the loop to close its channels.
CLOSE_TIMEOUT_S = 2.0


class LoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``work`` on the loop; its outcome arrives in the future."""
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def on_stop(self, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Have ``closer()`` run on the loop before it stops."""
        self._closers.append(closer)

    def stop(self) -> None:
        """Run the closers (within ``CLOSE_TIMEOUT_S``), then stop the loop."""
        if not self._thread.is_alive():
            return

        async def close_all() -> None:
            await asyncio.gather(*(closer() for closer in self._closers), return_exceptions=True)

        try:
            self.submit(close_all()).result(CLOSE_TIMEOUT_S)
        except Exception:  # exiting: what is left is dropped
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)


_lock = threading.Lock()
_threads: dict[int, LoopThread] = {}


def shared() -> LoopThread:
    """This process's handle loop, started on first use (after a fork the
    child starts its own)."""
    with _lock:
        thread = _threads.get(os.getpid())
        if thread is None:
            thread = _threads[os.getpid()] = LoopThread("turnout-handles")
            atexit.register(_stop, os.getpid())
        return thread


def _stop(pid: int) -> None:
    # At exit the loop's channels close before the interpreter tears down the
    # thread under them, so nothing is printed about them.
    if pid != os.getpid():
        return
    with _lock:
        thread = _threads.pop(pid, None)
    if thread is not None:
        thread.stop()
