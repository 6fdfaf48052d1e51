"""The sender's end of one streamed answer: its chunks as they arrive, the
credit that lets the replica send more, one deadline over the whole stream,
and cancellation when its reader stops.

The replica sends a chunk only with credit for it (docs/replica-protocol.md,
"Streamed answers"): the call's window at first, then what this end grants
as its reader takes chunks. So at most ``window`` chunks wait here, and a
reader that stops (a slow HTTP client, a handle nobody iterates) pauses the
handler's generator.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import grpc

from turnout.v1 import replica_pb2

# Chunks a stream may have in flight before its reader takes one: enough to
# keep a fast reader busy, few enough that a slow one holds little (at most
# 1 MiB a chunk for HTTP answers).
DEFAULT_WINDOW = 8

# Called once when the stream is over: whether it failed, and the seconds the
# replica reported for it (0 = none).
OnEnd = Callable[[bool, float], None]


class StreamFailed(Exception):
    """A streamed answer that did not end cleanly.

    ``error`` is the handler's failure as the replica reported it (None when
    the stream broke, ran out of time or was closed); ``code`` says which.
    ``by_reader`` is true when this end's ``cancel`` ended it (nothing
    failed: its reader stopped).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        error: replica_pb2.RemoteError | None = None,
        *,
        by_reader: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error = error
        self.by_reader = by_reader


class ChunkStream:
    """One streamed answer as its reader sees it: ``await next()`` until None.

    Made by the replica link when the call's ``StreamStart`` arrives; fed
    frames by the link; its reader is the proxy (writing each chunk to the
    HTTP client) or a handle's iterator.
    """

    def __init__(
        self,
        call_id: int,
        start: replica_pb2.StreamStart,
        window: int,
        deadline: float | None,
        grant: Callable[[int, int], None],
        cancel: Callable[[int], None],
    ) -> None:
        self.call_id = call_id
        self.start = start
        self._deadline = deadline
        self._grant = grant
        self._cancel = cancel
        # Credit goes back in batches: a message per chunk would double the
        # messages on the stream.
        self._grant_every = max(1, window // 2)
        self._consumed = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._end: replica_pb2.StreamEnd | None = None
        self._failure: StreamFailed | None = None
        self._arrived = asyncio.Event()
        self._on_end: list[OnEnd] = []
        self.done = False

    def when_done(self, callback: OnEnd) -> None:
        """Call ``callback`` once the stream is over (at once if it is)."""
        if self.done:
            callback(self._failure is not None, 0.0)
        else:
            self._on_end.append(callback)

    # ---- the link's side ------------------------------------------------

    def feed(self, frame: replica_pb2.StreamFrame) -> None:
        """A chunk or the end, as the replica sent it."""
        if self.done:
            return
        if frame.HasField("chunk"):
            self._chunks.append(frame.chunk.data)
        elif frame.HasField("end"):
            self._end = frame.end
        self._arrived.set()

    def broke(self, code: grpc.StatusCode, details: str) -> None:
        """The stream to the replica failed: so does this answer."""
        if not self.done and self._end is None:
            self._end = replica_pb2.StreamEnd()
            self._failure = StreamFailed(code, details)
            self._arrived.set()

    # ---- the reader's side ----------------------------------------------

    async def next(self) -> bytes | None:
        """The next chunk, None at a clean end. Raises ``StreamFailed`` when
        the handler failed, the deadline passed (the replica is told to
        stop), the stream broke or ``cancel`` was called."""
        while not self._chunks:
            if self._end is not None:
                self._finish()
                return None
            if self.done:
                raise self._failure or StreamFailed(
                    grpc.StatusCode.CANCELLED, "closed", by_reader=True
                )
            self._arrived.clear()
            try:
                if self._deadline is None:
                    await self._arrived.wait()
                else:
                    async with asyncio.timeout(self._deadline - time.monotonic()):
                        await self._arrived.wait()
            except TimeoutError:
                self._stop(
                    StreamFailed(
                        grpc.StatusCode.DEADLINE_EXCEEDED, "the stream did not end in time"
                    )
                )
                raise self._failure  # type: ignore[misc] # noqa: B904
        chunk = self._chunks.popleft()
        self._consumed += 1
        if self._consumed >= self._grant_every and self._end is None:
            self._grant(self.call_id, self._consumed)
            self._consumed = 0
        return chunk

    def cancel(self, reason: str = "the reader closed the stream") -> None:
        """Stop reading: the replica cancels the handler; a reader waiting in
        ``next`` raises ``StreamFailed`` (CANCELLED). Nothing if it is over."""
        if not self.done:
            # Not an error of the backend's: it counts as answered.
            failure = StreamFailed(grpc.StatusCode.CANCELLED, reason, by_reader=True)
            self._stop(failure, failed=False)

    def _stop(self, failure: StreamFailed, failed: bool = True) -> None:
        self._failure = failure
        self._chunks.clear()
        self._cancel(self.call_id)
        self._finished(failed, 0.0)
        self._arrived.set()

    def _finish(self) -> None:
        """The end frame reached the reader: raises for a failed stream."""
        end = self._end
        assert end is not None
        if self._failure is not None:
            self._finished(True, 0.0)
            raise self._failure
        if end.HasField("error"):
            self._failure = StreamFailed(grpc.StatusCode.UNKNOWN, end.error.message, end.error)
        elif end.failure == replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED:
            self._failure = StreamFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the call's timeout passed on the replica"
            )
        self._finished(self._failure is not None, end.handler_seconds)
        if self._failure is not None:
            raise self._failure

    def _finished(self, failed: bool, handler_seconds: float) -> None:
        if self.done:
            return
        self.done = True
        callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            callback(failed, handler_seconds)
