"""``HandleStream``'s messages framed by hand, around parts serialised once.

Building a ``HandleStreamRequest`` from ``StreamCall``s (or a
``HandleStreamResponse`` from ``StreamAnswer``s) copies every request (or
answer) into the new message twice: once into the ``StreamCall``, once into
the batch, and serialising copies it a third time; upb's copies of a 1 MiB
body cost about 0.3 ms each (bench/RESULTS.md). A batch is only its parts'
bytes one after another, each behind a tag and a length (protobuf's wire
format), so each part is serialised once and the batch is one join. The
bytes are exactly what protobuf writes, and any protobuf parser reads them
as the messages of replica.proto; field numbers come from its descriptors.

Example::

    request = replica_pb2.HandleRequest(request_id="r1")
    data = stream_request([stream_call(7, serialised(request), 2.5)], [3])
    message = replica_pb2.HandleStreamRequest.FromString(data)
    assert message.calls[0].id == 7 and message.cancelled_ids == [3]
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from google.protobuf.message import Message

from turnout.v1 import http_pb2, replica_pb2

# Protobuf wire types.
_VARINT, _I64, _LEN = 0, 1, 2

# One call or answer, framed: the pieces to join, and their total length.
Part = tuple[list[bytes], int]

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a protobuf varint."""
    # Ids and lengths are mostly small: up to three bytes without a loop.
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:  # call ids of a long-lived stream
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(message: type, name: str, wire_type: int) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[name].number  # type: ignore[attr-defined]
    return varint(number << 3 | wire_type)


_CALLS = _tag(replica_pb2.HandleStreamRequest, "calls", _LEN)
_CANCELLED = _tag(replica_pb2.HandleStreamRequest, "cancelled_ids", _LEN)
_CALL_ID = _tag(replica_pb2.StreamCall, "id", _VARINT)
_CALL_REQUEST = _tag(replica_pb2.StreamCall, "request", _LEN)
_CALL_TIMEOUT = _tag(replica_pb2.StreamCall, "timeout", _I64)
_CALL_WINDOW = _tag(replica_pb2.StreamCall, "stream_window", _VARINT)
_CREDITS = _tag(replica_pb2.HandleStreamRequest, "credits", _LEN)
_CREDIT_ID = _tag(replica_pb2.StreamCredit, "id", _VARINT)
_CREDIT_CHUNKS = _tag(replica_pb2.StreamCredit, "chunks", _VARINT)
_FRAMES = _tag(replica_pb2.HandleStreamResponse, "frames", _LEN)
_FRAME_ID = _tag(replica_pb2.StreamFrame, "id", _VARINT)
_FRAME_CHUNK = _tag(replica_pb2.StreamFrame, "chunk", _LEN)
_CHUNK_DATA = _tag(replica_pb2.StreamChunk, "data", _LEN)
_ANSWERS = _tag(replica_pb2.HandleStreamResponse, "answers", _LEN)
_ANSWER_ID = _tag(replica_pb2.StreamAnswer, "id", _VARINT)
_ANSWER_RESPONSE = _tag(replica_pb2.StreamAnswer, "response", _LEN)
_ANSWER_FAILURE = _tag(replica_pb2.StreamAnswer, "failure", _VARINT)
_HTTP_BODY = _tag(http_pb2.HttpResponse, "body", _LEN)
_RESPONSE_HTTP = _tag(replica_pb2.HandleResponse, "http", _LEN)
_RESPONSE_SECONDS = _tag(replica_pb2.HandleResponse, "handler_seconds", _I64)


def stream_call(call_id: int, request: Part, timeout: float, stream_window: int = 0) -> Part:
    """A ``StreamCall`` around a ``HandleRequest`` in pieces (``serialised``'s,
    or a ``Request``'s part); timeout in seconds, 0 = none; ``stream_window``
    in chunks, 0 = no streamed answer."""
    request_pieces, request_size = request
    head = b"".join((_CALL_ID, varint(call_id), _CALL_REQUEST, varint(request_size)))
    pieces = [head, *request_pieces]
    size = len(head) + request_size
    if timeout:
        tail = _CALL_TIMEOUT + struct.pack("<d", timeout)
        pieces.append(tail)
        size += len(tail)
    if stream_window:
        window = _CALL_WINDOW + varint(stream_window)
        pieces.append(window)
        size += len(window)
    return pieces, size


