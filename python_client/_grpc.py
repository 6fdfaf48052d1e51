"""gRPC options and judgements shared by every Turnout server and channel."""

from __future__ import annotations

import grpc

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


def never_delivered(code: grpc.StatusCode, details: str | None) -> bool:
    """True when a call failed to connect, so the replica never saw it and
    another replica may safely take it. A connection that broke after the
    request went out is UNAVAILABLE too, but the request may have run."""
    return code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (details or "").lower()
