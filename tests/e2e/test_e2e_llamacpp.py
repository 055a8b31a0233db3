"""A real LLM end to end: SmolLM2-135M-Instruct (`endpointd models add smollm2`) on llama.cpp's
server built by `endpointd images build`, created with the unmodified huggingface_hub client and
called through the endpoint URL with the openai client and huggingface_hub's InferenceClient.

The model is small: the tests check what it reliably answers at temperature 0 (the sky is blue,
2 + 2 is 4), not general knowledge."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import huggingface_hub.constants as hub_constants
import openai
import pytest
from huggingface_hub import HfApi, InferenceClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from engines import images, models
from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker"
GGUF = models.MODELS["smollm2"].filename
FAST = {"ENDPOINTD_ANALYTICS_INTERVAL_S": "0.5", "ENDPOINTD_ENGINE_SCRAPE_INTERVAL_S": "0.5",
        "ENDPOINTD_MINUTE_S": "1"}
SKY = [{"role": "user", "content": "What color is the sky on a clear day?"}]
READY_TIMEOUT_S = 180


def require_llamacpp_image() -> None:
    done = subprocess.run([DOCKER, "image", "inspect", images.LLAMA_CPP_IMAGE], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"the image {images.LLAMA_CPP_IMAGE} is missing: run `endpointd images build`")
    labels = json.loads(done.stdout)[0]["Config"]["Labels"] or {}
    if labels.get(images.CONTEXT_LABEL) != images.llamacpp_digest():
        pytest.fail(f"the image {images.LLAMA_CPP_IMAGE} is older than engines/llamacpp: run `endpointd images build`")


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    require_llamacpp_image()
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=FAST)
    asyncio.run(models.add("smollm2", Path(s.model).parent, lambda _line: None))
    s.alice = s.add_user("alice")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    yield s
    s.close()


def create(serve: Serve, name: str, **kw):
    args = dict(
        repository=str(Path(serve.model).parent / "smollm2"), framework="pytorch", accelerator="cpu",
        instance_size="x2", instance_type="intel-icl", region="local", vendor="local", type="private",
        custom_image={"llamacpp": {"modelPath": GGUF, "nParallel": 2, "ctxSize": 2048}},
        min_replica=1, max_replica=1,
    )
    args.update(kw)
    endpoint = HfApi(endpoint=serve.url, token=serve.alice).create_inference_endpoint(name, **args)
    endpoint.wait(timeout=READY_TIMEOUT_S, refresh_every=0.5)
    return endpoint


def http(serve: Serve, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{serve.url}{path}", headers={"Authorization": f"Bearer {serve.alice}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def openai_client(serve: Serve, endpoint) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{endpoint.url}/v1", api_key=serve.alice, max_retries=0, timeout=60)


def test_smollm2_chats_streams_and_counts_its_tokens_through_the_endpoint(serve):
    endpoint = create(serve, "smol")
    [container] = serve.containers()
    image = subprocess.run([DOCKER, "inspect", "--format", "{{.Config.Image}}", container],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert image == images.LLAMA_CPP_IMAGE  # the image built here, not the upstream tag

    client = openai_client(serve, endpoint)
    answer = client.chat.completions.create(model="tgi", messages=SKY, temperature=0, max_tokens=24)
    assert "blue" in answer.choices[0].message.content.lower()
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 24

    pieces, usage = [], None
    for chunk in client.chat.completions.create(model="tgi", messages=SKY, temperature=0, max_tokens=24,
                                                stream=True, stream_options={"include_usage": True}):
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert len([p for p in pieces if p]) > 1  # tokens arrived one by one, not as one body
    assert "blue" in "".join(pieces).lower()
    assert usage is not None and usage.completion_tokens == len([p for p in pieces if p])

    completion = client.completions.create(model="tgi", prompt="1, 2, 3, 4, 5,", temperature=0, max_tokens=8)
    assert completion.choices[0].text.startswith(" 6, 7")

    hf = InferenceClient(model=endpoint.url, token=serve.alice)
    four = hf.chat_completion([{"role": "user", "content": "What is 2 + 2?"}], temperature=0, max_tokens=16)
    assert "4" in four.choices[0].message.content

    # The engine's own figures reach the export; its log lines reach the logs route.
    def engine_figures():
        status, body = http(serve, "/v2/endpoint/alice/smol/open-metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())} if status == 200 else {}
        return {"engine_running_requests", "engine_queue_requests"} <= set(families)

    wait_for(engine_figures, 30, "llama.cpp's own gauges in the OpenMetrics export", interval_s=0.5)

    def logged():
        status, body = http(serve, "/v2/endpoint/alice/smol/logs?tail=500")
        return status == 200 and "llama" in body.decode().lower()

    wait_for(logged, 30, "llama-server's log lines in the logs route", interval_s=0.5)


def test_usage_counts_the_tokens_llamacpp_counted_prompt_cache_and_all(serve):
    """Usage's tokens are llama.cpp's own counters: what the answers' `usage` said, in and out; the
    second, identical chat reuses its prompt from the cache, which llama.cpp counts apart."""
    endpoint = create(serve, "smol")
    client = openai_client(serve, endpoint)
    answers = [client.chat.completions.create(model="tgi", messages=SKY, temperature=0, max_tokens=8) for _ in range(2)]
    tokens_in = sum(a.usage.prompt_tokens for a in answers)
    tokens_out = sum(a.usage.completion_tokens for a in answers)

    def counted():
        status, body = http(serve, "/v2/usage/alice")
        total = json.loads(body)["total"] if status == 200 else {}
        return (total.get("tokensIn"), total.get("tokensOut")) == (tokens_in, tokens_out) and total

    total = wait_for(counted, 30, f"usage to count {tokens_in} tokens in and {tokens_out} out", interval_s=0.5)
    assert total["replicaSeconds"] > 0 and total["requests"] >= 2


def test_scaled_to_zero_smollm2_wakes_for_a_held_request(serve):
    endpoint = create(serve, "smol", min_replica=0, scale_to_zero_timeout=15)
    endpoint.scale_to_zero()
    wait_for(lambda: not serve.containers(), 60, "the replica to stop")
    held = openai.OpenAI(base_url=f"{endpoint.url}/v1", api_key=serve.alice, max_retries=0, timeout=120,
                         default_headers={"X-Scale-Up-Timeout": "120"})
    answer = held.chat.completions.create(model="tgi", messages=SKY, temperature=0, max_tokens=24)
    assert "blue" in answer.choices[0].message.content.lower()


def _engine_direct(container: str, path: str) -> int:
    """The status of `GET path` sent straight to the replica's published port, with its engine key."""
    [info] = json.loads(subprocess.run([DOCKER, "inspect", container], capture_output=True, text=True, check=True).stdout)
    key = next(v.partition("=")[2] for v in info["Config"]["Env"] if v.startswith("LLAMA_API_KEY="))
    [binding] = next(iter(info["NetworkSettings"]["Ports"].values()))
    request = urllib.request.Request(f"http://127.0.0.1:{binding['HostPort']}{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_llamacpp_slots_are_not_reachable_through_the_endpoint(serve):
    endpoint = create(serve, "smol")
    [container] = serve.containers()
    assert _engine_direct(container, "/slots") == 200  # the engine serves them: other callers' prompts
    prefix = endpoint.url.removeprefix(serve.url)
    for method, tail in [("GET", "/slots"), ("GET", "/slots?fail_on_no_slot=1"), ("GET", "/%73lots"),
                         ("GET", "//slots/"), ("POST", "/slots/0?action=save"), ("POST", "/slots/0?action=restore"),
                         ("POST", "/slots/0?action=erase"), ("POST", "/lora-adapters")]:
        request = urllib.request.Request(f"{serve.url}{prefix}{tail}", method=method, data=b"{}" if method == "POST" else None,
                                         headers={"Authorization": f"Bearer {serve.alice}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        assert status == 404 and "control routes" in json.loads(body)["error"], (method, tail, status, body)
    status, body = http(serve, f"{prefix}/props")  # what clients read of the engine stays open
    assert status == 200 and "n_ctx" in body.decode(), body


async def _stream_until_killed(url: str, token: str, container: str) -> bytes:
    """A long stream, and the replica's container killed once the first tokens arrived."""
    body = {"model": "tgi", "messages": [{"role": "user", "content": "Count from 1 to 500, one number a line."}],
            "max_tokens": 1500, "temperature": 0, "stream": True}
    received = b""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(f"{url}/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
            killed = False
            try:
                async for chunk in response.content.iter_any():
                    received += chunk
                    if not killed and received.count(b"data:") >= 3:
                        killed = True
                        await asyncio.to_thread(subprocess.run, [DOCKER, "kill", container], capture_output=True, check=True)
            except aiohttp.ClientPayloadError:
                pass  # the stream is cut, as it must be: its engine is gone
    return received


def test_a_replica_killed_mid_stream_cuts_the_stream_and_is_replaced(serve):
    endpoint = create(serve, "smol")
    [container] = serve.containers()
    started = time.monotonic()
    received = asyncio.run(_stream_until_killed(endpoint.url, serve.alice, container))
    assert b"[DONE]" not in received  # cut, not a fake end
    assert time.monotonic() - started < 60
    wait_for(lambda: serve.containers() and serve.containers() != [container], 120, "a replacement replica")
    endpoint.wait(timeout=READY_TIMEOUT_S, refresh_every=0.5)
    answer = openai_client(serve, endpoint).chat.completions.create(
        model="tgi", messages=SKY, temperature=0, max_tokens=24)
    assert "blue" in answer.choices[0].message.content.lower()


SCALING_FAST = {"ENDPOINTD_SCALE_WINDOW_S": "2", "ENDPOINTD_STABILIZATION_S": "5"}


async def _streams_until(url: str, token: str, concurrency: int, done) -> int:
    """`concurrency` clients streaming long completions back to back until `done()`; the count sent."""
    body = {"model": "smol", "messages": SKY, "max_tokens": 256, "temperature": 0, "stream": True, "ignore_eos": True}
    sent = 0

    async def client(session):
        nonlocal sent
        while not done():
            async with session.post(f"{url}/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {token}", "X-Scale-Up-Timeout": "60"}) as r:
                await r.read()
            sent += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return sent


def test_engine_queue_scales_on_what_llamacpp_reports_and_back(tmp_path, docker_engine, monkeypatch):
    """4 streams on a replica with 2 slots: llama.cpp reports 2 processing and 2 deferred, twice the
    threshold of 1 per replica, so a second replica starts; when the load ends, back to 1."""
    require_llamacpp_image()
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env={**FAST, **SCALING_FAST})
    asyncio.run(models.add("smollm2", Path(s.model).parent, lambda _line: None))
    s.alice = s.add_user("alice")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    try:
        endpoint = create(s, "smol", min_replica=1, max_replica=2)
        request = urllib.request.Request(
            f"{s.url}/v2/endpoint/alice/smol", method="PUT",
            data=json.dumps({"compute": {"scaling": {"measure": {"engineQueue": 1}}}}).encode(),
            headers={"Authorization": f"Bearer {s.alice}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["compute"]["scaling"]["measure"] == {"engineQueue": 1}
        deadline = time.monotonic() + 150
        scaled = {"up": False}

        def done():
            scaled["up"] = scaled["up"] or len(s.containers()) == 2
            return scaled["up"] or time.monotonic() > deadline

        asyncio.run(_streams_until(endpoint.url, s.alice, 4, done))
        assert scaled["up"], "the engine's queue never asked for a second replica"
        wait_for(lambda: len(s.containers()) == 1, 120, "the scale-down to 1 once the load ended", interval_s=0.5)
    finally:
        s.close()


def test_llamacpp_health_is_not_ready_until_the_model_is_loaded(tmp_path, docker_engine):
    """llama-server listens before it loads its model and answers /health 503 meanwhile: what
    endpointd's readiness waits past (it forwards nothing until a 200), seen on the real server."""
    require_llamacpp_image()
    root = tmp_path / "models"
    root.mkdir()
    repository = asyncio.run(models.add("smollm2", root, lambda _line: None))
    name = f"endpointd-test-health-{tmp_path.name}"[:60]
    subprocess.run([DOCKER, "run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::8080", "-v", f"{repository}:/m:ro",
                    "-e", f"LLAMA_ARG_MODEL=/m/{GGUF}", "-e", "LLAMA_ARG_HOST=0.0.0.0", "-e", "LLAMA_ARG_PORT=8080",
                    images.LLAMA_CPP_IMAGE], check=True, capture_output=True)
    try:
        port = subprocess.run([DOCKER, "port", name, "8080/tcp"], check=True, capture_output=True,
                              text=True).stdout.split()[0].rsplit(":", 1)[1]
        seen: list[tuple[int, str]] = []

        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    seen.append((response.status, response.read().decode()))
                    return True
            except urllib.error.HTTPError as error:
                seen.append((error.code, error.read().decode()))
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet
            return False

        wait_for(healthy, 60, "llama-server's /health to answer 200", interval_s=0.005)
        loading = [body for status, body in seen if status == 503]
        assert loading and "Loading model" in loading[0], seen[:5]
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)


def put(serve: Serve, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{serve.url}{path}", data=json.dumps(body).encode(), method="PUT", headers={
        "Authorization": f"Bearer {serve.alice}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_idle_ladder_on_llamacpp_sleeps_parks_and_wakes_from_each_tier(serve):
    """sleepAfter 1 s, then scaleToZeroTimeout (8 s here, a minute being a second): llama.cpp
    sleeps by itself and endpointd sees it; a chat wakes it with no 503; idle longer, the
    container is parked; a held chat starts that same container again."""
    create(serve, "ladder", min_replica=0, scale_to_zero_timeout=8)
    code, body = put(serve, "/v2/endpoint/alice/ladder", {"compute": {"scaling": {"sleepAfter": 1}}})
    assert code == 200, body
    assert body["compute"]["scaling"]["sleepAfter"] == 1

    def endpoint_status() -> dict:
        return json.loads(http(serve, "/v2/endpoint/alice/ladder")[1])["status"]

    # The update rolled the replica (llama.cpp takes the idle seconds as an argument): once the
    # new one runs, it falls asleep by itself within a second or two of idling.
    wait_for(lambda: endpoint_status().get("tier") == "sleeping", READY_TIMEOUT_S, "llama.cpp asleep",
             interval_s=0.2)
    assert endpoint_status()["state"] == "running"
    (container,) = serve.containers()
    client = openai.OpenAI(base_url=f"{serve.url}/endpoints/alice/ladder/v1", api_key=serve.alice, max_retries=0,
                           timeout=60)
    answer = client.chat.completions.create(model="tgi", messages=SKY, temperature=0, max_tokens=24)
    assert "blue" in answer.choices[0].message.content.lower()  # no 503: llama.cpp woke for it

    wait_for(lambda: endpoint_status().get("tier") == "parked", 60, "parked after scaleToZeroTimeout",
             interval_s=0.2)
    assert endpoint_status()["state"] == "scaledToZero"
    assert serve.containers() == [] and serve.containers(all_states=True) == [container]
    held = client.with_options(default_headers={"X-Scale-Up-Timeout": "60"})
    again = held.chat.completions.create(model="tgi", messages=SKY, temperature=0, max_tokens=24)
    assert "blue" in again.choices[0].message.content.lower()
    assert serve.containers() == [container]  # docker start of the parked one, not a new container

    events = json.loads(http(serve, "/v2/endpoint/alice/ladder/events?limit=1000")[1])["items"]
    kinds = [e["kind"] for e in events]
    assert {"replica_asleep", "replica_parked", "replica_unparking"} <= set(kinds)
    assert [e["inputs"]["tier"] for e in events if e["kind"] == "woke"][-1] == "parked"
    replicas = json.loads(http(serve, "/v2/endpoint/alice/ladder/replica")[1])["items"]
    (mine,) = [r for r in replicas if container.endswith(r["id"])]
    states = [step["state"] for step in mine["timeline"]]
    assert "sleeping" in states and "parked" in states and states[-1] == "running"
