"""The readiness report: the one line a child writes on ``--ready-fd``.

One protocol serves every parent/child pair (client → controller, controller
→ proxy, controller → replica, proxy → its workers): the parent opens a pipe
and passes its write end as ``--ready-fd``; the child writes one JSON line
(``Readiness.to_json``) and closes it. ``ok`` means it is serving; otherwise
``code`` and ``message`` say why it gave up. A child that dies first closes
the pipe with nothing written, which the parent reads as ``crashed()``.

Example::

    write(fd, Readiness(ok=True, address="127.0.0.1:5000", pid=os.getpid()))
    Readiness.from_json('{"ok": false, "code": "INTERNAL", "message": "boom"}').message
    # 'boom'
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import selectors
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Readiness:
    """What a child reports once: serving (``ok``) or why not."""

    ok: bool
    # Serving: where (host:port), its pid; the controller adds its HTTP
    # address and log folder, a replica what its code can do.
    address: str = ""
    pid: int = 0
    http_address: str = ""
    log_dir: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    # Not serving: a gRPC status name, the reason, and the traceback if any.
    code: str = ""
    message: str = ""
    traceback: str = ""

    @classmethod
    def failed(cls, code: str, message: str, traceback: str = "") -> Readiness:
        return cls(ok=False, code=code, message=message, traceback=traceback)

    @classmethod
    def crashed(cls) -> Readiness:
        """What an empty pipe means: the child died before it reported."""
        return cls.failed("UNAVAILABLE", "process exited before it was ready")

    @classmethod
    def timed_out(cls, what: str, timeout: float) -> Readiness:
        return cls.failed("DEADLINE_EXCEEDED", f"{what} did not start within {timeout:g} s")

    def to_json(self) -> str:
        """One line; fields left at their defaults are left out."""
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name == "ok" or getattr(self, f.name) != _default(f)
        }
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> Readiness:
        """The report in ``text``; empty text is ``crashed()``. Unknown fields
        (a child of a newer build) are ignored; a line that is no report is
        a failure that quotes it."""
        if not text.strip():
            return cls.crashed()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            shown = text[:200] if isinstance(text, str) else text[:200].decode(errors="replace")
            return cls.failed("INTERNAL", f"unreadable readiness report: {shown!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        values["ok"] = bool(values.get("ok"))
        return cls(**values)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def read(fd: int, timeout: float, what: str = "the process") -> Readiness:
    """Block until the child reports or dies, at most ``timeout`` seconds;
    ``fd`` (the pipe's read end) is closed after."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Readiness.timed_out(what, timeout)
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return Readiness.from_json(b"".join(chunks))
                chunks.append(chunk)
    finally:
        os.close(fd)


async def read_async(fd: int, timeout: float, what: str = "the process") -> Readiness:
    """As ``read``, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return Readiness.from_json(await asyncio.wait_for(reader.read(), timeout))
    except TimeoutError:
        return Readiness.timed_out(what, timeout)
    finally:
        transport.close()


def write(fd: int, report: Readiness) -> None:
    """Write the one report line to ``fd`` and close it."""
    try:
        os.write(fd, (report.to_json() + "\n").encode())
    finally:
        os.close(fd)
