"""Rate limits in the one admission path (proxy/core/pipeline.py), over HTTP against in-process
fake replicas: the 429's shape, what counts as in flight (held requests included) and when it
stops counting, who is limited apart from whom, and that with no limit nothing is touched."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.core.control import AuthType, Replica
from proxy.core.limits import Override
from proxy.core.ratelimit import RateLimiter
from tests.proxy_harness import bearer, until

EP = "/endpoints/acme/e1"
HOLD = {"X-Scale-Up-Timeout": "30"}


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def post(harness, path: str = EP, **kw) -> tuple[int, dict[str, str], bytes]:
    async with harness.request("POST", path, data=b"x", **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def gated(harness):
    """A fake replica whose answers wait until `gate` is set; `arrived` counts what reached it."""
    gate = asyncio.Event()

    async def slow(request):
        await gate.wait()
        return web.json_response({"ok": True})

    return await harness.upstream(slow), gate


def in_flight(harness, key: str) -> int:
    return harness.pipeline.limiter.in_flight(key)


async def test_over_a_per_minute_limit_the_answer_is_a_429_with_retry_after_and_the_sentence(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(namespace_rpm=6)  # one every 10 s, after a burst of 3
    clock = Clock()
    harness.pipeline.limiter = RateLimiter(harness.pipeline.limits, clock)
    assert [(await post(harness))[0] for _ in range(3)] == [200, 200, 200]
    status, headers, body = await post(harness)
    sentence = "too many requests: namespace acme's limit of 6 requests per minute is reached; retry in 10 s"
    assert (status, headers["Retry-After"], headers["X-Error-Message"]) == (429, "10", sentence)
    assert headers["Content-Type"] == "application/json"
    assert body == f'{{"error": "{sentence}"}}'.encode()
    status, _, body = await post(harness, EP + "/v1/chat/completions")  # the OpenAI shape on OpenAI routes
    assert status == 429 and b'"type": "rate_limited", "code": 429' in body
    assert len(up.seen) == 3 and harness.pending() == 0  # a refused request counts nowhere
    clock.now += 10
    assert (await post(harness))[0] == 200
    async with harness.request("GET", "/metrics", headers=bearer("admin")) as r:
        text = await r.text()
    assert 'endpointd_rate_limited_total{limit="namespace_rpm",namespace="acme"} 2.0' in text
    assert 'endpointd_proxy_refused_total{cause="rate_limited",code="429",endpoint="acme/e1"} 2.0' in text


async def test_held_requests_count_as_concurrent_until_they_end(harness):
    entry = harness.endpoint()  # at zero: requests are held while it wakes
    await harness.start(namespace_concurrent=2)
    held = [asyncio.create_task(post(harness, headers=HOLD)) for _ in range(2)]
    await until(lambda: harness.pipeline.gate.held.get("acme/e1") == 2)
    status, headers, body = await post(harness, headers=HOLD)
    assert (status, headers["Retry-After"]) == (429, "1")
    assert b"namespace acme's limit of 2 concurrent requests is reached; retry in 1 s" in body
    assert in_flight(harness, "n:acme") == 2
    up, gate = await gated(harness)
    harness.control.set_replicas(entry.namespace, entry.name, [Replica("r0", up.address)])
    await until(lambda: len(up.seen) == 2)
    assert (await post(harness))[0] == 429  # forwarded now, still in flight: still counted
    gate.set()
    assert [status for status, _, _ in await asyncio.gather(*held)] == [200, 200]
    assert in_flight(harness, "n:acme") == 0
    assert (await post(harness))[0] == 200


async def test_a_held_request_whose_client_leaves_gives_its_share_back(harness):
    harness.endpoint()
    await harness.start(namespace_concurrent=1)
    task = asyncio.create_task(post(harness, headers=HOLD))
    await until(lambda: in_flight(harness, "n:acme") == 1)
    task.cancel()  # closes the client's connection
    await until(lambda: in_flight(harness, "n:acme") == 0 and harness.pending() == 0)


async def test_a_request_refused_after_admission_gives_its_share_back(harness):
    gone = "127.0.0.1:1"  # nothing listens: the replica cannot be reached, a 502
    harness.endpoint(upstreams=(gone,))
    await harness.start(namespace_concurrent=1, upstream_connect_timeout_s=1)
    assert [(await post(harness))[0] for _ in range(3)] == [502, 502, 502]  # never a 429: each gave its share back
    assert in_flight(harness, "n:acme") == 0


async def test_another_namespace_is_not_held_back(harness):
    up, gate = await gated(harness)
    harness.endpoint(upstreams=(up,))
    harness.endpoint("e2", namespace="beta", upstreams=(up,))
    await harness.start(namespace_concurrent=1)
    first = asyncio.create_task(post(harness))
    await until(lambda: len(up.seen) == 1)
    assert (await post(harness))[0] == 429
    other = asyncio.create_task(post(harness, "/endpoints/beta/e2"))
    await until(lambda: len(up.seen) == 2)
    gate.set()
    assert [(await first)[0], (await other)[0]] == [200, 200]


async def test_token_limits_count_each_token_apart_and_not_on_public_endpoints(harness):
    up, gate = await gated(harness)
    harness.endpoint(upstreams=(up,), auth=AuthType.AUTHENTICATED)
    harness.endpoint("open", upstreams=(up,))  # public: who calls is not asked, so no token limit
    await harness.start(token_concurrent=1)
    mine = asyncio.create_task(post(harness, headers=bearer("owner")))  # its first: the store is asked
    await until(lambda: len(up.seen) == 1)
    status, _, body = await post(harness, headers=bearer("owner"))  # its verdict cached now
    assert status == 429 and b"this token's limit of 1 concurrent requests is reached" in body
    theirs = asyncio.create_task(post(harness, headers=bearer("member")))
    public = asyncio.create_task(post(harness, "/endpoints/acme/open", headers=bearer("owner")))
    await until(lambda: len(up.seen) == 3)
    gate.set()
    assert [(await task)[0] for task in (mine, theirs, public)] == [200, 200, 200]


async def test_an_admins_override_counts_at_once_and_its_removal_too(harness):
    up, gate = await gated(harness)
    harness.endpoint(upstreams=(up,))
    await harness.start()
    harness.pipeline.limits.set("acme", Override(concurrent=1))
    first = asyncio.create_task(post(harness))
    await until(lambda: len(up.seen) == 1)
    assert (await post(harness))[0] == 429
    harness.pipeline.limits.set("acme", None)
    second = asyncio.create_task(post(harness))
    await until(lambda: len(up.seen) == 2)
    gate.set()
    assert [(await first)[0], (await second)[0]] == [200, 200]


async def test_the_control_planes_probe_is_never_limited(harness):
    up, gate = await gated(harness)
    harness.endpoint(upstreams=(up,))
    await harness.start(probe_secret="probe-secret", namespace_concurrent=1, namespace_rpm=1)
    first = asyncio.create_task(post(harness))
    await until(lambda: len(up.seen) == 1)
    probe = asyncio.create_task(post(harness, headers={"X-Endpointd-Probe": "probe-secret"}))
    await until(lambda: len(up.seen) == 2)
    gate.set()
    assert [(await first)[0], (await probe)[0]] == [200, 200]


class Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"the limiter's {name} was used with no limit configured")


async def test_with_no_limit_configured_the_limiter_is_never_asked(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    harness.endpoint("private", upstreams=(up,), auth=AuthType.AUTHENTICATED)
    harness.endpoint("cold")
    await harness.start()
    pipeline = harness.pipeline
    pipeline.limiter = Untouchable()

    async def remote(namespace, token):
        raise AssertionError("the main process was asked")

    pipeline.remote_rate = remote  # as in a worker: not asked either
    assert not pipeline.limits.active
    assert (await post(harness))[0] == 200
    assert (await post(harness, "/endpoints/acme/private", headers=bearer("owner")))[0] == 200  # looked up
    assert (await post(harness, "/endpoints/acme/private", headers=bearer("owner")))[0] == 200  # cached
    assert (await post(harness, "/endpoints/acme/cold", headers={"X-Scale-Up-Timeout": "0.01"}))[0] == 503
