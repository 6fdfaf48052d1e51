"""Versioned routing snapshots and the routers that follow them.

The controller publishes a new ``RoutingSnapshot`` whenever endpoints, traffic
or the set of running replicas change. Watchers get the newest snapshot, never
a backlog: a slow router skips versions it no longer needs. Named subscribers
(the proxy) acknowledge what they applied, so an admin call can wait until its
change is live before it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

from turnout.v1 import controller_pb2 as pb

logger = logging.getLogger(__name__)

# How long an admin call waits for routers to apply its change. A router that
# is slower than this (or hung) must not block the control plane forever.
APPLY_TIMEOUT_S = 10.0


class RoutePublisher:
    def __init__(self) -> None:
        self._snapshot = pb.RoutingSnapshot(version=0)
        self._changed = asyncio.Condition()
        # subscriber_id -> number of open streams under that id
        self._open: dict[str, int] = {}
        # subscriber_id -> newest version it acknowledged
        self._acked: dict[str, int] = {}
        # Subscribers waited for even while not connected (see ``require``).
        self._required: set[str] = set()
        # Subscribers that let a wait time out (a partitioned node's proxy,
        # whose stream stays open): not waited for again until they
        # acknowledge the current version or reconnect, so they delay one
        # admin call by APPLY_TIMEOUT_S, not every call.
        self._lagging: set[str] = set()

    async def publish(self, endpoints: list[pb.Endpoint], backends: list[pb.BackendTargets]) -> int:
        """Make a new version current and wake every watcher; returns the version."""
        version = self._snapshot.version + 1
        self._snapshot = pb.RoutingSnapshot(version=version, endpoints=endpoints, backends=backends)
        async with self._changed:
            self._changed.notify_all()
        return version

    async def watch(self, subscriber_id: str = "") -> AsyncGenerator[pb.RoutingSnapshot, None]:
        """The current snapshot at once, then each newer one, until cancelled."""
        if subscriber_id:
            self._open[subscriber_id] = self._open.get(subscriber_id, 0) + 1
            self._lagging.discard(subscriber_id)
        try:
            sent = -1
            while True:
                async with self._changed:
                    while self._snapshot.version == sent:
                        await self._changed.wait()
                snapshot = self._snapshot
                sent = snapshot.version
                yield snapshot
        finally:
            if subscriber_id:
                self._open[subscriber_id] -= 1
                if not self._open[subscriber_id]:
                    del self._open[subscriber_id]
                    if subscriber_id not in self._required:
                        # It acknowledges again when it reconnects.
                        self._acked.pop(subscriber_id, None)
                async with self._changed:
                    self._changed.notify_all()

    async def require(self, subscriber_id: str) -> None:
        """Count ``subscriber_id`` as a router even while it is not connected.

        A re-adopted proxy reconnects only after its backoff; until then an
        admin call must still wait for it (bounded), or its change could be
        acknowledged before the proxy serves it.
        """
        self._required.add(subscriber_id)
        async with self._changed:
            self._changed.notify_all()

    async def release(self, subscriber_id: str) -> None:
        """Stop waiting for ``subscriber_id`` while it is not connected (it died)."""
        self._required.discard(subscriber_id)
        async with self._changed:
            self._changed.notify_all()

    async def ack(self, subscriber_id: str, version: int) -> None:
        if subscriber_id not in self._open and subscriber_id not in self._required:
            # Only routers waited for are remembered: any id may be sent.
            return
        # No router applied a version not yet published: a bigger one would
        # count as applied for changes it never saw.
        version = min(version, self._snapshot.version)
        if version > self._acked.get(subscriber_id, -1):
            self._acked[subscriber_id] = version
        if version == self._snapshot.version:
            self._lagging.discard(subscriber_id)
        async with self._changed:
            self._changed.notify_all()

    def _behind(self, version: int) -> set[str]:
        routers = self._required.union(self._open) - self._lagging
        return {sub for sub in routers if self._acked.get(sub, -1) < version}

    def _applied(self, version: int) -> bool:
        return not self._behind(version)

    def _timed_out(self, version: int) -> bool:
        """What a wait that ran out returns: whether ``version`` is applied;
        the subscribers still behind count as lagging from now on."""
        behind = self._behind(version)
        if behind:
            logger.warning(
                "routers %s did not apply version %d in time; not waiting for them until "
                "they catch up",
                ", ".join(sorted(behind)),
                version,
            )
            self._lagging |= behind
        return not behind

    async def wait_applied(self, version: int, timeout: float = APPLY_TIMEOUT_S) -> bool:
        """Wait until every connected named subscriber applied ``version``.

        Returns False on timeout. Subscribers that disconnect stop counting, so
        a dead proxy delays an admin call by at most ``timeout``.
        """
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not self._applied(version):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._timed_out(version)
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return self._timed_out(version)
        return True
