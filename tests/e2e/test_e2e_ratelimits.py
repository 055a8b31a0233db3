"""Rate limits end to end: `endpointd serve --workers 2` on the real Docker engine, the echo
engine, two namespaces (alice, bob), an admin setting alice's limits with `endpointd ratelimits`.
Every request goes on a fresh connection, so the kernel spreads them over both processes (the
main one and the worker): a limit holds over the two together or the counts below are off.

The figures are printed (`pytest -s`); the only bound on time is the issue's: under a load of
twice a per-minute limit, the admitted count is within 5 % of what the limit allows over the
load's span (proxy/core/ratelimit.py `allowed`: its burst, then one every 60/rpm s)."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from proxy.core.ratelimit import allowed, burst
from tests.docker_fixtures import require_docker
from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
RPM = 120  # alice's limit: a burst of 3, then one every 0.5 s
LOAD_S = 20.0
SLOW = {"ECHO_TOKEN_DELAY_S": "0.5"}  # a request of 20 words: 10 s in flight
WORDS = "w " * 20
CONCURRENT = 3


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """One serve for the module's tests, with its endpoints running (each test sets the limits it needs)."""
    asyncio.run(require_docker())
    s = Serve(tmp_path_factory.mktemp("ratelimits") / "data", admin_token="test-admin-token",
              extra_env={"ENDPOINTD_WORKERS": "2",
                         # each token's own limit, far above what any test sends: checked, never reached
                         "ENDPOINTD_TOKEN_CONCURRENT": "1000"})
    s.alice = s.add_user("alice")
    s.bob = s.add_user("bob")
    s.start()
    old, hub_constants.INFERENCE_ENDPOINTS_ENDPOINT = hub_constants.INFERENCE_ENDPOINTS_ENDPOINT, f"{s.url}/v2"
    try:
        s.endpoints = {
            "fast": create(s, s.alice, "fast"), "slow": create(s, s.alice, "slow", env=SLOW),
            "cold": create(s, s.alice, "cold", env=SLOW), "other": create(s, s.bob, "other", env=SLOW),
        }
        for endpoint in s.endpoints.values():
            endpoint.wait(timeout=120, refresh_every=0.5)
        yield s
    finally:
        hub_constants.INFERENCE_ENDPOINTS_ENDPOINT = old
        s.close()


def create(serve: Serve, token: str, name: str, env: dict[str, str] | None = None):
    return HfApi(endpoint=serve.url, token=token).create_inference_endpoint(
        name, repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", type="authenticated", min_replica=0, max_replica=1,
        scale_to_zero_timeout=60, custom_image={"url": "endpointd/echo:latest", "healthRoute": "/health", "env": env or {}},
    )


class Answer:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def error(self) -> str:
        return json.loads(self.body)["error"]


async def call(session: aiohttp.ClientSession, serve: Serve, token: str, url: str, **kw) -> Answer:
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    async with session.post(url + "/generate", json={"inputs": WORDS}, headers=headers, **kw) as r:
        return Answer(r.status, r.headers, await r.read())


