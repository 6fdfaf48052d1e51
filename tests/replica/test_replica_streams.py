"""Streamed answers on the replica: what streams, how its chunks are pulled,
and how they go out as frames with credit on a HandleStream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from werkzeug.wrappers import Response

from turnout._internal.sse import EventStream
from turnout.replica import streams
from turnout.replica.call_stream import serve_stream
from turnout.v1 import http_pb2, replica_pb2


def gen() -> Iterator[str]:
    yield "a"


async def agen() -> AsyncIterator[str]:
    yield "a"


def test_what_streams() -> None:
    assert streams.is_stream(gen()) and streams.is_stream(agen())
    assert streams.is_stream(Response(gen()))
    assert streams.is_stream(EventStream(gen()))
    # A body of known length, or one with a Content-Length, is answered whole.
    assert not streams.is_stream(Response([b"x", b"y"]))
    assert not streams.is_stream(Response(gen(), headers={"Content-Length": "1"}))
    for value in ("text", b"bytes", ["a"], {"a": 1}, None, iter(["a"])):
        assert not streams.is_stream(value)
    assert streams.is_item_stream(gen()) and not streams.is_item_stream(Response(gen()))


def test_items_become_body_chunks() -> None:
    assert streams.encode_chunk("é") == ["é".encode()]
    assert streams.encode_chunk(b"") == []
    big = b"x" * (streams.MAX_CHUNK_BYTES * 2 + 1)
    assert [len(c) for c in streams.encode_chunk(big)] == [
        streams.MAX_CHUNK_BYTES,
        streams.MAX_CHUNK_BYTES,
        1,
    ]
    with pytest.raises(streams.StreamTypeError, match="str or bytes, not dict"):
        streams.encode_chunk({"a": 1})


def on_a_thread() -> tuple[streams.RunSync, list[str]]:
    """A RunSync that runs each pull on a new thread, and the threads' names."""
    names: list[str] = []

    async def run(func: Callable[[], Any]) -> Any:
        def named() -> Any:
            names.append(threading.current_thread().name)
            return func()

        return await asyncio.to_thread(named)

    return run, names


def test_a_sync_generator_is_pulled_off_the_loop_and_closed_with_its_stream() -> None:
    closed = threading.Event()

    def source() -> Iterator[str]:
        try:
            yield "a"
            yield "b"
            yield "c"
        finally:
            closed.set()

    async def main() -> list[bytes]:
        run, names = on_a_thread()
        chunks = streams.open_chunks(source(), run)
        got = [await anext(chunks), await anext(chunks)]
        await chunks.aclose()  # type: ignore[attr-defined]
        assert names and threading.main_thread().name not in names
        return got

    assert asyncio.run(main()) == [b"a", b"b"]
    assert closed.wait(5)


