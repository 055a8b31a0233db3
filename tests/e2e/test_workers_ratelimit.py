"""Rate limits over worker processes (proxy/workers/): the main process keeps the counters and
workers ask it, so a limit is one limit however many processes serve the port. Each request goes
on a fresh connection, so the kernel spreads them over both processes (the chance that twenty
all land on one is 2 ** -19); the main process is this test's, so its limiter is read directly."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
from aiohttp import web

from proxy.core.limits import Override
from tests.proxy_harness import Harness, until

EP = "/endpoints/acme/e1"
N = 20


async def posts(h: Harness, n: int, path: str = EP, **kw) -> list[int]:
    """`n` requests at once, each on a connection of its own: their statuses (0: the connection broke)."""
    async def one() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.post(h.url(path), data=b"x", **kw) as r:
                    await r.read()
                    return r.status
            except aiohttp.ClientError:
                return 0

    return await asyncio.gather(*(one() for _ in range(n)))


async def gated(h: Harness):
    gate = asyncio.Event()

    async def slow(request):
        await gate.wait()
        return web.Response(text="ok")

    return await h.upstream(slow), gate


async def metric(h: Harness, line: str) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(h.url("/metrics"), headers={"Authorization": "Bearer tok-root"}) as r:
            return line in await r.text()


async def test_a_per_minute_limit_is_one_limit_over_every_process(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(processes=2, namespace_rpm=1)  # a burst of 3, then one a minute
    statuses = await posts(harness, N)
    assert sorted(statuses) == [200] * 3 + [429] * (N - 3)
    assert len(up.seen) == 3
    assert await metric(harness, f'endpointd_rate_limited_total{{limit="namespace_rpm",namespace="acme"}} {N - 3}.0')


async def test_a_concurrency_limit_is_one_limit_over_every_process(harness):
    up, gate = await gated(harness)
    harness.endpoint(upstreams=(up,))
    await harness.start(processes=2, namespace_concurrent=3)
    statuses = asyncio.create_task(posts(harness, N))
    await until(lambda: len(up.seen) == 3, timeout_s=30)
    assert harness.pipeline.limiter.in_flight("n:acme") == 3
    gate.set()
    assert sorted(await statuses) == [200] * 3 + [429] * (N - 3)
    await until(lambda: harness.pipeline.limiter.in_flight("n:acme") == 0, timeout_s=10)  # every Release arrived
    assert await posts(harness, 3) == [200] * 3


async def test_an_override_reaches_the_workers(harness):
    up, gate = await gated(harness)
    harness.endpoint(upstreams=(up,))
    await harness.start(processes=2)
    harness.pipeline.limits.set("acme", Override(concurrent=2))  # after the workers' hello: sent to them
    statuses = asyncio.create_task(posts(harness, N))
    await until(lambda: len(up.seen) == 2, timeout_s=30)
    gate.set()
    assert sorted(await statuses) == [200] * 2 + [429] * (N - 2)


async def test_a_worker_that_dies_gives_back_what_its_requests_held(harness):
    up, gate = await gated(harness)
    harness.endpoint(upstreams=(up,))
    await harness.start(processes=2, namespace_concurrent=N)
    (worker,) = harness.proxy.workers.pids()
    statuses = asyncio.create_task(posts(harness, N))
    await until(lambda: len(up.seen) == N, timeout_s=30)
    own = harness.pipeline.counter.local_snapshot().pending("acme/e1")  # this process's share
    assert own < N
    os.kill(worker, signal.SIGKILL)
    await until(lambda: harness.pipeline.limiter.in_flight("n:acme") == own, timeout_s=10)
    gate.set()
    answered = await statuses
    assert answered.count(0) == N - own and answered.count(200) == own  # the worker's clients saw it die
    await until(lambda: harness.pipeline.limiter.in_flight("n:acme") == 0, timeout_s=10)
