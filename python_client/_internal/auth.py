"""Who may call what: tokens, roles, and the checks every Turnout server runs.

An instance has one *admin* token, in ``<instance dir>/token`` (mode 0600,
created with O_EXCL in a 0700 directory), which operators and their tools
present. Processes of the instance get credentials of their own, derived from
an internal secret beside it (``<instance dir>/secret``) as
``HMAC-SHA256(secret, principal)``, so that rotating the admin token leaves
the running proxy and replicas working. A child receives its credentials in a
0600 file in the instance's run directory, named on its command line: never
in its environment, which user code (and every process it starts) can read.

Roles (admin implies all):

========  =====================================================  ==========================
role      methods                                                 held by
========  =====================================================  ==========================
admin     every ControllerService method                          operators (the token file)
read      Get*/List*, GetStats, GetInstance; server reflection    handles, replicas
router    RouterService (WatchRoutes, AckRoutes, ReportStats...)  proxy, handles, replicas
data      ReplicaService but Reconfigure                          proxy, handles, replicas
control   ReplicaService/Reconfigure                              the controller only
========  =====================================================  ==========================

The controller's own calls to replicas present its ``controller`` token, the
only one with the control role: user code holds a handle's credentials, and
must not reconfigure another backend's replicas with them. On the
RouterService the caller's principal also bounds what it may name: only the
proxy (or an admin) watches, acknowledges and reports under a router id that
admin calls wait for (see ``controller/servicer.py``).

``grpc.health.v1.Health`` needs no token (probes). A call without a valid
token fails UNAUTHENTICATED with a message that says how to pass one; a valid
token whose roles lack the method fails PERMISSION_DENIED.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from turnout._internal.errors import TokenFileError
from turnout._internal.paths import data_dir

ADMIN, READ, ROUTER, DATA, CONTROL = "admin", "read", "router", "data", "control"
# What each principal of an instance may do. ``handle``: handles of any
# client, and user code in replicas (never admin); ``proxy``: the HTTP proxy.
PRINCIPALS: Mapping[str, frozenset[str]] = {
    "handle": frozenset({READ, ROUTER, DATA}),
    "proxy": frozenset({ROUTER, DATA}),
}
# The controller's calls to its replicas (Reconfigure); replicas accept it,
# the controller itself does not.
CONTROLLER = "controller"
CONTROLLER_ROLES = frozenset({CONTROL})
ADMIN_ROLES = frozenset({ADMIN, READ, ROUTER, DATA, CONTROL})

TOKEN_FILE = "token"
SECRET_FILE = "secret"
TOKEN_ENV = "TURNOUT_TOKEN"
TOKEN_FILE_ENV = "TURNOUT_TOKEN_FILE"
_METADATA_KEY = "authorization"
_SCHEME = "Bearer "

_READ_METHODS = frozenset(
    {
        "GetBackend",
        "ListBackends",
        "GetEndpoint",
        "ListEndpoints",
        "ListReplicas",
        "GetReplicaLog",
        "GetStats",
        "GetInstance",
        "GetRollout",
        "ListRollouts",
    }
)
_OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
_READ_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)

HOW_TO_PASS = (
    "pass the instance's token as 'authorization: Bearer <token>' metadata "
    "(grpcurl -H 'authorization: Bearer ...'; the turnout CLI takes --token-file, "
    f"${TOKEN_FILE_ENV} or ${TOKEN_ENV}; `turnout token` prints it)"
)


# ---- roles ----------------------------------------------------------------------


def required_role(method: str) -> str | None:
    """The role a full gRPC method name ("/pkg.Service/Method") needs; None: open.

    Example::

        required_role("/turnout.v1.ControllerService/ListBackends")  # "read"
    """
    service, _, name = method.lstrip("/").partition("/")
    if service in _OPEN_SERVICES:
        return None
    if service in _READ_SERVICES:
        return READ
    if service == "turnout.v1.ControllerService":
        return READ if name in _READ_METHODS else ADMIN
    if service == "turnout.v1.RouterService":
        return ROUTER
    if service == "turnout.v1.ReplicaService":
        return CONTROL if name == "Reconfigure" else DATA
    return ADMIN  # anything else is nobody's but the operator's


def derive(secret: bytes, principal: str) -> str:
    """The token of ``principal`` in the instance whose internal secret is ``secret``."""
    return hmac.new(secret, f"turnout-v1:{principal}".encode(), hashlib.sha256).hexdigest()


def new_token() -> str:
    """A fresh 256-bit token."""
    return secrets.token_hex(32)


# ---- files ----------------------------------------------------------------------


def check_private(path: Path) -> None:
    """Refuse (TokenFileError) a credentials file that group or others may read
    or write, as ssh refuses such a key."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"it holds a secret: `chmod 600 {path}`"
        )