def fresh() -> aiohttp.ClientSession:
    """Every request on a connection of its own, as separate callers make them."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


async def scrape(serve: Serve) -> str:
    async with fresh() as session:
        async with session.get(f"{serve.url}/metrics", headers={"Authorization": f"Bearer {serve.admin_token}"}) as r:
            return await r.text()


def rate_limited(text: str, limit: str) -> float:
    found = re.search(rf'endpointd_rate_limited_total{{limit="{limit}",namespace="alice"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_twice_the_per_minute_limit_is_admitted_at_the_limit_over_both_processes(serve):
    said = serve.cli("ratelimits", "set", "alice", "--rpm", str(RPM))
    assert said.splitlines() == [
        f"namespace alice: {RPM} requests per minute (override), unlimited concurrent requests (default)",
        "each token: unlimited requests per minute, 1000 concurrent requests",
    ]
    before = rate_limited(asyncio.run(scrape(serve)), "namespace_rpm")

    async def load() -> tuple[list[Answer], list[Answer], float]:
        loop = asyncio.get_running_loop()
        interval_s = 60 / (2 * RPM)  # twice the limit
        n = int(LOAD_S / interval_s)
        async with fresh() as session:
            start = loop.time()
            alice, bob = [], []
            for i in range(n):
                await asyncio.sleep(max(0.0, start + i * interval_s - loop.time()))  # the load's pace
                alice.append(asyncio.create_task(call(session, serve, serve.alice, serve.endpoints["fast"].url)))
                if i % 4 == 0:  # bob's namespace meanwhile, with no limit of its own
                    bob.append(asyncio.create_task(call(session, serve, serve.bob, serve.endpoints["other"].url)))
            span_s = loop.time() - start
            return await asyncio.gather(*alice), await asyncio.gather(*bob), span_s

    alice, bob, span_s = asyncio.run(load())
    admitted = sum(a.status == 200 for a in alice)
    limited = [a for a in alice if a.status == 429]
    bound = allowed(RPM, span_s)
    print(f"\nalice: {len(alice)} requests in {span_s:.1f} s ({len(alice) / span_s * 60:.0f}/min), {admitted} admitted "
          f"({admitted / span_s * 60:.0f}/min; {(admitted - burst(RPM)) / span_s * 60:.0f}/min after the burst of "
          f"{burst(RPM)}), {len(limited)} refused; the limit allows {bound} "
          f"({admitted / bound:.1%} of it); bob: {len(bob)} requests, {sum(b.status == 200 for b in bob)} answered 200")
    assert admitted + len(limited) == len(alice)
    assert abs(admitted - bound) <= 0.05 * bound
    assert [b.status for b in bob] == [200] * len(bob)
    for answer in limited:
        retry = int(answer.headers["Retry-After"])
        assert retry >= 1
        assert answer.error == (f"too many requests: namespace alice's limit of {RPM} requests per minute is "
                                f"reached; retry in {retry} s")
    assert rate_limited(asyncio.run(scrape(serve)), "namespace_rpm") - before == len(limited)


def test_a_concurrency_limit_admits_exactly_that_many_at_once_over_both_processes(serve):
    serve.cli("ratelimits", "set", "alice", "--rpm", "0", "--concurrent", str(CONCURRENT))

    async def burst() -> tuple[list[Answer], list[Answer]]:
        async with fresh() as session:
            alice = [asyncio.create_task(call(session, serve, serve.alice, serve.endpoints["slow"].url))
                     for _ in range(20)]
            bob = [asyncio.create_task(call(session, serve, serve.bob, serve.endpoints["other"].url))
                   for _ in range(5)]
            return await asyncio.gather(*alice), await asyncio.gather(*bob)

    alice, bob = asyncio.run(burst())
    statuses = sorted(a.status for a in alice)
    print(f"\n20 slow requests (10 s each) at once to alice, {CONCURRENT} at a time: {statuses.count(200)} admitted, "
          f"{statuses.count(429)} refused; bob's 5 meanwhile: {[b.status for b in bob]}")
    assert statuses == [200] * CONCURRENT + [429] * (20 - CONCURRENT)
    assert [b.status for b in bob] == [200] * 5  # another namespace: not held back
    for answer in alice:
        if answer.status == 429:
            assert answer.headers["Retry-After"] == "1"
            assert answer.error == (f"too many requests: namespace alice's limit of {CONCURRENT} concurrent requests "
                                    "is reached; retry in 1 s")


def test_requests_held_through_a_cold_start_count_as_concurrent(serve):
    serve.cli("ratelimits", "set", "alice", "--rpm", "0", "--concurrent", str(CONCURRENT))
    cold = serve.endpoints["cold"]
    cold.scale_to_zero()
    wait_for(lambda: cold.fetch().status == "scaledToZero", 60, "alice/cold at zero")

    async def burst() -> list[Answer]:
        async with fresh() as session:
            return await asyncio.gather(*(
                call(session, serve, serve.alice, cold.url, headers={"X-Scale-Up-Timeout": "120"}) for _ in range(10)
            ))

    statuses = sorted(a.status for a in asyncio.run(burst()))
    print(f"\n10 requests to alice/cold at zero, held through its wake, {CONCURRENT} at a time: {statuses}")
    assert statuses == [200] * CONCURRENT + [429] * (10 - CONCURRENT)


def test_an_admins_limits_survive_a_restart_and_unset_restores_the_defaults(serve):
    serve.cli("ratelimits", "set", "alice", "--concurrent", "7")
    serve.stop()
    serve.start()
    assert serve.cli("ratelimits", "show", "alice").splitlines()[0] == (
        "namespace alice: unlimited requests per minute (default), 7 concurrent requests (override)")
    assert serve.cli("ratelimits", "unset", "alice").splitlines()[0] == (
        "namespace alice: unlimited requests per minute (default), unlimited concurrent requests (default)")
