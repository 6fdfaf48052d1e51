"""Conversion between the wire messages and what a handler sees and returns.

A handler receives a werkzeug ``Request`` (the class Flask's request derives
from) and may return ``None``, ``str``, ``bytes``, a werkzeug/Flask
``Response`` or anything JSON-encodable, NumPy scalars and arrays included
(encoded as Ray Serve encodes them: an array becomes a list). Nothing here
does I/O.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import cloudpickle
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from turnout._internal import wire
from turnout.v1 import http_pb2, replica_pb2

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"

# Characters that may appear in a query string as sent; everything else (only
# ever non-ASCII text from a lenient client) is percent-encoded as UTF-8.
_QUERY_SAFE = "!$%&'()*+,/:;=?@[]~#"

_DEFAULT_PORTS = {"http": "80", "https": "443"}


class BadReturnValue(TypeError):
    """A handler returned something that cannot be sent back."""


def http_to_request(msg: http_pb2.HttpRequest) -> Request:
    """The Flask-compatible request for an HTTP request the proxy forwarded."""
    return DeferredRequest(msg)


class DeferredRequest(Request):
    """A werkzeug ``Request`` that builds itself on first use.

    Its WSGI environ and ``Request.__init__`` cost about 20 µs per request
    (bench/RESULTS.md), which a handler that never looks at its request need
    not pay. Any attribute read runs the real constructor first, so the
    object is a plain ``Request`` to every caller; ``close()`` on an untouched
    one has nothing to close.
    """

    def __init__(self, msg: http_pb2.HttpRequest) -> None:
        # No super().__init__: it runs in __getattr__, on first use.
        self._turnout_pending = msg

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not set yet: before the first use, all
        # of Request's own; after it, names that do not exist.
        msg = self.__dict__.pop("_turnout_pending", None)
        if msg is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        Request.__init__(self, _http_environ(msg))
        return getattr(self, name)


def call_to_request(msg: replica_pb2.PythonCall) -> PythonCallRequest:
    """The request for a call from a Python handle; unpickling errors propagate."""
    data = cloudpickle.loads(msg.pickled_data) if msg.pickled_data else None
    kwargs: Mapping[str, Any] = cloudpickle.loads(msg.pickled_kwargs) if msg.pickled_kwargs else {}
    environ = _base_environ(
        method=msg.http_method.upper() or "GET",
        scheme="http",
        host="",
        path_info="/",
        query_string="",
        body=b"",
    )
    _add_headers(environ, ((h.name, h.value) for h in msg.headers))
    return PythonCallRequest(environ, data, kwargs)


class PythonCallRequest(Request):
    """A request whose payload is a Python object rather than an HTTP body.

    ``.data``, ``.json`` and ``.get_json()`` are the object passed to
    ``handle.remote(data)``; ``.args`` holds its keyword arguments, whose values
    may be any objects.
    """

    def __init__(self, environ: dict[str, Any], data: Any, kwargs: Mapping[str, Any]) -> None:
        super().__init__(environ)
        self._payload = data
        # A list of pairs, not the mapping: MultiDict would spread a list value
        # over several entries and ``args["xs"]`` would be its first element.
        self._kwargs: ImmutableMultiDict[str, Any] = ImmutableMultiDict(list(kwargs.items()))

    @property
    def data(self) -> Any:
        return self._payload

    @property
    def json(self) -> Any:
        return self._payload

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        return self._payload

    @property
    def args(self) -> ImmutableMultiDict[str, Any]:
        return self._kwargs


def encode_http(value: object) -> http_pb2.HttpResponse:
    """The HTTP answer for a handler's return value; raises ``BadReturnValue``."""
    if value is None:
        return http_pb2.HttpResponse(status=200)
    if isinstance(value, str):
        return _plain(200, TEXT, value.encode("utf-8"))
    if isinstance(value, bytes | bytearray):
        return _plain(200, OCTETS, bytes(value))
    if isinstance(value, Response):
        return _from_response(value)
    try:
        body = json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise BadReturnValue(
            f"handler returned a {type_name(value)}, which is not str, bytes, "
            f"a Response or JSON-encodable: {exc}"
        ) from exc
    return _plain(200, JSON, body.encode("utf-8"))


