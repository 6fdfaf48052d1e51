"""gRPC options, constructors and judgements shared by every Turnout server and channel.

Every channel and every listening port of every Turnout process is made here,
from one ``Security`` value, so that TLS (and the token) apply to each hop the
same way: clients → controller, proxy → controller, proxy and handles →
replicas, controller → replica health checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from turnout._internal import auth

# Request and response bodies can be large (file uploads, tensors); gRPC's 4 MiB
# default would turn them into opaque RESOURCE_EXHAUSTED errors. The HTTP proxy
# enforces its own body limit with a clear 413 instead.
_MESSAGE_LIMITS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]

# gRPC enables SO_REUSEPORT by default, so a second server could silently share
# a port that is already taken (grpc/grpc#16920). Turn it off.
SERVER_OPTIONS = [*_MESSAGE_LIMITS, ("grpc.so_reuseport", 0)]

CHANNEL_OPTIONS = list(_MESSAGE_LIMITS)

Options = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class TLSConfig:
    """TLS material of one Turnout process, as PEM file paths.

    On a server, ``cert``/``key`` are its identity and ``ca``, when given,
    turns on mutual TLS: a peer must present a certificate signed by it. On a
    channel, ``ca`` verifies the server (None: ``cert`` if given, else the
    system's roots) and ``cert``/``key``, when given, are the client
    certificate mutual TLS asks for. ``server_name`` overrides the name checked against the server's
    certificate (None: the host of the address).

    Example::

        tls = turnout.TLSConfig(cert="server.pem", key="server.key", ca="ca.pem")
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class Security:
    """How a process protects its gRPC hops: TLS material, the bearer token,
    and the explicit opt-out of the exposure rule (``insecure``)."""

    tls: TLSConfig | None = None
    token: str | None = None
    insecure: bool = False


_known: dict[str, Security] = {}


def remember(address: str, security: Security) -> None:
    """Record how this process reaches ``address``: handles, which travel
    (pickled) with only the address, find their security here."""
    _known[address] = security


def security_for(address: str) -> Security:
    """How this process reaches ``address`` (no TLS, no token if never told)."""
    return _known.get(address, Security())


def _read(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    # Without a CA, a process that has a certificate of its own trusts it:
    # the hops inside an instance started with a self-signed certificate
    # (and no --tls-ca) verify each other by it.
    roots = tls.ca if tls.ca is not None else tls.cert
    return grpc.ssl_channel_credentials(
        root_certificates=_read(roots),
        private_key=_read(tls.key),
        certificate_chain=_read(tls.cert),
    )


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    if tls.cert is None or tls.key is None:
        raise ValueError("a TLS server needs both a certificate and its key")
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
        root_certificates=_read(tls.ca),
        require_client_auth=tls.ca is not None,
    )


def _channel_options(security: Security, options: Options) -> list[tuple[str, Any]]:
    merged = list(options)
    if security.tls is not None and security.tls.server_name:
        merged.append(("grpc.ssl_target_name_override", security.tls.server_name))
    return merged


def channel(address: str, security: Security, options: Options = CHANNEL_OPTIONS) -> grpc.Channel:
    """A blocking channel to ``address`` ("host:port" or "unix:/path"),
    presenting ``security.token`` on every call."""
    opts = _channel_options(security, options)
    if security.tls is None:
        made = grpc.insecure_channel(address, options=opts)
    else:
        made = grpc.secure_channel(address, channel_credentials(security.tls), options=opts)
    return auth.with_token(made, security.token)


def aio_channel(
    address: str, security: Security, options: Options = CHANNEL_OPTIONS
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` ("host:port" or "unix:/path").

    Its callers pass ``metadata=auth.metadata(security.token)`` themselves:
    a grpc.aio client interceptor would wrap every message of a stream (and
    needs one object per call kind)."""
    opts = _channel_options(security, options)
    if security.tls is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, channel_credentials(security.tls), options=opts)


def aio_server(
    security: Security,
    options: Options = SERVER_OPTIONS,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """An asyncio server; ports are added with ``add_port``. ``interceptors``:
    the token check (``turnout._internal.auth.interceptors``)."""
    del security
    return grpc.aio.server(options=list(options), interceptors=list(interceptors))


def add_port(server: grpc.aio.Server, address: str, security: Security) -> int:
    """Listen on ``address`` ("host:port" or "unix:/path"); returns the port
    bound (for a Unix socket, 1 when bound). 0 or RuntimeError: not bound."""
    if security.tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(security.tls))


def never_delivered(code: grpc.StatusCode, details: str | None) -> bool:
    """True when a call failed to connect, so the replica never saw it and
    another replica may safely take it. A connection that broke after the
    request went out is UNAVAILABLE too, but the request may have run."""
    return code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (details or "").lower()
