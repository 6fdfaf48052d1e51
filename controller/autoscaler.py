"""The autoscaling rule of one backend: from its load, how many replicas.

Plain class, no I/O: the control plane's loop (``autoscale_loop``) feeds it
the smoothed load (``LoadBook``) and the room the instance has, and applies
what it decides.

The rule:

- **wanted** = ceil(load / target_ongoing_requests), within [min_replicas,
  max_replicas] and never more than the instance has room for;
- **up** to the wanted count once it has stayed above the desired count for
  upscale_delay_s (to the latest wanted: up fast);
- **down** once it has stayed below for downscale_delay_s, to the highest
  count wanted during that time (down slowly: a short dip removes nothing);
- any moment at which wanted equals desired restarts both delays.

Example::

    scaler = Autoscaler(Policy(max_replicas=4, upscale_delay_s=1), current=1, clock=clock)
    scaler.observe(load=6.0, room=10)  # None: wants 3, for 0 s so far
    # ... 1 s later
    scaler.observe(load=6.0, room=10)  # Decision("up", 1, 3, "load 6.00 ...")
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from turnout._internal.autoscaling import Policy


@dataclass(frozen=True)
class Decision:
    """A change of a backend's desired replicas."""

    direction: str  # "up" or "down"
    before: int
    after: int
    reason: str
    at: float  # seconds since the Unix epoch


class Autoscaler:
    def __init__(
        self,
        policy: Policy,
        current: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        # What the backend is scaled to (its num_replicas).
        self.desired = current
        self.wanted = current
        self.load = 0.0
        self.last: Decision | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._up_since: float | None = None
        self._down_since: float | None = None
        self._down_peak = 0

    def wanted_for(self, load: float, room: int) -> int:
        """Replicas ``load`` asks for, within the bounds and ``room`` (the
        most this backend may run, given the instance's other backends)."""
        raw = math.ceil(load / self.policy.target_ongoing_requests - 1e-9)
        count = self.policy.clamp(raw)
        # Never beyond the room, but never below min for lack of it either:
        # what runs already stays.
        return max(min(count, room), min(self.policy.min_replicas, self.desired))

    def observe(self, load: float, room: int) -> Decision | None:
        """The decision ``load`` (smoothed requests at the backend) leads to
        now, if any; ``desired`` is updated to it."""
        now = self._clock()
        self.load = load
        wanted = self.wanted = self.wanted_for(load, room)
        if wanted > self.desired:
            self._down_since = None
            if self._up_since is None:
                self._up_since = now
            waited = now - self._up_since
            if waited >= self.policy.upscale_delay_s:
                return self._decide("up", wanted, load, waited)
        elif wanted < self.desired:
            self._up_since = None
            if self._down_since is None:
                self._down_since, self._down_peak = now, wanted
            self._down_peak = max(self._down_peak, wanted)
            waited = now - self._down_since
            if waited >= self.policy.downscale_delay_s:
                return self._decide("down", self._down_peak, load, waited)
        else:
            self._up_since = self._down_since = None
        return None

    def _decide(self, direction: str, after: int, load: float, waited: float) -> Decision:
        target = self.policy.target_ongoing_requests
        reason = (
            f"load {load:.2f} requests (target {target:g} per replica) asked for "
            f"{'more' if direction == 'up' else 'fewer'} than {self.desired} replica(s) "
            f"for {waited:.1f} s: {self.desired} -> {after}"
        )
        decision = Decision(direction, self.desired, after, reason, self._wall_clock())
        self.desired = after
        self.last = decision
        self._up_since = self._down_since = None
        return decision

    def reset(self, current: int) -> None:
        """The backend now runs ``current`` (changed by someone else)."""
        self.desired = current
        self._up_since = self._down_since = None
