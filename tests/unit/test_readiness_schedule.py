"""How often a starting replica's health route is probed: fast in the first seconds (held
requests are released within ~20 ms of readiness), then at the normal interval."""

import pytest

from engines import readiness


@pytest.mark.parametrize(
    ("elapsed_s", "expected"),
    [(0.0, readiness.FAST_POLL_S), (1.99, readiness.FAST_POLL_S), (2.0, readiness.POLL_INTERVAL_S),
     (30.0, readiness.POLL_INTERVAL_S)],
)
def test_probes_are_fast_for_the_first_seconds_then_normal(elapsed_s, expected):
    assert readiness.poll_interval(elapsed_s) == expected


def test_the_fast_window_is_bounded_to_about_a_hundred_probes():
    elapsed, probes = 0.0, 0
    while elapsed < readiness.FAST_POLL_FOR_S:
        elapsed += readiness.poll_interval(elapsed)
        probes += 1
    assert readiness.FAST_POLL_S < readiness.POLL_INTERVAL_S
    assert probes <= 101
