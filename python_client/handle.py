"""``EndpointHandle``: call an endpoint from Python, without HTTP."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from turnout._handle_router import CallOptions, HandleRouter
from turnout.errors import InvalidArgumentError

_HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


class HandleFuture:
    """The pending result of ``handle.remote()``.

    Block on it with ``.result(timeout)`` or ``await`` it from asyncio code.
    Either gives the handler's return value, or raises the turnout error of
    the call (``BackendError`` with the remote traceback when the handler
    raised).
    """

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> Any:
        """Wait (at most ``timeout`` seconds) for the result.

        Raises ``TimeoutError`` if it is not there in time; the call goes on.
        """
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            if self._future.done():
                # The call's own error (DeadlineExceededError is a TimeoutError too).
                raise
            raise TimeoutError(f"no result within {timeout} s") from None

    def done(self) -> bool:
        return self._future.done()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._future).__await__()


class EndpointHandle:
    """Calls one endpoint from Python, following its traffic policy.

    A handle sees the same routing snapshots as the HTTP proxy: traffic
    weights, shadows, session affinity and replica changes apply to it too.
    It talks to replicas directly over gRPC and can be pickled, so a backend
    can hold one and call another endpoint (composition).

    Example::

        handle = serve.get_handle("model")
        print(handle.remote({"x": 1}).result())           # request.data == {"x": 1}
        print(handle.remote(name="ada").result())         # request.args["name"] == "ada"
        explain = handle.options(method_name="explain")
        result = await explain.remote([1, 2, 3])          # from async code
    """

    def __init__(
        self,
        controller_address: str,
        endpoint: str,
        options: CallOptions | None = None,
        *,
        token: str | None = None,
    ) -> None:
        self._address = controller_address
        # The token of the client that made it; never pickled (a handle in a
        # backend uses the replica's own credentials).
        self._token = token
        self._endpoint = endpoint
        self._options = options or CallOptions()

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def remote(self, data: Any = None, **kwargs: Any) -> HandleFuture:
        """Call the endpoint: the handler's request has ``.data``/``.json`` =
        ``data`` and ``.args`` = ``kwargs``. Returns at once."""
        router = HandleRouter.for_address(self._address, self._token)
        return HandleFuture(router.submit(self._endpoint, self._options, data, kwargs))

    def options(
        self,
        method_name: str | None = None,
        *,
        shard_key: str | None = None,
        http_method: str | None = None,
        http_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> EndpointHandle:
        """A new handle with some call options changed.

        - ``method_name`` (also positional, as in Ray Serve: ``options("explain")``):
          method of a class backend to call instead of ``__call__``.
        - ``shard_key``: the same key goes to the same backend (while the traffic
          weights stay) and the same replica (while its replicas stay).
        - ``http_method``: what the handler sees as ``request.method`` (default GET).
        - ``http_headers``: what it sees as ``request.headers``.
        - ``timeout``: seconds a call may take, waiting for a free replica
          included; then it raises ``DeadlineExceededError`` and the replica is
          told to cancel the work (an ``async def`` handler is cancelled).
        """
        changes: dict[str, Any] = {}
        if method_name is not None:
            changes["method_name"] = _str(method_name, "method_name")
        if shard_key is not None:
            changes["shard_key"] = _str(shard_key, "shard_key")
        if http_method is not None:
            method = _str(http_method, "http_method").upper()
            if method not in _HTTP_METHODS:
                raise InvalidArgumentError(f"unknown HTTP method {http_method!r}")
            changes["http_method"] = method
        if http_headers is not None:
            pairs = http_headers.items() if isinstance(http_headers, Mapping) else http_headers
            changes["http_headers"] = tuple(
                (_str(k, "header name"), _str(v, "header value")) for k, v in pairs
            )
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(f"timeout must be a number, got {type(timeout).__name__}")
            if not timeout > 0:
                raise InvalidArgumentError(f"timeout must be > 0 seconds, got {timeout}")
            changes["timeout"] = float(timeout)
        return EndpointHandle(
            self._address,
            self._endpoint,
            dataclasses.replace(self._options, **changes),
            token=self._token,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the address, endpoint and options travel (never the token); the unpickled handle
        # follows the controller from whatever process it lands in.
        return (EndpointHandle, (self._address, self._endpoint, self._options))

    def __repr__(self) -> str:
        return f"EndpointHandle(endpoint={self._endpoint!r}, controller={self._address!r})"


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value
