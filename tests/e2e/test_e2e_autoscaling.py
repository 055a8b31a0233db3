"""Autoscaling end to end: `endpointd serve` on the real Docker engine, the echo engine, and short
windows (2 s averaging, 5 s stabilization, 1-second "minutes")."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
FAST_WINDOWS = {
    "ENDPOINTD_SCALE_WINDOW_S": "2", "ENDPOINTD_STABILIZATION_S": "5", "ENDPOINTD_MINUTE_S": "1",
    "ENDPOINTD_SCALE_INTERVAL_S": "0.5",
}


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=FAST_WINDOWS)
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)
    yield s
    s.close()


def deploy(serve: Serve, name: str, *, min_replica: int, max_replica: int, token_delay_s: float, timeout_min=None):
    api = HfApi(endpoint=serve.url)
    image = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {"ECHO_TOKEN_DELAY_S": str(token_delay_s)}}
    endpoint = api.create_inference_endpoint(
        name, repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", min_replica=min_replica,
        max_replica=max_replica, scale_to_zero_timeout=timeout_min, custom_image=image, type="public",
    )
    endpoint.wait(timeout=120, refresh_every=1)
    return endpoint


def containers(serve: Serve, name: str) -> int:
    return len(serve.containers(f"label=endpointd.name={name}"))


def ready(endpoint) -> int:
    return endpoint.fetch().raw["status"]["readyReplica"]


async def load(url: str, clients: int, stop: asyncio.Event, results: list[int]) -> None:
    """`clients` closed loops of requests until `stop`; bounded by the caller's deadline."""
    async with aiohttp.ClientSession() as session:
        async def client():
            while not stop.is_set():
                async with session.post(url + "/generate", json={"inputs": "w " * 10}) as r:
                    await r.read()
                    results.append(r.status)

        await asyncio.gather(*(client() for _ in range(clients)))


def test_load_drives_replicas_up_to_max_and_back_down(serve):
    endpoint = deploy(serve, "elastic", min_replica=1, max_replica=3, token_delay_s=0.05)  # ~0.5 s a request
    assert containers(serve, "elastic") == 1

    async def scenario():
        stop, statuses = asyncio.Event(), []
        generator = asyncio.create_task(load(endpoint.url, 8, stop, statuses))  # ~8 pending: wants 3+
        try:
            deadline = time.monotonic() + 90
            while ready(endpoint) < 3:
                assert time.monotonic() < deadline, "did not reach 3 ready replicas under load"
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.wait_for(generator, 30)
        return statuses

    statuses = asyncio.run(scenario())
    assert statuses and set(statuses) == {200}  # nothing lost while scaling up
    assert containers(serve, "elastic") == 3
    wait_for(lambda: ready(endpoint) == 1 and containers(serve, "elastic") == 1, 60, "the scale-down to min 1")
    endpoint.delete()


def test_streams_running_during_a_scale_down_all_complete(serve):
    endpoint = deploy(serve, "streams", min_replica=1, max_replica=3, token_delay_s=0.1)

    async def scenario():
        stop, statuses = asyncio.Event(), []
        generator = asyncio.create_task(load(endpoint.url, 8, stop, statuses))
        deadline = time.monotonic() + 90
        while ready(endpoint) < 3:
            assert time.monotonic() < deadline, "did not reach 3 ready replicas under load"
            await asyncio.sleep(0.5)
        stop.set()
        await generator
        # Three long streams (120 tokens x 0.1 s = 12 s), one per replica (least pending). They
        # are 3 pending: ceil(3 / 1.5) = 2 replicas, so after the 5 s stabilization the scaler
        # drains a replica that is in the middle of a stream.
        async with aiohttp.ClientSession() as session:
            async def stream():
                async with session.post(endpoint.url + "/generate_stream", json={"inputs": "t " * 120, "parameters": {"max_new_tokens": 120}}) as r:
                    events = [line async for line in r.content if line.startswith(b"data:")]
                    return r.status, events

            streams = [asyncio.create_task(stream()) for _ in range(3)]
            seen_scale_down = False
            while not all(s.done() for s in streams):
                seen_scale_down = seen_scale_down or ready(endpoint) < 3
                await asyncio.sleep(0.3)
            return [s.result() for s in streams], seen_scale_down

    results, seen_scale_down = asyncio.run(scenario())
    assert seen_scale_down, "the scale-down did not start while the streams ran"
    for status, events in results:
        assert status == 200 and len(events) == 120
        assert json.loads(events[-1][5:])["generated_text"] == "t " * 120
    wait_for(lambda: containers(serve, "streams") == 1, 60, "the scale-down to min 1")
    endpoint.delete()


def test_idle_endpoint_goes_to_zero_and_wakes_for_a_held_request(serve):
    endpoint = deploy(serve, "sleepy", min_replica=0, max_replica=1, token_delay_s=0, timeout_min=2)  # 2 s idle
    wait_for(lambda: endpoint.fetch().status == "scaledToZero" and containers(serve, "sleepy") == 0, 60, "scale to zero")

    async def held():
        async with aiohttp.ClientSession() as session:
            async with session.post(endpoint.url + "/generate", json={"inputs": "wake up"}, headers={"X-Scale-Up-Timeout": "60"}) as r:
                return r.status, await r.json()

    assert asyncio.run(held()) == (200, {"generated_text": "wake up "})
    assert containers(serve, "sleepy") == 1
    wait_for(lambda: endpoint.fetch().status == "scaledToZero", 60, "back to zero after idle")
    endpoint.delete()
