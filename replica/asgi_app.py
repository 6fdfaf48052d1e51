"""An ASGI 3 application (FastAPI, Starlette) as a backend.

Each request runs the app on the replica's event loop with an ``http`` scope:
``path`` is the whole path and ``root_path`` the endpoint's route (Starlette
and FastAPI route on the part after it, and build URLs and redirects with
it). ``receive`` hands over the whole body at once, then reports a
disconnect once the answer is complete; ``send`` collects the answer. The
``lifespan`` protocol runs at replica start (its failure refuses the backend,
as a raising constructor does) and at its stop. An app that does not speak
lifespan (it raises on that scope before starting up) is served without it,
as uvicorn's ``lifespan="auto"`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import unquote

from turnout.replica.codec import split_host_port
from turnout.replica.wsgi_app import AppAnswerError
from turnout.v1 import http_pb2

log = logging.getLogger("turnout.replica")

Message = MutableMapping[str, Any]
AsgiCallable = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Coroutine[Any, Any, None],
]
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


class AppStartError(Exception):
    """The app's lifespan startup failed: ``message`` is the app's last line
    (Starlette sends a whole traceback), ``detail`` all it said."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class AsgiApp:
    """Runs one ASGI app: ``startup``/``shutdown`` around its life, ``call``
    per request (on the loop that ran ``startup``)."""

    def __init__(self, app: AsgiCallable) -> None:
        self.app = app
        # Lifespan state (ASGI 2.3): copied into every request's scope.
        self._state: dict[str, Any] = {}
        self._lifespan: asyncio.Task[None] | None = None
        # Requests answered whose app call still runs (background tasks).
        self._after_answer: set[asyncio.Future[None]] = set()
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()

    async def startup(self, timeout: float) -> None:
        """Send ``lifespan.startup`` and wait for the app's answer; raises
        ``AppStartError`` when it fails or does not answer in ``timeout`` s."""
        scope: Message = {"type": "lifespan", "asgi": _ASGI, "state": self._state}
        self._lifespan = asyncio.create_task(
            self.app(scope, self._to_app.get, self._from_app.put), name="asgi-lifespan"
        )
        await self._to_app.put({"type": "lifespan.startup"})
        answer = await self._next_answer(timeout)
        if answer is None:
            return  # no lifespan support: served without it
        if answer.get("type") == "lifespan.startup.failed":
            said = str(answer.get("message", "")).strip()
            lines = said.splitlines()
            raise AppStartError(lines[-1] if lines else "no reason given", said)
        if answer.get("type") != "lifespan.startup.complete":
            raise AppStartError(f"the app answered lifespan.startup with {answer.get('type')!r}")

    async def shutdown(self, timeout: float) -> None:
        """Send ``lifespan.shutdown`` and wait (at most ``timeout`` s) for the app."""
        task = self._lifespan
        if task is None or task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        answer = await self._next_answer(timeout)
        if answer is not None and answer.get("type") == "lifespan.shutdown.failed":
            log.error("the app's lifespan shutdown failed: %s", answer.get("message", ""))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _next_answer(self, timeout: float) -> Message | None:
        """The app's next lifespan message; None once its lifespan task ended
        without one (an app without lifespan support)."""
        task = self._lifespan
        assert task is not None
        getter = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({getter, task}, timeout=timeout, return_when="FIRST_COMPLETED")
        if getter in done:
            return getter.result()
        getter.cancel()
        if task in done:
            if not task.cancelled() and task.exception() is not None:
                log.info("the ASGI app does not support lifespan: %r", task.exception())
            return None
        raise AppStartError(f"the app did not answer lifespan events within {timeout:g} s")

    async def call(self, msg: http_pb2.HttpRequest) -> http_pb2.HttpResponse:
        """The app's whole answer to one request; raises what the app raised."""
        scope = self._scope(msg)
        body_sent = False
        complete = asyncio.Event()
        status: int | None = None
        headers: list[http_pb2.Header] = []
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": msg.body, "more_body": False}
            await complete.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            kind = message.get("type")
            if kind == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    headers.append(
                        http_pb2.Header(
                            name=bytes(name).decode("latin-1"), value=bytes(value).decode("latin-1")
                        )
                    )
            elif kind == "http.response.body":
                if status is None:
                    raise AppAnswerError("the ASGI app sent a body before http.response.start")
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    complete.set()

        running = asyncio.ensure_future(self._run(scope, receive, send, complete, msg.path))
        answered = asyncio.ensure_future(complete.wait())
        try:
            await asyncio.wait({running, answered}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            running.cancel()
            answered.cancel()
            raise
        if running.done():
            answered.cancel()
            running.result()  # what the app raised before it answered
        else:
            # Answered, and the app goes on (FastAPI's background tasks) with
            # the answer already on its way, as behind uvicorn.
            self._after_answer.add(running)
            running.add_done_callback(self._after_answer.discard)
        if status is None:
            raise AppAnswerError("the ASGI app returned without sending http.response.start")
        return http_pb2.HttpResponse(status=status, headers=headers, body=b"".join(chunks))

    async def _run(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        complete: asyncio.Event,
        path: str,
    ) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            if not complete.is_set():
                raise
            # Starlette's error middleware answers 500 itself, then re-raises
            # for the server to log: the answer went out, so it stands.
            log.exception("the ASGI app raised after answering a request to %s", path[:200])
        finally:
            complete.set()

    def _scope(self, msg: http_pb2.HttpRequest) -> Message:
        scheme = msg.scheme or "http"
        host, port = split_host_port(msg.host)
        client_host, client_port = split_host_port(msg.remote_addr)
        raw_path = msg.path or "/"
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1",
            "method": msg.method.upper() or "GET",
            "scheme": scheme,
            "path": unquote(raw_path),
            "raw_path": raw_path.encode("utf-8"),
            "query_string": msg.query_string.encode("utf-8"),
            "root_path": msg.script_name,
            "headers": [
                (h.name.lower().encode("latin-1"), h.value.encode("latin-1")) for h in msg.headers
            ],
            "client": (client_host, int(client_port)) if client_port.isdigit() else None,
            "server": (
                host or "localhost",
                int(port) if port.isdigit() else _DEFAULT_PORTS.get(scheme, 80),
            ),
            "state": dict(self._state),
        }
