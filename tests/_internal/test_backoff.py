"""The one backoff rule: double up to the cap, start over on reset."""

import pytest

from turnout._internal.backoff import Backoff


def test_waits_double_up_to_the_cap_and_start_over_after_reset() -> None:
    backoff = Backoff(initial_s=0.5, max_s=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.peek() == 3.0
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize(
    ("initial_s", "max_s", "factor"), [(0, 1, 2), (2, 1, 2), (-1, 1, 2), (0.1, 1, 0.5)]
)
def test_bounds_that_cannot_work_are_refused(initial_s: float, max_s: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial_s=initial_s, max_s=max_s, factor=factor)
