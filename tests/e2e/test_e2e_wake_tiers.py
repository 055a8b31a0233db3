"""The idle ladder end to end, through `endpointd serve` and real containers: the echo engine
run by the real vLLM and SGLang presets (its image stands in for theirs, `[engines]`), which
emulates their sleep routes; and the real llama.cpp engine with SmolLM2, which sleeps by itself.

Each tier as a user meets it: a sleeping endpoint answers a request without a 503 (held while it
wakes), a parked one is woken by `docker start` of the same container, and no stream in flight
is cut when the idle timer could fire."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request

import aiohttp
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from engines.images import ECHO_IMAGE
from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker"
FAST = {"ENDPOINTD_MINUTE_S": "1", "ENDPOINTD_ENGINE_IMAGE_VLLM": ECHO_IMAGE,
        "ENDPOINTD_ENGINE_IMAGE_SGLANG": ECHO_IMAGE, "ENDPOINTD_LIVENESS_INTERVAL_S": "1"}
READY_TIMEOUT_S = 120
CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3}


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=FAST)
    s.alice = s.add_user("alice")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    yield s
    s.close()


def create(serve: Serve, name: str, image: dict, **kw):
    args = dict(
        repository=serve.model, framework="pytorch", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", type="private", custom_image=image,
        min_replica=1, max_replica=1,
    )
    args.update(kw)
    endpoint = HfApi(endpoint=serve.url, token=serve.alice).create_inference_endpoint(name, **args)
    endpoint.wait(timeout=READY_TIMEOUT_S, refresh_every=0.5)
    return endpoint


def create_sleeping(serve: Serve, name: str, image: dict, env: dict | None = None) -> None:
    """An endpoint with sleepAfter 1 s, created with a raw v2 body (the client has no sleepAfter
    argument), once it runs."""
    body = {"name": name, "type": "private", "provider": {"vendor": "local", "region": "local"},
            "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1",
                        "scaling": {"minReplica": 1, "maxReplica": 1, "sleepAfter": 1}},
            "model": {"repository": serve.model, "framework": "pytorch", "image": image, "env": env or {}}}
    request = urllib.request.Request(
        f"{serve.url}/v2/endpoint/alice", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {serve.alice}", "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()
    wait_for(lambda: status(serve, name)["state"] == "running", READY_TIMEOUT_S, f"{name} running")


def get(serve: Serve, path: str) -> dict:
    request = urllib.request.Request(f"{serve.url}{path}", headers={"Authorization": f"Bearer {serve.alice}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def send(serve: Serve, name: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        f"{serve.url}/endpoints/alice/{name}/v1/chat/completions", data=json.dumps(CHAT).encode(), method="POST",
        headers={"Authorization": f"Bearer {serve.alice}", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def status(serve: Serve, name: str) -> dict:
    return get(serve, f"/v2/endpoint/alice/{name}")["status"]


def kinds(serve: Serve, name: str) -> list[dict]:
    return get(serve, f"/v2/endpoint/alice/{name}/events?limit=1000")["items"]


def refused_while_asleep(container: str) -> list[str]:
    """The echo engine's log lines of inference requests it refused because it was asleep (it
    logs each request as `METHOD PATH STATUS`)."""
    done = subprocess.run([DOCKER, "logs", container], capture_output=True, text=True, check=True)
    return [line for line in (done.stdout + done.stderr).splitlines() if "/v1/" in line and line.endswith(" 503")]


def tier(serve: Serve, name: str, expected: str, timeout_s: float = 60) -> None:
    wait_for(lambda: status(serve, name).get("tier") == expected, timeout_s, f"{name} to be {expected}",
             interval_s=0.2)


@pytest.mark.parametrize("engine", ["vLLM", "sGLang"])
def test_an_idle_vllm_or_sglang_engine_sleeps_and_the_next_request_is_answered_without_a_503(serve, engine):
    name = engine.lower()
    create_sleeping(serve, name, {engine: {}})
    assert send(serve, name)[0] == 200

    tier(serve, name, "sleeping")
    shown = status(serve, name)
    assert shown["state"] == "running" and "asleep" in shown["message"]  # the client sees it serving
    (container,) = serve.containers()
    code, headers, answer = send(serve, name)  # no X-Scale-Up-Timeout: held through the wake, not a 503
    assert code == 200, answer
    assert json.loads(answer)["choices"][0]["message"]["content"]
    woke = [e for e in kinds(serve, name) if e["kind"] == "woke"]
    assert woke and woke[-1]["inputs"]["tier"] == "sleeping"
    assert serve.containers() == [container]  # the same process woke, nothing was created
    assert refused_while_asleep(container) == []  # nothing was ever sent to the engine while it slept


def test_no_stream_in_flight_is_cut_when_the_engine_could_sleep(serve):
    """100 streams in flight, each longer than sleepAfter: none is aborted, and the engine sleeps
    only once they are done."""
    create_sleeping(serve, "streams", {"vLLM": {}}, env={"ECHO_TOKEN_DELAY_S": "0.3"})
    words = " ".join(f"w{i}" for i in range(10))  # 10 tokens, 0.3 s apart: 3 s a stream

    async def stream(session: aiohttp.ClientSession) -> int:
        payload = {"model": "m", "stream": True, "max_tokens": 10, "messages": [{"role": "user", "content": words}]}
        async with session.post(f"{serve.url}/endpoints/alice/streams/v1/chat/completions", json=payload,
                                headers={"Authorization": f"Bearer {serve.alice}"}) as response:
            assert response.status == 200
            text = (await response.read()).decode()
        assert text.rstrip().endswith("data: [DONE]"), text[-200:]
        return text.count('"content"')

    async def all_streams() -> list[int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await asyncio.gather(*(stream(session) for _ in range(100)))

    counts = asyncio.run(all_streams())
    assert len(counts) == 100 and min(counts) >= 10
    tier(serve, "streams", "sleeping")  # and afterwards it does sleep
    sleeps = [e for e in kinds(serve, "streams") if e["kind"] == "replica_sleeping"]
    assert len(sleeps) == 1


def test_scale_to_zero_parks_the_container_and_a_wake_starts_it_again(serve):
    endpoint = create(serve, "parked", {"custom": {"url": ECHO_IMAGE, "healthRoute": "/health"}}, min_replica=0,
                      scale_to_zero_timeout=60)
    (container,) = serve.containers()
    endpoint.scale_to_zero()
    tier(serve, "parked", "parked")
    assert serve.containers() == []  # not running...
    assert serve.containers(all_states=True) == [container]  # ...but kept
    assert status(serve, "parked")["state"] == "scaledToZero"  # what the reference client knows

    code, headers, _ = send(serve, "parked")  # the reference's semantics: 503 without the header
    assert code == 503 and 1 <= int(headers["Retry-After"]) <= 5
    code, _, answer = send(serve, "parked", {"X-Scale-Up-Timeout": "60"})
    assert code == 200, answer
    assert serve.containers() == [container]  # the same container, started again
    woke = [e for e in kinds(serve, "parked") if e["kind"] == "woke"]
    assert woke[-1]["inputs"]["tier"] == "parked"
    wait_for(lambda: status(serve, "parked")["state"] == "running", 30, "running again")


def test_a_parked_container_is_adopted_after_a_restart_and_woken(serve):
    endpoint = create(serve, "kept", {"custom": {"url": ECHO_IMAGE, "healthRoute": "/health"}}, min_replica=0,
                      scale_to_zero_timeout=60)
    (container,) = serve.containers()
    endpoint.scale_to_zero()
    tier(serve, "kept", "parked")
    serve.stop()
    assert serve.containers(all_states=True) == [container]  # endpointd's stop leaves it as it was
    serve.start()
    tier(serve, "kept", "parked")
    assert [e for e in kinds(serve, "kept") if e["kind"] == "replica_adopted"]
    code, _, answer = send(serve, "kept", {"X-Scale-Up-Timeout": "60"})
    assert code == 200, answer
    assert serve.containers() == [container]
