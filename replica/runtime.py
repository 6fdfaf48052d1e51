"""The user's code: loading a backend and calling it.

``BackendRuntime`` knows nothing of gRPC or HTTP. It loads the backend named by
a ``CreateBackendRequest`` (raising ``LoadError``), and runs one request
through a handler (raising ``MethodNotFound`` or whatever the handler raised).
Synchronous handlers run on a thread pool so they never block the event loop.
A handler that takes no positional parameter (``def __call__(self)``) is
called without the request, as Ray Serve does.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import itertools
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cloudpickle

from turnout._internal import backend_fields, web_apps
from turnout._internal.backend_fields import request_callable
from turnout._internal.batching import accepts_batch, set_call_context
from turnout.replica import streams
from turnout.replica.asgi_app import AppStartError, AsgiApp
from turnout.replica.batcher import Batcher
from turnout.replica.handler_threads import HandlerThreads
from turnout.replica.slots import Slots
from turnout.replica.streams import AppStream
from turnout.replica.wsgi_app import WsgiApp, WsgiStream
from turnout.v1 import controller_pb2, http_pb2, replica_pb2

INVALID_ARGUMENT = "INVALID_ARGUMENT"


class LoadError(Exception):
    """The backend could not be loaded; ``code`` is a gRPC status code name."""

    def __init__(self, code: str, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.traceback = traceback


def _config_value(config: controller_pb2.BackendConfig, name: str) -> int | float:
    """A number the runtime reads from its config, or the field's default."""
    if backend_fields.FIELD[name].kind is backend_fields.Kind.COUNT:
        return backend_fields.count(config, name)
    return backend_fields.seconds(config, name)


def _check_numbers(values: Mapping[str, int | float | None]) -> None:
    """The config table's bounds, as a LoadError (None = not given)."""
    for name, value in values.items():
        if value is None:
            continue
        try:
            backend_fields.check(name, value)
        except ValueError as exc:
            raise LoadError(INVALID_ARGUMENT, str(exc)) from None


class MethodNotFound(Exception):
    """The request names a method the backend does not have, or one it may not call."""


@dataclass(eq=False)
class _ThreadCall:
    """One sync handler call, as far as stuck-call accounting needs it."""

    # When its caller stopped waiting (time.monotonic()); None while it waits.
    abandoned_at: float | None = None
    running: bool = False
    done: bool = False


@dataclass
class LoadedBackend:
    """A loaded backend: the object to call and what kind of thing it is."""

    tag: str
    target: Any
    # Only instances of a class backend have named methods; a function's
    # attributes are not handlers.
    is_instance: bool
    user_config: Any = None


