"""What the sender says when a call gets no answer from a replica.

One class per reason, carrying what each shell words its error from: the
proxy answers with an HTTP status and a JSON body (``proxy/app.py``), a
handle raises a ``turnout.errors`` exception (``turnout._handle_router``).
"""

from __future__ import annotations

import grpc

from turnout._internal.rpc import never_delivered


class SendFailure(Exception):
    """A call that got no answer from a replica."""

    def __init__(self, backend: str, detail: str = "") -> None:
        super().__init__(detail or backend)
        # The backend chosen for the call ("" if none was).
        self.backend = backend
        self.detail = detail


class EndpointMissing(SendFailure):
    """The endpoint is not in the routing snapshot (in time)."""

    def __init__(self, endpoint: str, *, before_deadline: bool) -> None:
        super().__init__("", endpoint)
        self.endpoint = endpoint
        # Whether the call's deadline ended the wait, not the wait's own bound.
        self.before_deadline = before_deadline


class TooManyAwaiting(SendFailure):
    """Too many calls already wait for their endpoints to appear."""


class NoBackend(SendFailure):
    """The endpoint sends its traffic nowhere (every weight is zero)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("", endpoint)
        self.endpoint = endpoint


class NoReplica(SendFailure):
    """The backend has no replica that could take the call."""

    def __init__(self, backend: str, *, tried: bool) -> None:
        super().__init__(backend)
        # True when there were replicas but each one tried could not be reached.
        self.tried = tried


class Overloaded(SendFailure):
    """Every replica is full, and the queue is full or its wait ran out."""

    def __init__(self, backend: str, detail: str, *, expired: bool) -> None:
        super().__init__(backend, detail)
        # True when the call waited its backend's queue_timeout in the queue.
        self.expired = expired


class QueueDeadline(SendFailure):
    """The call's deadline passed while it waited for a free replica."""


class CallFailed(SendFailure):
    """The replica's call ended without an answer, with this gRPC status."""

    def __init__(self, backend: str, replica_id: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(backend, f"{code.name}: {details}")
        self.replica_id = replica_id
        self.code = code
        self.details = details

    @property
    def never_delivered(self) -> bool:
        """The replica never got the call (so it did not run)."""
        return never_delivered(self.code, self.details)


class ForwardFailed(SendFailure):
    """Something unexpected broke the call (logged with its traceback)."""
