"""Real web apps served as backends: a Flask (WSGI) app and FastAPI (ASGI)
apps, each exercising what a team's existing app does (path parameters,
query strings, forms, uploads, cookies, redirects, errors, lifespan, and
streamed bodies: Flask generators and ``stream_with_context``,
``turnout.EventStream``, FastAPI's ``StreamingResponse``).

Replicas import them by path ("web_apps:flask_app"): ``create_backend``
given the object finds it here. The lifespan markers go to the folder named
by ``LIFESPAN_DIR`` in the replica's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import flask
from fastapi import Cookie, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

import turnout

LIFESPAN_DIR = "WEB_APPS_LIFESPAN_DIR"
# Every bounded wait of a streamed body below, in 10 ms steps: 30 s.
STEPS = 3000
# The back-pressure body: this many chunks of 1 KiB.
COUNTED_CHUNKS = 2000
# 16 KiB each, 31 MiB in all: more than the proxy's socket send buffer can
# hold (it grows to tcp_wmem's most, 4 MiB by default), so a count that stops
# short is back-pressure, not the kernel's buffering.
COUNTED_CHUNK_BYTES = 16384


def _gate_opened(gate: str) -> bool:
    for _ in range(STEPS):
        if os.path.exists(gate):
            return True
        time.sleep(0.01)
    return False


async def _gate_opened_async(gate: str) -> bool:
    for _ in range(STEPS):
        if os.path.exists(gate):
            return True
        await asyncio.sleep(0.01)
    return False


flask_app = flask.Flask(__name__)


@flask_app.get("/items/<int:item_id>")
def flask_item(item_id: int) -> dict[str, Any]:
    return {"id": item_id, "q": flask.request.args.getlist("q")}


@flask_app.get("/where")
def flask_where() -> dict[str, Any]:
    request = flask.request
    return {"script_root": request.script_root, "path": request.path, "url": request.url}


@flask_app.post("/form")
def flask_form() -> dict[str, Any]:
    return {"form": flask.request.form.to_dict(flat=False)}


@flask_app.post("/upload")
def flask_upload() -> dict[str, Any]:
    upload = flask.request.files["file"]
    data = upload.read()
    return {"filename": upload.filename, "size": len(data), "head": data[:5].decode()}


@flask_app.get("/cookie/set")
def flask_set_cookie() -> flask.Response:
    response = flask.make_response("set")
    response.set_cookie("flavour", "oat", path=flask.url_for("flask_get_cookie"))
    return response


@flask_app.get("/cookie/get")
def flask_get_cookie() -> dict[str, Any]:
    return {"flavour": flask.request.cookies.get("flavour")}


@flask_app.get("/go")
def flask_go() -> Any:
    return flask.redirect(flask.url_for("flask_item", item_id=7))


@flask_app.get("/endless")
def flask_endless() -> flask.Response:
    """Server-sent ticks forever; each one logged to the file ``?log=`` names."""
    log = flask.request.args["log"]

    def ticks() -> Iterator[bytes]:
        while True:
            with open(log, "a") as out:
                out.write(".")
            time.sleep(0.01)
            yield b"data: tick\n\n"

    return flask.Response(ticks(), mimetype="text/event-stream")


@flask_app.get("/boom")
def flask_boom() -> str:
    raise RuntimeError("the Flask view failed")


@flask_app.get("/gated")
def flask_gated() -> flask.Response:
    """ "first", then, once the file ``?gate=`` names exists, the ``who``
    query parameter: read in the generator, through stream_with_context."""
    gate = flask.request.args["gate"]

    def body() -> Iterator[str]:
        yield "first\n"
        if not _gate_opened(gate):
            yield "gate never opened\n"
            return
        yield flask.request.args.get("who", "nobody") + "\n"

    return flask.Response(flask.stream_with_context(body()), mimetype="text/plain")


@flask_app.get("/lines")
def flask_lines() -> flask.Response:
    """A numbered line every 20 ms, forever; touches ``?closed=`` once the
    body is closed (the client went away, or the deadline passed)."""
    closed = flask.request.args["closed"]

    def body() -> Iterator[bytes]:
        try:
            for n in range(STEPS):
                yield f"{n}\n".encode()
                time.sleep(0.02)
        finally:
            Path(closed).touch()

    return flask.Response(body(), mimetype="text/plain")


@flask_app.get("/counted")
def flask_counted() -> flask.Response:
    """COUNTED_CHUNKS chunks of 16 KiB, the count so far in ``?count=``."""
    count = flask.request.args["count"]

    def body() -> Iterator[bytes]:
        for n in range(1, COUNTED_CHUNKS + 1):
            Path(count).write_text(str(n))
            yield b"x" * COUNTED_CHUNK_BYTES

    return flask.Response(body(), mimetype="application/octet-stream")


@flask_app.get("/events")
def flask_events() -> turnout.EventStream:
    return turnout.EventStream({"n": n} for n in range(3))


@flask_app.get("/broken")
def flask_broken() -> flask.Response:
    def body() -> Iterator[bytes]:
        yield b"partial\n"
        raise RuntimeError("the Flask stream failed")

    return flask.Response(body(), mimetype="text/plain")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    folder = os.environ.get(LIFESPAN_DIR)
    if folder:
        Path(folder, "started").write_text(str(os.getpid()))
    yield {"greeting": "started by lifespan"}
    if folder:
        Path(folder, "stopped").write_text(str(os.getpid()))


fastapi_app = FastAPI(lifespan=_lifespan)


@fastapi_app.get("/items/{item_id}", name="item")
async def fastapi_item(item_id: int, q: str | None = None) -> dict[str, Any]:
    return {"id": item_id, "q": q}


@fastapi_app.get("/where")
async def fastapi_where(request: Request) -> dict[str, Any]:
    return {
        "root_path": request.scope["root_path"],
        "path": request.url.path,
        "url": str(request.url),
        "greeting": request.state.greeting,
    }


@fastapi_app.post("/form")
async def fastapi_form(name: str = Form(), colour: str = Form()) -> dict[str, Any]:
    return {"name": name, "colour": colour}


@fastapi_app.post("/upload")
async def fastapi_upload(file: UploadFile = File()) -> dict[str, Any]:  # noqa: B008
    data = await file.read()
    return {"filename": file.filename, "size": len(data), "head": data[:5].decode()}


@fastapi_app.get("/cookie/set")
async def fastapi_set_cookie() -> JSONResponse:
    response = JSONResponse({"set": True})
    response.set_cookie("flavour", "oat")
    return response


@fastapi_app.get("/cookie/get")
async def fastapi_get_cookie(flavour: str | None = Cookie(default=None)) -> dict[str, Any]:
    return {"flavour": flavour}


@fastapi_app.get("/go")
async def fastapi_go(request: Request) -> RedirectResponse:
    return RedirectResponse(str(request.url_for("item", item_id=7)))


@fastapi_app.get("/boom")
async def fastapi_boom() -> dict[str, Any]:
    raise RuntimeError("the FastAPI route failed")


@fastapi_app.get("/gated")
async def fastapi_gated(gate: str, who: str = "nobody") -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        yield "first\n"
        if not await _gate_opened_async(gate):
            yield "gate never opened\n"
            return
        yield who + "\n"

    return StreamingResponse(body(), media_type="text/plain")


@fastapi_app.get("/lines")
async def fastapi_lines(closed: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            for n in range(STEPS):
                yield f"{n}\n".encode()
                await asyncio.sleep(0.02)
        finally:
            Path(closed).touch()

    return StreamingResponse(body(), media_type="text/plain")


@fastapi_app.get("/counted")
async def fastapi_counted(count: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for n in range(1, COUNTED_CHUNKS + 1):
            Path(count).write_text(str(n))
            yield b"x" * COUNTED_CHUNK_BYTES

    return StreamingResponse(body(), media_type="application/octet-stream")


@fastapi_app.get("/events")
async def fastapi_events() -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        for n in range(3):
            yield turnout.sse_event({"n": n})

    return StreamingResponse(body(), media_type="text/event-stream")


@fastapi_app.get("/broken")
async def fastapi_broken() -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"partial\n"
        raise RuntimeError("the FastAPI stream failed")

    return StreamingResponse(body(), media_type="text/plain")


@contextlib.asynccontextmanager
async def _failing_lifespan(app: FastAPI) -> AsyncIterator[None]:
    raise RuntimeError("the model file is missing")
    yield


failing_fastapi_app = FastAPI(lifespan=_failing_lifespan)


def raw_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The smallest WSGI app: where it is mounted, as plain text."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{environ['SCRIPT_NAME']}|{environ['PATH_INFO']}".encode()]


class Wrapped:
    """An app behind a wrapper whose signature hides what it is (``*args``):
    detection calls it a handler, so it is created with interface="wsgi"."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, *args: Any) -> Any:
        return self.app(*args)


wrapped_wsgi = Wrapped(raw_wsgi)


class Greeting:
    """A class whose instances are WSGI apps: constructed once per replica
    with its init args, like any class backend."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{self.greeting} from {environ['PATH_INFO']}".encode()]
