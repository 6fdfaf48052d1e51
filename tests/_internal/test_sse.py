"""``sse_event`` and ``EventStream``: the text/event-stream format."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from turnout._internal.sse import EventStream, sse_event
from turnout.errors import InvalidArgumentError


def test_events_are_formatted_as_the_format_says() -> None:
    assert sse_event("hi") == "data: hi\n\n"
    assert sse_event({"n": 1}, event="tick", id="7") == 'event: tick\nid: 7\ndata: {"n": 1}\n\n'
    assert sse_event("a\nb\r\nc") == "data: a\ndata: b\ndata: c\n\n"
    with pytest.raises(InvalidArgumentError, match="line break"):
        sse_event("x", event="two\nlines")
    with pytest.raises(TypeError):
        sse_event("x", id=7)  # type: ignore[arg-type]


def test_an_event_stream_is_a_streamed_response_that_is_not_buffered() -> None:
    stream = EventStream(iter(["data: a\n\n", {"n": 2}]))
    assert stream.mimetype == "text/event-stream"
    assert stream.headers["Cache-Control"] == "no-cache"
    assert stream.headers["X-Accel-Buffering"] == "no"
    assert stream.is_streamed
    assert b"".join(stream.iter_encoded()) == b'data: a\n\ndata: {"n": 2}\n\n'
    with pytest.raises(TypeError):
        EventStream("not events")


def test_an_event_stream_takes_an_async_generator() -> None:
    async def events() -> AsyncIterator[str]:
        yield "data: a\n\n"

    stream = EventStream(events())
    assert hasattr(stream.response, "__aiter__")
