"""A WSGI application (Flask, Django, any PEP 3333 app) as a backend.

The replica calls the app with the WSGI environ it builds for handlers
(``codec.app_environ``): ``SCRIPT_NAME`` is the endpoint's route and
``PATH_INFO`` the rest of the path, as behind any WSGI server mounted under a
prefix, so the app's own routing, ``url_for`` and redirects see where it is
mounted. The call runs on a handler thread; the whole answer is collected
(the proxy sends bodies whole).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from turnout.replica import codec
from turnout.v1 import http_pb2

WsgiCallable = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AppAnswerError(RuntimeError):
    """The app broke its interface's rules (no status, a body that is not bytes)."""


class WsgiApp:
    """Calls one WSGI app per request; ``call`` blocks, so run it on a thread.

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
        """The app's answer; once ``stop`` is set (its caller gave up: the
        deadline passed) the body is read no further, so an endless body (a
        stream) ends with its request instead of holding the thread forever."""
        environ = codec.app_environ(msg)
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and started and chunks:
                # PEP 3333: too late to change the status; re-raise.
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return chunks.append

        result = self.app(environ, start_response)
        try:
            for chunk in result:
                if stop is not None and stop.is_set():
                    raise AppAnswerError("the request was abandoned while the app was answering")
                if not isinstance(chunk, bytes | bytearray):
                    raise AppAnswerError(
                        f"the WSGI app yielded a {type(chunk).__name__}, not bytes"
                    )
                chunks.append(bytes(chunk))
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()
        if not started:
            raise AppAnswerError("the WSGI app returned without calling start_response")
        status, headers = started
        try:
            code = int(str(status).split(" ", 1)[0])
        except ValueError:
            raise AppAnswerError(f"the WSGI app sent the status {status!r}") from None
        return http_pb2.HttpResponse(
            status=code,
            headers=[http_pb2.Header(name=k, value=v) for k, v in headers],
            body=b"".join(chunks),
        )
