"""Sleeping replicas on the real Docker engine (marked `docker`): the echo image started by the real
vLLM and SGLang presets (the image overridden as an operator's `default_images` does) sleeps and
wakes through engines/sleep.py, refuses and counts what reaches it asleep, and loses the requests
a sleep cuts; llama.cpp's server with SmolLM2 falls asleep by itself after sleepAfter, says so in
/props, and is woken by the next request."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from engines import images, models, readiness, sleep
from engines.docker import DockerRuntime
from engines.hardware import Resources
from engines.presets import build_container_spec
from engines.runtime import EndpointKey, ReplicaInfo
from engines.sleep import SleepFailed, SleepKind
from tests.e2e.test_e2e_llamacpp import require_llamacpp_image

pytestmark = pytest.mark.docker

KEY = "sleep-test-key"  # a flag's value for SGLang: must not start with "-"
ECHO_READY_S = 30.0
LLAMACPP_READY_S = 180.0
CALL_TIMEOUT_S = 30.0
# How long llama.cpp may take to fall asleep after sleepAfter = 1 s: generous, the machine is shared.
FALL_ASLEEP_WITHIN_S = 60.0
CPU = Resources(cpus=None, memory_bytes=None, gpu_count=0)
CHAT = {"model": "e1", "messages": [{"role": "user", "content": "hello there"}]}
ASLEEP = {"error": "the engine is asleep"}
SKY = [{"role": "user", "content": "What color is the sky on a clear day?"}]
COUNT = [{"role": "user", "content": "Count from 1 to 1000, one number a line."}]


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def echo_image():
    """The echo image built from this tree: its personalities are what these tests run."""
    runtime = DockerRuntime()
    try:
        labels = await runtime.image_labels(images.ECHO_IMAGE) or {}
    finally:
        await runtime.close()
    if labels.get(images.CONTEXT_LABEL) != images.context_digest(images.ECHO_CONTEXT):
        pytest.fail(f"the image {images.ECHO_IMAGE} is older than engines/echo: run `endpointd images build echo`")


async def start(runtime: DockerRuntime, key: EndpointKey, spec, deadline_s: float = ECHO_READY_S) -> ReplicaInfo:
    info = await runtime.start(key, f"r{uuid.uuid4().hex[:8]}", "1", spec)
    async with aiohttp.ClientSession() as session:
        return await readiness.wait_ready(runtime, info, session=session, deadline_s=deadline_s)


def echo_as(variant: str, tmp_path: Path, sleep_after_s: int | None = 60, **env: str):
    """The preset's container for `variant` with the echo image in place of the engine's."""
    return build_container_spec(
        {variant: {}}, model_dir=str(tmp_path), served_model_name="e1", resources=CPU, env=env,
        default_images={variant: images.ECHO_IMAGE}, api_key=KEY, sleep_after_s=sleep_after_s,
    )


async def chat(session: aiohttp.ClientSession, info: ReplicaInfo) -> tuple[int, dict]:
    async with session.post(f"http://{info.address}/v1/chat/completions", json=CHAT, headers=auth()) as response:
        return response.status, await response.json()


async def echo_counts(session: aiohttp.ClientSession, info: ReplicaInfo) -> dict[str, int]:
    async with session.get(f"http://{info.address}/metrics", headers=auth()) as response:
        lines = (await response.text()).splitlines()
    return {name: int(value) for name, value in (line.split() for line in lines if line.startswith("echo_"))}


async def test_echo_as_vllm_sleeps_refuses_while_asleep_and_wakes(docker_runtime, docker_key, echo_image, tmp_path):
    info = await start(docker_runtime, docker_key, echo_as("vLLM", tmp_path))
    async with aiohttp.ClientSession() as session:
        assert await sleep.is_sleeping(session, info, SleepKind.VLLM, CALL_TIMEOUT_S) is False
        assert (await chat(session, info))[0] == 200

        await sleep.put_to_sleep(session, info, SleepKind.VLLM, CALL_TIMEOUT_S)
        assert await sleep.is_sleeping(session, info, SleepKind.VLLM, CALL_TIMEOUT_S) is True
        assert await chat(session, info) == (503, ASLEEP)
        async with session.get(f"http://{info.address}/health") as response:
            assert response.status == 200  # alive while asleep: the liveness checks must not replace it
        counts = await echo_counts(session, info)
        assert (counts["echo_sleeping"], counts["echo_requests_while_asleep_total"]) == (1, 1)

        await sleep.wake_up(session, info, SleepKind.VLLM, CALL_TIMEOUT_S)
        assert await sleep.is_sleeping(session, info, SleepKind.VLLM, CALL_TIMEOUT_S) is False
        assert (await chat(session, info))[0] == 200
        counts = await echo_counts(session, info)
        assert (counts["echo_sleeps_total"], counts["echo_wakes_total"], counts["echo_requests_total"]) == (1, 1, 2)


async def test_echo_as_vllm_without_sleep_after_has_no_sleep_routes(docker_runtime, docker_key, echo_image, tmp_path):
    info = await start(docker_runtime, docker_key, echo_as("vLLM", tmp_path, sleep_after_s=None))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SleepFailed, match=r"POST /sleep\?level=1 answered 404 \(vLLM serves it only with"):
            await sleep.put_to_sleep(session, info, SleepKind.VLLM, CALL_TIMEOUT_S)
        assert (await chat(session, info))[0] == 200


async def test_echo_as_sglang_releases_and_resumes_its_memory(docker_runtime, docker_key, echo_image, tmp_path):
    spec = echo_as("sGLang", tmp_path)
    assert spec.args[-2:] == ("--api-key", KEY) and "--enable-memory-saver" in spec.args
    info = await start(docker_runtime, docker_key, spec)
    assert info.address is not None
    async with aiohttp.ClientSession() as session:
        assert await sleep.is_sleeping(session, info, SleepKind.SGLANG, CALL_TIMEOUT_S) is None
        await sleep.put_to_sleep(session, info, SleepKind.SGLANG, CALL_TIMEOUT_S)
        assert await chat(session, info) == (503, ASLEEP)
        assert (await echo_counts(session, info))["echo_requests_while_asleep_total"] == 1
        await sleep.wake_up(session, info, SleepKind.SGLANG, CALL_TIMEOUT_S)
        assert (await chat(session, info))[0] == 200


async def test_a_sleep_cuts_the_stream_of_a_busy_replica(docker_runtime, docker_key, echo_image, tmp_path):
    info = await start(docker_runtime, docker_key, echo_as("vLLM", tmp_path, ECHO_TOKEN_DELAY_S="60"))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{info.address}/v1/chat/completions", json={**CHAT, "stream": True},
                                headers=auth()) as stream:
            assert stream.status == 200
            await sleep.put_to_sleep(session, info, SleepKind.VLLM, CALL_TIMEOUT_S)
            with pytest.raises(aiohttp.ClientPayloadError):
                await stream.read()  # cut, never ended: what a sleep does to a busy replica
        counts = await echo_counts(session, info)
        assert (counts["echo_requests_cut_by_sleep_total"], counts["echo_requests_total"]) == (1, 0)


# --- llama.cpp: it sleeps by itself ---


@pytest.fixture
async def smollm2(tmp_path) -> Path:
    """SmolLM2's repository directory, on llama.cpp's image built here."""
    require_llamacpp_image()
    return await models.add("smollm2", tmp_path / "models", lambda _line: None)


async def until_asleep(session: aiohttp.ClientSession, info: ReplicaInfo) -> None:
    """Wait until /props says it sleeps, reading /health and /metrics as endpointd's probes and
    scrapes do every round: they must neither wake it nor restart its idle timer, or it never would."""
    deadline = time.monotonic() + FALL_ASLEEP_WITHIN_S
    while not await sleep.is_sleeping(session, info, SleepKind.LLAMACPP, CALL_TIMEOUT_S):
        for path in ("/health", "/metrics"):
            async with session.get(f"http://{info.address}{path}", headers=auth()) as response:
                assert response.status == 200, path
        if time.monotonic() > deadline:
            raise AssertionError(f"llama-server did not fall asleep within {FALL_ASLEEP_WITHIN_S} s")
        await asyncio.sleep(0.2)


async def test_llamacpp_falls_asleep_by_itself_and_the_next_request_wakes_it(docker_runtime, docker_key, smollm2):
    spec = build_container_spec(
        {"llamacpp": {"modelPath": models.MODELS["smollm2"].filename, "ctxSize": 2048, "nParallel": 2}},
        model_dir=str(smollm2), served_model_name="smol", resources=Resources(cpus=2.0, memory_bytes=None, gpu_count=0),
        default_images={"llamacpp": images.LLAMA_CPP_IMAGE}, api_key=KEY, sleep_after_s=1,
    )
    assert spec.args == ("--sleep-idle-seconds", "1")
    info = await start(docker_runtime, docker_key, spec, deadline_s=LLAMACPP_READY_S)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await until_asleep(session, info)

        # Asleep, a request is answered all the same: it wakes the engine, which loads the model again.
        body = {"messages": SKY, "temperature": 0, "max_tokens": 24}
        async with session.post(f"http://{info.address}/v1/chat/completions", json=body, headers=auth()) as response:
            assert response.status == 200
            answer = await response.json()
        assert "blue" in answer["choices"][0]["message"]["content"].lower()

        # Awake while it serves: a long stream (seconds of tokens; /props answers in milliseconds).
        count = {"messages": COUNT, "temperature": 0, "max_tokens": 2000, "stream": True}
        async with session.post(f"http://{info.address}/v1/chat/completions", json=count, headers=auth()) as stream:
            assert stream.status == 200
            assert (await stream.content.readline()).startswith(b"data: ")
            assert await sleep.is_sleeping(session, info, SleepKind.LLAMACPP, CALL_TIMEOUT_S) is False
        # The stream closed early (its task cancelled): idle again, it falls asleep again.
        await until_asleep(session, info)