def encode_http_pieces(value: object) -> list[bytes]:
    """``encode_http(value)`` serialised, as pieces to join. A ``str`` or
    ``bytes`` body is never copied into a message: it follows the serialised
    status and headers (made once per kind of answer) as a field of its own
    (``wire.http_body``), which saves two copies of it (about 0.3 ms a MiB)."""
    if isinstance(value, str):
        return [_plain_head(200, TEXT), *wire.http_body(value.encode("utf-8"))]
    if isinstance(value, bytes | bytearray):
        return [_plain_head(200, OCTETS), *wire.http_body(bytes(value))]
    return [encode_http(value).SerializeToString()]


def _json_default(value: object) -> object:
    """What ``json`` cannot encode itself, encoded as Ray Serve's ``ServeEncoder``
    does: NumPy scalars and arrays (``tolist()``: Python numbers, nested lists),
    bytes inside a container (UTF-8 text) and exceptions (their message).
    NumPy values are told by their class's module, so that NumPy is never
    imported for a handler that does not use it.
    """
    cls = type(value)
    if cls.__module__ == "numpy":
        tolist = getattr(value, "tolist", None)
        if callable(tolist):
            return tolist()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8")  # UnicodeDecodeError is a ValueError
    if isinstance(value, BaseException):
        return str(value)
    raise TypeError(f"Object of type {cls.__name__} is not JSON serializable")


def error_response(exc: BaseException, request_id: str, status: int = 500) -> http_pb2.HttpResponse:
    """The JSON error body for an exception; the traceback stays out of it.

    An ``HTTPException`` (Flask's ``abort``) answers as Flask would: its own
    status, description and headers (``Allow`` of a 405), or the ``Response``
    it was given.
    """
    extra: list[tuple[str, str]] = []
    if isinstance(exc, HTTPException):
        if isinstance(exc.response, Response):
            return _from_response(exc.response)
        status = exc.code or 500
        payload = {"error": camel_case(exc.name), "message": exc.description or ""}
        extra = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    else:
        payload = {"error": type(exc).__name__, "message": str(exc)}
    payload["request_id"] = request_id
    response = _plain(status, JSON, json.dumps(payload).encode("utf-8"))
    response.headers.extend(http_pb2.Header(name=k, value=v) for k, v in extra)
    return response


def camel_case(phrase: str) -> str:
    """An HTTP reason phrase as an error name: "Bad Request" -> "BadRequest",
    "I'm a teapot" -> "ImATeapot" (the names every other error body uses)."""
    words = re.split(r"[^A-Za-z0-9]+", phrase.replace("'", ""))
    return "".join(word[:1].upper() + word[1:] for word in words)


def _plain(status: int, content_type: str, body: bytes) -> http_pb2.HttpResponse:
    # Copying a ready-made message and setting the body costs 1.2 µs; building
    # it from keyword arguments, 4.6 µs (upb, timeit).
    template = _PLAIN.get((status, content_type))
    if template is None:
        template = _PLAIN[status, content_type] = http_pb2.HttpResponse(
            status=status, headers=[http_pb2.Header(name="Content-Type", value=content_type)]
        )
    response = http_pb2.HttpResponse()
    response.CopyFrom(template)
    response.body = body
    return response


# (status, content type) -> the HttpResponse without a body, for _plain.
_PLAIN: dict[tuple[int, str], http_pb2.HttpResponse] = {}


def _plain_head(status: int, content_type: str) -> bytes:
    """``_plain``'s answer without its body, serialised (kept per kind)."""
    head = _PLAIN_HEADS.get((status, content_type))
    if head is None:
        head = _PLAIN_HEADS[status, content_type] = _plain(
            status, content_type, b""
        ).SerializeToString()
    return head


_PLAIN_HEADS: dict[tuple[int, str], bytes] = {}


def _from_response(response: Response) -> http_pb2.HttpResponse:
    try:
        body = response.get_data()
        headers = [
            http_pb2.Header(name=name, value=value)
            for name, value in response.headers.to_wsgi_list()
        ]
        return http_pb2.HttpResponse(status=response.status_code, headers=headers, body=body)
    finally:
        # send_file and streamed responses hold files and generators open.
        response.close()


