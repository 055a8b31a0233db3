"""Worker processes (proxy/workers/): real processes on the same port (SO_REUSEPORT) beside the
main one, whose control plane they share over a unix socket. Connections land on a process the
kernel picks, so each test opens many of them: with two processes, the chance that twenty all
land on the same one is 2 ** -19.

What must hold whichever process a request lands on: the main process's counts are the sums
over every process (the scaling signal; the drain waits for a replica's sum to be 0); an
endpoint at zero is woken once however many processes hold requests for it; /metrics adds every
process's figures up; the analytics tap gets every process's answers; a management request
that lands on a worker is served by the main process; SIGTERM drains them all."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from aiohttp import web

from proxy.core.config import AUTO_WORKERS_MAX, ProxyConfig, worker_count
from proxy.core.control import AuthType, Replica
from tests.e2e.test_proxy_listeners import ROOT, accepts
from tests.proxy_harness import Harness, bearer, free_port, until
from tests.serve_process import wait_for

EP = "/endpoints/acme/e1"
N = 20


@pytest.fixture
async def two():
    h = Harness()
    yield h
    await h.close()


async def posts(h, n: int, **kw) -> list[int]:
    """`n` requests at once, each on its own connection (so they spread over the processes)."""
    import aiohttp

    async def one():
        async with aiohttp.ClientSession() as session:
            async with session.post(h.url(EP), data=b"x", **kw) as r:
                await r.read()
                return r.status

    return await asyncio.gather(*(one() for _ in range(n)))


def sockets_of(pid: int) -> int:
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))


async def test_requests_held_in_every_process_are_one_wake_and_one_sum(two):
    up = await two.upstream()
    two.endpoint()  # at zero
    await two.start(processes=2)
    (worker,) = two.proxy.workers.pids()
    base = sockets_of(worker)
    held = asyncio.create_task(posts(two, N, headers={"X-Scale-Up-Timeout": "60"}))
    # The main process's count is the sum: every held request, wherever it landed.
    await until(lambda: two.pending() == N, timeout_s=30)
    assert sockets_of(worker) > base  # some of them are held by the worker
    assert two.control.wakes == ["acme/e1"]  # once, though both processes hold requests
    two.control.set_replicas("acme", "e1", [Replica("r0", up.address)])
    assert await held == [200] * N
    await until(lambda: two.pending() == 0, timeout_s=10)
    assert two.control.wakes == ["acme/e1"]


async def test_a_drain_sees_the_in_flight_requests_of_every_process(two):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.Response(text="ok")

    up = await two.upstream(slow)
    two.endpoint(upstreams=(up,))
    await two.start(processes=2)
    busy = asyncio.create_task(posts(two, N))
    loads = two.pipeline.counter.replica_loads
    await until(lambda: len(up.seen) == N, timeout_s=30)
    await until(lambda: loads("acme/e1").get("r0") == N, timeout_s=10)  # what the controller's drain reads
    assert two.pipeline.counter.local_loads("acme/e1").get("r0", 0) < N  # not all of them are this process's
    release.set()
    assert await busy == [200] * N
    await until(lambda: loads("acme/e1").get("r0", 0) == 0, timeout_s=10)


async def test_tokens_metrics_and_answers_over_every_process(two):
    up = await two.upstream()
    two.endpoint(auth=AuthType.AUTHENTICATED, upstreams=(up,))
    await two.start(processes=2, tap=True)
    assert await posts(two, N, headers=bearer("outsider")) == [200] * N  # a worker asks the main process
    assert await posts(two, N, headers={"Authorization": "Bearer nope"}) == [401] * N
    import aiohttp

    async def scrape() -> str:  # each on a new connection: some land on the worker, which passes them on
        async with aiohttp.ClientSession() as session:
            async with session.get(two.url("/metrics"), headers=bearer("admin")) as r:
                assert r.status == 200
                return await r.text()

    for text in await asyncio.gather(*(scrape() for _ in range(10))):
        assert f'endpointd_proxy_requests_total{{code="200",endpoint="acme/e1",replica="r0"}} {N}.0' in text
        assert f'endpointd_proxy_requests_total{{code="401",endpoint="acme/e1",replica=""}} {N}.0' in text
    kept: list = []
    body_bytes = [0, 0]

    def took_all() -> bool:
        for answers in two.pipeline.metrics.take_answers().values():
            kept.extend(answers.kept)
            body_bytes[0] += answers.bytes_in
            body_bytes[1] += answers.bytes_out
        return len(kept) == 2 * N

    await until(took_all, timeout_s=10)  # the worker pushes its answers every second
    assert sorted(code for _, code, _ in kept) == ["200"] * N + ["401"] * N
    # Each admitted request sent 1 body byte and got the upstream's JSON back; refused ones none.
    answer = len(b'{"path": "/", "body_len": 1}')
    assert body_bytes == [N, N * answer]


def test_the_worker_count():
    assert worker_count(ProxyConfig(workers=3)) == 3
    assert worker_count(ProxyConfig(workers=3, tls_cert="c", tls_key="k")) == 1
    auto = worker_count(ProxyConfig())
    assert auto == max(1, min(AUTO_WORKERS_MAX, len(os.sched_getaffinity(0))))


SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from proxy import static_routes
from proxy.management.app import make_app
from proxy.core.config import ProxyConfig
from proxy.server import run
config = ProxyConfig(**json.loads(sys.argv[1]))
run(make_app(config, static_routes.load(sys.argv[2])), config)
"""


def test_sigterm_drains_and_stops_every_worker(tmp_path):
    replica = subprocess.Popen([sys.executable, str(ROOT / "loadtests" / "fast_upstream.py"), str(port := free_port())])
    routes = tmp_path / "routes.toml"
    routes.write_text(f'[[endpoints]]\nnamespace = "acme"\nname = "e1"\ntype = "public"\nreplicas = ["127.0.0.1:{port}"]\n')
    proxy_port = free_port()
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, json.dumps({"port": proxy_port, "workers": 3, "drain_timeout_s": 5}),
             str(routes)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "the data plane runs in 3 processes" in log.read_text(), 60, "the workers to listen")
        wait_for(lambda: accepts(proxy_port), 10, "the proxy to accept")
        pids = [int(p) for p in log.read_text().split("this one and ")[1].splitlines()[0].split(", ")]
        assert len(pids) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
        text = log.read_text()
        assert text.count("stopping: no new connections") == 3  # the main process and both workers
        assert "Traceback" not in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        replica.terminate()
        replica.wait()
