"""Cold start: wake an endpoint once, and hold requests until a replica is ready.

Held requests wait on one `asyncio.Event` per endpoint, set by the control plane's change
notification the moment a replica becomes ready: no request polls, and all of them are released
within one loop iteration of readiness.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from .control import ControlPlane, RouteEntry, RouteState
from .errors import BadRequest, EndpointPaused, NotFound, Unavailable

HEADER = "X-Scale-Up-Timeout"


def parse_scale_up_timeout(value: str | None, cap_s: float) -> float | None:
    """Seconds to hold, from the header; None when absent. Malformed values are a 400."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadRequest(f"{HEADER} must be a number of seconds greater than 0; got {value!r}")
    return min(seconds, cap_s)


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._control = control
        self._max_held = max_held_per_endpoint
        self._retry_after_s = retry_after_s
        self._wake_retry_s = wake_retry_s
        self._clock = clock
        self._ready: dict[str, asyncio.Event] = {}
        self._woken_at: dict[str, float] = {}
        self.held: dict[str, int] = {}
        control.subscribe(self._on_change)

    def _on_change(self, entry: RouteEntry) -> None:
        if entry.replicas or entry.state is not RouteState.SERVING:
            self._woken_at.pop(entry.key, None)
            event = self._ready.pop(entry.key, None)
            if event is not None:
                event.set()

    def _wake(self, entry: RouteEntry) -> None:
        """One wake per endpoint however many requests arrive; asked again only if the first
        produced no replica within `wake_retry_s` (a lost or failed wake must not strand it)."""
        now = self._clock()
        last = self._woken_at.get(entry.key)
        if last is None or now - last >= self._wake_retry_s:
            self._woken_at[entry.key] = now
            self._control.wake(entry.namespace, entry.name)

    async def ready_entry(self, entry: RouteEntry, hold_s: float | None) -> RouteEntry:
        """`entry` with at least one ready replica, after holding up to `hold_s` if needed."""
        refuse_unless_serving(entry)
        if entry.replicas:
            return entry
        self._wake(entry)
        if hold_s is None:
            raise Unavailable(
                f"endpoint {entry.key} is starting up; retry later, or send '{HEADER}: <seconds>' to wait for it",
                cause="cold_start",
                retry_after_s=self._retry_after_s,
            )
        key = entry.key
        if self.held.get(key, 0) >= self._max_held:
            raise Unavailable(
                f"endpoint {entry.key} already holds {self._max_held} requests while it starts; retry later",
                cause="hold_queue_full",
                retry_after_s=self._retry_after_s,
            )
        self.held[key] = self.held.get(key, 0) + 1
        try:
            async with asyncio.timeout(hold_s):
                while True:
                    event = self._ready.get(key)
                    if event is None:
                        event = self._ready[key] = asyncio.Event()
                    await event.wait()
                    current = self._control.lookup(entry.namespace, entry.name)
                    if current is None:
                        raise NotFound(f"endpoint {entry.key} was deleted while the request waited for it")
                    refuse_unless_serving(current)
                    if current.replicas:
                        return current
        except TimeoutError:
            raise Unavailable(
                f"endpoint {entry.key} did not become ready within {hold_s:g} s; retry later",
                cause="hold_timeout",
                retry_after_s=self._retry_after_s,
            ) from None
        finally:
            left = self.held[key] - 1
            if left:
                self.held[key] = left
            else:
                del self.held[key]
