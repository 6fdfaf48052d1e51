"""The ReplicaService transport: protobuf in, runtime call, protobuf out.

Every failure of the user's code becomes an answer, never a gRPC error: an
HTTP request gets a JSON error body, a Python call gets a ``RemoteError``.
Tracebacks go to the log (and, for Python callers, into the ``RemoteError``),
never into an HTTP body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import cloudpickle
import grpc
from werkzeug.exceptions import HTTPException

from turnout._internal import backend_fields, wire
from turnout._internal.child_process import OUT_OF_MEMORY_EXIT, memory_limit
from turnout.replica import codec, streams
from turnout.replica.batcher import BadBatch
from turnout.replica.call_stream import NoPayload, serve_stream_framed
from turnout.replica.runtime import BackendRuntime, LoadError, MethodNotFound
from turnout.v1 import http_pb2, replica_pb2, replica_pb2_grpc

log = logging.getLogger("turnout.replica")

# Time for the answer to a request that ran out of memory to go out before
# the replica exits.
OOM_EXIT_DELAY_S = 0.2

Context = grpc.aio.ServicerContext[replica_pb2.HandleRequest, replica_pb2.HandleResponse]
StreamContext = grpc.aio.ServicerContext[
    replica_pb2.HandleStreamRequest, replica_pb2.HandleStreamResponse
]


class ReplicaServicer(replica_pb2_grpc.ReplicaServiceServicer):
    def __init__(self, runtime: BackendRuntime) -> None:
        self._runtime = runtime
        # Handle and HandleStream calls open now, and when the last one ended.
        self._open = 0
        self._quiet_since = time.monotonic()
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        self._open += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._open -= 1
            if not self._open:
                self._quiet_since = time.monotonic()
                self._quiet.set()

    async def drain(self, quiet: float, limit: float) -> None:
        """Return once no call has been open for ``quiet`` seconds, or after
        ``limit`` seconds. A replica told to stop has already left the routing
        snapshot, but a stream a sender opened just before may still be on
        its way: the server keeps accepting until things are quiet, since one
        that stops accepting cancels such a stream with its call in it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while (remaining := end - loop.time()) > 0:
            if self._open:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._quiet.wait(), remaining)
                continue
            idle_for = time.monotonic() - self._quiet_since
            if idle_for >= quiet:
                return
            await asyncio.sleep(min(quiet - idle_for, remaining))

    async def Handle(
        self, request: replica_pb2.HandleRequest, context: Context
    ) -> replica_pb2.HandleResponse:
        with self._counted():
            return await self._handle(request, context)

    async def _handle(
        self, request: replica_pb2.HandleRequest, context: Context
    ) -> replica_pb2.HandleResponse:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # The sender has given up already: running it would be wasted work.
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before start")
        try:
            response = await self.respond(request)
            if isinstance(response, streams.Outgoing):
                # A unary call cannot stream: the stream is answered whole.
                return await response.collect()
            return response
        except NoPayload:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "HandleRequest has no payload")
        raise AssertionError("context.abort returned")  # pragma: no cover

    # Yields bytes, not messages: add_to_server registers it that way.
    async def HandleStream(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[replica_pb2.HandleStreamRequest],
        context: StreamContext,
    ) -> AsyncIterator[bytes]:
        """Batches of answers, serialised (``add_to_server`` registers this
        method without a response serialiser)."""
        with self._counted():
            async for batch in serve_stream_framed(self._respond_framed, request_iterator):
                yield batch

    async def _respond_framed(
        self, request: replica_pb2.HandleRequest
    ) -> replica_pb2.HandleResponse | wire.Part | streams.Outgoing:
        """``respond``, an HTTP answer framed around its serialised
        ``HttpResponse``: no copy of it into a ``HandleResponse`` (about
        0.3 ms a MiB of body)."""
        if request.WhichOneof("payload") != "http":
            return await self.respond(request)
        started = time.perf_counter()
        http = await self._handle_http(request, started, codec.encode_http_pieces, _serialised)
        if isinstance(http, streams.Outgoing):
            return http
        return wire.http_response(http, time.perf_counter() - started)

    async def respond(
        self, request: replica_pb2.HandleRequest
    ) -> replica_pb2.HandleResponse | streams.Outgoing:
        """The answer to one request, whichever way it came, with the time
        spent on it (``handler_seconds``: senders show it beside their own);
        an ``Outgoing`` when the handler's answer streams."""
        started = time.perf_counter()
        payload = request.WhichOneof("payload")
        if payload == "http":
            http = await self._handle_http(request, started, codec.encode_http, _same)
            if isinstance(http, streams.Outgoing):
                return http
            response = replica_pb2.HandleResponse(http=http)
        elif payload == "call":
            answered = await self._handle_call(request, started)
            if isinstance(answered, streams.Outgoing):
                return answered
            response = answered
        else:
            raise NoPayload
        response.handler_seconds = time.perf_counter() - started
        return response

    async def _handle_http(
        self,
        request: replica_pb2.HandleRequest,
        started: float,
        encode: Callable[[object], Answer],
        error: Callable[[http_pb2.HttpResponse], Answer],
    ) -> Answer | streams.Outgoing:
        """The answer to an HTTP request: the handler's value as ``encode``
        makes it (an app's answer, or an error answer, as ``error`` makes
        it), or an ``Outgoing`` when the handler's answer streams."""
        rid = request.request_id
        if self._runtime.app is not None:
            app_answer = await self._handle_app(request, started)
            if isinstance(app_answer, streams.Outgoing):
                return app_answer
            return error(app_answer)
        http_request = codec.http_to_request(request.http)
        streaming = False
        try:
            value = await self._runtime.handle(request.method_name, http_request, web=True)
            if streams.is_stream(value):
                # The request stays open while the stream runs (a generator
                # may read it lazily): closing the stream closes it.
                streaming = True
                first, chunks = await streams.start_stream(
                    streams.open_items(value, self._runtime.run_blocking),
                    streams.encode_chunk,
                    http_request.close,
                )
                return self._http_outgoing(rid, started, streams.http_start(value, first), chunks)
            return encode(value)
        except MethodNotFound as exc:
            log.warning("request %s: %s", rid, exc)
            return error(codec.error_response(exc, rid, status=404))
        except BadBatch as exc:
            log.error("request %s: %s", rid, exc)
            return error(codec.error_response(exc, rid))
        except HTTPException as exc:
            # Flask's abort(): an intended answer, logged like an access line.
            log.info("request %s: handler aborted with %s", rid, exc)
            return error(codec.error_response(exc, rid))
        except Exception as exc:
            log.exception("request %s: %s", rid, _what_failed(exc))
            _exit_if_out_of_memory(exc)
            return error(codec.error_response(exc, rid))
        finally:
            if not streaming:
                http_request.close()

    async def _handle_app(
        self, request: replica_pb2.HandleRequest, started: float
    ) -> http_pb2.HttpResponse | streams.Outgoing:
        """A WSGI/ASGI app's answer, streamed as a handler's when its body
        streams; what it raises (it handles its own errors normally) is a 500
        with the JSON error body, as for a handler."""
        try:
            answer = await self._runtime.serve_app(request.http)
        except Exception as exc:
            log.exception("request %s: the app raised", request.request_id)
            _exit_if_out_of_memory(exc)
            return codec.error_response(exc, request.request_id)
        if isinstance(answer, streams.AppStream):
            return self._http_outgoing(request.request_id, started, answer.start, answer.chunks)
        return answer

    def _http_outgoing(
        self,
        rid: str,
        started: float,
        start: replica_pb2.StreamStart,
        chunks: AsyncIterator[bytes],
    ) -> streams.Outgoing:
        def fail(exc: BaseException) -> replica_pb2.RemoteError:
            log.error("request %s: stream failed: %s", rid, _describe(exc), exc_info=exc)
            # As an HTTP error body: no traceback leaves the replica.
            return replica_pb2.RemoteError(
                kind=replica_pb2.ERROR_KIND_USER, type=type(exc).__name__, message=str(exc)
            )

        async def collect() -> replica_pb2.HandleResponse:
            body = bytearray()
            try:
                async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                    async for chunk in chunks:
                        body += chunk
                http = http_pb2.HttpResponse(
                    status=start.status, headers=start.headers, body=bytes(body)
                )
            except Exception as exc:
                log.exception("request %s: stream failed", rid)
                http = codec.error_response(exc, rid)
            response = replica_pb2.HandleResponse(http=http)
            response.handler_seconds = time.perf_counter() - started
            return response

        return streams.Outgoing(start, chunks, fail, collect, started)

    async def _handle_call(
        self, request: replica_pb2.HandleRequest, started: float
    ) -> replica_pb2.HandleResponse | streams.Outgoing:
        rid = request.request_id
        try:
            call_request = codec.call_to_request(request.call)
        except Exception as exc:
            log.exception("request %s: cannot unpickle the call's arguments", rid)
            return _error(replica_pb2.ERROR_KIND_USER, exc, with_traceback=True)
        try:
            value = await self._runtime.handle(request.method_name, call_request)
        except MethodNotFound as exc:
            log.warning("request %s: %s", rid, exc)
            return _error(replica_pb2.ERROR_KIND_METHOD_NOT_FOUND, exc, with_traceback=False)
        except BadBatch as exc:
            log.error("request %s: %s", rid, exc)
            return _error(replica_pb2.ERROR_KIND_BAD_BATCH, exc, with_traceback=False)
        except Exception as exc:
            log.exception("request %s: %s", rid, _what_failed(exc))
            _exit_if_out_of_memory(exc)
            return _error(replica_pb2.ERROR_KIND_USER, exc, with_traceback=True)
        finally:
            call_request.close()
        if streams.is_item_stream(value):
            return await self._call_outgoing(rid, started, value)
        try:
            return replica_pb2.HandleResponse(pickled=cloudpickle.dumps(value))
        except Exception as exc:
            bad = codec.BadReturnValue(
                f"handler returned a {codec.type_name(value)}, which cannot be pickled: "
                f"{type(exc).__name__}: {exc}"
            )
            log.error("request %s: %s", rid, bad, exc_info=exc)
            return _error(replica_pb2.ERROR_KIND_BAD_RETURN, bad, with_traceback=False)

    async def _call_outgoing(
        self, rid: str, started: float, value: Any
    ) -> replica_pb2.HandleResponse | streams.Outgoing:
        """A Python call's generator as a stream of pickled items (or, when
        its first item fails, the error answer)."""
        items = streams.open_items(value, self._runtime.run_blocking)
        try:
            _, chunks = await streams.start_stream(items, _pickled_item)
        except codec.BadReturnValue as exc:
            log.error("request %s: %s", rid, exc)
            return _error(replica_pb2.ERROR_KIND_BAD_RETURN, exc, with_traceback=False)
        except Exception as exc:
            log.exception("request %s: %s", rid, _what_failed(exc))
            return _error(replica_pb2.ERROR_KIND_USER, exc, with_traceback=True)

        def fail(exc: BaseException) -> replica_pb2.RemoteError:
            log.error("request %s: stream failed: %s", rid, _describe(exc), exc_info=exc)
            kind = replica_pb2.ERROR_KIND_USER
            if isinstance(exc, codec.BadReturnValue):
                kind = replica_pb2.ERROR_KIND_BAD_RETURN
            return _error(kind, exc, with_traceback=True).error

        async def collect() -> replica_pb2.HandleResponse:
            collected = []
            try:
                async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                    async for chunk in chunks:
                        collected.append(cloudpickle.loads(chunk))
                response = replica_pb2.HandleResponse(pickled=cloudpickle.dumps(collected))
            except Exception as exc:
                response = replica_pb2.HandleResponse(error=fail(exc))
            response.handler_seconds = time.perf_counter() - started
            return response

        return streams.Outgoing(replica_pb2.StreamStart(), chunks, fail, collect, started)

    async def Reconfigure(
        self,
        request: replica_pb2.ReconfigureRequest,
        context: grpc.aio.ServicerContext[
            replica_pb2.ReconfigureRequest, replica_pb2.ReconfigureResponse
        ],
    ) -> replica_pb2.ReconfigureResponse:
        limits = {
            name: getattr(request, name)
            for name in backend_fields.RECONFIGURE_LIMITS
            if request.HasField(name)  # type: ignore[arg-type]
        }
        try:
            self._runtime.check_limits(**limits)
            # The user's reconfigure() may fail: run it before anything changes.
            if request.user_config_json:
                await self._runtime.reconfigure(request.user_config_json)
            self._runtime.resize(**limits)
        except LoadError as exc:
            log.error("reconfigure failed: %s\n%s", exc.message, exc.traceback)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        changed = ", ".join(f"{k}={v}" for k, v in limits.items())
        log.info("reconfigured%s", f" ({changed})" if changed else "")
        return replica_pb2.ReconfigureResponse()


