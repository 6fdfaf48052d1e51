"""The sender's end of a streamed answer: credit, one deadline, cancellation."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from turnout._sending.streams import ChunkStream, StreamFailed
from turnout.v1 import replica_pb2


class Link:
    """What a ChunkStream tells its link: credit granted, calls cancelled."""

    def __init__(self) -> None:
        self.granted: list[int] = []
        self.cancelled: list[int] = []
        self.ends: list[tuple[bool, float]] = []

    def stream(self, window: int = 4, deadline: float | None = None) -> ChunkStream:
        stream = ChunkStream(
            9,
            replica_pb2.StreamStart(status=200),
            window,
            deadline,
            lambda _, n: self.granted.append(n),
            self.cancelled.append,
        )
        stream.when_done(lambda failed, seconds: self.ends.append((failed, seconds)))
        return stream


def chunk(data: bytes) -> replica_pb2.StreamFrame:
    return replica_pb2.StreamFrame(id=9, chunk=replica_pb2.StreamChunk(data=data))


def end(**fields: object) -> replica_pb2.StreamFrame:
    return replica_pb2.StreamFrame(id=9, end=replica_pb2.StreamEnd(**fields))  # type: ignore[arg-type]


def test_credit_goes_back_in_halves_of_the_window_as_chunks_are_read() -> None:
    async def main() -> None:
        link = Link()
        stream = link.stream(window=4)
        for n in range(4):
            stream.feed(chunk(bytes([n])))
        assert link.granted == []  # nothing read yet: no more room
        assert await stream.next() == b"\x00"
        assert link.granted == []
        assert await stream.next() == b"\x01"
        assert link.granted == [2]
        stream.feed(end(handler_seconds=0.5))
        assert [await stream.next(), await stream.next()] == [b"\x02", b"\x03"]
        assert await stream.next() is None
        assert link.ends == [(False, 0.5)] and link.cancelled == []

    asyncio.run(main())


def test_a_handler_error_is_raised_after_the_chunks_before_it_and_counts() -> None:
    async def main() -> None:
        link = Link()
        stream = link.stream()
        stream.feed(chunk(b"a"))
        stream.feed(end(error=replica_pb2.RemoteError(type="ValueError", message="no")))
        assert await stream.next() == b"a"
        with pytest.raises(StreamFailed) as info:
            await stream.next()
        assert info.value.error is not None and info.value.error.type == "ValueError"
        assert link.ends == [(True, 0.0)]

    asyncio.run(main())


def test_the_deadline_covers_the_whole_stream_and_cancels_the_call() -> None:
    async def main() -> None:
        link = Link()
        stream = link.stream(deadline=time.monotonic() + 0.1)
        stream.feed(chunk(b"a"))
        assert await stream.next() == b"a"
        with pytest.raises(StreamFailed) as info:
            await stream.next()
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert link.cancelled == [9] and link.ends == [(True, 0.0)]

    asyncio.run(main())


def test_cancel_wakes_a_waiting_reader_and_is_not_an_error() -> None:
    async def main() -> None:
        link = Link()
        stream = link.stream()
        reader = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0.01)
        stream.cancel()
        with pytest.raises(StreamFailed) as info:
            await reader
        assert info.value.code == grpc.StatusCode.CANCELLED and info.value.by_reader
        stream.cancel()  # once only
        assert link.cancelled == [9] and link.ends == [(False, 0.0)]

    asyncio.run(main())


def test_a_broken_stream_fails_its_reader() -> None:
    async def main() -> None:
        link = Link()
        stream = link.stream()
        stream.broke(grpc.StatusCode.UNAVAILABLE, "gone")
        with pytest.raises(StreamFailed) as info:
            await stream.next()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and not info.value.by_reader
        assert link.ends == [(True, 0.0)]

    asyncio.run(main())


def test_a_stream_closed_under_its_reader_is_a_failure_not_an_end() -> None:
    async def main() -> None:
        link = Link()
        stream = link.stream()
        stream.feed(chunk(b"a"))
        # The link closed (its replica left): CANCELLED, but not by the reader.
        stream.broke(grpc.StatusCode.CANCELLED, "the proxy closed the stream")
        assert await stream.next() == b"a"
        with pytest.raises(StreamFailed) as info:
            await stream.next()
        assert not info.value.by_reader
        assert link.ends == [(True, 0.0)]

    asyncio.run(main())
