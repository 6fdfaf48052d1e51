"""A dashboard served from a thread of the calling process: its own event
loop, the aiohttp site, and the sampler that feeds the charts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import threading
from pathlib import Path

from aiohttp import web

from turnout._internal import tls_options
from turnout.client import Client
from turnout.errors import InvalidArgumentError

from . import DEFAULT_PORT
from .app import make_app
from .history import SAMPLE_S
from .operations import Operations

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0


def _check(host: str, port: int, https: tuple[Path, Path] | None) -> None:
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, got {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, got {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be 0..65535, got {port}")
    if https is None and not tls_options.is_local(host):
        # The page holds the operator's power over the instance: beyond this
        # machine it must be encrypted (the token travels in every request).
        raise InvalidArgumentError(
            f"refusing to serve the dashboard on {host} without HTTPS: anyone on the way "
            "could take its token and act as you. Add --https-cert PEM --https-key PEM "
            "(https=(cert, key)), or serve it on 127.0.0.1 and reach it through ssh -L"
        )


class Dashboard:
    """The dashboard of the instance ``client`` talks to, served on
    ``host:port`` (port 0 picks a free one) until ``stop()``.

    ``url`` carries a token made for this dashboard: whoever opens it may do
    what ``client``'s credentials allow. Beyond loopback it needs
    ``https=(cert_path, key_path)``.

    Example::

        dashboard = Dashboard(turnout.Client("127.0.0.1:50051"), port=0)
        print(dashboard.url)   # http://127.0.0.1:43127/?token=...
        dashboard.stop()
    """

    def __init__(
        self,
        client: Client,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        https: tuple[Path, Path] | None = None,
    ) -> None:
        _check(host, port, https)
        self._ssl: ssl.SSLContext | None = None
        if https is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(str(https[0]), str(https[1]))
        self._token = secrets.token_urlsafe(24)
        self._operations = Operations(client)
        self._host = host
        self._port = 0
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(port,), name="turnout-dashboard", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise TimeoutError("the dashboard did not start in time")
        if self._failure is not None:
            self._thread.join()
            raise self._failure

    @property
    def url(self) -> str:
        """The address to open, with the dashboard's token."""
        scheme = "https" if self._ssl else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}/?token={self._token}"

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._port

    @property
    def token(self) -> str:
        """Its token (``Authorization: Bearer <token>`` for the JSON API)."""
        return self._token

    def stop(self) -> None:
        """Stop serving; returns once the port is closed."""
        if self._thread.is_alive():
            # The loop closes as its thread ends: then there is nothing to stop.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join()

    def wait(self) -> None:
        """Block until ``stop()`` (from another thread or a signal handler)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def _run(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(port))
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self, port: int) -> None:
        app = make_app(self._operations, self._token, secure=self._ssl is not None)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, port, ssl_context=self._ssl)
            await site.start()
        except OSError as exc:
            self._failure = InvalidArgumentError(
                f"the dashboard cannot listen on {self._host}:{port}: {exc.strerror or exc}"
            )
            await runner.cleanup()
            return
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else port
        sampler = asyncio.create_task(self._sample())
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            transports = list(runner.server._connections.values()) if runner.server else []
            await runner.cleanup()
            # A TLS connection's close waits for the peer's close_notify, which
            # a browser may never send: the loop closes next, so end them now.
            for transport in transports:
                transport.abort()

    async def _sample(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._operations.sample)
            except Exception as exc:  # the page shows the instance's state itself
                logger.debug("dashboard sample failed: %s", exc)
            await asyncio.sleep(SAMPLE_S)
