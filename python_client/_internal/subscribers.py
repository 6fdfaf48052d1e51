"""The names routers follow routes and report counters under.

The controller waits for the acknowledgements of the proxy's names
(``controller/server.py``); the senders (``turnout._sending``) subscribe
under them. Both read them here, so neither imports the other.
"""

from __future__ import annotations

import os
import uuid

PROXY = "proxy"


def proxy(worker_index: int, base: str = PROXY) -> str:
    """The name a proxy process follows routes and reports counters under:
    ``base`` for a lead ("proxy" for the one the controller started,
    "proxy@<node address>" for a node's on a Ray cluster), "<base>-<n>" for
    its workers."""
    return f"{base}-{worker_index}" if worker_index else base


def handles() -> str:
    """A name for the handles of this process, unlike any other process's
    (a pid is reused; the random part is not)."""
    return f"handles-{os.getpid()}-{uuid.uuid4().hex[:8]}"
