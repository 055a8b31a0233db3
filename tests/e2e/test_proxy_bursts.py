"""Bursts through the real proxy: a thousand requests held through one cold start. In the e2e tier
for its size (the unit tier stays a few seconds long); in-process replicas, real sockets."""

import asyncio

from proxy.core.control import Replica
from tests.proxy_harness import until

EP = "/endpoints/acme/e1"


async def _post(harness, path, **kw):
    async with harness.request("POST", path, data=b"x", **kw) as r:
        return r.status, await r.read()


async def test_thousand_held_requests_all_served_with_one_wake(harness):
    up = await harness.upstream()
    harness.endpoint()
    await harness.start()
    n = 1000
    tasks = [asyncio.create_task(_post(harness, EP, headers={"X-Scale-Up-Timeout": "60"})) for _ in range(n)]
    await until(lambda: harness.pipeline.gate.held.get("acme/e1") == n, timeout_s=60)
    harness.control.set_replicas("acme", "e1", [Replica("r0", up.address)])
    results = await asyncio.gather(*tasks)
    assert [status for status, _ in results] == [200] * n
    assert harness.control.wakes == ["acme/e1"]
    assert harness.pending() == 0
