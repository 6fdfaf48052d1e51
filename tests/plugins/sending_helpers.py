"""What the tests of the sending layer (tests/_sending) share.

Here rather than in one of those test modules: a test module imported by
another would be collected twice, and tests/plugins is on both pytest's
pythonpath and mypy's MYPYPATH.
"""

from __future__ import annotations

from collections.abc import Hashable

from turnout.v1 import replica_pb2


class Replies:
    """A sender's reader that keeps the reply as it is."""

    def read(
        self, reply: replica_pb2.HandleResponse, request_id: str, backend: str, replica_id: str
    ) -> tuple[replica_pb2.HandleResponse, Hashable | None, bool]:
        return reply, None, False

    def key(self, reply: replica_pb2.HandleResponse) -> Hashable | None:
        return None
