"""An engine that crashes under load, end to end: `endpointd serve --workers 2` on the real Docker
engine, the echo engine exiting after every ECHO_CRASH_AFTER_REQUESTS answers, 20 clients (half
streaming, half held with X-Scale-Up-Timeout) on fresh connections, so that they land on both
processes. Every request in flight when a replica dies gets an answer (a 502, a cut stream, or a
503/504 from the hold while the replacement starts) well before the proxy's 120 s response-start
timeout: each client gives up after CLIENT_TIMEOUT_S, so a hang is a failure, not a slow test."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from tests.serve_process import Serve

pytestmark = pytest.mark.docker
CLIENT_TIMEOUT_S = 20.0
HOLD_S = 10  # X-Scale-Up-Timeout of the held clients: a hold ends, answered, well within CLIENT_TIMEOUT_S
CLIENTS = 20
CRASH_AFTER = 40
RUN_CAP_S = 120.0  # the load stops once a replacement has served, or after this


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env={
        "ENDPOINTD_WORKERS": "2", "ENDPOINTD_UPSTREAM_RESPONSE_START_TIMEOUT_S": "120",
    })
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)
    yield s
    s.close()


async def one(session: aiohttp.ClientSession, url: str, streaming: bool) -> str:
    """'200', '200 cut' (a stream broken after its head), another status, or what went wrong."""
    path, headers = ("/generate_stream", {}) if streaming else ("/generate", {"X-Scale-Up-Timeout": str(HOLD_S)})
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            async with session.post(url + path, json={"inputs": "w " * 20}, headers=headers) as r:
                try:
                    await r.read()
                except aiohttp.ClientPayloadError:
                    return f"{r.status} cut"
                return str(r.status)
    except TimeoutError:
        return f"no answer within {CLIENT_TIMEOUT_S:g} s"
    except aiohttp.ClientError as error:
        return f"{type(error).__name__}"


def test_requests_in_flight_when_the_engine_crashes_are_all_answered(serve):
    api = HfApi(endpoint=serve.url, token=serve.admin_token)
    image = {"url": "endpointd/echo:latest", "healthRoute": "/health",
             "env": {"ECHO_CRASH_AFTER_REQUESTS": str(CRASH_AFTER), "ECHO_TOKEN_DELAY_S": "0.05"}}
    endpoint = api.create_inference_endpoint(
        "crashy", repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", min_replica=1, max_replica=1,
        custom_image=image, type="public",
    )
    endpoint.wait(timeout=120, refresh_every=1)
    first = set(serve.containers("label=endpointd.name=crashy"))

    async def scenario() -> tuple[list[str], bool]:
        outcomes: list[str] = []
        stop = asyncio.Event()
        replaced_at: list[int] = []  # how many answers there were when a replacement was seen

        async def client(streaming: bool) -> None:
            # A fresh connection per request: spread over both processes, as separate callers are.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                while not stop.is_set():
                    outcome = await one(session, endpoint.url, streaming)
                    outcomes.append(outcome)
                    if outcome != "200":
                        await asyncio.sleep(0.1)  # a caller's back-off, not a hot loop of 503s

        async def watch() -> None:
            deadline = time.monotonic() + RUN_CAP_S
            while time.monotonic() < deadline:
                if not replaced_at:
                    now = set(await asyncio.to_thread(serve.containers, "label=endpointd.name=crashy"))
                    if now and now != first:
                        replaced_at.append(len(outcomes))
                elif outcomes[replaced_at[0]:].count("200") >= CLIENTS:  # the replacement serves
                    break
                await asyncio.sleep(0.5)
            stop.set()

        await asyncio.gather(watch(), *(client(i % 2 == 0) for i in range(CLIENTS)))
        return outcomes, bool(replaced_at)

    outcomes, replaced = asyncio.run(scenario())
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    assert replaced, f"the replica was not replaced within {RUN_CAP_S:g} s: {counts}"
    failed = [o for o in outcomes if o.split()[0] not in {"200", "502", "503", "504"}]
    assert failed == [], counts
    assert set(outcomes) - {"200"}, counts  # the crash hit requests in flight
    log = serve.log.read_text()
    assert "handler is closed" not in log
    assert "Exception in callback" not in log
    endpoint.delete()
