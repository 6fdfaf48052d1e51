"""Server-sent events: ``turnout.EventStream`` and ``turnout.sse_event``.

An ``EventStream`` is a werkzeug ``Response`` (so it works in a Flask app
too) whose body is a generator of events; the replica streams it like any
streamed answer, and the proxy sends each event as it comes, unbuffered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from werkzeug.wrappers import Response

from turnout._internal.errors import InvalidArgumentError

EVENT_STREAM = "text/event-stream"


def sse_event(data: Any, event: str | None = None, id: str | None = None) -> str:
    """One server-sent event, as the ``text/event-stream`` format writes it.

    ``data`` that is not a ``str`` is sent as JSON; each of its lines gets a
    ``data:`` field. ``event`` names the event type (EventSource's
    ``addEventListener(event, ...)``), ``id`` sets the client's last event id.

    Example::

        >>> sse_event({"n": 1}, event="tick", id="7")
        'event: tick\\nid: 7\\ndata: {"n": 1}\\n\\n'
    """
    text = data if isinstance(data, str) else json.dumps(data)
    lines = []
    for name, value in (("event", event), ("id", id)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if "\n" in value or "\r" in value or (name == "id" and "\0" in value):
            raise InvalidArgumentError(f"an event's {name} cannot hold a line break: {value!r}")
        lines.append(f"{name}: {value}")
    lines.extend(f"data: {line}" for line in text.replace("\r\n", "\n").split("\n"))
    return "\n".join(lines) + "\n\n"


class EventStream(Response):
    """A streamed answer of server-sent events (``text/event-stream``).

    ``events`` is a sync or async iterable; each item that is ``str`` or
    ``bytes`` is sent as it is (format it with ``sse_event``), anything else
    as ``sse_event(item)`` (JSON data). Each event leaves the proxy as soon as
    the handler yields it: the answer carries ``Cache-Control: no-cache`` and
    ``X-Accel-Buffering: no``, so proxies in front do not hold it either.

    Example::

        def ticks(request):
            def events():
                for n in range(3):
                    time.sleep(1)
                    yield turnout.sse_event({"n": n}, event="tick")
            return turnout.EventStream(events())
    """

    def __init__(
        self,
        events: Iterable[Any] | AsyncIterable[Any],
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body: Iterable[Any] | AsyncIterable[Any]
        if isinstance(events, AsyncIterable):
            body = _formatted_async(events)
        elif isinstance(events, Iterable) and not isinstance(events, str | bytes):
            body = _formatted(events)
        else:
            raise TypeError(f"events must be an iterable of events, not {type(events).__name__}")
        super().__init__(body, status=status, headers=dict(headers or {}), mimetype=EVENT_STREAM)  # type: ignore[arg-type]
        self.headers.setdefault("Cache-Control", "no-cache")
        self.headers.setdefault("X-Accel-Buffering", "no")


def _format(item: Any) -> str | bytes:
    return item if isinstance(item, str | bytes) else sse_event(item)


def _formatted(events: Iterable[Any]) -> Iterator[str | bytes]:
    try:
        for item in events:
            yield _format(item)
    finally:
        close = getattr(events, "close", None)
        if callable(close):
            close()


async def _formatted_async(events: AsyncIterable[Any]) -> AsyncIterator[str | bytes]:
    try:
        async for item in events:
            yield _format(item)
    finally:
        aclose = getattr(events, "aclose", None)
        if callable(aclose):
            await aclose()