def _exit_if_out_of_memory(exc: Exception) -> None:
    """A replica with a memory limit that hit it exits (after this answer went
    out), so that the controller restarts it and reports the limit: memory
    freed on paper may stay fragmented, and the next request would fail too."""
    if isinstance(exc, MemoryError) and memory_limit() is not None:
        log.error("out of memory (limit %s bytes); exiting to be restarted", memory_limit())
        asyncio.get_running_loop().call_later(OOM_EXIT_DELAY_S, _exit_out_of_memory)


def _exit_out_of_memory() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(OUT_OF_MEMORY_EXIT)


def _pickled_item(item: object) -> list[bytes]:
    try:
        return [cloudpickle.dumps(item)]
    except Exception as exc:
        raise codec.BadReturnValue(
            f"the stream yielded a {codec.type_name(item)}, which cannot be pickled: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _what_failed(exc: Exception) -> str:
    if isinstance(exc, codec.BadReturnValue):
        return "bad return value"
    return "handler raised"


def _error(
    kind: replica_pb2.ErrorKind.ValueType, exc: BaseException, *, with_traceback: bool
) -> replica_pb2.HandleResponse:
    return replica_pb2.HandleResponse(
        error=replica_pb2.RemoteError(
            kind=kind,
            type=type(exc).__name__,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)) if with_traceback else "",
        )
    )


