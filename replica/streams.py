"""Streamed answers on the replica: telling a stream from a plain return value,
and pulling its chunks without blocking the event loop.

A handler streams by returning (or being) a sync or async generator, or a
werkzeug/Flask ``Response`` whose body is an iterable of unknown length
(``turnout.EventStream`` is one). Handlers are called as before; only what
they return decides. A sync generator's ``next()`` runs on the handler
threads, so a generator that sleeps between chunks never stalls the loop.

Another source of a streamed HTTP answer plugs in the same way: return an
``Outgoing`` from ``ReplicaServicer._handle_http`` (``_http_outgoing`` builds
one from a ``StreamStart`` and an async iterator of body chunks, each at most
``MAX_CHUNK_BYTES``; closing the iterator must stop the source), and
``call_stream`` sends it as frames with credit, or whole to a sender that
cannot stream. A WSGI or ASGI app's streamed body (an iterable of unknown
length; ``more_body`` messages) comes as an ``AppStream`` from
``BackendRuntime.serve_app`` and goes out that way.

Example (what a handler may return)::

    def handler(request):
        for word in ["a", "b", "c"]:
            time.sleep(0.5)
            yield word + "\\n"
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Response

from turnout.v1 import http_pb2, replica_pb2

# An HTTP chunk larger than this goes out as several: a message must stay
# below what the proxy's channel receives, and a chunk is what the credit
# window counts, so the window bounds the proxy's memory in bytes too.
MAX_CHUNK_BYTES = 1024 * 1024

# Runs a blocking function on the handler threads.
RunSync = Callable[[Callable[[], Any]], Awaitable[Any]]

_DONE = object()


class StreamTypeError(TypeError):
    """A streamed HTTP answer yielded something that is not ``str`` or ``bytes``."""


def is_stream(result: object) -> bool:
    """Whether a handler's return value is an answer to stream: a generator
    (sync or async), or a ``Response`` whose body is an iterable without a
    length and without a Content-Length (``send_file`` keeps its one answer).
    """
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return True
    if isinstance(result, Response):
        return result.is_streamed and "Content-Length" not in result.headers
    return False


def is_item_stream(result: object) -> bool:
    """Whether a Python call's return value streams (generators only: a
    ``Response`` returned to a handle travels pickled, as before)."""
    return inspect.isgenerator(result) or inspect.isasyncgen(result)


def open_items(result: Any, run_sync: RunSync) -> AsyncIterator[Any]:
    """The items of a generator or a streamed ``Response``'s body, as an
    async iterator; closing it (``aclose``) closes the source, after any
    ``next()`` still running on a thread."""
    if isinstance(result, Response):
        body = result.response
        if inspect.isasyncgen(body) or hasattr(body, "__aiter__"):
            return _pull_async(body, result.close)  # type: ignore[arg-type]
        return _pull_sync(result.iter_encoded(), run_sync, result.close)
    if inspect.isasyncgen(result):
        return _pull_async(result, None)
    return _pull_sync(result, run_sync, result.close)


async def open_chunks(result: Any, run_sync: RunSync) -> AsyncIterator[bytes]:
    """The body chunks of a streamed HTTP answer (``encode_chunk`` of each
    item); closing it closes the source."""
    async with contextlib.aclosing(open_items(result, run_sync)) as items:  # type: ignore[type-var]
        async for item in items:
            for chunk in encode_chunk(item):
                yield chunk


def open_iterable(
    source: Iterator[Any], run_sync: RunSync, close: Callable[[], object] | None
) -> AsyncIterator[Any]:
    """The items of a blocking iterator, each ``next()`` on ``run_sync``;
    closing it calls ``close`` on a thread, after any ``next()`` still running."""
    return _pull_sync(source, run_sync, close)


def split_chunk(data: bytes) -> list[bytes]:
    """``data`` cut to chunks of at most ``MAX_CHUNK_BYTES`` (none when empty)."""
    if len(data) <= MAX_CHUNK_BYTES:
        return [data] if data else []
    return [data[start : start + MAX_CHUNK_BYTES] for start in range(0, len(data), MAX_CHUNK_BYTES)]


def encode_chunk(item: object) -> list[bytes]:
    """An HTTP stream's item as body chunks: ``str`` as UTF-8, ``bytes`` as
    they are, none for an empty one, large ones cut to ``MAX_CHUNK_BYTES``.
    Raises ``StreamTypeError`` for an item of another type."""
    if isinstance(item, str):
        data = item.encode("utf-8")
    elif isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
    else:
        raise StreamTypeError(f"a streamed answer yields str or bytes, not {type(item).__name__}")
    return split_chunk(data)


END = object()


def http_start(result: Any, first: object) -> replica_pb2.StreamStart:
    """The head of a streamed HTTP answer: a ``Response``'s status and
    headers; for a bare generator 200 and a Content-Type by its first item
    (octets for ``bytes``, else UTF-8 text)."""
    if isinstance(result, Response):
        headers = [
            http_pb2.Header(name=name, value=value)
            for name, value in result.headers.to_wsgi_list()
            if name.lower() != "content-length"
        ]
        return replica_pb2.StreamStart(status=result.status_code, headers=headers)
    binary = isinstance(first, bytes | bytearray | memoryview)
    content_type = "application/octet-stream" if binary else "text/plain; charset=utf-8"
    return replica_pb2.StreamStart(
        status=200, headers=[http_pb2.Header(name="Content-Type", value=content_type)]
    )


async def start_stream(
    items: AsyncIterator[Any],
    encode: Callable[[object], list[bytes]],
    on_close: Callable[[], object] | None = None,
) -> tuple[object, AsyncIterator[bytes]]:
    """Pull and encode the first item of ``items`` (before any head goes
    out, so that a handler failing at once, or yielding what cannot be sent,
    gets an ordinary error answer); returns it (``END`` if there is none)
    with every chunk, the first included. Raises what pulling or encoding
    the first item raises, with ``items`` closed and ``on_close`` called."""
    try:
        first = await anext(items, END)
        first_chunks = [] if first is END else encode(first)
    except BaseException:
        try:
            await items.aclose()  # type: ignore[attr-defined]
        finally:
            if on_close is not None:
                on_close()
        raise
    return first, _chained(first_chunks, first is END, items, encode, on_close)


async def _chained(
    first_chunks: list[bytes],
    empty: bool,
    items: AsyncIterator[Any],
    encode: Callable[[object], list[bytes]],
    on_close: Callable[[], object] | None,
) -> AsyncIterator[bytes]:
    try:
        for chunk in first_chunks:
            yield chunk
        if not empty:
            async for item in items:
                for chunk in encode(item):
                    yield chunk
    finally:
        try:
            await items.aclose()  # type: ignore[attr-defined]
        finally:
            if on_close is not None:
                on_close()


async def _pull_async(
    source: AsyncIterator[Any], close: Callable[[], object] | None
) -> AsyncIterator[Any]:
    try:
        async for item in source:
            yield item
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
        if close is not None:
            close()


async def _pull_sync(
    source: Iterator[Any], run_sync: RunSync, close: Callable[[], object] | None
) -> AsyncIterator[Any]:
    pull = functools.partial(next, source, _DONE)
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(run_sync(pull))
            # Shielded: a cancelled stream must not lose track of a next()
            # still running on a thread (the generator cannot be closed then).
            item = await asyncio.shield(pending)
            pending = None
            if item is _DONE:
                return
            yield item
    finally:
        if close is not None:
            if pending is None or pending.done():
                _close_aside(close)
            else:
                pending.add_done_callback(lambda _: _close_aside(close))


def _close_aside(close: Callable[[], object]) -> None:
    """Close a sync source on a thread: its ``finally`` is the user's code
    and may block."""
    loop = asyncio.get_running_loop()
    loop.run_in_executor(None, close).add_done_callback(_ignore_result)


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass
class AppStream:
    """A WSGI or ASGI app's streamed answer: its head and its body chunks
    (each at most ``MAX_CHUNK_BYTES``; closing them stops the app)."""

    start: replica_pb2.StreamStart
    chunks: AsyncIterator[bytes]


@dataclass
class Outgoing:
    """A streamed answer ready to go out (``call_stream`` sends it as frames):
    its head, its chunks (the first one already pulled), and how a failure
    part-way is reported."""

    start: replica_pb2.StreamStart
    # Closing it closes the handler's generator.
    chunks: AsyncIterator[bytes]
    # The RemoteError a failure while streaming is reported with (it logs it).
    fail: Callable[[BaseException], replica_pb2.RemoteError]
    # The whole answer as one HandleResponse, for a sender that cannot take
    # a stream (stream_window 0, or a unary Handle call).
    collect: Callable[[], Awaitable[replica_pb2.HandleResponse]]
    # When the replica started on the call (time.perf_counter()).
    started: float
