"""A worker's side of the channel: a ControlPlane whose routes the hub keeps up to date and
whose token checks and wakes go to the main process; the main process's rate limiter, asked
for each request that a limit counts (`RemoteLimiter`); and the reports a worker sends back (its
pending counts, its tapped answers, its metric families on request).

Counts are reported whole, when they changed, at most every REPORT_INTERVAL_S — and at once
when a replica gets its first request here or after a route change has been applied, so that a
drain in the main process, which waits for a replica's count over every worker to be 0, never
reads a stale 0 for more than the channel's latency.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from ..core.control import Identity, RouteTable
from ..core.errors import Unavailable
from ..core.pipeline import Pipeline
from ..core.ratelimit import NOTHING_HELD, Held, Refusal
from . import channel
from .families import families_of
from .messages import Admit, Counts, Families, Release, TappedAnswers, Verify, Wake

log = logging.getLogger("endpointd.proxy")

REPORT_INTERVAL_S = 0.02  # counts: the scaling signal is read every few seconds; this is far finer
# Answers go to the main process at once when none went in the last ANSWERS_INTERVAL_S, else at
# the end of it: the per-endpoint OpenMetrics export reads the tap when it is asked, so an answer
# must be there by the time its client can ask; under load, at most 200 messages a second.
ANSWERS_INTERVAL_S = 0.005
VERIFY_TIMEOUT_S = 10.0  # a token check the main process does not answer is an unknown token
ADMIT_TIMEOUT_S = 10.0  # a rate-limit admission the main process does not answer is a 503


class RemoteControlPlane(RouteTable):
    def __init__(self, writer: asyncio.StreamWriter):
        super().__init__()
        self._writer = writer
        self._ids = itertools.count(1)
        self._verifying: dict[int, asyncio.Future[Identity | None]] = {}

    async def verify_token(self, token: str) -> Identity | None:
        request = next(self._ids)
        future: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._verifying[request] = future
        try:
            channel.send(self._writer, Verify(request, token))
            async with asyncio.timeout(VERIFY_TIMEOUT_S):
                return await future
        except TimeoutError:
            log.warning("the main process did not answer a token check within %g s", VERIFY_TIMEOUT_S)
            return None
        finally:
            self._verifying.pop(request, None)

    def verified(self, request: int, identity: Identity | None) -> None:
        future = self._verifying.get(request)
        if future is not None and not future.done():
            future.set_result(identity)

    def wake(self, namespace: str, name: str) -> None:
        channel.send(self._writer, Wake(namespace, name))


class RemoteLimiter:
    """The main process's rate limiter (proxy/core/ratelimit.py), asked over the channel: the
    limits are one over every process. The channel is ordered, so a `Release` sent after an
    `Admit` is read after it: an admission given up (its client gone, no answer in time) sends
    one, and the main process frees whatever that admission took, or nothing."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._ids = itertools.count(1)
        self._asking: dict[int, asyncio.Future[tuple[Refusal | None, bool]]] = {}

    async def admit(self, namespace: str, token: str | None) -> Held:
        """What the request holds until it ends; raises RateLimited when a limit refuses it."""
        request = next(self._ids)
        future: asyncio.Future[tuple[Refusal | None, bool]] = asyncio.get_running_loop().create_future()
        self._asking[request] = future
        try:
            channel.send(self._writer, Admit(request, namespace, token))
            async with asyncio.timeout(ADMIT_TIMEOUT_S):
                refusal, held = await future
        except BaseException as error:
            channel.send(self._writer, Release(request))
            if isinstance(error, TimeoutError):
                log.warning("the main process did not answer a rate-limit admission within %g s", ADMIT_TIMEOUT_S)
                raise Unavailable(f"the rate limits could not be checked within {ADMIT_TIMEOUT_S:g} s; retry") from None
            raise
        finally:
            self._asking.pop(request, None)
        if refusal is not None:
            raise refusal.error()
        return RemoteLease(self._writer, request) if held else NOTHING_HELD

    def admitted(self, request: int, refusal: Refusal | None, held: bool) -> None:
        future = self._asking.get(request)
        if future is not None and not future.done():
            future.set_result((refusal, held))


class RemoteLease:
    """In-flight counts the main process holds for a request of this worker, until `release`."""

    __slots__ = ("_writer", "_request")

    def __init__(self, writer: asyncio.StreamWriter, request: int):
        self._writer: asyncio.StreamWriter | None = writer
        self._request = request

    def release(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            channel.send(writer, Release(self._request))


class Reporter:
    """What a worker tells the main process about itself."""

    def __init__(self, pipeline: Pipeline, writer: asyncio.StreamWriter):
        self._pipeline = pipeline
        self._writer = writer
        self._sent_at_change = -1
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._answers: asyncio.Handle | None = None
        self._answers_sent_at = 0.0
        pipeline.counter.on_first_bind = self.counts_now

    def start(self, tap: bool) -> None:
        self._timer = self._loop.call_later(REPORT_INTERVAL_S, self._tick)
        if tap:
            self._pipeline.metrics.tap()
            self._pipeline.metrics.on_answer = self._answered

    def counts_now(self) -> None:
        counter = self._pipeline.counter
        self._sent_at_change = counter.changes
        channel.send(self._writer, Counts(counter.local_snapshot()))

    def _tick(self) -> None:
        if self._pipeline.counter.changes != self._sent_at_change:
            self.counts_now()
        self._timer = self._loop.call_later(REPORT_INTERVAL_S, self._tick)

    def _answered(self) -> None:
        if self._answers is not None:
            return  # a push is scheduled
        wait = self._answers_sent_at + ANSWERS_INTERVAL_S - self._loop.time()
        self._answers = self._loop.call_later(wait, self._push_answers) if wait > 0 else \
            self._loop.call_soon(self._push_answers)

    def _push_answers(self) -> None:
        self._answers = None
        self._answers_sent_at = self._loop.time()
        taken = self._pipeline.metrics.take_answers()
        if taken:
            channel.send(self._writer, TappedAnswers(taken))

    def families(self, request: int) -> None:
        channel.send(self._writer, Families(request, families_of(self._pipeline.metrics.registry)))

    def stop(self) -> None:
        for timer in (self._timer, self._answers):
            if timer is not None:
                timer.cancel()
        self._push_answers()
        self.counts_now()  # the last word: what is still counted here (0 after a drain)