def write_private(path: Path, text: str, *, replace: bool = False) -> None:
    """Write ``text`` to a new 0600 file (O_EXCL); with ``replace`` atomically
    over an existing one (a new file renamed into place)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if replace:
        os.replace(target, path)


def read_private(path: Path) -> str:
    """The text of a credentials file, refused if others may read it."""
    try:
        check_private(path)
        return path.read_text().strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read the token file {path}: {exc.strerror}") from None


def ensure(path: Path, make: Callable[[], str] = new_token) -> str:
    """The secret in ``path``, created (0600, O_EXCL) when missing."""
    with contextlib.suppress(FileExistsError):
        write_private(path, make())
    text = read_private(path)
    if not text:
        raise TokenFileError(f"the token file {path} is empty")
    return text


def rotate(path: Path) -> str:
    """Replace the admin token in ``path`` with a new one; a running controller
    takes it at its next call. Returns the new token."""
    if path.exists():
        check_private(path)
    token = new_token()
    write_private(path, token, replace=True)
    return token


@dataclass(frozen=True)
class ChildCredentials:
    """What a child process is given: its own token, and the tokens it accepts."""

    token: str
    # token -> roles it grants on this process's server
    accept: Mapping[str, frozenset[str]]

    def write(self, path: Path) -> None:
        body = {"token": self.token, "accept": {t: sorted(r) for t, r in self.accept.items()}}
        write_private(path, json.dumps(body), replace=path.exists())

    @classmethod
    def read(cls, path: Path) -> ChildCredentials:
        body = json.loads(read_private(path))
        accept = {str(t): frozenset(r) for t, r in dict(body.get("accept", {})).items()}
        return cls(token=str(body["token"]), accept=accept)


# ---- checking -------------------------------------------------------------------


class Verifier:
    """Maps a presented token to the roles it grants, in constant time per token.

    ``admin_file``: the admin token's file, re-read whenever it changes (stat
    on each check), so that ``turnout token --rotate`` takes effect at once.
    """

    def __init__(
        self,
        fixed: Mapping[str, frozenset[str]],
        admin_file: Path | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        # (token, roles, principal); ``names``: token -> principal, where known
        self._fixed = [(t.encode(), r, (names or {}).get(t)) for t, r in fixed.items()]
        self._admin_file = admin_file
        self._admin: bytes | None = None
        self._admin_stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if admin_file is not None:
            self._reload()

    def _reload(self) -> None:
        assert self._admin_file is not None
        try:
            st = self._admin_file.stat()
        except OSError:
            return  # keep the last token read rather than lock everyone out
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._admin_stamp:
            return
        with self._lock:
            try:
                self._admin = read_private(self._admin_file).encode()
            except TokenFileError:
                return
            self._admin_stamp = stamp

    def roles(self, token: str | None) -> frozenset[str] | None:
        """The roles ``token`` grants; None if it is no token of this instance."""
        return self._find(token)[0]

    def principal(self, token: str | None) -> str | None:
        """Who presents ``token``: ``ADMIN``, a principal's name (``proxy``,
        ``handle``...), or None for no token of this instance (or an unnamed one)."""
        return self._find(token)[1]

    def _find(self, token: str | None) -> tuple[frozenset[str] | None, str | None]:
        if token is None:
            return None, None
        presented = token.encode()
        found: tuple[frozenset[str] | None, str | None] = (None, None)
        if self._admin_file is not None:
            self._reload()
            admin = self._admin
            if admin is not None and hmac.compare_digest(presented, admin):
                found = (ADMIN_ROLES, ADMIN)
        for known, roles, name in self._fixed:
            if hmac.compare_digest(presented, known):
                found = (roles, name)
        return found


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    for key, value in metadata or ():
        if key == _METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.startswith(_SCHEME):
                return text[len(_SCHEME) :].strip()
            return None
    return None


def _deny(handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str) -> Any:
    """A handler of ``handler``'s kind that fails the call with ``code``.

    Its requests are not parsed: nothing of an unauthenticated caller's reaches
    a deserializer.
    """

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - an async generator, as stream handlers are

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


class TokenCheck(grpc.aio.ServerInterceptor):
    """Checks every call's token against ``verifier`` before its handler runs.

    A server interceptor sees every call at handler lookup, unary and
    streaming alike (unlike client interceptors in grpc.aio, which need one
    object per call kind), so one object guards the whole server.
    """

    def __init__(self, verifier: Verifier, what: str) -> None:
        self._verifier = verifier
        self._what = what

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        needed = required_role(method)
        if handler is None or needed is None:
            return handler
        roles = self._verifier.roles(bearer(handler_call_details.invocation_metadata))
        if roles is None:
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} on this {self._what} needs a token: {HOW_TO_PASS}",
            )
        if needed not in roles:
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs the {needed} role, which this token does not grant "
                f"(it grants: {', '.join(sorted(roles))}); admin calls need the "
                "instance's admin token (`turnout token`)",
            )
        return handler


# ---- presenting -----------------------------------------------------------------


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting ``token`` (none without one)."""
    return ((_METADATA_KEY, _SCHEME + token),) if token else ()


