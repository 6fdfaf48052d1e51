"""Latency histograms: fixed buckets, cheap to fill, added up exactly, and
the quantiles read from them.

Every router counts its requests' durations into the same buckets, so the
proxy's workers and the controller add histograms bucket by bucket, and a
window's numbers are the difference of two cumulative histograms. Quantiles
are interpolated linearly within the bucket the rank falls in, as
Prometheus's ``histogram_quantile`` does: exact to within one bucket.

Example::

    h = Histogram()
    for seconds in (0.002, 0.003, 0.2):
        h.observe(seconds)
    quantile(h.counts, 0.5)  # 0.0033..., within the (2.5 ms, 5 ms] bucket
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from turnout.v1 import controller_pb2 as pb

from .errors import InvalidArgumentError

# Upper bounds in seconds, steps of x2 to x2.5: sub-millisecond handlers
# (a no-op through the proxy takes a few hundred microseconds) to multi-second
# ones (a model's batch), 17 buckets and one above the last.
BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
    10.0, 30.0,
)  # fmt: skip


# The recent window stat() reports by default, and the longest one the
# controller keeps reports for (GetStatsRequest.window_seconds).
WINDOW_S = 60.0
MAX_WINDOW_S = 600.0


def check_window(seconds: float) -> float:
    """``seconds`` as a window length the controller answers for; raises
    ``TypeError`` for a non-number, ``InvalidArgumentError`` outside
    (0, ``MAX_WINDOW_S``]."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"window seconds must be a number, got {type(seconds).__name__}")
    if not 0 < seconds <= MAX_WINDOW_S:
        raise InvalidArgumentError(
            f"window seconds must be > 0 and at most {MAX_WINDOW_S:g}, got {seconds!r}"
        )
    return float(seconds)


def _zeros() -> list[int]:
    return [0] * (len(BUCKETS_S) + 1)


@dataclass
class Histogram:
    """Durations counted by bucket of ``BUCKETS_S`` (not cumulative; the last
    count is above the last bound) and their sum."""

    counts: list[int] = field(default_factory=_zeros)
    sum_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a duration equal to a bound belongs to that bucket (le).
        self.counts[bisect_left(BUCKETS_S, seconds)] += 1
        self.sum_seconds += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(list(self.counts), self.sum_seconds)

    def to_proto(self) -> pb.LatencyHistogram:
        return pb.LatencyHistogram(
            upper_bounds=BUCKETS_S, counts=self.counts, sum_seconds=self.sum_seconds
        )


def fits(histogram: pb.LatencyHistogram) -> bool:
    """Whether a reported histogram has this build's buckets, so it can be
    added to the others (a router of another build with other buckets is
    left out of sums rather than added wrongly)."""
    return (
        tuple(histogram.upper_bounds) == BUCKETS_S and len(histogram.counts) == len(BUCKETS_S) + 1
    )


def add_into(total: pb.LatencyHistogram, other: pb.LatencyHistogram) -> None:
    """Add ``other`` to ``total`` bucket by bucket (``total`` starts empty or
    with this build's buckets); one whose buckets differ is left out."""
    if not fits(other):
        return
    if not total.upper_bounds:
        total.upper_bounds[:] = BUCKETS_S
        total.counts[:] = _zeros()
    for i, n in enumerate(other.counts):
        total.counts[i] += n
    total.sum_seconds += other.sum_seconds


def cumulative(counts: Sequence[int]) -> list[int]:
    """Prometheus's view of ``counts``: the count at or below each bound, the
    last one (``+Inf``) the total."""
    running, out = 0, []
    for n in counts:
        running += n
        out.append(running)
    return out


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of durations counted in ``BUCKETS_S``'s buckets,
    interpolated within its bucket; None when nothing was counted. A rank in
    the bucket above the last bound gives the last bound (as Prometheus does:
    all that is known is that it took longer)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i == len(BUCKETS_S):
                return BUCKETS_S[-1]
            lower = BUCKETS_S[i - 1] if i else 0.0
            upper = BUCKETS_S[i]
            return lower + (upper - lower) * max(rank - below, 0.0) / n
        below += n
    return BUCKETS_S[-1]  # pragma: no cover - the loop always reaches the total