def test_a_stream_cancelled_mid_pull_closes_its_generator_once_the_pull_returns() -> None:
    closed = threading.Event()
    pulling = threading.Event()

    def slow() -> Iterator[str]:
        try:
            yield "first"
            pulling.set()
            time.sleep(0.3)
            yield "second"
        finally:
            closed.set()

    async def main() -> None:
        run, _ = on_a_thread()
        items = streams.open_items(slow(), run)
        assert await anext(items) == "first"
        task = asyncio.ensure_future(anext(items))
        await asyncio.to_thread(pulling.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not closed.is_set()  # its next() still runs on the thread
        await asyncio.to_thread(closed.wait, 5)

    asyncio.run(main())
    assert closed.is_set()


def test_a_first_item_that_cannot_be_sent_fails_before_the_head_and_closes_all() -> None:
    closed = threading.Event()
    request_closed = []

    def source() -> Iterator[object]:
        try:
            yield {"a": 1}
        finally:
            closed.set()

    async def main() -> None:
        run, _ = on_a_thread()
        with pytest.raises(streams.StreamTypeError):
            await streams.start_stream(
                streams.open_items(source(), run),
                streams.encode_chunk,
                lambda: request_closed.append(True),
            )

    asyncio.run(main())
    assert closed.wait(5) and request_closed == [True]


# ---- frames on a HandleStream ---------------------------------------------


def outgoing(
    items: list[bytes], pulled: list[int] | None = None, fail_after: int | None = None
) -> streams.Outgoing:
    async def chunks() -> AsyncIterator[bytes]:
        for n, item in enumerate(items):
            if fail_after is not None and n == fail_after:
                raise ValueError("broke")
            if pulled is not None:
                pulled.append(n)
            yield item

    def fail(exc: BaseException) -> replica_pb2.RemoteError:
        return replica_pb2.RemoteError(type=type(exc).__name__, message=str(exc))

    async def collect() -> replica_pb2.HandleResponse:
        body = b"".join([c async for c in chunks()])
        return replica_pb2.HandleResponse(http=http_pb2.HttpResponse(status=200, body=body))

    start = replica_pb2.StreamStart(status=200)
    return streams.Outgoing(start, chunks(), fail, collect, time.perf_counter())


async def run_calls(
    answer: Callable[[replica_pb2.HandleRequest], Any],
    calls: list[replica_pb2.StreamCall],
    after: Callable[[list[replica_pb2.HandleStreamResponse]], list[replica_pb2.HandleStreamRequest]]
    | None = None,
    until: Callable[[list[replica_pb2.HandleStreamResponse]], bool] = lambda _: False,
    seconds: float = 5.0,
) -> list[replica_pb2.HandleStreamResponse]:
    """Messages a replica sends for ``calls``; ``after`` may send more
    requests once ``until`` holds of what came so far."""
    got: list[replica_pb2.HandleStreamResponse] = []
    more = asyncio.Event()

    async def respond(request: replica_pb2.HandleRequest) -> Any:
        return answer(request)

    async def messages() -> AsyncIterator[replica_pb2.HandleStreamRequest]:
        yield replica_pb2.HandleStreamRequest(calls=calls)
        await more.wait()
        if after is not None:
            for message in after(got):
                yield message

    async def read() -> None:
        async for message in serve_stream(respond, messages()):
            got.append(message)
            if until(got):
                more.set()

    async with asyncio.timeout(seconds):
        await read()
    return got


def frames(messages: list[replica_pb2.HandleStreamResponse]) -> list[replica_pb2.StreamFrame]:
    return [f for m in messages for f in m.frames]


def test_a_plain_answer_is_the_same_message_as_before_streaming() -> None:
    response = replica_pb2.HandleResponse(http=http_pb2.HttpResponse(status=200, body=b"ok"))
    got = asyncio.run(
        run_calls(
            lambda _: response,
            [replica_pb2.StreamCall(id=7, request=replica_pb2.HandleRequest(), stream_window=8)],
            until=lambda got: True,
        )
    )
    expected = replica_pb2.HandleStreamResponse(
        answers=[replica_pb2.StreamAnswer(id=7, response=response)]
    )
    assert [m.SerializeToString() for m in got] == [expected.SerializeToString()]


def test_a_stream_goes_out_as_start_chunks_end() -> None:
    got = asyncio.run(
        run_calls(
            lambda _: outgoing([b"a", b"b"]),
            [replica_pb2.StreamCall(id=3, request=replica_pb2.HandleRequest(), stream_window=8)],
            until=lambda got: True,
        )
    )
    kinds = [(f.id, f.WhichOneof("frame")) for f in frames(got)]
    assert kinds == [(3, "start"), (3, "chunk"), (3, "chunk"), (3, "end")]
    assert [f.chunk.data for f in frames(got) if f.HasField("chunk")] == [b"a", b"b"]
    assert not any(m.answers for m in got)
    end = frames(got)[-1].end
    assert not end.HasField("error") and end.handler_seconds > 0


def test_without_a_window_the_stream_is_answered_whole() -> None:
    got = asyncio.run(
        run_calls(
            lambda _: outgoing([b"a", b"b"]),
            [replica_pb2.StreamCall(id=1, request=replica_pb2.HandleRequest())],
            until=lambda got: True,
        )
    )
    assert not frames(got)
    assert got[0].answers[0].response.http.body == b"ab"


def test_chunks_wait_for_credit_and_the_generator_is_not_pulled_ahead() -> None:
    pulled: list[int] = []

    def chunks_sent(got: list[replica_pb2.HandleStreamResponse]) -> int:
        return sum(1 for f in frames(got) if f.HasField("chunk"))

    def grant(got: list[replica_pb2.HandleStreamResponse]) -> list[replica_pb2.HandleStreamRequest]:
        # Two chunks went out, and no more were pulled than sent.
        assert chunks_sent(got) == 2 and pulled == [0, 1]
        return [
            replica_pb2.HandleStreamRequest(credits=[replica_pb2.StreamCredit(id=5, chunks=10)])
        ]

    async def main() -> list[replica_pb2.HandleStreamResponse]:
        task = asyncio.ensure_future(
            run_calls(
                lambda _: outgoing([bytes([n]) for n in range(6)], pulled),
                [
                    replica_pb2.StreamCall(
                        id=5, request=replica_pb2.HandleRequest(), stream_window=2
                    )
                ],
                after=grant,
                until=lambda got: chunks_sent(got) == 2,
            )
        )
        return await task

    got = asyncio.run(main())
    assert [f.chunk.data for f in frames(got) if f.HasField("chunk")] == [
        bytes([n]) for n in range(6)
    ]
    assert frames(got)[-1].HasField("end")


def test_a_failure_part_way_ends_the_stream_with_the_error() -> None:
    got = asyncio.run(
        run_calls(
            lambda _: outgoing([b"a", b"b", b"c"], fail_after=1),
            [replica_pb2.StreamCall(id=2, request=replica_pb2.HandleRequest(), stream_window=8)],
            until=lambda got: True,
        )
    )
    end = frames(got)[-1].end
    assert (end.error.type, end.error.message) == ("ValueError", "broke")


def test_the_timeout_covers_the_whole_stream() -> None:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.01)
            yield b"x"

    def endless(_: replica_pb2.HandleRequest) -> streams.Outgoing:
        out = outgoing([])
        out.chunks = forever()
        return out

    got = asyncio.run(
        run_calls(
            endless,
            [
                replica_pb2.StreamCall(
                    id=4, request=replica_pb2.HandleRequest(), stream_window=100_000, timeout=0.2
                )
            ],
            until=lambda got: True,
        )
    )
    end = frames(got)[-1].end
    assert end.failure == replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED
    assert sum(1 for f in frames(got) if f.HasField("chunk")) > 1
