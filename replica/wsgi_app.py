"""A WSGI application (Flask, Django, any PEP 3333 app) as a backend.

The replica calls the app with the WSGI environ it builds for handlers
(``codec.app_environ``): ``SCRIPT_NAME`` is the endpoint's route and
``PATH_INFO`` the rest of the path, as behind any WSGI server mounted under a
prefix, so the app's own routing, ``url_for`` and redirects see where it is
mounted. The call runs on a handler thread.

A body that is a list or tuple, or comes with a Content-Length (every
ordinary Flask answer), is collected and sent whole, as before. Any other
iterable (a generator, Flask's ``Response(generator)`` or
``stream_with_context``) streams: ``start`` pulls up to its first non-empty
chunk (PEP 3333: the head goes out with it) and hands back the rest as a
``WsgiStream``, which the runtime pulls chunk by chunk on the handler
threads (``replica.streams``); closing the stream calls the iterable's
``close()``, as a WSGI server does when its client goes away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from turnout.replica import codec
from turnout.v1 import http_pb2

WsgiCallable = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AppAnswerError(RuntimeError):
    """The app broke its interface's rules (no status, a body that is not bytes)."""


@dataclass
class WsgiStream:
    """A WSGI answer to stream: its head, the chunks pulled so far, the rest
    (each ``next()`` blocks: pull it on a thread) and the iterable's ``close``."""

    status: int
    headers: list[http_pb2.Header]
    first: list[bytes]
    rest: Iterator[bytes]
    close: Callable[[], None]


class WsgiApp:
    """Calls one WSGI app per request; ``call`` and ``start`` block, so run
    them on a thread.

    >>> def app(environ, start_response):
    ...     start_response("200 OK", [("Content-Type", "text/plain")])
    ...     return [environ["SCRIPT_NAME"].encode(), environ["PATH_INFO"].encode()]
    >>> answer = WsgiApp(app).call(http_pb2.HttpRequest(path="/api/x", script_name="/api"))
    >>> answer.status, answer.body
    (200, b'/api/x')
    """

    def __init__(self, app: WsgiCallable) -> None:
        self.app = app

    def call(
        self, msg: http_pb2.HttpRequest, stop: threading.Event | None = None
    ) -> http_pb2.HttpResponse:
        """The app's whole answer, a streamed body collected; once ``stop`` is
        set (its caller gave up: the deadline passed) the body is read no
        further, so an endless body ends with its request instead of holding
        the thread forever."""
        answer = self.start(msg, stop)
        if isinstance(answer, http_pb2.HttpResponse):
            return answer
        try:
            body = bytearray(b"".join(answer.first))
            for chunk in answer.rest:
                if stop is not None and stop.is_set():
                    raise AppAnswerError("the request was abandoned while the app was answering")
                body += chunk
        finally:
            answer.close()
        return http_pb2.HttpResponse(status=answer.status, headers=answer.headers, body=bytes(body))

    def start(
        self, msg: http_pb2.HttpRequest, stop: threading.Event | None = None
    ) -> http_pb2.HttpResponse | WsgiStream:
        """The app's whole answer, or its head and first chunk when its body
        streams (see the module's comment); ``stop`` as for ``call``."""
        environ = codec.app_environ(msg)
        started: list[Any] = []
        # What the app wrote through start_response's write() (PEP 3333's
        # legacy path): it goes out before the iterable's next chunk.
        written: list[bytes] = []
        pulled: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and started and (pulled or written):
                # PEP 3333: too late to change the status; re-raise.
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return written.append

        result = self.app(environ, start_response)
        streaming = False
        try:
            body = iter(result)
            exhausted = True
            for chunk in body:
                _check_stop(stop)
                pulled.append(_as_bytes(chunk))
                if chunk:
                    exhausted = False
                    break
            status, headers = _head(started)
            if not exhausted and (
                isinstance(result, list | tuple)
                or any(h.name.lower() == "content-length" for h in headers)
            ):
                for chunk in body:
                    _check_stop(stop)
                    pulled.append(_as_bytes(chunk))
                exhausted = True
            if exhausted:
                return http_pb2.HttpResponse(
                    status=status, headers=headers, body=b"".join(written + pulled)
                )
            first = written[:] + pulled
            written.clear()
            streaming = True
            return WsgiStream(status, headers, first, _rest(body, written), _closer(result))
        finally:
            if not streaming:
                _closer(result)()


def _rest(body: Iterator[Any], written: list[bytes]) -> Iterator[bytes]:
    for chunk in body:
        while written:
            yield written.pop(0)
        yield _as_bytes(chunk)
    while written:
        yield written.pop(0)


def _closer(result: Iterable[bytes]) -> Callable[[], None]:
    close = getattr(result, "close", None)
    return close if callable(close) else _nothing


def _nothing() -> None:
    pass


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise AppAnswerError("the request was abandoned while the app was answering")


def _as_bytes(chunk: object) -> bytes:
    if not isinstance(chunk, bytes | bytearray):
        raise AppAnswerError(f"the WSGI app yielded a {type(chunk).__name__}, not bytes")
    return bytes(chunk)


def _head(started: list[Any]) -> tuple[int, list[http_pb2.Header]]:
    if not started:
        raise AppAnswerError("the WSGI app returned without calling start_response")
    status, headers = started
    try:
        code = int(str(status).split(" ", 1)[0])
    except ValueError:
        raise AppAnswerError(f"the WSGI app sent the status {status!r}") from None
    return code, [http_pb2.Header(name=k, value=v) for k, v in headers]