Answer = TypeVar("Answer")


def _same(http: http_pb2.HttpResponse) -> http_pb2.HttpResponse:
    return http


def _serialised(http: http_pb2.HttpResponse) -> list[bytes]:
    return [http.SerializeToString()]


def add_to_server(servicer: ReplicaServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` as ReplicaService on ``server``: the generated
    registration, but HandleStream's answers go out as the bytes it yields."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Handle": grpc.unary_unary_rpc_method_handler(
            servicer.Handle,
            request_deserializer=replica_pb2.HandleRequest.FromString,
            response_serializer=replica_pb2.HandleResponse.SerializeToString,
        ),
        "HandleStream": grpc.stream_stream_rpc_method_handler(
            servicer.HandleStream,
            request_deserializer=replica_pb2.HandleStreamRequest.FromString,
            response_serializer=None,
        ),
        "Reconfigure": grpc.unary_unary_rpc_method_handler(
            servicer.Reconfigure,
            request_deserializer=replica_pb2.ReconfigureRequest.FromString,
            response_serializer=replica_pb2.ReconfigureResponse.SerializeToString,
        ),
    }
    descriptor = replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"]
    missing = {method.name for method in descriptor.methods} - handlers.keys()
    if missing:  # a method added to replica.proto must be served here too
        raise RuntimeError(f"add_to_server does not register {sorted(missing)}")
    service = descriptor.full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
