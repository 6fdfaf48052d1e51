"""``accept_batch`` and ``context``: what a handler needs to know about batches."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

BATCH_ATTRIBUTE = "_turnout_accept_batch"

# (batch_size, web) of the running call: one variable, so a call sets one
# (each set copies the context's mapping; this is on every call's path).
_call: contextvars.ContextVar[tuple[int | None, bool]] = contextvars.ContextVar(
    "turnout_call", default=(None, False)
)


def accept_batch(handler: F) -> F:
    """Mark a function or method as taking a list of requests.

    The handler gets a list of requests (up to the backend's
    ``max_batch_size``, waiting at most ``batch_wait_timeout`` seconds to fill
    it) and must return a sequence of the same length, one result per request.

    Example::

        class Model:
            @turnout.accept_batch
            def __call__(self, requests):
                inputs = np.stack([r.json["x"] for r in requests])
                return self.model.predict(inputs)  # one row per request

        serve.create_backend("model", Model, config={"max_batch_size": 16,
                                                     "batch_wait_timeout": 0.01})
    """
    setattr(handler, BATCH_ATTRIBUTE, True)
    return handler


def accepts_batch(handler: object) -> bool:
    return bool(getattr(handler, BATCH_ATTRIBUTE, False))


class Context:
    """What the running handler call is: read ``turnout.context`` inside a handler.

    ``batch_size``: number of requests in the current batch (None outside a
    batch handler). ``web``: True when the request came over HTTP, False when
    it came from a Python handle.
    """

    @property
    def batch_size(self) -> int | None:
        return _call.get()[0]

    @property
    def web(self) -> bool:
        return _call.get()[1]


context = Context()


def set_call_context(batch_size: int | None, web: bool) -> None:
    """Called by the replica before it runs a handler (in the handler's context)."""
    _call.set((batch_size, web))
