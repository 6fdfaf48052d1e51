"""The conformance handler in Python (docs/replica-protocol.md, "The
conformance handler"): what ``turnout replica-check`` expects a replica to
serve, so that it knows every answer in advance.

Run it in a Python replica with the import path
``turnout._conformance.echo:Echo``; a replica in another language implements
the same few paths (examples/node-replica/ does).
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

from werkzeug.wrappers import Request, Response

# Keys of /sleep calls remembered for /probe; older ones are forgotten.
MAX_KEYS = 1024
ECHOED_PREFIX = "x-echo-"


class Echo:
    """Answers each path of the conformance handler."""

    def __init__(self) -> None:
        # key of a /sleep call -> "running", "finished" or "cancelled"
        self._calls: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._user_config: Any = None

    def reconfigure(self, user_config: Any) -> None:
        self._user_config = user_config

    async def __call__(self, request: Request) -> Response:
        # By the end of the path, so that it answers alike behind any route.
        path = request.path
        last = path.rpartition("/")[2]
        parent = path.rpartition("/")[0].rpartition("/")[2]
        if last == "sleep":
            return await self._sleep(request)
        if last == "probe":
            state = self._calls.get(request.args.get("key", ""), "unknown")
            return _json({"state": state})
        if parent == "status" and last.isdigit():
            return Response(b"", status=int(last))
        if last == "fail":
            raise RuntimeError("the conformance handler failed on purpose")
        if last == "cookies":
            count = int(request.args.get("n", "1"))
            cookies = [("Set-Cookie", f"c{i}={i}") for i in range(1, count + 1)]
            return Response(b"", headers=cookies)
        if last == "config":
            return _json({"user_config": self._user_config})
        return _echo(request)

    async def _sleep(self, request: Request) -> Response:
        key = request.args.get("key", "")
        self._remember(key, "running")
        try:
            await asyncio.sleep(float(request.args.get("s", "0")))
        except asyncio.CancelledError:
            self._remember(key, "cancelled")
            raise
        self._remember(key, "finished")
        return Response(key.encode(), content_type="text/plain; charset=utf-8")

    def _remember(self, key: str, state: str) -> None:
        if not key:
            return
        self._calls[key] = state
        self._calls.move_to_end(key)
        while len(self._calls) > MAX_KEYS:
            self._calls.popitem(last=False)


def _echo(request: Request) -> Response:
    headers = [
        ("Content-Type", request.headers.get("Content-Type", "application/octet-stream")),
        ("X-Seen-Method", request.method),
        ("X-Seen-Path", request.path),
        ("X-Seen-Query", request.query_string.decode("latin-1")),
    ]
    headers += [(k, v) for k, v in request.headers.items() if k.lower().startswith(ECHOED_PREFIX)]
    return Response(request.get_data(), status=200, headers=headers)


def _json(value: object) -> Response:
    return Response(json.dumps(value).encode(), content_type="application/json")
