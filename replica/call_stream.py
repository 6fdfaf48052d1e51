"""The replica's side of ``HandleStream``: calls in, each run as its own task,
answers out in batches as they finish.

Whatever answers are ready when the previous write completes go out as one
message, so a busy replica pays gRPC's per-message cost once for many
answers, and an idle one writes each answer at once. Each answer (and
frame) is serialised once, as it finishes, and a batch is framed around them
(``turnout._internal.wire``): no answer is copied into a message again.

A handler whose answer streams (``replica.streams``) answers with frames
instead: a ``StreamStart``, ``StreamChunk``s and a ``StreamEnd``, batched
with the other answers the same way. Each chunk needs credit: the call's
``stream_window`` at first, then what the sender grants as it consumes, so
a slow reader pauses the generator (docs/replica-protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from turnout._internal import wire
from turnout.replica.streams import Outgoing
from turnout.v1 import replica_pb2

# An answer message carries answers up to about this many bytes (more only
# when one answer alone is bigger): large bodies finishing together go out as
# several messages, so the first is not held back by the others, and neither
# side holds one huge message in memory at once.
ANSWER_BATCH_BYTES = 4 * 2**20


class NoPayload(Exception):
    """A HandleRequest with neither an HTTP request nor a Python call."""


# A call's answer: the message, a HandleResponse framed already (``wire``),
# or a stream.
Respond = Callable[
    [replica_pb2.HandleRequest],
    Awaitable[replica_pb2.HandleResponse | wire.Part | Outgoing],
]


class _Credit:
    """Chunks one streamed answer may still send."""

    def __init__(self, window: int) -> None:
        self.available = window
        self._granted = asyncio.Event()

    def grant(self, chunks: int) -> None:
        self.available += chunks
        self._granted.set()

    async def wait(self) -> None:
        while self.available <= 0:
            self._granted.clear()
            await self._granted.wait()


async def serve_stream(
    respond: Respond, messages: AsyncIterable[replica_pb2.HandleStreamRequest]
) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
    """A whole HandleStream: the answers to ``messages``, batched, until the
    sender stops and every call is answered; calls still running when the
    stream goes away are cancelled."""
    async for batch in serve_stream_framed(respond, messages):
        yield replica_pb2.HandleStreamResponse.FromString(batch)


async def serve_stream_framed(
    respond: Respond, messages: AsyncIterable[replica_pb2.HandleStreamRequest]
) -> AsyncIterator[bytes]:
    """``serve_stream``, each batch a serialised ``HandleStreamResponse``: for
    a method registered with no response serialiser (no copy of the batch)."""
    stream = CallStream(respond)
    reader = asyncio.create_task(stream.read(messages))
    try:
        async for batch in stream.framed_answers():
            yield batch
    finally:
        reader.cancel()
        stream.cancel()


class CallStream:
    """One HandleStream: runs its calls concurrently, batches their answers."""

    def __init__(self, respond: Respond) -> None:
        self._respond = respond
        self._running: dict[int, asyncio.Task[None]] = {}
        self._outbox: list[wire.Part] = []
        self._frames: list[wire.Part] = []
        # Calls whose answer streams, by id: the credit their chunks wait for.
        self._credits: dict[int, _Credit] = {}
        self._ready = asyncio.Event()
        self._reading = True

    async def read(self, messages: AsyncIterable[replica_pb2.HandleStreamRequest]) -> None:
        """Start every call that arrives, until the sender stops sending."""
        try:
            async for message in messages:
                for call_id in message.cancelled_ids:
                    task = self._running.get(call_id)
                    if task is not None:
                        task.cancel()
                for call in message.calls:
                    self._running[call.id] = asyncio.create_task(self._answer(call))
                for credit in message.credits:
                    stream = self._credits.get(credit.id)
                    if stream is not None:
                        stream.grant(credit.chunks)
        finally:
            self._reading = False
            self._ready.set()

    async def answers(self) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        """Batches of answers, until the sender has stopped and every call is answered."""
        async for batch in self.framed_answers():
            yield replica_pb2.HandleStreamResponse.FromString(batch)

    async def framed_answers(self) -> AsyncIterator[bytes]:
        """``answers``, serialised."""
        while True:
            if not self._outbox:
                if self._frames:
                    frames, self._frames = _take_batch(self._frames)
                    yield wire.stream_response((), frames)
                    continue
                if not self._reading and not self._running:
                    return
                await self._ready.wait()
                self._ready.clear()
                continue
            batch, self._outbox = _take_batch(self._outbox)
            if self._frames:
                frames, self._frames = _take_batch(self._frames)
                yield wire.stream_response(batch, frames)
                continue
            yield wire.stream_response(batch)

    def cancel(self) -> None:
        """The stream is gone: stop every call still running."""
        for task in self._running.values():
            task.cancel()

    async def _answer(self, call: replica_pb2.StreamCall) -> None:
        response: replica_pb2.HandleResponse | wire.Part | Outgoing | None
        try:
            if call.timeout:
                async with asyncio.timeout(call.timeout):
                    response = await self._respond(call.request)
                    if isinstance(response, Outgoing):
                        response = await self._stream(call, response)
            else:
                response = await self._respond(call.request)
                if isinstance(response, Outgoing):
                    response = await self._stream(call, response)
            if response is None:
                return  # streamed: its frames were the answer
            if not isinstance(response, tuple):
                response = wire.serialised(response)
            answer = wire.stream_answer(call.id, response)
        except TimeoutError:
            if call.id in self._credits:
                # Part of the answer went out already: the stream ends here.
                self._end(call.id, replica_pb2.StreamEnd(failure=_DEADLINE))
                return
            answer = wire.failed_answer(call.id, _DEADLINE)
        except NoPayload:
            answer = wire.failed_answer(call.id, replica_pb2.CALL_FAILURE_INVALID_ARGUMENT)
        except asyncio.CancelledError:
            # The sender gave up on it: nobody waits for an answer.
            return
        finally:
            del self._running[call.id]
            self._credits.pop(call.id, None)
            self._ready.set()
        self._outbox.append(answer)

    async def _stream(
        self, call: replica_pb2.StreamCall, out: Outgoing
    ) -> replica_pb2.HandleResponse | None:
        """Send a streamed answer as frames, each chunk when there is credit
        for it; None once it ended. A sender that cannot take a stream gets
        the whole answer as one response instead."""
        if not call.stream_window:
            return await out.collect()
        credit = self._credits[call.id] = _Credit(call.stream_window)
        self._emit(wire.serialised(replica_pb2.StreamFrame(id=call.id, start=out.start)))
        end = replica_pb2.StreamEnd()
        async with contextlib.aclosing(out.chunks):  # type: ignore[type-var]
            try:
                while True:
                    # Credit first, then the pull: a reader that stops
                    # leaves the generator paused, not one chunk ahead.
                    await credit.wait()
                    chunk = await anext(out.chunks, None)
                    if chunk is None:
                        break
                    credit.available -= 1
                    self._emit(wire.stream_chunk(call.id, chunk))
            except Exception as exc:
                end.error.CopyFrom(out.fail(exc))
        end.handler_seconds = time.perf_counter() - out.started
        self._end(call.id, end)
        return None

    def _emit(self, frame: wire.Part) -> None:
        self._frames.append(frame)
        self._ready.set()

    def _end(self, call_id: int, end: replica_pb2.StreamEnd) -> None:
        self._emit(wire.serialised(replica_pb2.StreamFrame(id=call_id, end=end)))


_DEADLINE = replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED


def _take_batch(outbox: list[wire.Part]) -> tuple[list[wire.Part], list[wire.Part]]:
    """The answers for the next message (at least one, at most about
    ``ANSWER_BATCH_BYTES``) and those left for the one after."""
    if len(outbox) == 1:  # the common case at low load: nothing to measure
        return outbox, []
    size = 0
    for taken, (_, answer_size) in enumerate(outbox):
        size += answer_size
        if size > ANSWER_BATCH_BYTES and taken:
            return outbox[:taken], outbox[taken:]
    return outbox, []
