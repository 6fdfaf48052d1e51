"""The load the senders report: requests in flight and queued per backend,
from every proxy process and every process with handles, smoothed over a
window.

Each report is a sample that holds until the reporter's next one. A
reporter that stops reporting (it died, or its load stayed where it was
and it had nothing new to say) is taken at its last sample for
``hold_s`` more, then at zero: a sender reports every second while it has
load, so a silent one has none (or is gone). Reporters silent longer than
``retain_s`` are forgotten.

Example::

    book = LoadBook(clock=lambda: now)
    book.report("proxy", [pb.BackendLoad(backend="a", queued=3)])
    book.load("a", window_s=10)     # average requests over the last 10 s
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from turnout.v1 import controller_pb2 as pb

# A sender with load reports about once a second; after this long without a
# report its last sample no longer counts.
HOLD_S = 3.0
# Samples older than this are dropped (longer than any window asked for
# would be pointless to keep: windows are capped to it).
RETAIN_S = 600.0
# Samples kept per reporter at most, whatever their age.
MAX_SAMPLES = 4096
# Reporters kept at most; the longest silent goes first.
MAX_REPORTERS = 10_000
# Backends one report may name; the rest of a bigger report is ignored (a
# sender has a handful: this only bounds what a broken one can make us keep).
MAX_BACKENDS_PER_REPORT = 1000


@dataclass
class _Reporter:
    # (monotonic time, {backend: requests in flight + queued})
    samples: collections.deque[tuple[float, dict[str, int]]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_SAMPLES)
    )


def total(load: pb.BackendLoad) -> int:
    """Requests a sender has at a backend: in flight at its replicas, and queued."""
    return sum(load.in_flight_by_replica.values()) + load.queued


class LoadBook:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        hold_s: float = HOLD_S,
        retain_s: float = RETAIN_S,
    ) -> None:
        self._clock = clock
        self._hold_s = hold_s
        self._retain_s = retain_s
        self._reporters: dict[str, _Reporter] = {}

    def report(self, reporter_id: str, loads: Iterable[pb.BackendLoad]) -> None:
        """A reporter's load now (its whole load: backends it leaves out have none)."""
        now = self._clock()
        values: dict[str, int] = {}
        for load in loads:
            if load.backend not in values and len(values) >= MAX_BACKENDS_PER_REPORT:
                continue
            values[load.backend] = values.get(load.backend, 0) + total(load)
        reporter = self._reporters.pop(reporter_id, None) or _Reporter()
        # Re-inserted last: the dict stays ordered by last report.
        self._reporters[reporter_id] = reporter
        reporter.samples.append((now, values))
        self._forget(now)

    def _forget(self, now: float) -> None:
        while len(self._reporters) > MAX_REPORTERS:
            del self._reporters[next(iter(self._reporters))]
        for reporter_id in list(self._reporters):
            samples = self._reporters[reporter_id].samples
            if samples[-1][0] < now - self._retain_s:
                del self._reporters[reporter_id]
                continue
            # Keep one sample from before the window: it holds into it.
            while len(samples) > 1 and samples[1][0] < now - self._retain_s:
                samples.popleft()

    def load(self, backend: str, window_s: float) -> float:
        """Requests at ``backend`` (in flight and queued, every reporter
        together), averaged over the last ``window_s`` seconds."""
        now = self._clock()
        window_s = max(1e-9, min(window_s, self._retain_s))
        start = now - window_s
        area = 0.0
        for reporter in self._reporters.values():
            samples = reporter.samples
            for index, (at, values) in enumerate(samples):
                value = values.get(backend, 0)
                if not value:
                    continue
                end = samples[index + 1][0] if index + 1 < len(samples) else now
                end = min(end, at + self._hold_s, now)
                begin = max(at, start)
                if end > begin:
                    area += value * (end - begin)
        return area / window_s

    def reporters(self) -> list[str]:
        return list(self._reporters)