def type_name(value: object) -> str:
    """The name of a value's type as error messages show it: "set", "mymod.Model"."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _http_environ(msg: http_pb2.HttpRequest) -> dict[str, Any]:
    query = msg.query_string if msg.query_string.isascii() else quote(msg.query_string, _QUERY_SAFE)
    # WSGI carries the decoded path as bytes smuggled through latin-1 strings;
    # werkzeug reverses that and decodes UTF-8, exactly as behind a WSGI server.
    path = msg.path or "/"
    if "%" in path or not path.isascii():
        path_info = unquote_to_bytes(path).decode("latin-1")
    else:
        path_info = path
    # Read out of the message once: each read of a bytes field is a copy
    # (about 0.1 ms a MiB).
    body = msg.body
    environ = _base_environ(
        method=msg.method.upper() or "GET",
        scheme=msg.scheme or "http",
        host=msg.host,
        path_info=path_info,
        query_string=query,
        body=body,
    )
    raw_uri = path + (f"?{query}" if query else "")
    environ["REQUEST_URI"] = environ["RAW_URI"] = raw_uri.encode("utf-8").decode("latin-1")
    _add_headers(environ, [(h.name, h.value) for h in msg.headers])
    if msg.host:
        environ["HTTP_HOST"] = msg.host
    if body or "CONTENT_LENGTH" in environ:
        # The proxy has already de-chunked the body: its length is the truth.
        environ["CONTENT_LENGTH"] = str(len(body))
    address, port = split_host_port(msg.remote_addr)
    if address:
        environ["REMOTE_ADDR"] = address
    if port:
        environ["REMOTE_PORT"] = port
    return environ


def app_environ(msg: http_pb2.HttpRequest) -> dict[str, Any]:
    """The WSGI environ for an app mounted at ``msg.script_name``: that prefix
    is ``SCRIPT_NAME``, the rest of the path ``PATH_INFO``."""
    environ = _http_environ(msg)
    prefix = msg.script_name.rstrip("/")
    path_info: str = environ["PATH_INFO"]
    if prefix and (path_info == prefix or path_info.startswith(prefix + "/")):
        environ["SCRIPT_NAME"] = prefix
        environ["PATH_INFO"] = path_info[len(prefix) :]
    return environ


def _base_environ(
    *, method: str, scheme: str, host: str, path_info: str, query_string: str, body: bytes
) -> dict[str, Any]:
    server_name, server_port = split_host_port(host)
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path_info,
        "QUERY_STRING": query_string,
        "SERVER_NAME": server_name or "localhost",
        "SERVER_PORT": server_port or _DEFAULT_PORTS.get(scheme, "80"),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        # The whole body is in memory, so werkzeug may read to its end even
        # when no Content-Length came with it (a chunked upload).
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _add_headers(environ: dict[str, Any], headers: Iterable[tuple[str, str]]) -> None:
    for name, value in headers:
        key = _ENVIRON_KEYS.get(name)
        if key is None:
            key = _environ_key(name)
            if len(_ENVIRON_KEYS) < _MAX_ENVIRON_KEYS:
                _ENVIRON_KEYS[name] = key
        if not key:
            continue
        if "\r" in value or "\n" in value:
            value = value.replace("\r", "").replace("\n", "")
        if key in environ:
            separator = "; " if key == "HTTP_COOKIE" else ", "
            value = f"{environ[key]}{separator}{value}"
        environ[key] = value


# Header name -> its environ key ("" = dropped), for the names seen so far:
# the same few dozen names come with almost every request.
_ENVIRON_KEYS: dict[str, str] = {}
_MAX_ENVIRON_KEYS = 4096


def _environ_key(name: str) -> str:
    # As werkzeug's and gunicorn's servers do: "X_Foo" and "X-Foo" would
    # both become HTTP_X_FOO, which lets a client spoof a proxy's header.
    if "_" in name:
        return ""
    key = name.upper().replace("-", "_")
    if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        key = f"HTTP_{key}"
    return key


def split_host_port(hostport: str) -> tuple[str, str]:
    """Split "host", "host:port", "[v6]:port" or a bare IPv6 address."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        return host, port
    return hostport, ""
