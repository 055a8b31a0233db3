"""The rate limits' counters (proxy/core/ratelimit.py) and the table of which limits apply
(proxy/core/limits.py), on a stepped clock: no sleeps, no HTTP."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.config import ProxyConfig
from proxy.core.errors import RateLimited, to_http
from proxy.core.limits import UNLIMITED, Limit, LimitTable, Override
from proxy.core.ratelimit import NOTHING_HELD, PRUNE_AT, Lease, RateLimiter, Refusal, allowed, burst
from tests.examples import examples


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(token: Limit = UNLIMITED, namespace: Limit = UNLIMITED) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(LimitTable(token, namespace), clock), clock


def admitted(outcome: Lease | Refusal) -> bool:
    return isinstance(outcome, Lease)


# -- requests per minute ------------------------------------------------------------------------


@pytest.mark.parametrize(("rpm", "expected"), [
    (1, 3), (60, 3), (120, 3), (180, 3), (240, 4), (600, 10), (6000, 100),  # max(3, one second of the rate)
])
def test_the_burst_is_one_second_of_the_rate_and_at_least_three(rpm, expected):
    assert burst(rpm) == expected


def test_from_rest_a_burst_then_one_request_every_interval():
    rate, clock = limiter(namespace=Limit(rpm=120))  # one every 0.5 s, a burst of 3
    # (seconds after the start, admitted?)
    rows = [
        (0.0, True), (0.0, True), (0.0, True),  # the burst
        (0.0, False),                           # tat 1.5, due at 1.5 - 2 × 0.5 = 0.5
        (0.49, False),
        (0.5, True),                            # tat 2.0
        (0.6, False), (0.99, False),
        (1.0, True),                            # tat 2.5
        (2.5, True),                            # at rest again: tat 3.0
        (2.5, True), (2.5, True),               # the bucket had refilled whole: burst again
        (2.5, False),
    ]
    start = clock.now
    for at, expected in rows:
        clock.now = start + at
        assert admitted(rate.admit("acme", None)) == expected, at


def test_retry_after_is_the_wait_until_the_next_admission_at_least_1_s():
    rate, clock = limiter(namespace=Limit(rpm=6))  # one every 10 s, a burst of 3
    for _ in range(3):
        assert admitted(rate.admit("acme", None))
    refusal = rate.admit("acme", None)  # due at 30 - 20 = 10 s
    assert refusal == Refusal("acme", "namespace_rpm", 6, 10)
    clock.now += 9.2
    assert rate.admit("acme", None) == Refusal("acme", "namespace_rpm", 6, 1)  # 0.8 s left: at least 1
    clock.now += 0.8
    assert admitted(rate.admit("acme", None))


@given(st.lists(st.floats(min_value=0, max_value=120, allow_nan=False), max_size=400),
       st.sampled_from([1, 7, 60, 120, 1000]))
@settings(max_examples=examples(200), deadline=None)
def test_no_window_of_any_length_admits_more_than_the_limit_allows(arrivals, rpm):
    rate, clock = limiter(namespace=Limit(rpm=rpm))
    start = clock.now
    times = []
    for at in sorted(arrivals):
        clock.now = start + at
        if admitted(rate.admit("acme", None)):
            times.append(at)
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= allowed(rpm, times[j] - first)


@pytest.mark.parametrize("rpm", [120, 600, 6000])
@pytest.mark.parametrize("arrivals", ["paced", "random"])
def test_twice_the_limit_admits_the_limit_within_5_percent(rpm, arrivals):
    rate, clock = limiter(namespace=Limit(rpm=rpm))
    start, span_s = clock.now, 600.0
    offered_per_s = 2 * rpm / 60
    rng = random.Random(21)
    at, count = 0.0, 0
    while True:
        at += 1 / offered_per_s if arrivals == "paced" else rng.expovariate(offered_per_s)
        if at > span_s:
            break
        clock.now = start + at
        count += admitted(rate.admit("acme", None))
    assert count <= allowed(rpm, span_s)
    assert count >= 0.95 * rpm * span_s / 60, (count, rpm * span_s / 60)


# -- requests in flight -------------------------------------------------------------------------


def test_concurrent_requests_up_to_the_limit_and_each_release_frees_one():
    rate, _ = limiter(namespace=Limit(concurrent=2))
    first, second = rate.admit("acme", None), rate.admit("acme", None)
    assert isinstance(first, Lease) and isinstance(second, Lease)
    assert rate.admit("acme", None) == Refusal("acme", "namespace_concurrent", 2, 1)
    first.release()
    first.release()  # once only
    assert rate.in_flight("n:acme") == 1
    third = rate.admit("acme", None)
    assert isinstance(third, Lease)
    assert not admitted(rate.admit("acme", None))
    second.release()
    third.release()
    assert rate.in_flight("n:acme") == 0


def test_a_refused_request_counts_against_no_limit():
    # The token's rpm would admit; the namespace's concurrency refuses: the token's minute is untouched.
    rate, _ = limiter(token=Limit(rpm=60, concurrent=5), namespace=Limit(concurrent=1))
    held = rate.admit("acme", "tok")
    assert isinstance(held, Lease)
    for _ in range(10):
        assert rate.admit("acme", "tok") == Refusal("acme", "namespace_concurrent", 1, 1)
    assert rate.in_flight("t:tok") == 1
    held.release()
    outcomes = []
    for _ in range(3):
        outcome = rate.admit("acme", "tok")
        outcomes.append(outcome if isinstance(outcome, Refusal) else "admitted")
        if isinstance(outcome, Lease):
            outcome.release()
    # The rest of the token's burst of 3, then its minute: the refusals above took none of it.
    assert outcomes == ["admitted", "admitted", Refusal("acme", "token_rpm", 60, 1)]


def test_the_refusal_is_the_limit_that_holds_the_request_back_longest():
    rate, _ = limiter(token=Limit(rpm=6), namespace=Limit(concurrent=3))
    leases = [rate.admit("acme", "tok") for _ in range(3)]
    assert rate.admit("acme", "tok") == Refusal("acme", "token_rpm", 6, 10)  # not the concurrency's 1 s
    for lease in leases:
        assert isinstance(lease, Lease)
        lease.release()


def test_tokens_and_namespaces_are_counted_apart():
    rate, _ = limiter(token=Limit(concurrent=1), namespace=Limit(concurrent=2))
    a = rate.admit("acme", "tok-a")
    assert rate.admit("acme", "tok-a") == Refusal("acme", "token_concurrent", 1, 1)
    b = rate.admit("acme", "tok-b")
    assert rate.admit("acme", "tok-c") == Refusal("acme", "namespace_concurrent", 2, 1)
    assert isinstance(rate.admit("beta", "tok-c"), Lease)  # another namespace: its own count
    assert isinstance(rate.admit("beta", None), Lease)  # no token (a public endpoint): no token limit
    assert isinstance(a, Lease) and isinstance(b, Lease)


def test_only_per_minute_limits_hold_nothing_in_flight():
    rate, _ = limiter(namespace=Limit(rpm=60))
    assert rate.admit("acme", None) is NOTHING_HELD
    assert rate.in_flight("n:acme") == 0


def test_full_buckets_are_forgotten_when_many_keys_are_kept():
    rate, clock = limiter(token=Limit(rpm=60))
    for i in range(PRUNE_AT):
        rate.admit("acme", f"tok-{i}")
    clock.now += 60  # every bucket full again
    rate.admit("acme", "late")
    assert len(rate._tat) == 1


# -- which limits apply ---------------------------------------------------------------------------


def test_the_defaults_come_from_the_config_and_nothing_is_limited_by_default():
    assert not LimitTable.from_config(ProxyConfig()).active
    table = LimitTable.from_config(ProxyConfig(token_rpm=1, token_concurrent=2, namespace_rpm=3, namespace_concurrent=4))
    assert table.active and table.token == Limit(1, 2) and table.namespace("acme") == Limit(3, 4)


def test_an_override_replaces_the_namespace_defaults_it_names():
    table = LimitTable(namespace=Limit(rpm=100, concurrent=10))
    heard = []
    table.subscribe(lambda ns, override: heard.append((ns, override)))
    table.set("acme", Override(rpm=600))
    assert table.namespace("acme") == Limit(600, 10)
    assert table.namespace("beta") == Limit(100, 10)
    table.set("acme", Override(rpm=0, concurrent=0))  # 0: unlimited, whatever the default
    assert table.namespace("acme") == Limit(0, 0) and not table.applies("acme", has_token=False)
    table.set("acme", None)
    assert table.namespace("acme") == Limit(100, 10)
    assert heard == [("acme", Override(rpm=600)), ("acme", Override(0, 0)), ("acme", None)]


def test_an_override_alone_makes_the_table_active_and_its_removal_inactive():
    table = LimitTable()
    table.set("acme", Override(concurrent=4))
    assert table.active and table.applies("acme", False) and not table.applies("beta", True)
    table.set("acme", None)
    assert not table.active


# -- the 429 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("refusal", "sentence"), [
    (Refusal("acme", "token_rpm", 120, 3),
     "too many requests: this token's limit of 120 requests per minute is reached; retry in 3 s"),
    (Refusal("acme", "token_concurrent", 4, 1),
     "too many requests: this token's limit of 4 concurrent requests is reached; retry in 1 s"),
    (Refusal("acme", "namespace_rpm", 60, 1),
     "too many requests: namespace acme's limit of 60 requests per minute is reached; retry in 1 s"),
    (Refusal("acme", "namespace_concurrent", 8, 1),
     "too many requests: namespace acme's limit of 8 concurrent requests is reached; retry in 1 s"),
])
def test_a_refusal_is_a_429_that_says_which_limit_its_value_and_when_to_retry(refusal, sentence):
    error = refusal.error()
    assert isinstance(error, RateLimited)
    assert (error.namespace, error.limit) == (refusal.namespace, refusal.limit)
    status, headers, body = to_http(error)
    assert status == 429
    assert headers["Retry-After"] == str(refusal.retry_after_s)
    assert headers["X-Error-Message"] == sentence
    assert body == f'{{"error": "{sentence}"}}'.encode()
