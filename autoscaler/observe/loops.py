"""Background loops under supervision: `Loops.start(name, run)` runs `run()` as a task and, when
it raises, logs the loop's name and the error, counts the failure in
`endpointd_background_loop_failures_total{loop}` and starts it again after a back-off. A loop runs
until it is cancelled, so one that returns has failed too. Cancelling the task (a shutdown) stops
it and is not a failure.

The back-off doubles from `Backoff.first_s` up to `Backoff.max_s` with each failure in a row; a
run that lasted `max_s` or longer was healthy, and its failure starts the doubling over. Here, in
the observe wing, because the loops of every wing above it (logs, analytics, the controller, the
scaler) run under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("endpointd.loops")

# A loop that fails at once again (its dependency is down) is retried after 1, 2, 4, ... s, at most
# every 30 s: soon enough that a passing fault costs seconds, rare enough that a lasting one does
# not flood the log.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Backoff:
    first_s: float = BACKOFF_FIRST_S
    max_s: float = BACKOFF_MAX_S

    def delay_s(self, in_a_row: int) -> float:
        """The wait before the restart that follows the `in_a_row`-th failure in a row (1, 2, ...)."""
        return min(self.max_s, self.first_s * 2.0 ** min(in_a_row - 1, 64))


class Loops:
    """Starts named background loops and restarts each one that fails. The caller keeps the task
    `start` returns and cancels it to stop the loop."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.failures = Counter(
            "endpointd_background_loop_failures",
            "Background loops that raised (or returned) and were restarted, by loop",
            ["loop"], registry=registry,
        )
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        self.failures.labels(name)  # exported from the start, at 0
        return asyncio.create_task(self.supervise(name, run), name=name)

    async def supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` again and again until cancelled; what `start` runs as the loop's task."""
        in_a_row = 0
        while True:
            started = self._clock()
            try:
                await run()
                error: BaseException | str = "it returned"
            except asyncio.CancelledError as cancelled:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # a shutdown
                error = cancelled  # a cancellation from within the loop, not of it
            except Exception as raised:  # noqa: BLE001 - any error: the loop is restarted
                error = raised
            if self._clock() - started >= self._backoff.max_s:
                in_a_row = 0
            in_a_row += 1
            delay_s = self._backoff.delay_s(in_a_row)
            self.failures.labels(name).inc()
            log.error("background loop %r failed: %s; restarting it in %g s", name, _text(error), delay_s,
                      exc_info=error if isinstance(error, BaseException) else None)
            await self._sleep(delay_s)


def _text(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