_Details = collections.namedtuple(
    "_Details",
    ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
)


class _ClientDetails(_Details, grpc.ClientCallDetails):
    pass


class _PresentToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token to every call of a (synchronous) channel."""

    def __init__(self, token: str) -> None:
        self._metadata = metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _ClientDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self._metadata],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """``channel``, presenting ``token`` on every call (as it is without one)."""
    return channel if not token else grpc.intercept_channel(channel, _PresentToken(token))


# ---- finding the token ----------------------------------------------------------

# Set in processes an instance started (replicas): their own credentials,
# which user code there uses instead of looking anywhere else.
_process_token: str | None = None


def set_process_token(token: str) -> None:
    global _process_token
    _process_token = token


def process_token() -> str | None:
    """The token this process was given by the instance that started it."""
    return _process_token


def default_token_file() -> Path:
    """The admin token of the default instance (``turnout start``)."""
    return data_dir() / TOKEN_FILE


def find_token(
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    address: str | None = None,
) -> str | None:
    """The token a client presents: ``token``, else ``token_file``, else the
    credentials of the replica this runs in, else ``$TURNOUT_TOKEN_FILE``,
    else ``$TURNOUT_TOKEN``, else the default instance's token file (None if
    there is none: the server then says how to pass one). The default
    instance's token is offered only to an ``address`` on this machine
    (loopback or a Unix socket): it is never sent to another host unasked."""
    if token is not None:
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        return token
    if token_file is not None:
        return read_private(Path(token_file))
    if _process_token is not None:
        return _process_token
    if os.environ.get(TOKEN_FILE_ENV):
        return read_private(Path(os.environ[TOKEN_FILE_ENV]))
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()

    from turnout._internal import tls_options  # it imports rpc, which imports this module

    if address is not None and not tls_options.is_unix(address):
        if not tls_options.is_local(address.rpartition(":")[0] or address):
            return None
    path = default_token_file()
    return read_private(path) if path.exists() else None


def child_credentials(secret: bytes, principal: str) -> ChildCredentials:
    """What a child of the controller running as ``principal`` is given: its
    token, and (replicas) the tokens of everyone who may send it requests."""
    accept = {derive(secret, p): roles for p, roles in PRINCIPALS.items() if DATA in roles}
    accept[derive(secret, CONTROLLER)] = CONTROLLER_ROLES
    return ChildCredentials(token=derive(secret, principal), accept=accept)


def instance_verifier(secret: bytes, admin_file: Path) -> Verifier:
    """The controller's check: the admin token (live from its file) and every
    principal derived from the internal secret."""
    fixed = {derive(secret, p): roles for p, roles in PRINCIPALS.items()}
    names = {derive(secret, p): p for p in PRINCIPALS}
    return Verifier(fixed, admin_file, names)


def interceptors(verifier: Verifier | None, what: str) -> Sequence[grpc.aio.ServerInterceptor]:
    """The server interceptors of a Turnout server (none: checks are off)."""
    return () if verifier is None else (TokenCheck(verifier, what),)