class BackendRuntime:
    """Runs requests through one loaded backend.

    At most ``max_concurrent_queries`` calls run at once (async handlers on the
    loop, sync ones in a thread pool of that size); handlers marked with
    ``@accept_batch`` get lists of up to ``max_batch_size`` requests.
    """

    def __init__(
        self,
        backend: LoadedBackend,
        max_concurrent_queries: int,
        max_batch_size: int = 1,
        batch_wait_timeout: float = 0.0,
        http_call_methods: frozenset[str] | None = None,
    ) -> None:
        self.backend = backend
        self.max_concurrent_queries = max_concurrent_queries
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout = batch_wait_timeout
        # Methods HTTP requests may call; None = every one a request may call.
        self.http_call_methods = http_call_methods
        self._threads = HandlerThreads(max_concurrent_queries, f"handler-{backend.tag}")
        self._slots = Slots(max_concurrent_queries)
        self._batchers: dict[str, Batcher] = {}
        # method name -> (handler, is it async, does it take batches)
        self._handlers: dict[str, tuple[Callable[[Any], Any], bool, bool]] = {}
        self._lock = threading.Lock()
        self._running_in_threads = 0
        # Sync calls still running in a thread after their caller gave up.
        self._abandoned: set[_ThreadCall] = set()
        # A WSGI or ASGI app serves every HTTP request itself (docs/apps.md).
        self.interface: web_apps.Interface = "handler"
        self.app: WsgiApp | AsgiApp | None = None

    @classmethod
    def load(cls, request: controller_pb2.CreateBackendRequest) -> BackendRuntime:
        """Import or unpickle the backend, construct it, and get ready to call it."""
        config = request.config
        limits = {name: _config_value(config, name) for name in backend_fields.RECONFIGURE_LIMITS}
        _check_numbers(limits)
        backend = load_backend(request)
        http_methods = (
            frozenset(config.http_call_methods.names)
            if config.HasField("http_call_methods")
            else None
        )
        max_batch = int(limits["max_batch_size"])
        runtime = cls(
            backend,
            int(limits["max_concurrent_queries"]),
            max_batch,
            float(limits["batch_wait_timeout"]),
            http_methods,
        )
        runtime._mount_app(request.spec.interface)
        runtime._check_batching(max_batch)
        runtime._check_http_call_methods()
        return runtime

    def _mount_app(self, declared: int) -> None:
        """Serve the backend as a WSGI or ASGI app if it is one (or is said to be)."""
        try:
            interface = web_apps.from_proto(declared) or web_apps.detect(self.backend.target)
        except ValueError as exc:
            raise LoadError(INVALID_ARGUMENT, str(exc)) from None
        if interface != "handler" and not callable(self.backend.target):
            raise LoadError(INVALID_ARGUMENT, f"a {interface} app must be callable")
        self.interface = interface
        if interface == "wsgi":
            self.app = WsgiApp(self.backend.target)
        elif interface == "asgi":
            self.app = AsgiApp(self.backend.target)

    async def serve_app(self, msg: http_pb2.HttpRequest) -> http_pb2.HttpResponse | AppStream:
        """The app's answer to one HTTP request (a WSGI app on a handler thread,
        an ASGI app on the loop), within ``max_concurrent_queries``; an
        ``AppStream`` when its body streams (the slot is freed once the head
        is known, as for a handler that returns a generator)."""
        app = self.app
        assert app is not None
        async with self._slots.hold():
            if isinstance(app, WsgiApp):
                return await self._serve_wsgi(app, msg)
            return await app.call(msg)

    async def _serve_wsgi(
        self, app: WsgiApp, msg: http_pb2.HttpRequest
    ) -> http_pb2.HttpResponse | AppStream:
        stop = threading.Event()
        # One context for the whole answer: Flask's stream_with_context pushes
        # the request context in the first chunk's next() and pops it in the
        # last one's (or in close()), which a fresh copy per chunk would refuse.
        context = contextvars.copy_context()
        try:
            answer: http_pb2.HttpResponse | WsgiStream = await self._run_sync(
                lambda request: context.run(app.start, request, stop), msg
            )
        except asyncio.CancelledError:
            stop.set()  # the thread cannot be stopped, but the body can
            raise
        if isinstance(answer, http_pb2.HttpResponse):
            return answer
        stream = answer

        async def in_context(pull: Callable[[], Any]) -> Any:
            return await self._threads.run(context.run, pull)

        items = streams.open_iterable(
            itertools.chain(stream.first, stream.rest),
            in_context,
            lambda: context.run(stream.close),
        )
        _, chunks = await streams.start_stream(items, streams.encode_chunk)
        start = replica_pb2.StreamStart(
            status=stream.status,
            headers=[h for h in stream.headers if h.name.lower() != "content-length"],
        )
        return AppStream(start, chunks)

    async def start_app(self, timeout: float) -> None:
        """An ASGI app's lifespan startup; its failure is a LoadError."""
        if isinstance(self.app, AsgiApp):
            try:
                await self.app.startup(timeout)
            except AppStartError as exc:
                raise LoadError(
                    INVALID_ARGUMENT,
                    f"the ASGI app's lifespan startup failed: {exc.message}",
                    exc.detail,
                ) from None

    async def stop_app(self, timeout: float) -> None:
        """An ASGI app's lifespan shutdown, at the replica's stop."""
        if isinstance(self.app, AsgiApp):
            await self.app.shutdown(timeout)

    def _check_batching(self, max_batch_size: int) -> None:
        if max_batch_size > 1 and not self.batch_methods():
            raise LoadError(
                INVALID_ARGUMENT,
                f"max_batch_size is {max_batch_size} but {_name(self.backend.target)} has no "
                "handler decorated with @turnout.accept_batch",
            )

    def _check_http_call_methods(self) -> None:
        for name in sorted(self.http_call_methods or ()):
            try:
                self._resolve(name)
            except MethodNotFound as exc:
                raise LoadError(INVALID_ARGUMENT, f"http_call_methods: {exc}") from None

    def check_limits(
        self,
        max_concurrent_queries: int | None = None,
        max_batch_size: int | None = None,
        batch_wait_timeout: float | None = None,
    ) -> None:
        """Raise LoadError unless ``resize`` can take these values."""
        _check_numbers(
            {
                "max_concurrent_queries": max_concurrent_queries,
                "max_batch_size": max_batch_size,
                "batch_wait_timeout": batch_wait_timeout,
            }
        )
        if max_batch_size is not None:
            self._check_batching(max_batch_size)

    def resize(
        self,
        *,
        max_concurrent_queries: int | None = None,
        max_batch_size: int | None = None,
        batch_wait_timeout: float | None = None,
    ) -> None:
        """Change the limits of this live runtime (None = unchanged); calls in
        flight keep running, new calls and batches follow the new limits.
        Raises LoadError for a value it cannot take, changing nothing."""
        self.check_limits(max_concurrent_queries, max_batch_size, batch_wait_timeout)
        if max_concurrent_queries is not None:
            self.max_concurrent_queries = max_concurrent_queries
            self._slots.resize(max_concurrent_queries)
            self._threads.resize(max_concurrent_queries)
        if max_batch_size is not None:
            self.max_batch_size = max_batch_size
        if batch_wait_timeout is not None:
            self.batch_wait_timeout = batch_wait_timeout
        for batcher in self._batchers.values():
            batcher.resize(self.max_batch_size, self.batch_wait_timeout)

    def capabilities(self) -> dict[str, Any]:
        """What the controller needs to validate later config changes."""
        return {
            "batch_methods": self.batch_methods(),
            "reconfigure": self._instance_has("reconfigure"),
            "check_health": self.has_check_health,
            "interface": self.interface,
        }

    def batch_methods(self) -> list[str]:
        target = self.backend.target
        if not self.backend.is_instance:
            return ["__call__"] if accepts_batch(target) else []
        names = [n for n in dir(type(target)) if n == "__call__" or not n.startswith("_")]
        return [n for n in names if accepts_batch(getattr(target, n, None))]

    @property
    def has_check_health(self) -> bool:
        return self._instance_has("check_health")

    def _instance_has(self, method: str) -> bool:
        return self.backend.is_instance and callable(getattr(self.backend.target, method, None))

    @property
    def running_in_threads(self) -> int:
        """Synchronous handler calls still running (they cannot be cancelled)."""
        with self._lock:
            return self._running_in_threads

    def stuck_calls(self, grace: float) -> int:
        """Sync handler calls still running ``grace`` seconds or more after
        their caller stopped waiting (its deadline passed, or it went away)."""
        now = time.monotonic()
        with self._lock:
            return sum(
                1
                for call in self._abandoned
                if call.abandoned_at is not None and now - call.abandoned_at >= grace
            )

    async def handle(self, method_name: str, request: Any, web: bool = False) -> Any:
        """Call the handler ``method_name`` ("" = ``__call__``) with ``request``.

        ``web`` says whether the request came over HTTP (``turnout.context.web``);
        only HTTP requests are held to ``http_call_methods``.
        """
        if self.app is not None:
            raise MethodNotFound(
                f"backend {self.backend.tag!r} is a {self.interface.upper()} app: it answers "
                "HTTP requests on its endpoint's route, not handle calls"
            )
        if web and self.http_call_methods is not None:
            name = method_name or "__call__"
            if name not in self.http_call_methods:
                raise MethodNotFound(
                    f"backend {self.backend.tag!r} does not let HTTP requests call {name!r} "
                    "(see its http_call_methods)"
                )
        handler, is_async, batched = self._handler(method_name)
        # Not ``async with self._slots.hold()``: see Slots.hold.
        await self._slots.acquire()
        try:
            if batched:
                batcher = self._batcher(method_name or "__call__", handler, is_async)
                return await batcher.submit(request, web)
            return await self._invoke(handler, request, None, web, is_async)
        finally:
            self._slots.release()

    def _handler(self, method_name: str) -> tuple[Callable[[Any], Any], bool, bool]:
        """The handler with what ``handle`` needs to know of it, worked out once."""
        known = self._handlers.get(method_name)
        if known is None:
            handler = self._resolve(method_name)
            batched = accepts_batch(handler)
            is_async = _is_async(handler)
            if not batched and not _takes_request(handler):
                handler = _without_request(handler)
            known = self._handlers[method_name] = (handler, is_async, batched)
        return known

    def _batcher(self, name: str, handler: Callable[[Any], Any], is_async: bool) -> Batcher:
        batcher = self._batchers.get(name)
        if batcher is None:

            async def call(requests: list[Any], web: bool) -> Any:
                return await self._invoke(handler, requests, len(requests), web, is_async)

            batcher = Batcher(name, call, self.max_batch_size, self.batch_wait_timeout)
            self._batchers[name] = batcher
        return batcher

    async def _invoke(
        self,
        handler: Callable[[Any], Any],
        arg: Any,
        batch_size: int | None,
        web: bool,
        is_async: bool,
    ) -> Any:
        # Each call runs in its own task (or the batcher's), so this sets the
        # context for this call only; threads get a copy of it.
        set_call_context(batch_size, web)
        if is_async:
            result = handler(arg)
        else:
            result = await self._run_sync(handler, arg)
        # A sync callable may still hand back a coroutine (a decorated async
        # function, a partial); it belongs to the loop, not to the thread.
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _run_sync(self, handler: Callable[[Any], Any], arg: Any) -> Any:
        context = contextvars.copy_context()
        call = _ThreadCall()
        try:
            return await self._threads.run(context.run, self._run_in_thread, call, handler, arg)
        except asyncio.CancelledError:
            # Its thread cannot be stopped: remember it, so that a replica
            # whose threads stay stuck can say it is unhealthy.
            with self._lock:
                if not call.done:
                    call.abandoned_at = time.monotonic()
                    if call.running:
                        self._abandoned.add(call)
            raise

    async def run_blocking(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on the handler threads: the next item of a streamed
        answer's sync generator (``replica.streams``), in a copy of this
        task's context, so ``turnout.context`` in the generator's body is
        the call's."""
        return await self._threads.run(contextvars.copy_context().run, func)

    async def reconfigure(self, user_config_json: str) -> None:
        """Call the instance's ``reconfigure(user_config)`` (raises LoadError)."""
        method, user_config = _prepare_reconfigure(self.backend, user_config_json)
        try:
            await _call_aside(method, user_config)
        except Exception as exc:
            raise _reconfigure_failed(self.backend, exc) from exc
        self.backend.user_config = user_config

    async def check_health(self) -> None:
        """Run the instance's ``check_health()``; raises whatever it raises."""
        if self.has_check_health:
            await _call_aside(lambda _: self.backend.target.check_health(), None)

    async def check_health_at_start(self, timeout: float) -> None:
        """The first ``check_health()``, before the replica says it is ready:
        a failure refuses the backend as a raising constructor would (LoadError)."""
        name = type(self.backend.target).__name__
        try:
            await asyncio.wait_for(self.check_health(), timeout)
        except TimeoutError:
            raise LoadError(
                INVALID_ARGUMENT, f"{name}.check_health did not return within {timeout:g} s"
            ) from None
        except Exception as exc:
            raise _load_error(f"{name}.check_health raised {_describe(exc)}") from exc

    def close(self) -> None:
        """Stop taking handler calls; calls still running are not waited for."""
        self._threads.close()

    def _run_in_thread(self, call: _ThreadCall, handler: Callable[[Any], Any], request: Any) -> Any:
        with self._lock:
            if call.abandoned_at is not None:
                return None  # its caller gave up while it was queued
            call.running = True
            self._running_in_threads += 1
        try:
            return handler(request)
        finally:
            with self._lock:
                call.done = True
                self._running_in_threads -= 1
                self._abandoned.discard(call)

    def _resolve(self, method_name: str) -> Callable[[Any], Any]:
        backend = self.backend
        name = method_name or "__call__"
        if name == "__call__" and not backend.is_instance:
            target: Callable[[Any], Any] = backend.target
            return target
        if not request_callable(name):
            # Private, dunder (the constructor) and lifecycle methods are the
            # replica's to call, never a request's.
            raise MethodNotFound(f"backend {backend.tag!r} has no method {name!r}")
        if not backend.is_instance:
            raise MethodNotFound(
                f"backend {backend.tag!r} is a function; it has no method {name!r}"
            )
        handler = getattr(backend.target, name, None)
        if handler is None or not callable(handler):
            kind = type(backend.target).__name__
            raise MethodNotFound(f"backend {backend.tag!r} ({kind}) has no method {name!r}")
        return handler  # type: ignore[no-any-return]


def load_backend(request: controller_pb2.CreateBackendRequest) -> LoadedBackend:
    """The backend a ``CreateBackendRequest`` describes, constructed if a class."""
    spec = request.spec
    obj = _load_callable(spec)
    init_args = _init_args(spec)
    if inspect.isclass(obj):
        instance = _construct(obj, init_args)
        backend = LoadedBackend(tag=request.tag, target=instance, is_instance=True)
    elif not callable(obj):
        raise LoadError(
            INVALID_ARGUMENT,
            f"backend must be a function or a class, not {type(obj).__name__}",
        )
    elif init_args:
        raise LoadError(
            INVALID_ARGUMENT,
            f"init args were given but {_name(obj)} is a function, not a class",
        )
    else:
        backend = LoadedBackend(tag=request.tag, target=obj, is_instance=False)
    if request.config.HasField("user_config_json"):
        backend.user_config = _reconfigure(backend, request.config.user_config_json)
    return backend


def _load_callable(spec: controller_pb2.BackendSpec) -> Any:
    source = spec.WhichOneof("source")
    if source == "pickled_callable":
        try:
            return cloudpickle.loads(spec.pickled_callable)
        except Exception as exc:
            raise _load_error(f"cannot unpickle the backend: {_describe(exc)}") from exc
    if source == "import_path":
        return _import(spec.import_path)
    raise LoadError(INVALID_ARGUMENT, "backend spec has neither pickled_callable nor import_path")


def _import(path: str) -> Any:
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path or ":" in attr_path:
        raise LoadError(
            INVALID_ARGUMENT,
            f"import path {path!r} is not of the form 'package.module:attribute'",
        )
    # `python -m` puts the cwd on sys.path, but only for the main module's
    # sake; make the user's modules next to it importable explicitly.
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise _load_error(
            f"cannot import module {module_name!r}: {_describe(exc)}. {_import_hint(cwd)}"
        ) from exc
    except Exception as exc:
        raise _load_error(f"cannot import module {module_name!r}: {_describe(exc)}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise LoadError(
                INVALID_ARGUMENT, f"module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    return obj


def _import_hint(cwd: str) -> str:
    """Where the replica looked, and how to make it look elsewhere."""
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    shown = os.pathsep.join(entries[:_HINT_PATHS]) + (" ..." if len(entries) > _HINT_PATHS else "")
    return (
        f"The replica imports from its working directory {cwd!r} and PYTHONPATH "
        f"{shown!r}; start the controller (`turnout start`, or the program that calls "
        "init()) from the directory that holds the module, or add that directory to "
        "PYTHONPATH."
    )


# PYTHONPATH entries an import error shows (a local instance passes the owner's whole sys.path).
_HINT_PATHS = 5


def _init_args(spec: controller_pb2.BackendSpec) -> tuple[Any, ...]:
    if spec.pickled_init_args and spec.init_args_json:
        raise LoadError(INVALID_ARGUMENT, "set at most one of pickled_init_args and init_args_json")
    if spec.pickled_init_args:
        try:
            args = cloudpickle.loads(spec.pickled_init_args)
        except Exception as exc:
            raise _load_error(f"cannot unpickle the init args: {_describe(exc)}") from exc
        if not isinstance(args, tuple | list):
            raise LoadError(
                INVALID_ARGUMENT, f"pickled_init_args must hold a tuple, not {type(args).__name__}"
            )
        return tuple(args)
    if spec.init_args_json:
        try:
            args = json.loads(spec.init_args_json)
        except ValueError as exc:
            raise LoadError(INVALID_ARGUMENT, f"init_args_json is not valid JSON: {exc}") from exc
        if not isinstance(args, list):
            raise LoadError(
                INVALID_ARGUMENT,
                f"init_args_json must be a JSON array, not {type(args).__name__}",
            )
        return tuple(args)
    return ()


def _construct(cls: type, init_args: tuple[Any, ...]) -> Any:
    try:
        return cls(*init_args)
    except Exception as exc:
        raise _load_error(f"{cls.__name__}.__init__ raised {_describe(exc)}") from exc


def _prepare_reconfigure(
    backend: LoadedBackend, user_config_json: str
) -> tuple[Callable[[Any], Any], Any]:
    """The instance's reconfigure method and the parsed user_config (or LoadError)."""
    try:
        user_config = json.loads(user_config_json)
    except ValueError as exc:
        raise LoadError(INVALID_ARGUMENT, f"user_config_json is not valid JSON: {exc}") from exc
    reconfigure = getattr(backend.target, "reconfigure", None) if backend.is_instance else None
    if not callable(reconfigure):
        raise LoadError(
            INVALID_ARGUMENT,
            f"a user_config was given but {_name(backend.target)} has no reconfigure() method",
        )
    return reconfigure, user_config


def _reconfigure_failed(backend: LoadedBackend, exc: Exception) -> LoadError:
    name = type(backend.target).__name__
    return _load_error(f"{name}.reconfigure raised {_describe(exc)}")


def _reconfigure(backend: LoadedBackend, user_config_json: str) -> Any:
    """At load, before the event loop runs: call reconfigure() right here."""
    method, user_config = _prepare_reconfigure(backend, user_config_json)
    try:
        method(user_config)
    except Exception as exc:
        raise _reconfigure_failed(backend, exc) from exc
    return user_config


async def _call_aside(method: Callable[[Any], Any], arg: Any) -> Any:
    """Run a lifecycle method (reconfigure, check_health) outside the handler
    pool, so a pool full of slow requests cannot starve a health check."""
    result = await asyncio.to_thread(method, arg) if not _is_async(method) else method(arg)
    if inspect.isawaitable(result):
        result = await result
    return result


def _takes_request(handler: Callable[..., Any]) -> bool:
    """Whether ``handler`` takes a positional parameter for the request. Ray
    Serve calls a handler with no such parameter without one."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: try the request
        return True
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    return any(p.kind in positional for p in parameters)


def _without_request(handler: Callable[..., Any]) -> Callable[[Any], Any]:
    def call(request: Any) -> Any:
        return handler()

    return call


def _is_async(handler: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    # A callable object whose __call__ is `async def`.
    call = getattr(handler, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _load_error(message: str) -> LoadError:
    """A LoadError carrying the traceback of the exception being handled."""
    return LoadError(INVALID_ARGUMENT, message, traceback.format_exc())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _name(obj: Any) -> str:
    name = getattr(obj, "__name__", None)
    return name if isinstance(name, str) else type(obj).__name__
