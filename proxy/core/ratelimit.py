"""The rate limits' counters: requests per minute and requests in flight, per token and per
namespace. One `RateLimiter` decides for the whole server: it lives in the main process, and
workers ask it over their channel (proxy/workers/), so a limit is one limit however many
processes serve the port.

    outcome = limiter.admit("acme", token_key)     # a Lease, or the Refusal that says why not
    ...
    lease.release()                                # when the request ends (held ones included)

Requests per minute: GCRA, the generic cell rate algorithm (a token bucket kept as one time per
key, the "theoretical arrival time"). A limit of R per minute admits one request every 60/R s,
plus a burst of `burst(R)` = max(MIN_BURST, one second of the rate) at once from rest. So over
any span of t seconds at most burst(R) + t·R/60 requests are admitted, and under sustained
overload the admitted rate is R/60 per second: the burst absorbs the jitter of arrivals, so
none of the rate is lost to a request that came a moment late (with a burst of 1, random
arrivals at twice the limit get only two thirds of it; with 3, 99 %). Retry-After is the time
until the next request would be admitted, at least 1 s.

Requests in flight: a count per key, taken at admission and given back by the lease's `release`,
once, when the request ends — whether it was forwarded, held through a cold start, refused
after admission or abandoned by its client. A refused request takes nothing: every limit that
applies is checked before any is counted.

Time is injected (`clock`, monotonic seconds), so tests step it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import RateLimited
from .limits import Limit, LimitTable

TOKEN_RPM, TOKEN_CONCURRENT = "token_rpm", "token_concurrent"
NAMESPACE_RPM, NAMESPACE_CONCURRENT = "namespace_rpm", "namespace_concurrent"
LIMITS = (TOKEN_RPM, TOKEN_CONCURRENT, NAMESPACE_RPM, NAMESPACE_CONCURRENT)  # the metric's `limit` label
MIN_BURST = 3  # see the module docstring: enough to lose under 2 % of the rate to late arrivals
BURST_S = 1.0
CONCURRENT_RETRY_S = 1  # a request in flight may end any moment
# Keys whose bucket is full again (their time is past) are dropped when there are this many.
PRUNE_AT = 10_000
EPSILON_S = 1e-9  # float arithmetic: a request exactly on time is on time


def burst(rpm: int) -> int:
    """Requests a limit of `rpm` admits at once from rest."""
    return max(MIN_BURST, math.ceil(rpm * BURST_S / 60))


def allowed(rpm: int, span_s: float) -> int:
    """The most requests a limit of `rpm` admits over `span_s` seconds."""
    return burst(rpm) + math.floor(span_s * rpm / 60 + EPSILON_S)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not admitted: the limit reached (one of LIMITS), its value, and when to retry."""

    namespace: str
    limit: str
    value: int
    retry_after_s: int

    def error(self) -> RateLimited:
        scope, kind = self.limit.split("_")
        whose = "this token's" if scope == "token" else f"namespace {self.namespace}'s"
        what = "requests per minute" if kind == "rpm" else "concurrent requests"
        return RateLimited(
            f"too many requests: {whose} limit of {self.value} {what} is reached; retry in {self.retry_after_s} s",
            namespace=self.namespace, limit=self.limit, retry_after_s=self.retry_after_s,
        )


class Held(Protocol):
    """What an admitted request holds of the limits until it ends (here or in the main process)."""

    def release(self) -> None: ...


class Lease:
    """The in-flight counts one admitted request holds; `release` gives them back, once."""

    __slots__ = ("_limiter", "_keys")

    def __init__(self, limiter: RateLimiter | None, keys: tuple[str, ...]) -> None:
        self._limiter = limiter
        self._keys = keys

    @property
    def holds(self) -> bool:
        return bool(self._keys)

    def release(self) -> None:
        keys, self._keys = self._keys, ()
        if self._limiter is not None:
            for key in keys:
                self._limiter._release(key)


NOTHING_HELD = Lease(None, ())  # a request only a per-minute limit counts


class RateLimiter:
    def __init__(self, limits: LimitTable, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._tat: dict[str, float] = {}  # key -> the time its next request is due (GCRA)
        self._in_flight: dict[str, int] = {}  # key -> requests holding a lease; absent at 0
        self._prune_at = PRUNE_AT

    def admit(self, namespace: str, token: str | None) -> Lease | Refusal:
        """Admit a request for an endpoint of `namespace`, from `token` (its key, e.g. a digest;
        None: no token limit applies), counting it against every limit that applies; or the
        Refusal of the limit that holds it back longest, counting nothing."""
        now = self._clock()
        scopes: list[tuple[str, Limit, str]] = []
        if token is not None and self.limits.token:
            scopes.append(("t:" + token, self.limits.token, "token"))
        limit = self.limits.namespace(namespace)
        if limit:
            scopes.append(("n:" + namespace, limit, "namespace"))
        refusal: Refusal | None = None
        for key, limit, scope in scopes:
            if limit.concurrent and self._in_flight.get(key, 0) >= limit.concurrent:
                refusal = _longer(refusal, Refusal(namespace, f"{scope}_concurrent", limit.concurrent, CONCURRENT_RETRY_S))
            if limit.rpm:
                wait_s = self._due(key, limit.rpm, now) - now
                if wait_s > EPSILON_S:
                    refusal = _longer(refusal, Refusal(namespace, f"{scope}_rpm", limit.rpm, max(1, math.ceil(wait_s))))
        if refusal is not None:
            return refusal
        held = []
        for key, limit, _ in scopes:
            if limit.rpm:
                self._tat[key] = max(self._tat.get(key, now), now) + 60 / limit.rpm
            if limit.concurrent:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                held.append(key)
        if len(self._tat) > self._prune_at:
            self._prune(now)
        return Lease(self, tuple(held)) if held else NOTHING_HELD

    def take(self, namespace: str, token: str | None) -> Lease:
        """`admit`, raising the refusal's RateLimited."""
        outcome = self.admit(namespace, token)
        if isinstance(outcome, Refusal):
            raise outcome.error()
        return outcome

    def in_flight(self, key: str) -> int:
        """Requests holding a lease of `key` ("t:<token>" or "n:<namespace>")."""
        return self._in_flight.get(key, 0)

    def _due(self, key: str, rpm: int, now: float) -> float:
        """When the next request of `key` may be admitted: its arrival time less the burst's tolerance."""
        interval_s = 60 / rpm
        return self._tat.get(key, now) - (burst(rpm) - 1) * interval_s

    def _release(self, key: str) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def _prune(self, now: float) -> None:
        # A key whose time is past has a full bucket: the same as no entry at all.
        self._tat = {key: due for key, due in self._tat.items() if due > now}
        self._prune_at = max(PRUNE_AT, 2 * len(self._tat))


def _longer(a: Refusal | None, b: Refusal) -> Refusal:
    return b if a is None or b.retry_after_s > a.retry_after_s else a
