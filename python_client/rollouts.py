"""``Rollout``: a rollout the controller runs, seen from Python.

``turnout.rollout()`` starts one and returns it; the controller moves the
traffic, judges each step and rolls back on a breach whether or not this
process is still there. The object only asks the controller how it stands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from turnout._internal import rollout_rules
from turnout.errors import DeadlineExceededError
from turnout.v1 import rollout_pb2 as rpb

# State names as users see them.
STATES = {
    rpb.ROLLOUT_STATE_PENDING: "pending",
    rpb.ROLLOUT_STATE_SHADOW: "shadow",
    rpb.ROLLOUT_STATE_STEPPING: "stepping",
    rpb.ROLLOUT_STATE_PAUSED: "paused",
    rpb.ROLLOUT_STATE_SUCCEEDED: "succeeded",
    rpb.ROLLOUT_STATE_ROLLED_BACK: "rolled_back",
    rpb.ROLLOUT_STATE_ABORTED: "aborted",
}
ENDED = frozenset({"succeeded", "rolled_back", "aborted"})
_POLL_S = 0.2


def _window(window: rpb.RolloutWindow) -> dict[str, Any]:
    return {
        "backend": window.backend,
        "window_s": window.seconds,
        "requests": window.requests,
        "errors": window.errors,
        "p95": window.p95_seconds if window.HasField("p95_seconds") else None,
        "p99": window.p99_seconds if window.HasField("p99_seconds") else None,
    }


def describe(rollout: rpb.Rollout) -> dict[str, Any]:
    """A rollout as the plain dict ``Rollout.info()`` returns."""
    shadow = None
    if rollout.shadow.seconds:
        shadow = {
            "seconds": rollout.shadow.seconds,
            "proportion": rollout.shadow.proportion,
            "min_match_rate": rollout.shadow.min_match_rate,
        }
    return {
        "endpoint": rollout.endpoint,
        "from_backend": rollout.from_backend,
        "to_backend": rollout.to_backend,
        "state": STATES.get(rollout.state, "unknown"),
        "step": rollout.current_step,
        "steps": list(rollout.steps),
        "step_s": rollout.step_seconds,
        "shadow": shadow,
        "slo": rollout_rules.slo_to_dict(rollout.slo),
        "delete_old": rollout.delete_old,
        "verdict": rollout.verdict,
        "evidence": [
            {"bound": b.bound, "value": b.value, "limit": b.limit} for b in rollout.evidence
        ],
        "new": _window(rollout.new_window) if rollout.HasField("new_window") else None,
        "old": _window(rollout.old_window) if rollout.HasField("old_window") else None,
        "started_at": rollout.started_unix or None,
        "ended_at": rollout.ended_unix or None,
    }


class Rollout:
    """An endpoint's rollout, as the controller runs it.

    Every attribute asks the controller afresh. ``state`` is one of
    "pending", "shadow", "stepping", "paused", "succeeded", "rolled_back",
    "aborted"; ``info()`` has everything (step, verdict, the evidence of a
    breach, the last windows judged).

    Example::

        rollout = serve.rollout("model", "model-v2", steps=[0.1, 1.0], step_s=30,
                                slo={"max_error_rate": 0.01, "max_latency_ratio": 2.0})
        if rollout.wait(timeout=300) == "rolled_back":
            print(rollout.info()["evidence"])
    """

    def __init__(self, endpoint: str, call: Callable[[str, str], rpb.Rollout]) -> None:
        self._endpoint = endpoint
        self._call = call

    def __repr__(self) -> str:
        return f"<turnout.Rollout of {self._endpoint!r}>"

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def state(self) -> str:
        return self.info()["state"]  # type: ignore[no-any-return]

    @property
    def verdict(self) -> str:
        """One line on how it stands or why it ended."""
        return self.info()["verdict"]  # type: ignore[no-any-return]

    def info(self) -> dict[str, Any]:
        """``{"endpoint", "from_backend", "to_backend", "state", "step" (0 before
        the first, then 1..len(steps)), "steps", "step_s", "shadow", "slo",
        "delete_old", "verdict", "evidence": [{"bound", "value", "limit"}],
        "new"/"old": the last window judged ({"backend", "window_s",
        "requests", "errors", "p95", "p99"}) or None, "started_at",
        "ended_at" (Unix seconds)}``."""
        return describe(self._call("GetRollout", self._endpoint))

    def wait(self, timeout: float | None = None) -> str:
        """Wait until it has ended; return its final state. A paused rollout
        does not end: the wait runs out (DeadlineExceededError) unless resumed."""
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.state
            if state in ENDED:
                return state
            if until is not None and time.monotonic() >= until:
                raise DeadlineExceededError(
                    f"the rollout of {self._endpoint!r} is still {state} after {timeout} s"
                )
            time.sleep(_POLL_S)

    def pause(self) -> None:
        """Hold it at its step; the traffic stays as it is."""
        self._call("PauseRollout", self._endpoint)

    def resume(self) -> None:
        """Go on with a paused rollout; its step is timed again from the start."""
        self._call("ResumeRollout", self._endpoint)

    def abort(self) -> None:
        """End it and move all traffic back to the old backend."""
        self._call("AbortRollout", self._endpoint)
