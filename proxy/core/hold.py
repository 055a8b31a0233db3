"""Cold start: wake an endpoint once, and hold requests until a replica is ready.

Held requests wait in a FIFO of futures per endpoint, resolved by the control plane's change
notification the moment a replica becomes ready: no request polls. While more replicas are
starting (`RouteEntry.coming`), a burst held through a cold start is released a share at a time
— `release_per_replica` for each replica the first time it is seen ready, then one per completed
request — so the backlog spreads over replicas as they come up instead of all landing on the
first one. Once none is coming, everything still held is released to the ready ones.

No request is turned away while a replica is ready: one whose hold runs out while waiting for its
share is forwarded anyway. The control plane's probes (`demand=False`) never wake nor hold.

Wakes are deduplicated per process, per return to zero: the route entry says since when the
endpoint is at zero (`asleep_since`, a new value each time a user's scale-to-zero or an idle
scale-down puts it there), and one wake is asked per value. So a wake is re-armed whenever the
endpoint returns to zero, by whatever path (a start cancelled by a scale-to-zero, an idle
scale-down, a pause), and a request that arrived after that zero but was deduplicated against an
older wake — this process had not heard of the zero yet — wakes it as soon as the zero is heard.
Requests that arrived before a scale-to-zero do not undo it; they wait for a later wake.
An endpoint whose replicas are asleep (`RouteEntry.sleeping`, the sleeping tier) is held without
`X-Scale-Up-Timeout` too, up to `implicit_hold_s`: its wake is short, and a caller that did not
ask to wait gets its answer instead of a 503.
An endpoint with no replica at all that the host has no room for (`RouteEntry.no_capacity`) is
woken but answered at once, with what is missing: holding would only wait for someone else to
scale down.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from .control import ControlPlane, RouteEntry, RouteState
from .errors import BadRequest, EndpointPaused, NotFound, Unavailable, quoted

HEADER = "X-Scale-Up-Timeout"


def parse_scale_up_timeout(value: str | None, cap_s: float) -> float | None:
    """Seconds to hold, from the header; None when absent. Malformed values are a 400.

    ASCII only: float() would also take other scripts' digits, and undecodable bytes (which
    aiohttp hands over as surrogates) must be refused, not parsed."""
    if value is None:
        return None
    seconds = math.nan
    if value.isascii() and len(value) <= 32:
        try:
            seconds = float(value)
        except ValueError:
            pass
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadRequest(f"{HEADER} must be a number of seconds greater than 0; got {quoted(value)}")
    return min(seconds, cap_s)


def retry_after(wake_s: float | None, cap_s: int) -> int:
    """Retry-After for a request refused while its endpoint wakes: the endpoint's observed wake
    time rounded up to whole seconds, at least 1 and at most `cap_s` (the configured
    `retry_after_s`), which is also the answer before any wake was observed."""
    if wake_s is None or not math.isfinite(wake_s):
        return cap_s
    return min(cap_s, max(1, math.ceil(wake_s)))


def refuse_unless_serving(entry: RouteEntry) -> None:
    if entry.state is RouteState.PAUSED:
        raise EndpointPaused(f"endpoint {entry.key} is paused; ask a maintainer of {entry.namespace} to resume it")
    if entry.state is RouteState.FAILED:
        raise Unavailable(
            f"endpoint {entry.key} has failed and cannot serve requests: {entry.message or 'see its status'}",
            cause="endpoint_failed",
        )


class ReadinessGate:
    def __init__(
        self,
        control: ControlPlane,
        *,
        max_held_per_endpoint: int,
        retry_after_s: int,
        wake_retry_s: float,
        release_per_replica: int,
        implicit_hold_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`wall`: the clock `RouteEntry.asleep_since` is read on (the host's wall clock, shared
        by every process); `clock` times the retry of a wake."""
        self._control = control
        self._max_held = max_held_per_endpoint
        self._retry_after_s = retry_after_s
        self._wake_retry_s = wake_retry_s
        self._implicit_hold_s = implicit_hold_s
        self._clock = clock
        self._wall = wall
        self._per_replica = release_per_replica
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        # Replica ids that already had their share of an endpoint's queue: a republished entry
        # (same replicas) must release nothing more. Kept only while the endpoint has a queue
        # and a replica; a queue can only form while it has no replica.
        self._shared: dict[str, set[str]] = {}
        # The zero (`asleep_since`) each endpoint was last woken from here, and when (clock).
        self._woken: dict[str, tuple[float | None, float]] = {}
        # When (wall) a demand request last found no ready replica, until the endpoint has one.
        self._demand_at: dict[str, float] = {}
        self.held: dict[str, int] = {}
        control.subscribe(self._on_change)

    def _release(self, key: str, n: int | None) -> None:
        """Let the `n` longest-held requests (all when None) look for a replica again."""
        queue = self._queues.get(key)
        while queue and (n is None or n > 0):
            waiter = queue.popleft()
            if not waiter.done():  # a waiter whose client left is already cancelled
                waiter.set_result(None)
                if n is not None:
                    n -= 1
        if queue is not None and not queue:
            del self._queues[key]
            self._shared.pop(key, None)

    def _on_change(self, entry: RouteEntry) -> None:
        key = entry.key
        if not entry.replicas:
            self._shared.pop(key, None)  # replicas that come up after this get a share again
        if entry.state is not RouteState.SERVING or self._unplaceable(entry):
            self._release(key, None)  # each one sees the refusal
            self._forget(key)  # paused, failed or deleted: a request after a resume wakes anew
        elif entry.replicas:
            self._forget(key)  # awake: whatever asked for it is served
            if not entry.coming:
                self._release(key, None)  # nothing more to spread over: all to the ready ones
            elif key in self._queues:
                shared = self._shared.setdefault(key, set())
                new = [r.id for r in entry.replicas if r.id not in shared]
                shared.update(new)
                self._release(key, len(new) * self._per_replica)
        elif entry.asleep_since is not None and self._demand_at.get(key, -math.inf) >= entry.asleep_since:
            # A request after this zero found no replica while this process still saw the
            # endpoint as it was before (its wake deduplicated against an older one): ask now.
            self._wake(entry)

    def _forget(self, key: str) -> None:
        self._woken.pop(key, None)
        self._demand_at.pop(key, None)

    def finished(self, key: str) -> None:
        """A request of this endpoint completed: one held request takes its place."""
        if key in self._queues:
            self._release(key, 1)

    @staticmethod
    def _unplaceable(entry: RouteEntry) -> bool:
        return bool(entry.no_capacity) and not entry.replicas and not entry.coming

    def _refuse_unless_placeable(self, entry: RouteEntry) -> None:
        if self._unplaceable(entry):
            raise Unavailable(
                f"endpoint {entry.key} has no replica running and none can start now: {entry.no_capacity}; it starts "
                "once capacity is freed (another endpoint scaled down or to zero): retry then",
                cause="no_capacity",
                retry_after_s=self._retry_after_s,
            )

    def wake(self, entry: RouteEntry) -> None:
        """Ask for a replica on another process's behalf (a worker's held request), under the
        same once-per-`wake_retry_s` rule as this process's own."""
        self._wake(entry)

    def _wake(self, entry: RouteEntry) -> None:
        """One wake per endpoint and return to zero however many requests arrive; asked again
        when the endpoint returns to zero (a new `asleep_since`), or if the wake produced no
        replica within `wake_retry_s` (a lost or failed wake must not strand it)."""
        now = self._clock()
        woken = self._woken.get(entry.key)
        if woken is None or woken[0] != entry.asleep_since or now - woken[1] >= self._wake_retry_s:
            self._woken[entry.key] = (entry.asleep_since, now)
            self._control.wake(entry.namespace, entry.name)

    async def ready_entry(self, entry: RouteEntry, hold_s: float | None, *, demand: bool = True) -> RouteEntry:
        """`entry` with at least one ready replica, after holding up to `hold_s` if needed.
        A request that is not demand (a probe) is refused at once instead of waking or holding."""
        refuse_unless_serving(entry)
        if entry.replicas:
            return entry
        if not demand:
            raise Unavailable(f"endpoint {entry.key} has no ready replica", cause="not_ready")
        self._demand_at[entry.key] = self._wall()
        self._wake(entry)
        self._refuse_unless_placeable(entry)
        if hold_s is None and entry.sleeping and self._implicit_hold_s > 0:
            hold_s = self._implicit_hold_s  # a sleeping replica wakes fast: no 503 to retry on
        if hold_s is None:
            raise Unavailable(
                f"endpoint {entry.key} is starting up; retry later, or send '{HEADER}: <seconds>' to wait for it",
                cause="cold_start",
                retry_after_s=retry_after(entry.wake_s, self._retry_after_s),
            )
        key = entry.key
        if self.held.get(key, 0) >= self._max_held:
            raise Unavailable(
                f"endpoint {entry.key} already holds {self._max_held} requests while it starts; retry later",
                cause="hold_queue_full",
                retry_after_s=retry_after(entry.wake_s, self._retry_after_s),
            )
        self.held[key] = self.held.get(key, 0) + 1
        try:
            async with asyncio.timeout(hold_s):
                while True:
                    waiter = asyncio.get_running_loop().create_future()
                    self._queues.setdefault(key, deque()).append(waiter)
                    await waiter
                    current = self._control.lookup(entry.namespace, entry.name)
                    if current is None:
                        raise NotFound(f"endpoint {entry.key} was deleted while the request waited for it")
                    refuse_unless_serving(current)
                    if current.replicas:
                        return current
                    self._refuse_unless_placeable(current)
        except TimeoutError:
            current = self._control.lookup(entry.namespace, entry.name)
            if current is not None and current.state is RouteState.SERVING and current.replicas:
                return current  # its share never came, but a replica is ready: serve it
            raise Unavailable(
                f"endpoint {entry.key} did not become ready within {hold_s:g} s; retry later",
                cause="hold_timeout",
                retry_after_s=retry_after((current or entry).wake_s, self._retry_after_s),
            ) from None
        finally:
            left = self.held[key] - 1
            if left:
                self.held[key] = left
            else:
                del self.held[key]
