"""The proxy's connection to one replica: its requests multiplexed on one
long-lived ``HandleStream``.

A unary gRPC call costs the Python runtime about as much CPU as everything
else the proxy does for a request put together (bench/RESULTS.md). On one
stream, each request is a small entry in a message instead, and the writer
puts every request waiting at the time into a single message: under load,
one gRPC message carries many requests, and a lone request waits for nothing.

A replica that does not implement ``HandleStream`` (one written in another
language against an older ``replica.proto``) answers UNIMPLEMENTED; the link
then sends it unary ``Handle`` calls from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import grpc

from turnout._internal import auth, wire
from turnout._internal.rpc import CHANNEL_OPTIONS, Security, aio_channel
from turnout.v1 import replica_pb2, replica_pb2_grpc

from .streams import ChunkStream

if TYPE_CHECKING:
    from turnout.v1.replica_pb2_grpc import ReplicaServiceAsyncStub

logger = logging.getLogger(__name__)

# HandleStream's method, called with requests framed by ``wire`` (bytes):
# the generated stub would build and copy a message per batch.
_HANDLE_STREAM = "/{}/HandleStream".format(
    replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"].full_name
)

# Coalescing under load, like Nagle's algorithm: with at least HOLD_IN_FLIGHT
# calls sent and not yet answered, the writer holds new calls until the next
# answer arrives (the replica is busy anyway), for at most HOLD_S and until
# HOLD_MAX_CALLS are waiting, so one message carries more of them. With fewer
# in flight a call is written at once. At 64 connections this is about a
# fifth more requests/s on the no-op benchmark than no hold (bench/RESULTS.md).
# HOLD_S is short: a replica answers a batch in about as long as it takes
# the next one to gather, so a hold as long as a whole batch's round trip
# (it was 2 ms) leaves the replica idle between batches: 0.5 ms served 1.14x
# the requests/s at c=64, the same at c=16 and c=256.
HOLD_IN_FLIGHT = 8
HOLD_S = 0.0005
HOLD_MAX_CALLS = 32

# Said of calls still waiting to be written when their stream failed, with
# the stream's own code and details after it: they never reached the
# replica, whatever ended the stream. Worded so that ``never_delivered``
# recognises it.
_UNSENT = "failed to connect: the stream to the replica ended before the call was sent"


# What a link sends: a message (handles'), or one framed already (the proxy's).
Outgoing = replica_pb2.HandleRequest | wire.Request


class ReplicaCallError(Exception):
    """A call that got no ``HandleResponse``: what gRPC status it amounts to."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


# What each stream failure means. A new exception per failure: one shared
# object would gather every raise's traceback (and, through it, every failed
# call's request) for as long as the process runs.
_FAILURES = {
    replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED: (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the call's timeout passed on the replica",
    ),
    replica_pb2.CALL_FAILURE_INVALID_ARGUMENT: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "HandleRequest has no payload",
    ),
}


def _failure(answer: replica_pb2.StreamAnswer) -> ReplicaCallError:
    known = _FAILURES.get(answer.failure)
    if known is None:
        return ReplicaCallError(
            grpc.StatusCode.UNKNOWN, f"the replica answered with failure {answer.failure}"
        )
    return ReplicaCallError(*known)


def channel_options(max_receive_bytes: int | None) -> list[tuple[str, int]]:
    """The replica channel's options: no limit on what is sent (the proxy
    limits request bodies itself), ``max_receive_bytes`` on each message
    received (None = no limit)."""
    options = dict(CHANNEL_OPTIONS)
    if max_receive_bytes is not None:
        options["grpc.max_receive_message_length"] = max_receive_bytes
    return list(options.items())


