"""The echo engine in-process, checked with the real huggingface_hub inference client."""

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from huggingface_hub import AsyncInferenceClient

from engines.echo.server import Settings, make_app

from .proxy_harness import until


@pytest.fixture
async def echo():
    servers = []

    async def start(**settings):
        server = TestServer(make_app(Settings(**settings)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        engine = server.app["engine"]
        if not settings.get("never_ready") and not settings.get("startup_delay_s"):
            await until(lambda: engine.ready)
        return server

    yield start
    for server in servers:
        await server.close()


def url(server):
    return f"http://127.0.0.1:{server.port}"


async def test_health_is_503_until_the_startup_delay_has_passed(echo):
    server = await echo(startup_delay_s=0.2)
    engine = server.app["engine"]
    async with aiohttp.ClientSession() as s:
        async with s.get(url(server) + "/health") as r:
            assert r.status == 503
        async with s.post(url(server) + "/generate", json={"inputs": "x"}) as r:
            assert r.status == 503 and (await r.json()) == {"error": "loading"}
        await until(lambda: engine.ready)
        async with s.get(url(server) + "/health") as r:
            assert r.status == 200


async def test_never_ready(echo):
    server = await echo(never_ready=True)
    async with aiohttp.ClientSession() as s, s.get(url(server) + "/health") as r:
        assert r.status == 503


async def test_text_generation_with_the_real_client(echo):
    server = await echo()
    client = AsyncInferenceClient(model=url(server))
    assert await client.text_generation("hello big world") == "hello big world "
    assert await client.text_generation("a b c d", max_new_tokens=2) == "a b "
    out = await client.text_generation("a b", details=True)
    assert out.generated_text == "a b " and out.details.generated_tokens == 2
    tokens = [t async for t in await client.text_generation("one two three", stream=True)]
    assert tokens == ["one ", "two ", "three "]


async def test_chat_completion_with_the_real_client(echo):
    server = await echo()
    client = AsyncInferenceClient(model=url(server))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    out = await client.chat_completion(messages)
    assert out.choices[0].message.content == "hi there "
    chunks = [c async for c in await client.chat_completion(messages, stream=True)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hi there "
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_openai_completions_embeddings_and_metrics(echo):
    server = await echo()
    async with aiohttp.ClientSession() as s:
        async with s.post(url(server) + "/v1/completions", json={"prompt": "x y", "max_tokens": 1}) as r:
            body = await r.json()
            assert body["choices"][0]["text"] == "x " and body["choices"][0]["finish_reason"] == "length"
        async with s.post(url(server) + "/v1/embeddings", json={"input": ["a", "b"]}) as r:
            data = (await r.json())["data"]
            assert [d["index"] for d in data] == [0, 1] and len(data[0]["embedding"]) == 8
            assert data[0]["embedding"] != data[1]["embedding"]
        async with s.post(url(server) + "/", json={"inputs": "p q", "stream": True}) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            events = [line async for line in r.content if line.startswith(b"data:")]
            assert len(events) == 2 and b'"generated_text": "p q "' in events[-1]
        async with s.get(url(server) + "/metrics") as r:
            assert "echo_requests_total 3" in await r.text()


async def test_token_delay_paces_the_stream(echo):
    server = await echo(token_delay_s=0.05)
    async with aiohttp.ClientSession() as s:
        async with s.post(url(server) + "/generate_stream", json={"inputs": "a b c"}) as r:
            loop = asyncio.get_running_loop()
            arrivals = []
            async for line in r.content:
                if line.startswith(b"data:"):
                    arrivals.append(loop.time())
    assert len(arrivals) == 3
    assert arrivals[-1] - arrivals[0] >= 0.09  # two token delays between first and last


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ECHO_STARTUP_DELAY_S": "-1"}, "ECHO_STARTUP_DELAY_S='-1' is invalid: it must be a number >= 0"),
        ({"ECHO_CRASH_AFTER_REQUESTS": "0"}, "ECHO_CRASH_AFTER_REQUESTS='0' is invalid: it must be an integer >= 1"),
        ({"ECHO_TOKEN_DELAY_S": "fast"}, "ECHO_TOKEN_DELAY_S='fast'"),
        ({"PORT": "x"}, "PORT='x'"),
        ({"ECHO_NEVER_READY": "maybe"}, "ECHO_NEVER_READY"),
    ],
)
def test_invalid_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_settings_from_env():
    s = Settings.from_env({"PORT": "8081", "ECHO_STARTUP_DELAY_S": "1.5", "ECHO_CRASH_AFTER_REQUESTS": "2", "ECHO_NEVER_READY": "1"})
    assert (s.port, s.startup_delay_s, s.crash_after, s.never_ready) == (8081, 1.5, 2, True)
