"""HandleStream's messages framed by hand read back as the messages protobuf builds."""

from __future__ import annotations

import pytest

from turnout._internal import wire
from turnout.v1 import http_pb2, replica_pb2


def request(body: bytes, path: str = "/p") -> replica_pb2.HandleRequest:
    message = replica_pb2.HandleRequest(request_id="r", method_name="m")
    message.http.path = path
    message.http.body = body
    return message


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 300, 16383, 16384, 100_000, 2**21 - 1, 2**21, 2**32, 2**64 - 1]
)
def test_varints_read_back_as_protobuf_reads_them(value: int) -> None:
    data = wire.stream_request([], [value])
    assert list(replica_pb2.HandleStreamRequest.FromString(data).cancelled_ids) == [value]


def test_a_batch_of_calls_is_the_message_protobuf_would_send() -> None:
    calls = [(1, request(b""), 0.0), (2**40, request(b"x" * 70_000), 2.5), (3, request(b"y"), 0.0)]
    data = wire.stream_request(
        [wire.stream_call(i, wire.serialised(r), t) for i, r, t in calls], [5, 6]
    )
    expected = replica_pb2.HandleStreamRequest(
        calls=[replica_pb2.StreamCall(id=i, request=r, timeout=t) for i, r, t in calls],
        cancelled_ids=[5, 6],
    )
    assert replica_pb2.HandleStreamRequest.FromString(data) == expected


def test_a_batch_of_answers_is_the_message_protobuf_would_send() -> None:
    http = http_pb2.HttpResponse(status=201, body=b"z" * 200_000)
    http.headers.add(name="Content-Type", value="text/plain")
    plain = replica_pb2.HandleResponse(pickled=b"p", handler_seconds=0.25)
    data = wire.stream_response(
        [
            wire.stream_answer(1, wire.http_response([http.SerializeToString()], 0.5)),
            wire.stream_answer(2, ([plain.SerializeToString()], plain.ByteSize())),
            wire.failed_answer(3, replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED),
            wire.stream_answer(4, ([b""], 0)),
        ]
    )
    expected = replica_pb2.HandleStreamResponse(
        answers=[
            replica_pb2.StreamAnswer(
                id=1, response=replica_pb2.HandleResponse(http=http, handler_seconds=0.5)
            ),
            replica_pb2.StreamAnswer(id=2, response=plain),
            replica_pb2.StreamAnswer(id=3, failure=replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED),
            replica_pb2.StreamAnswer(id=4, response=replica_pb2.HandleResponse()),
        ]
    )
    parsed = replica_pb2.HandleStreamResponse.FromString(data)
    assert parsed == expected
    assert parsed.answers[3].HasField("response")


def test_streamed_calls_and_credits_are_the_message_protobuf_would_send() -> None:
    data = wire.stream_request(
        [
            wire.stream_call(1, wire.serialised(request(b"a")), 0.0, 16),
            wire.stream_call(2, wire.serialised(request(b"b")), 1.5, 2**20),
            wire.stream_call(3, wire.serialised(request(b"c")), 0.0),
        ],
        [9],
        [(1, 4), (2**40, 1)],
    )
    expected = replica_pb2.HandleStreamRequest(
        calls=[
            replica_pb2.StreamCall(id=1, request=request(b"a"), stream_window=16),
            replica_pb2.StreamCall(id=2, request=request(b"b"), timeout=1.5, stream_window=2**20),
            replica_pb2.StreamCall(id=3, request=request(b"c")),
        ],
        cancelled_ids=[9],
        credits=[
            replica_pb2.StreamCredit(id=1, chunks=4),
            replica_pb2.StreamCredit(id=2**40, chunks=1),
        ],
    )
    assert replica_pb2.HandleStreamRequest.FromString(data) == expected
    # Byte for byte, too: fields in number order, as protobuf writes them.
    assert data == expected.SerializeToString()


def test_stream_frames_beside_answers_are_the_message_protobuf_would_send() -> None:
    start = replica_pb2.StreamFrame(id=5, start=replica_pb2.StreamStart(status=200))
    start.start.headers.add(name="Content-Type", value="text/event-stream")
    end = replica_pb2.StreamFrame(
        id=5, end=replica_pb2.StreamEnd(failure=replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED)
    )
    plain = replica_pb2.HandleResponse(pickled=b"p")
    chunks = [b"", b"x", b"y" * 200_000]
    data = wire.stream_response(
        [wire.stream_answer(6, wire.serialised(plain))],
        [
            wire.serialised(start),
            *(wire.stream_chunk(5, chunk) for chunk in chunks),
            wire.stream_chunk(2**40, b"z"),
            wire.serialised(end),
        ],
    )
    expected = replica_pb2.HandleStreamResponse(
        answers=[replica_pb2.StreamAnswer(id=6, response=plain)],
        frames=[
            start,
            *(
                replica_pb2.StreamFrame(id=5, chunk=replica_pb2.StreamChunk(data=chunk))
                for chunk in chunks
            ),
            replica_pb2.StreamFrame(id=2**40, chunk=replica_pb2.StreamChunk(data=b"z")),
            end,
        ],
    )
    parsed = replica_pb2.HandleStreamResponse.FromString(data)
    assert parsed == expected
    # An empty chunk is still a chunk, not a frame without one.
    assert parsed.frames[1].WhichOneof("frame") == "chunk"
    assert data == expected.SerializeToString()


def test_frames_alone_are_a_batch_too() -> None:
    data = wire.stream_response([], [wire.stream_chunk(1, b"only")])
    parsed = replica_pb2.HandleStreamResponse.FromString(data)
    assert not parsed.answers
    assert parsed.frames[0].chunk.data == b"only"


def test_a_request_framed_in_pieces_reads_back_and_is_sent_without_a_copy_of_its_body() -> None:
    body = b"b" * 100_000
    # HandleRequest(request_id="r1", http=HttpRequest(body=...)), the body a piece of its own.
    body_field = wire.tag(http_pb2.HttpRequest, "body") + wire.varint(len(body))
    head = b"".join(
        (
            replica_pb2.HandleRequest(request_id="r1").SerializeToString(),
            wire.tag(replica_pb2.HandleRequest, "http"),
            wire.varint(len(body_field) + len(body)),
            body_field,
        )
    )
    framed = wire.Request("r1", ([head, body], len(head) + len(body)))
    expected = replica_pb2.HandleRequest(request_id="r1", http=http_pb2.HttpRequest(body=body))
    assert framed.message() == expected
    call = wire.stream_call(4, framed.part, 0.0)
    assert any(piece is body for piece in call[0])
    data = wire.stream_request([call])
    (sent,) = replica_pb2.HandleStreamRequest.FromString(data).calls
    assert sent.id == 4 and sent.request == expected
