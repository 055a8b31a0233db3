"""Supervised background loops: a loop that raises or returns is logged by name with its error,
counted in the registry and restarted after a bounded back-off; cancelling it is a shutdown, not
a failure. Time is the test's: the back-off's sleep is recorded, never waited."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from autoscaler.observe.loops import Backoff, Loops

FAILURES = "endpointd_background_loop_failures_total"


class Fake:
    """A loop that fails `fail_first` times (then runs until cancelled), the clock it runs on, and
    the back-off's sleeps, recorded."""

    def __init__(self, fail_first: int, run_s: float = 0.0, error: BaseException | None = None) -> None:
        self.fail_first = fail_first
        self.run_s = run_s  # the time each run lasts, on the fake clock
        self.error = error or ValueError("the disk is gone")
        self.now = 0.0
        self.calls = 0
        self.slept: list[float] = []
        self.running = asyncio.Event()  # set once the run after the failures has begun

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)

    async def run(self) -> None:
        self.calls += 1
        self.now += self.run_s
        if self.calls <= self.fail_first:
            raise self.error
        self.running.set()
        await asyncio.Event().wait()


def failures(registry: CollectorRegistry, loop: str) -> float | None:
    return registry.get_sample_value(FAILURES, {"loop": loop})


async def started(loops: Loops, fake: Fake, name: str = "sampler") -> asyncio.Task:
    task = loops.start(name, fake.run)
    await asyncio.wait_for(fake.running.wait(), 5)
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_that_raises_is_restarted_logged_and_counted(caplog):
    registry = CollectorRegistry()
    fake = Fake(fail_first=3)
    loops = Loops(registry, clock=fake.clock, sleep=fake.sleep)
    with caplog.at_level(logging.ERROR, logger="endpointd.loops"):
        task = await started(loops, fake)
    assert fake.calls == 4  # three failed runs, then the one that runs
    assert failures(registry, "sampler") == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert all("'sampler'" in m and "ValueError: the disk is gone" in m for m in messages)
    assert all(r.exc_info is not None for r in caplog.records)  # with its traceback
    await stop(task)


async def test_cancelling_a_loop_is_not_a_failure(caplog):
    registry = CollectorRegistry()
    fake = Fake(fail_first=0)
    loops = Loops(registry, clock=fake.clock, sleep=fake.sleep)
    with caplog.at_level(logging.ERROR, logger="endpointd.loops"):
        await stop(await started(loops, fake))
    assert failures(registry, "sampler") == 0
    assert fake.calls == 1 and fake.slept == []
    assert caplog.records == []


async def test_a_cancellation_from_within_the_loop_is_a_failure():
    """A CancelledError the loop's own code raises (its task was not cancelled) ends the run, not the loop."""
    registry = CollectorRegistry()
    fake = Fake(fail_first=1, error=asyncio.CancelledError())
    loops = Loops(registry, clock=fake.clock, sleep=fake.sleep)
    task = await started(loops, fake)
    assert failures(registry, "sampler") == 1 and fake.calls == 2
    await stop(task)


async def test_a_loop_that_returns_is_restarted_and_counted(caplog):
    registry = CollectorRegistry()
    calls = 0
    again = asyncio.Event()

    async def ends_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            again.set()
            await asyncio.Event().wait()

    loops = Loops(registry, sleep=lambda s: asyncio.sleep(0))
    with caplog.at_level(logging.ERROR, logger="endpointd.loops"):
        task = loops.start("journal", ends_once)
        await asyncio.wait_for(again.wait(), 5)
    assert failures(registry, "journal") == 1
    assert "'journal' failed: it returned" in caplog.records[0].getMessage()
    await stop(task)


async def test_the_back_off_doubles_up_to_its_bound():
    fake = Fake(fail_first=9)
    loops = Loops(CollectorRegistry(), backoff=Backoff(first_s=1.0, max_s=30.0), clock=fake.clock, sleep=fake.sleep)
    await stop(await started(loops, fake))
    assert fake.slept == [1, 2, 4, 8, 16, 30, 30, 30, 30]


async def test_a_run_that_lasted_starts_the_back_off_over():
    fake = Fake(fail_first=3, run_s=30.0)  # each run was healthy for the back-off's bound before it failed
    loops = Loops(CollectorRegistry(), backoff=Backoff(first_s=1.0, max_s=30.0), clock=fake.clock, sleep=fake.sleep)
    await stop(await started(loops, fake))
    assert fake.slept == [1, 1, 1]


def test_the_bound_holds_for_any_number_of_failures():
    backoff = Backoff(first_s=0.5, max_s=20.0)
    assert [backoff.delay_s(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff.delay_s(10_000) == 20.0


async def test_each_started_loop_is_exported_at_zero():
    registry = CollectorRegistry()
    loops = Loops(registry)
    task = loops.start("scale", lambda: asyncio.Event().wait())
    text = generate_latest(registry).decode()
    assert f'{FAILURES}{{loop="scale"}} 0.0' in text
    await stop(task)
