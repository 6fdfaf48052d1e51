"""Whether a backend is a WSGI app, an ASGI app or a plain handler.

A handler takes one request; an app takes the server's own arguments, so the
number of required positional parameters tells them apart without guessing
from class names:

- **WSGI**: a synchronous callable whose call takes exactly two required
  positional parameters, ``(environ, start_response)``: a Flask app, Django's
  ``WSGIHandler``, any PEP 3333 app.
- **ASGI**: an ``async def`` callable (or an object whose ``__call__`` is one)
  taking exactly three, ``(scope, receive, send)``: a FastAPI or Starlette
  app, any ASGI 3 app.
- anything else is a **handler**, called with a request.

A callable whose signature cannot be read (a C extension, ``*args``
wrappers such as some middleware) is a handler; name its interface
(``create_backend(..., interface="wsgi")``) when that is wrong. Nothing here
imports Flask or FastAPI.

>>> def handler(request): ...
>>> detect(handler)
'handler'
>>> def app(environ, start_response): ...
>>> detect(app)
'wsgi'
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Literal

from turnout.v1 import controller_pb2 as pb

Interface = Literal["handler", "wsgi", "asgi"]
INTERFACES: tuple[Interface, ...] = ("handler", "wsgi", "asgi")

_TO_PROTO: dict[str, pb.BackendInterface.ValueType] = {
    "auto": pb.BACKEND_INTERFACE_UNSPECIFIED,
    "handler": pb.BACKEND_INTERFACE_HANDLER,
    "wsgi": pb.BACKEND_INTERFACE_WSGI,
    "asgi": pb.BACKEND_INTERFACE_ASGI,
}
_FROM_PROTO: dict[int, Interface] = {
    pb.BACKEND_INTERFACE_HANDLER: "handler",
    pb.BACKEND_INTERFACE_WSGI: "wsgi",
    pb.BACKEND_INTERFACE_ASGI: "asgi",
}


def to_proto(interface: str) -> pb.BackendInterface.ValueType:
    """The proto value of ``"auto"``, ``"handler"``, ``"wsgi"`` or ``"asgi"``;
    ValueError for any other."""
    if not isinstance(interface, str):
        raise TypeError(f"interface must be a str, not {type(interface).__name__}")
    try:
        return _TO_PROTO[interface]
    except KeyError:
        raise ValueError(
            f"interface must be one of 'auto', 'handler', 'wsgi', 'asgi', not {interface!r}"
        ) from None


def from_proto(value: int) -> Interface | None:
    """The interface a spec names; None = detect it. ValueError for an unknown value."""
    if value == pb.BACKEND_INTERFACE_UNSPECIFIED:
        return None
    try:
        return _FROM_PROTO[value]
    except KeyError:
        raise ValueError(f"unknown BackendSpec.interface value {value}") from None


def detect(obj: Any) -> Interface:
    """What ``obj`` is, by the rules in this module's docstring."""
    if not callable(obj) or inspect.isclass(obj):
        return "handler"
    call = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else type(obj).__call__
    is_async = inspect.iscoroutinefunction(call)
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "handler"
    required = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        return "handler"
    if is_async and len(required) == 3:
        return "asgi"
    if not is_async and len(required) == 2:
        return "wsgi"
    return "handler"


def is_app(interface: str | None) -> bool:
    """Whether an interface (as ``detect`` names it) serves a whole app."""
    return interface in ("wsgi", "asgi")


def import_path_of(obj: Any, detected: bool = True) -> str | None:
    """``"module:name"`` for a WSGI/ASGI app that an imported module (not the
    main script) holds at its top level, so replicas can import it; None for
    anything else (with ``detected=False``, for any such object)."""
    if isinstance(obj, str) or (detected and detect(obj) == "handler"):
        return None
    for name in sorted(sys.modules):
        module = sys.modules.get(name)
        if module is None or name in ("__main__", "__mp_main__"):
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in items:
            if value is obj and not attr.startswith("_"):
                return f"{name}:{attr}"
    return None
