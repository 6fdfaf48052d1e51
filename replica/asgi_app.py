"""An ASGI 3 application (FastAPI, Starlette) as a backend.

Each request runs the app on the replica's event loop with an ``http`` scope:
``path`` is the whole path and ``root_path`` the endpoint's route (Starlette
and FastAPI route on the part after it, and build URLs and redirects with
it). ``receive`` hands over the whole body at once, then reports a
disconnect once the answer is complete (or its stream's client went away);
``send`` collects a whole answer, or streams one whose first body message
says ``more_body`` (``_Exchange``). The
``lifespan`` protocol runs at replica start (its failure refuses the backend,
as a raising constructor does) and at its stop. An app that does not speak
lifespan (it raises on that scope before starting up) is served without it,
as uvicorn's ``lifespan="auto"`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import unquote

from turnout.replica.codec import split_host_port
from turnout.replica.streams import AppStream, split_chunk
from turnout.replica.wsgi_app import AppAnswerError
from turnout.v1 import http_pb2, replica_pb2

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
        self._collect_pending = False

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

    async def call(self, msg: http_pb2.HttpRequest) -> http_pb2.HttpResponse | AppStream:
        """The app's whole answer to one request, or an ``AppStream`` when
        its first body message says ``more_body`` (and no Content-Length);
        raises what the app raised before answering."""
        exchange = _Exchange(msg.body)
        running = asyncio.ensure_future(self._run(self._scope(msg), exchange, msg.path))
        answered = asyncio.ensure_future(exchange.head.wait())
        try:
            await asyncio.wait({running, answered}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            running.cancel()
            answered.cancel()
            raise
        answered.cancel()
        if running.done():
            if not exchange.streaming:
                running.result()  # what the app raised before it answered
        else:
            # Answered (or streaming), and the app goes on (FastAPI's
            # background tasks, the stream's body) with the answer on its way.
            self._after_answer.add(running)
            running.add_done_callback(self._after_answer.discard)
        if exchange.status is None:
            raise AppAnswerError("the ASGI app returned without sending http.response.start")
        if exchange.streaming:
            start = replica_pb2.StreamStart(status=exchange.status, headers=exchange.headers)
            return AppStream(start, exchange.stream(running))
        return http_pb2.HttpResponse(
            status=exchange.status, headers=exchange.headers, body=b"".join(exchange.body_parts)
        )

    async def _run(self, scope: Message, exchange: _Exchange, path: str) -> None:
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if exchange.gone.is_set():
                # The stream's client went away (or its deadline passed): the
                # app stopped on the disconnect, as it should.
                log.info("the ASGI app stopped streaming to %s: %r", path[:200], exc)
            elif not exchange.complete.is_set():
                raise
            else:
                # Starlette's error middleware answers 500 itself, then
                # re-raises for the server to log: the answer went out, so
                # it stands.
                log.exception("the ASGI app raised after answering a request to %s", path[:200])
        finally:
            exchange.complete.set()
            if exchange.gone.is_set():
                self._collect_soon()

    def _collect_soon(self) -> None:
        """Collect young garbage once the loop is free: a stream cut off while
        the app waited in ``send`` leaves its body's generator unclosed in a
        reference cycle (Starlette does not close it), so its ``finally`` (a
        model's generation stopped, a cursor closed) would wait for whenever
        the collector next runs. One cheap generation-1 pass per loop turn,
        however many streams ended in it."""
        if self._collect_pending:
            return
        self._collect_pending = True

        def collect() -> None:
            self._collect_pending = False
            gc.collect(1)

        asyncio.get_running_loop().call_soon(collect)

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


class _Exchange:
    """One request's messages between the app and the replica: ``receive``
    and ``send`` for the app, ``stream`` for the sender of a streamed body.

    A streamed body passes through a queue of one chunk, so an app sending
    faster than the client reads waits in ``send``: the credit window's
    back-pressure reaches it. Once the stream's reader goes away (``stream``
    closed: the client left, or the deadline passed) ``receive`` says
    ``http.disconnect`` (Starlette's StreamingResponse cancels its body on
    it) and ``send`` raises ``OSError``, as ASGI 2.4 has servers do.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.body_sent = False
        self.status: int | None = None
        self.headers: list[http_pb2.Header] = []
        # A whole answer's body.
        self.body_parts: list[bytes] = []
        self.streaming = False
        # The whole answer is in, or the stream has begun.
        self.head = asyncio.Event()
        # The app sent its last body message (or returned).
        self.complete = asyncio.Event()
        # The stream's reader went away before the end.
        self.gone = asyncio.Event()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)

    async def receive(self) -> Message:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await _until(self.complete.wait(), self.gone)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.gone.is_set():
            raise OSError("the client went away")
        kind = message.get("type")
        if kind == "http.response.start":
            if self.status is not None:
                raise AppAnswerError("the ASGI app sent http.response.start twice")
            self.status = int(message["status"])
            for name, value in message.get("headers", ()):
                self.headers.append(
                    http_pb2.Header(
                        name=bytes(name).decode("latin-1"), value=bytes(value).decode("latin-1")
                    )
                )
        elif kind == "http.response.body":
            if self.status is None:
                raise AppAnswerError("the ASGI app sent a body before http.response.start")
            if self.complete.is_set():
                raise AppAnswerError("the ASGI app sent a body after its last one")
            data = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if not self.head.is_set() and more and not self._has_length():
                self.streaming = True
                self.head.set()
            if self.streaming:
                if data:
                    await self._put(data)
                if not more:
                    await self._put(None)
                    self.complete.set()
            else:
                self.body_parts.append(data)
                if not more:
                    self.complete.set()
                    self.head.set()

    async def stream(self, running: asyncio.Future[None]) -> AsyncIterator[bytes]:
        """The streamed body's chunks, to its end or to what the app raised
        part-way; closing it tells the app its client went away."""
        try:
            while True:
                getter = asyncio.ensure_future(self._queue.get())
                either: set[asyncio.Future[Any]] = {getter, running}
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not getter.done():
                        # A cancelled get leaves its item in the queue.
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    item = getter.result()
                elif not self._queue.empty():
                    item = self._queue.get_nowait()
                else:
                    running.result()  # what the app raised part-way
                    return  # it returned without a last message: the body ends here
                if item is None:
                    return
                for chunk in split_chunk(item):
                    yield chunk
        finally:
            if not self.complete.is_set():
                self.gone.set()

    async def _put(self, item: bytes | None) -> None:
        if not await _until(self._queue.put(item), self.gone):
            raise OSError("the client went away")

    def _has_length(self) -> bool:
        return any(h.name.lower() == "content-length" for h in self.headers)


async def _until(awaitable: Awaitable[Any], gone: asyncio.Event) -> bool:
    """Await ``awaitable`` unless ``gone`` is set first; whether it finished."""
    task = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        task.result()
        return True
    return False
