"""The replica's side of ``HandleStream``: calls in, each run as its own task,
answers out in batches as they finish.

Whatever answers are ready when the previous write completes go out as one
message, so a busy replica pays gRPC's per-message cost once for many
answers, and an idle one writes each answer at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from turnout.v1 import replica_pb2

# An answer message carries answers up to about this many bytes (more only
# when one answer alone is bigger): large bodies finishing together go out as
# several messages, so the first is not held back by the others, and neither
# side holds one huge message in memory at once.
ANSWER_BATCH_BYTES = 4 * 2**20


class NoPayload(Exception):
    """A HandleRequest with neither an HTTP request nor a Python call."""


Respond = Callable[[replica_pb2.HandleRequest], Awaitable[replica_pb2.HandleResponse]]


async def serve_stream(
    respond: Respond, messages: AsyncIterable[replica_pb2.HandleStreamRequest]
) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
    """A whole HandleStream: the answers to ``messages``, batched, until the
    sender stops and every call is answered; calls still running when the
    stream goes away are cancelled."""
    stream = CallStream(respond)
    reader = asyncio.create_task(stream.read(messages))
    try:
        async for batch in stream.answers():
            yield batch
    finally:
        reader.cancel()
        stream.cancel()


class CallStream:
    """One HandleStream: runs its calls concurrently, batches their answers."""

    def __init__(self, respond: Respond) -> None:
        self._respond = respond
        self._running: dict[int, asyncio.Task[None]] = {}
        self._outbox: list[replica_pb2.StreamAnswer] = []
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
        finally:
            self._reading = False
            self._ready.set()

    async def answers(self) -> AsyncIterator[replica_pb2.HandleStreamResponse]:
        """Batches of answers, until the sender has stopped and every call is answered."""
        while True:
            if not self._outbox:
                if not self._reading and not self._running:
                    return
                await self._ready.wait()
                self._ready.clear()
                continue
            batch, self._outbox = _take_batch(self._outbox)
            yield replica_pb2.HandleStreamResponse(answers=batch)

    def cancel(self) -> None:
        """The stream is gone: stop every call still running."""
        for task in self._running.values():
            task.cancel()

    async def _answer(self, call: replica_pb2.StreamCall) -> None:
        answer = replica_pb2.StreamAnswer(id=call.id)
        try:
            if call.timeout:
                async with asyncio.timeout(call.timeout):
                    response = await self._respond(call.request)
            else:
                response = await self._respond(call.request)
            answer.response.CopyFrom(response)
        except TimeoutError:
            answer.failure = replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED
        except NoPayload:
            answer.failure = replica_pb2.CALL_FAILURE_INVALID_ARGUMENT
        except asyncio.CancelledError:
            # The sender gave up on it: nobody waits for an answer.
            return
        finally:
            del self._running[call.id]
            self._ready.set()
        self._outbox.append(answer)


def _take_batch(
    outbox: list[replica_pb2.StreamAnswer],
) -> tuple[list[replica_pb2.StreamAnswer], list[replica_pb2.StreamAnswer]]:
    """The answers for the next message (at least one, at most about
    ``ANSWER_BATCH_BYTES``) and those left for the one after."""
    if len(outbox) == 1:  # the common case at low load: nothing to measure
        return outbox, []
    size = 0
    for taken, answer in enumerate(outbox):
        size += answer.ByteSize()
        if size > ANSWER_BATCH_BYTES and taken:
            return outbox[:taken], outbox[taken:]
    return outbox, []
