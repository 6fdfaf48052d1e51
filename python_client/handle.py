"""``EndpointHandle``: call an endpoint from Python, without HTTP."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, overload

from turnout._handle_router import END, CallOptions, HandleRouter, HandleStream
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


class HandleIterator(Iterator[Any], AsyncIterator[Any]):
    """The items of a streamed answer, from ``handle.options(stream=True).remote()``.

    Iterate it (``for item in it``) or, from asyncio code, ``async for item in
    it``. Each item is what the handler's generator yielded, as it comes;
    only a few items wait in this process (the replica pauses the generator
    until they are read). A handler that raises part-way raises its
    ``BackendError`` here, after the items before it; the handle's
    ``timeout`` covers the whole stream. ``close()`` (or leaving a ``with``
    block) stops the handler. A handler that returns a plain value gives
    that one value as the only item.

    Example::

        tokens = serve.get_handle("llm").options(stream=True)
        for token in tokens.remote("Once upon a time"):
            print(token, end="")
    """

    def __init__(self, stream: HandleStream) -> None:
        self._stream = stream
        self._closed = False

    def __iter__(self) -> HandleIterator:
        return self

    def __next__(self) -> Any:
        item = self._stream.thread.submit(self._stream.next()).result()
        if item is END:
            raise StopIteration
        return item

    def __aiter__(self) -> HandleIterator:
        return self

    async def __anext__(self) -> Any:
        item = await asyncio.wrap_future(self._stream.thread.submit(self._stream.next()))
        if item is END:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Stop reading; the replica cancels the handler. Returns at once."""
        if not self._closed:
            self._closed = True
            self._stream.thread.submit(self._stream.close())

    def __enter__(self) -> HandleIterator:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # An iterator dropped before its end must not hold a replica's slot
        # until the deadline (or forever).
        try:
            self.close()
        except Exception:  # noqa: S110 - the loop thread may be gone at exit
            pass


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
        for item in handle.options(stream=True).remote():  # a generator's items
            print(item)
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

    @overload
    def options(
        self,
        method_name: str | None = None,
        *,
        shard_key: str | None = None,
        http_method: str | None = None,
        http_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        timeout: float | None = None,
        stream: Literal[True],
    ) -> StreamingHandle: ...

    @overload
    def options(
        self,
        method_name: str | None = None,
        *,
        shard_key: str | None = None,
        http_method: str | None = None,
        http_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        timeout: float | None = None,
        stream: Literal[False] | None = None,
    ) -> EndpointHandle: ...

    def options(
        self,
        method_name: str | None = None,
        *,
        shard_key: str | None = None,
        http_method: str | None = None,
        http_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        timeout: float | None = None,
        stream: bool | None = None,
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
          For a streamed answer it covers the whole stream.
        - ``stream``: ``True`` makes ``remote()`` return a ``HandleIterator``
          of the items the handler's generator yields, as they come.
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
        if stream is not None:
            if not isinstance(stream, bool):
                raise TypeError(f"stream must be a bool, got {type(stream).__name__}")
            changes["stream"] = stream
        options = dataclasses.replace(self._options, **changes)
        kind = StreamingHandle if options.stream else EndpointHandle
        return kind(self._address, self._endpoint, options, token=self._token)

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the address, endpoint and options travel (never the token); the unpickled handle
        # follows the controller from whatever process it lands in.
        return (type(self), (self._address, self._endpoint, self._options))

    def __repr__(self) -> str:
        return f"EndpointHandle(endpoint={self._endpoint!r}, controller={self._address!r})"


class StreamingHandle(EndpointHandle):
    """A handle whose ``remote()`` streams: ``handle.options(stream=True)``."""

    def remote(self, data: Any = None, **kwargs: Any) -> HandleIterator:  # type: ignore[override]
        """Call the endpoint; returns at once a ``HandleIterator`` of the
        handler's streamed items."""
        router = HandleRouter.for_address(self._address, self._token)
        return HandleIterator(router.submit_stream(self._endpoint, self._options, data, kwargs))


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value
