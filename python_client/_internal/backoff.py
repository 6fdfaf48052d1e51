"""Exponential backoff: the one rule for how long to wait before trying again.

Every loop that retries something that failed (a replica restarted, a proxy
restarted, a routes stream reconnected, an owned controller restarted) asks a
``Backoff`` for its next wait instead of doubling a local variable, so the
rule "double each time, up to a cap, start over after success" is written
once. Each owner names its own bounds where it creates one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Waits that double from ``initial_s`` up to ``max_s`` (seconds).

    Example::

        backoff = Backoff(initial_s=0.5, max_s=30.0)
        while not try_once():
            time.sleep(backoff.next())   # 0.5, 1.0, 2.0, ... 30.0, 30.0
        backoff.reset()                  # the next failure waits 0.5 again
    """

    initial_s: float
    max_s: float
    factor: float = 2.0
    _current: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {self.factor}")
        self._current = self.initial_s

    def next(self) -> float:
        """The wait before the next try; each call returns a longer one, to the cap."""
        wait = self._current
        self._current = min(self._current * self.factor, self.max_s)
        return wait

    def peek(self) -> float:
        """The wait ``next()`` would return, without moving on."""
        return self._current

    def reset(self) -> None:
        """Start over: the try succeeded (or ran long enough to count as success)."""
        self._current = self.initial_s
