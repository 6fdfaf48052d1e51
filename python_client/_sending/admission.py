"""Backpressure in the proxy: a request waits for a free replica, within bounds.

Each replica takes at most ``max_concurrent_queries`` requests from this
proxy. When all are full, a request waits in a bounded per-backend queue,
first come first served; past the bound, or after ``queue_timeout`` seconds,
it is refused with ``Overloaded`` (the proxy answers 503 + Retry-After). The
event loop never blocks, so /-/healthz keeps answering under any load.
"""

from __future__ import annotations

import asyncio
import collections
import time

from .failures import NoReplica, Overloaded, QueueDeadline
from .replica_pool import ReplicaConn
from .router import Router


class Admission:
    def __init__(self, router: Router) -> None:
        self._router = router
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def queued(self) -> dict[str, int]:
        """Requests waiting, by backend."""
        return {backend: len(waiting) for backend, waiting in self._waiting.items()}

    async def acquire(
        self,
        backend: str,
        shard_key: str = "",
        deadline: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> ReplicaConn:
        """A replica with a free slot, counted as taken; ``release`` gives it back.

        ``deadline`` (time.monotonic) caps the wait as well as queue_timeout.
        Raises NoReplica, Overloaded, or QueueDeadline when ``deadline`` passes.
        """
        pool = self._router.pool
        conn = pool.pick(backend, self._router.rng, shard_key, exclude)
        if conn is None:
            if not self._has_replicas(backend, exclude):
                raise NoReplica(backend, tried=bool(exclude))
            conn = await self._wait(backend, shard_key, deadline, exclude)
        conn.outstanding += 1
        return conn

    def _has_replicas(self, backend: str, exclude: frozenset[str]) -> bool:
        return any(c.replica_id not in exclude for c in self._router.pool.replicas(backend))

    async def _wait(
        self, backend: str, shard_key: str, deadline: float | None, exclude: frozenset[str]
    ) -> ReplicaConn:
        limits = self._router.pool.limits(backend)
        waiting = self._waiting.setdefault(backend, collections.deque())
        if len(waiting) >= limits.max_queued_requests:
            detail = f"{len(waiting)} requests already wait for backend {backend!r}"
            raise Overloaded(backend, detail, expired=False)
        give_up = time.monotonic() + limits.queue_timeout
        by_deadline = deadline is not None and deadline < give_up
        if deadline is not None and by_deadline:
            give_up = deadline
        loop = asyncio.get_running_loop()
        first = True
        while True:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                detail = f"no replica of backend {backend!r} was free in time"
                if by_deadline:
                    raise QueueDeadline(backend, detail)
                raise Overloaded(backend, detail, expired=True)
            turn: asyncio.Future[None] = loop.create_future()
            # Woken but beaten to the slot: keep its place at the front.
            waiting.append(turn) if first else waiting.appendleft(turn)
            first = False
            try:
                await asyncio.wait_for(turn, remaining)
            except TimeoutError:
                continue
            finally:
                if turn in waiting:
                    waiting.remove(turn)
            conn = self._router.pool.pick(backend, self._router.rng, shard_key, exclude)
            if conn is not None:
                return conn
            if not self._has_replicas(backend, exclude):
                raise NoReplica(backend, tried=bool(exclude))

    def release(self, backend: str, conn: ReplicaConn) -> None:
        conn.outstanding -= 1
        self._wake(backend, 1)

    def replicas_changed(self) -> None:
        """New replicas may have free slots (or none are left): let everyone look."""
        for backend in list(self._waiting):
            self._wake(backend, len(self._waiting[backend]))

    def _wake(self, backend: str, count: int) -> None:
        waiting = self._waiting.get(backend)
        while waiting and count > 0:
            turn = waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                count -= 1
