"""Streamed answers through the proxy: each chunk to the client as it comes.

The answer goes out chunked (no Content-Length). Each write is awaited
before the next chunk is taken, and the replica sends a chunk only with
credit for it (``turnout._sending.streams``), so a slow client slows the
handler and the proxy holds at most the stream's window of chunks. A client
that disconnects cancels the replica's call (``FrontDoor``'s disconnect
hook), and a stream that fails after its head went out aborts the connection:
the client sees the body cut short, never a clean end it could trust.
"""

from __future__ import annotations

import logging

from aiohttp import web

from turnout._sending.streams import ChunkStream, StreamFailed
from turnout.v1 import http_pb2

from . import http_codec
from .front_door import SERVED, Served, on_disconnect

logger = logging.getLogger(__name__)


class StreamedAnswer(web.StreamResponse):
    """The head of a streamed answer, with the stream its body comes from."""

    def __init__(self, stream: ChunkStream, response: web.StreamResponse) -> None:
        super().__init__(status=response.status, headers=response.headers)
        self.stream = stream


def answer(
    stream: ChunkStream, request_id: str, replica_id: str
) -> web.StreamResponse | http_codec.BadResponse:
    """The answer to stream, or why its head cannot be sent (the stream is
    cancelled then)."""
    start = stream.start
    head = http_pb2.HttpResponse(status=start.status, headers=start.headers)
    try:
        if not http_codec.valid_status(start.status):
            raise http_codec.BadResponse(f"the replica sent status {start.status}")
        return StreamedAnswer(stream, http_codec.from_proto(head, request_id))
    except http_codec.BadResponse as exc:
        stream.cancel("its head cannot be sent")
        logger.warning("replica %s answered request %s: %s", replica_id, request_id, exc)
        return exc


async def send(response: StreamedAnswer, request: web.BaseRequest) -> web.StreamResponse:
    """Write the stream to the client, chunk by chunk; returns once it is
    over (aiohttp then logs the request: the access log has the whole
    stream's bytes and time)."""
    stream = response.stream
    served = response.get(SERVED) or Served()

    def ended(failed: bool, handler_seconds: float) -> None:
        served.handler_seconds = handler_seconds

    stream.when_done(ended)
    forget = on_disconnect(request, lambda: stream.cancel("the client disconnected"))
    if request.version >= (1, 1):
        response.enable_chunked_encoding()
    else:
        # HTTP/1.0 has no chunks: the end of the body is the end of the connection.
        response.force_close()
    try:
        await response.prepare(request)
        while (chunk := await stream.next()) is not None:
            await response.write(chunk)
    except StreamFailed as exc:
        # A stream that broke (its replica link closed too) is cut off like
        # one that failed: only the client's own leaving is not.
        if not exc.by_reader:
            served.stream_error = f"{exc.code.name}: {exc.message}"
            logger.warning("stream of request %s failed: %s", _rid(response), served.stream_error)
            _abort(request)
    except ConnectionError:
        stream.cancel("the client disconnected")
    finally:
        forget()
        stream.cancel()
    return response


def _abort(request: web.BaseRequest) -> None:
    """End the connection after what was written so far, without the last
    chunk: the client cannot take a cut-off body for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _rid(response: web.StreamResponse) -> str:
    return response.headers.get("X-Request-Id", "-")