class ReplicaLink:
    """Channel, unary stub (for shadows and fallback) and the shared stream."""

    def __init__(
        self,
        address: str,
        max_receive_bytes: int | None = None,
        security: Security | None = None,
    ) -> None:
        self.address = address
        security = security or Security()
        # Presented on each call (the HandleStream: once per stream). Not a
        # grpc.aio client interceptor: those wrap every message of a stream.
        self._metadata = auth.metadata(security.token)
        self.channel = aio_channel(address, security, channel_options(max_receive_bytes))
        self.stub: ReplicaServiceAsyncStub = replica_pb2_grpc.ReplicaServiceStub(self.channel)
        self._stream: _CallStream | None = None
        self._streaming = True

    async def handle(self, request: Outgoing, timeout: float | None) -> replica_pb2.HandleResponse:
        """Send one request and wait up to ``timeout`` seconds (None = no limit)
        for its answer; raises ``ReplicaCallError`` when there is none. A
        handler's stream comes back whole, as one answer."""
        # Without a window the replica never streams.
        return cast(replica_pb2.HandleResponse, await self.handle_streamed(request, timeout, 0))

    async def handle_streamed(
        self, request: Outgoing, timeout: float | None, stream_window: int
    ) -> replica_pb2.HandleResponse | ChunkStream:
        """As ``handle``, but an answer that streams comes back as a
        ``ChunkStream`` as soon as its head arrives, with ``stream_window``
        chunks of credit and ``timeout`` covering the whole stream (a replica
        that cannot stream answers it whole)."""
        if not self._streaming:
            return await self.unary(request, timeout)
        stream = self._stream
        if stream is None or stream.failed:
            stream = self._stream = _CallStream(self.channel, self._metadata)
        try:
            return await stream.call(request, timeout, stream_window)
        except ReplicaCallError as exc:
            if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            if self._streaming:
                logger.info("replica at %s has no HandleStream; using Handle", self.address)
                self._streaming = False
            return await self.unary(request, timeout)

    async def unary(self, request: Outgoing, timeout: float | None) -> replica_pb2.HandleResponse:
        if isinstance(request, wire.Request):
            request = request.message()
        try:
            # wait_for_ready=False: a replica that cannot be reached fails the
            # call at once instead of holding it.
            return await self.stub.Handle(
                request,
                timeout=timeout,
                wait_for_ready=False,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise ReplicaCallError(exc.code(), exc.details() or "") from exc

    @property
    def in_flight(self) -> int:
        return 0 if self._stream is None else self._stream.in_flight

    async def close(self, grace: float | None) -> None:
        """Let calls in flight finish (up to ``grace`` seconds; None = at once),
        then close the stream and the channel."""
        stream = self._stream
        if stream is not None:
            await stream.close(grace)
        await self.channel.close(grace)


class _CallStream:
    """One ``HandleStream`` call: requests out in batches, answers matched by id."""

    def __init__(
        self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        # The token goes once per stream, not per request.
        self._rpc: grpc.aio.StreamStreamCall[bytes, replica_pb2.HandleStreamResponse] = (
            channel.stream_stream(
                _HANDLE_STREAM,
                request_serializer=None,  # bytes from ``wire``, sent as they are
                response_deserializer=replica_pb2.HandleStreamResponse.FromString,
            )(wait_for_ready=False, metadata=metadata)
        )
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[replica_pb2.HandleResponse | ChunkStream]] = {}
        # (id, the StreamCall framed) of each call not written yet.
        self._outbox: list[tuple[int, wire.Part]] = []
        self._cancelled: list[int] = []
        # Streamed answers whose head arrived, by call id, and credit to send.
        self._streams: dict[int, ChunkStream] = {}
        # (window, deadline) of calls that may stream, until their head arrives.
        self._windows: dict[int, tuple[int, float | None]] = {}
        # (call id, chunks) of credit not written yet.
        self._credits: list[tuple[int, int]] = []
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._answered = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failed = False
        self._writer = asyncio.create_task(self._write())
        self._reader = asyncio.create_task(self._read())

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._streams)

    async def call(
        self, request: Outgoing, timeout: float | None, stream_window: int = 0
    ) -> replica_pb2.HandleResponse | ChunkStream:
        call_id = next(self._ids)
        answer: asyncio.Future[replica_pb2.HandleResponse | ChunkStream] = (
            self._loop.create_future()
        )
        self._waiting[call_id] = answer
        if self._idle.is_set():
            self._idle.clear()
        if stream_window:
            self._windows[call_id] = (
                stream_window,
                None if timeout is None else time.monotonic() + timeout,
            )
        # Serialised once (here, or by the proxy), then framed into the batch.
        part = request.part if isinstance(request, wire.Request) else wire.serialised(request)
        framed = wire.stream_call(call_id, part, timeout or 0.0, stream_window)
        self._outbox.append((call_id, framed))
        self._wake.set()
        try:
            if timeout is None:
                return await answer
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            # Tell the replica to stop working on it (if it still is).
            self._cancelled.append(call_id)
            self._wake.set()
            raise ReplicaCallError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within the timeout"
            ) from None
        finally:
            self._forget(call_id)

    def _forget(self, call_id: int) -> None:
        self._waiting.pop(call_id, None)
        self._windows.pop(call_id, None)
        if not self._waiting and not self._streams:
            self._idle.set()

    def _grant(self, call_id: int, chunks: int) -> None:
        if call_id in self._streams:
            self._credits.append((call_id, chunks))
            self._wake.set()

    def _cancel_stream(self, call_id: int) -> None:
        if self._streams.pop(call_id, None) is not None:
            self._cancelled.append(call_id)
            self._wake.set()
            self._forget(call_id)

    def _deliver_frames(self, frames: Iterable[replica_pb2.StreamFrame]) -> None:
        for frame in frames:
            call_id = frame.id
            if frame.HasField("start"):
                waiter = self._waiting.get(call_id)
                window, deadline = self._windows.get(call_id, (0, None))
                if waiter is None or waiter.done() or not window:
                    self._cancelled.append(call_id)  # given up on already
                    self._wake.set()
                    continue
                stream = ChunkStream(
                    call_id, frame.start, window, deadline, self._grant, self._cancel_stream
                )
                self._streams[call_id] = stream
                waiter.set_result(stream)
                continue
            known = self._streams.get(call_id)
            if known is None:
                continue  # cancelled by its reader
            known.feed(frame)
            if frame.HasField("end"):
                del self._streams[call_id]
                self._forget(call_id)

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                if self._should_hold():
                    await self._hold()
                self._wake.clear()
                calls, self._outbox = self._outbox, []
                cancelled, self._cancelled = self._cancelled, []
                credits, self._credits = self._credits, []
                await self._rpc.write(
                    wire.stream_request([framed for _, framed in calls], cancelled, credits)
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            # The RPC failed; the reader learns why and fails the calls.
            return

    def _should_hold(self) -> bool:
        unanswered = len(self._waiting) - len(self._outbox)
        return unanswered >= HOLD_IN_FLIGHT and len(self._outbox) < HOLD_MAX_CALLS

    async def _hold(self) -> None:
        self._answered.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_S):
                await self._answered.wait()

    async def _read(self) -> None:
        error: ReplicaCallError
        try:
            async for message in self._rpc:
                self._answered.set()
                self._deliver(message.answers)
                if message.frames:
                    self._deliver_frames(message.frames)
                # Not kept while waiting for the next message: its answers
                # (large bodies, perhaps) are their callers' now.
                del message
            error = ReplicaCallError(
                grpc.StatusCode.UNAVAILABLE, "the replica ended the stream before answering"
            )
        except grpc.aio.AioRpcError as exc:
            error = ReplicaCallError(exc.code(), exc.details() or "")
        except asyncio.CancelledError:
            error = ReplicaCallError(grpc.StatusCode.CANCELLED, "the proxy closed the stream")
        self._fail(error)

    def _deliver(self, answers: Iterable[replica_pb2.StreamAnswer]) -> None:
        for answer in answers:
            waiter = self._waiting.get(answer.id)
            if waiter is None or waiter.done():
                continue  # given up on already
            if answer.HasField("response"):
                waiter.set_result(answer.response)
            else:
                waiter.set_exception(_failure(answer))

    def _fail(self, error: ReplicaCallError) -> None:
        self.failed = True
        self._writer.cancel()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.broke(error.code, error.details)
        unsent = {call_id for call_id, _ in self._outbox}
        # A call still in the outbox never reached the replica, whatever ended
        # the stream (UNAVAILABLE, CANCELLED when a draining link is closed,
        # RESOURCE_EXHAUSTED when another call's answer was too large,
        # INTERNAL, ...): it is reported as never delivered, so the sender
        # may retry it on another replica, with the stream's own code and
        # details after ``_UNSENT`` so that logs still say why. That holds for
        # UNAUTHENTICATED and PERMISSION_DENIED too: another replica of the
        # same backend most likely refuses the same token, but the retry is
        # harmless (the replica never ran the call; the sender retries at
        # most MAX_CONNECT_RETRIES times), a replica that rotated its
        # credentials may take it, and the one rule needs no exceptions.
        unsent_details = f"{_UNSENT} ({error.code.name}: {error.details})"
        for call_id, waiter in self._waiting.items():
            if waiter.done():
                continue
            # Each caller raises an exception of its own (see _FAILURES).
            if call_id in unsent:
                waiter.set_exception(ReplicaCallError(grpc.StatusCode.UNAVAILABLE, unsent_details))
            else:
                waiter.set_exception(ReplicaCallError(error.code, error.details))

    async def close(self, grace: float | None) -> None:
        if grace:
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                pass
        self._rpc.cancel()
        self._writer.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)