class Request(NamedTuple):
    """A ``HandleRequest`` framed already, in pieces (the proxy's: a body is
    one of them, never copied into a message), with the id the sender logs.

    Example::

        framed = Request("r1", serialised(replica_pb2.HandleRequest(request_id="r1")))
        assert framed.message().request_id == "r1"
    """

    request_id: str
    part: Part

    def message(self) -> replica_pb2.HandleRequest:
        """As a message, for the rare paths that need one (shadows, a replica
        without ``HandleStream``)."""
        return replica_pb2.HandleRequest.FromString(b"".join(self.part[0]))


def tag(message: type, name: str) -> bytes:
    """The tag of a length-delimited field (string, bytes or message) of ``message``."""
    return _tag(message, name, _LEN)


def serialised(message: Message) -> Part:
    """Any message serialised, as a part (frames and responses that carry no
    large body gain nothing from framing by hand)."""
    data = message.SerializeToString()
    return [data], len(data)


def stream_chunk(call_id: int, data: bytes) -> Part:
    """A ``StreamFrame`` carrying a ``StreamChunk`` of ``data``, without
    copying ``data`` into a message (chunks are up to 1 MiB)."""
    if not data:  # protobuf leaves an empty field out
        head = b"".join((_FRAME_ID, varint(call_id), _FRAME_CHUNK, varint(0)))
        return [head], len(head)
    field = _CHUNK_DATA + varint(len(data))
    head = b"".join((_FRAME_ID, varint(call_id), _FRAME_CHUNK, varint(len(field) + len(data))))
    return [head, field, data], len(head) + len(field) + len(data)


def http_body(body: bytes) -> list[bytes]:
    """An ``HttpResponse``'s body field: after the rest of the message
    serialised, the message with that body (a parser takes fields in any
    order), without copying ``body`` into a message first."""
    return [_HTTP_BODY + varint(len(body)), body]


def http_response(http: list[bytes], handler_seconds: float) -> Part:
    """A ``HandleResponse`` around a serialised ``HttpResponse`` (in pieces)."""
    size = sum(len(piece) for piece in http)
    head = _RESPONSE_HTTP + varint(size)
    tail = _RESPONSE_SECONDS + struct.pack("<d", handler_seconds)
    return [head, *http, tail], len(head) + size + len(tail)


def stream_answer(call_id: int, response: Part) -> Part:
    """A ``StreamAnswer`` around a ``HandleResponse`` (``http_response``'s,
    or a serialised one as ``([data], len(data))``)."""
    pieces, size = response
    head = b"".join((_ANSWER_ID, varint(call_id), _ANSWER_RESPONSE, varint(size)))
    return [head, *pieces], len(head) + size


def failed_answer(call_id: int, failure: int) -> Part:
    """A ``StreamAnswer`` that says the call failed (a ``CallFailure`` value)."""
    data = b"".join((_ANSWER_ID, varint(call_id), _ANSWER_FAILURE, varint(failure)))
    return [data], len(data)


def _repeated(tag: bytes, parts: Iterable[Part], pieces: list[bytes]) -> None:
    for part, size in parts:
        pieces += (tag, varint(size), *part)


def stream_request(
    calls: Iterable[Part],
    cancelled_ids: Sequence[int] = (),
    credits: Sequence[tuple[int, int]] = (),
) -> bytes:
    """A ``HandleStreamRequest``: ``calls``, the ids of calls given up on, and
    ``credits`` as (call id, chunks) for streamed answers."""
    # Fields in number order, as protobuf writes them.
    pieces: list[bytes] = []
    _repeated(_CALLS, calls, pieces)
    if cancelled_ids:
        packed = b"".join(varint(i) for i in cancelled_ids)
        pieces += (_CANCELLED, varint(len(packed)), packed)
    for call_id, chunks in credits:
        credit = b"".join((_CREDIT_ID, varint(call_id), _CREDIT_CHUNKS, varint(chunks)))
        pieces += (_CREDITS, varint(len(credit)), credit)
    return b"".join(pieces)


def stream_response(answers: Iterable[Part], frames: Iterable[Part] = ()) -> bytes:
    """A ``HandleStreamResponse`` carrying ``answers`` and ``frames`` of
    streamed answers (``stream_chunk``'s, or ``serialised`` frames)."""
    pieces: list[bytes] = []
    _repeated(_ANSWERS, answers, pieces)
    _repeated(_FRAMES, frames, pieces)
    return b"".join(pieces)
