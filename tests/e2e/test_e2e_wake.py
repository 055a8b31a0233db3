"""A scale-to-zero during a wake (issue 17, section 3), on the real Docker engine with a real
`endpointd serve` (its default workers) and the echo engine: the start the wake asked for is
cancelled, and the endpoint must still wake for the next client request, held or not.

The proxy's time-based wake retry is set far beyond the test, so only the re-arming of the wake
when the endpoint returns to zero can make these requests wake it."""

from __future__ import annotations

import asyncio

import aiohttp
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {"ECHO_STARTUP_DELAY_S": "5"}}
ENV = {
    "ENDPOINTD_SCALE_WINDOW_S": "2", "ENDPOINTD_STABILIZATION_S": "5", "ENDPOINTD_MINUTE_S": "1",
    "ENDPOINTD_SCALE_INTERVAL_S": "0.5", "ENDPOINTD_SWEEP_INTERVAL_S": "3600",
    "ENDPOINTD_WAKE_RETRY_S": "3600",
}
HELD = 60  # clients held through the cold start at once


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=ENV)
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)
    yield s
    s.close()


def containers(serve: Serve, name: str) -> list[str]:
    """The endpoint's running containers (at zero a parked one is kept, stopped)."""
    return serve.containers(f"label=endpointd.name={name}")


async def send(url: str, n: int, hold_s: int | None) -> list[tuple[int, str]]:
    """`n` concurrent calls, each on its own connection; (status, text) of each."""
    headers = {"X-Scale-Up-Timeout": str(hold_s)} if hold_s else {}

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, str]:
        async with session.post(url + "/generate", json={"inputs": f"w{i}"}, headers=headers) as r:
            return r.status, await r.text()

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        return await asyncio.gather(*(one(session, i) for i in range(n)))


def zero_during_a_wake(serve: Serve, endpoint, name: str) -> None:
    """Unheld requests wake the endpoint; a user's scale-to-zero cancels the start they asked for."""
    for status, text in asyncio.run(send(endpoint.url, 3, None)):
        assert status == 503 and "is starting up" in text, (status, text)
    wait_for(lambda: containers(serve, name), 60, "the wake to create a container")
    cancelled = serve.log.read_text().count("replica_cancelled")
    endpoint.scale_to_zero()
    wait_for(lambda: serve.log.read_text().count("replica_cancelled") > cancelled, 30, "the start to be cancelled")
    wait_for(lambda: not containers(serve, name) and endpoint.fetch().status == "scaledToZero", 60,
             "the cancelled start's container to be gone")


def asleep_after_a_cancelled_wake(serve: Serve, name: str):
    """running → scale-to-zero → a wake → scale-to-zero while that replica starts."""
    endpoint = HfApi(endpoint=serve.url).create_inference_endpoint(
        name, repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", type="public", custom_image=ECHO,
        min_replica=0, max_replica=1, scale_to_zero_timeout=60,
    )
    endpoint.wait(timeout=120, refresh_every=0.5)
    endpoint.scale_to_zero()
    wait_for(lambda: not containers(serve, name) and endpoint.fetch().status == "scaledToZero", 60, "zero")
    zero_during_a_wake(serve, endpoint, name)
    return endpoint


def test_held_clients_after_a_zero_during_a_wake_are_served(serve):
    endpoint = asleep_after_a_cancelled_wake(serve, "held")
    results = asyncio.run(send(endpoint.url, HELD, 120))
    assert [status for status, _ in results] == [200] * HELD, [r for r in results if r[0] != 200][:3]
    assert all(f"w{i} " in text for i, (_, text) in enumerate(results))  # each its own answer
    # And again, from running: the wake is re-armed each time.
    endpoint.scale_to_zero()
    wait_for(lambda: not containers(serve, "held") and endpoint.fetch().status == "scaledToZero", 60, "zero")
    zero_during_a_wake(serve, endpoint, "held")
    ((status, text),) = asyncio.run(send(endpoint.url, 1, 120))
    assert status == 200 and "w0 " in text, (status, text)
    endpoint.delete()


def test_an_unheld_request_after_a_zero_during_a_wake_wakes_it(serve):
    endpoint = asleep_after_a_cancelled_wake(serve, "unheld")
    ((status, text),) = asyncio.run(send(endpoint.url, 1, None))
    assert status == 503 and "is starting up" in text, (status, text)
    wait_for(lambda: containers(serve, "unheld"), 60, "the unheld request to wake the endpoint")
    endpoint.wait(timeout=120, refresh_every=0.5)
    assert endpoint.status == "running"
    endpoint.delete()
