"""The echo engine's vLLM and SGLang personalities, in-process: the command lines the presets give
them, their sleep routes (only where the real engine serves them), and what a sleep does to the
requests before, during and after it."""

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engines.echo.server import SGLANG, VLLM, Settings, main, make_app
from tests.unit.test_echo_engine import metrics, post, until

KEY = "k3y-of-the-replica"
CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
VLLM_ARGV = ["--model", "/repository", "--served-model-name", "e1", "--host", "0.0.0.0", "--port", "8000"]
SGLANG_ARGV = ["--model-path", "/repository", "--served-model-name", "e1", "--host", "0.0.0.0", "--port", "30000"]
DEV_MODE = {"VLLM_SERVER_DEV_MODE": "1"}


@pytest.fixture
async def start():
    clients = []

    async def start(personality, argv, environ=None, **knobs):
        settings = Settings.for_engine(personality, argv, {**(environ or {}), **knobs})
        # handler_cancellation: a sleep or wake left half done by its cancelled caller ends with it,
        # not at the server's shutdown, a minute later.
        client = TestClient(TestServer(make_app(settings, exit_process=lambda code: None), handler_cancellation=True))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def status(client, method, path, **kw):
    async with client.request(method, path, **kw) as response:
        return response.status


# --- the command lines ---


@pytest.mark.parametrize("personality, argv, environ, port, key, sleep", [
    # vLLM: its key from --api-key, else VLLM_API_KEY; its sleep routes need the flag and dev mode.
    (VLLM, VLLM_ARGV, {}, 8000, None, False),
    (VLLM, VLLM_ARGV, {"VLLM_API_KEY": KEY}, 8000, KEY, False),
    (VLLM, [*VLLM_ARGV, "--api-key", "flag"], {"VLLM_API_KEY": KEY}, 8000, "flag", False),
    (VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], DEV_MODE, 8000, None, True),
    (VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], {}, 8000, None, False),  # no dev mode: no routes
    (VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], {"VLLM_SERVER_DEV_MODE": "0"}, 8000, None, False),
    (VLLM, VLLM_ARGV, DEV_MODE, 8000, None, False),  # dev mode without the flag
    (VLLM, ["--model", "/repository", "--tensor-parallel-size", "2", "--enable-sleep-mode"], DEV_MODE, 8000, None, True),
    # SGLang: --api-key only (VLLM_API_KEY and ECHO_API_KEY are not its), --enable-memory-saver.
    (SGLANG, SGLANG_ARGV, {"VLLM_API_KEY": KEY, "ECHO_API_KEY": KEY}, 30000, None, False),
    (SGLANG, [*SGLANG_ARGV, "--enable-memory-saver", "--api-key", KEY], {}, 30000, KEY, True),
    (SGLANG, [*SGLANG_ARGV, f"--api-key={KEY}"], {}, 30000, KEY, False),
    (SGLANG, ["--model-path", "/repository", "--port", "9000", "--tp", "2", "--api-key", "a", "--api-key", "b"],
     {}, 9000, "b", False),  # the last value, as argparse keeps it
    (SGLANG, ["--model-path", "/repository"], {"PORT": "80"}, 30000, None, False),  # PORT is the echo engine's
])
def test_each_personality_reads_its_engines_command_line(personality, argv, environ, port, key, sleep):
    settings = Settings.for_engine(personality, argv, environ)
    assert (settings.personality, settings.port, settings.api_key, settings.sleep_routes) == (personality, port, key, sleep)


def test_the_echo_knobs_still_apply_under_a_personality():
    settings = Settings.for_engine(VLLM, VLLM_ARGV, {"ECHO_TOKEN_DELAY_S": "0.5", "ECHO_SLEEP_S": "2", "ECHO_WAKE_S": "0"})
    assert (settings.token_delay_s, settings.sleep_s, settings.wake_s) == (0.5, 2.0, 0.0)
    assert (Settings().sleep_s, Settings().wake_s) == (0.1, 0.3)


@pytest.mark.parametrize("personality, argv, environ, error", [
    (VLLM, ["--port", "x"], {}, "--port='x' is invalid: it must be an integer from 1 to 65535"),
    (SGLANG, ["--port", "0"], {}, "--port='0' is invalid: it must be an integer from 1 to 65535"),
    (VLLM, [], {"ECHO_SLEEP_S": "-1"}, "ECHO_SLEEP_S='-1' is invalid: it must be a number >= 0"),
    (SGLANG, [], {"ECHO_WAKE_S": "soon"}, "ECHO_WAKE_S='soon' is invalid: it must be a number >= 0"),
])
def test_an_invalid_port_or_timing_names_the_flag_or_variable(personality, argv, environ, error):
    with pytest.raises(ValueError) as raised:
        Settings.for_engine(personality, argv, environ)
    assert str(raised.value) == error


def test_main_exits_non_zero_on_an_invalid_port(capsys):
    assert main(VLLM, ["--port", "70000"]) == 2
    assert capsys.readouterr().err == "echo engine: --port='70000' is invalid: it must be an integer from 1 to 65535\n"


# --- the routes ---


@pytest.mark.parametrize("personality, argv, environ", [
    (VLLM, VLLM_ARGV, DEV_MODE),
    (VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], {}),
    (SGLANG, [*SGLANG_ARGV, "--enable-sleep-mode"], DEV_MODE),  # vLLM's flag is not SGLang's
    ("echo", [], DEV_MODE),
])
async def test_without_its_flags_an_engine_has_no_sleep_routes(start, personality, argv, environ):
    client = await start(personality, argv, environ)
    for method, path in [("POST", "/sleep"), ("POST", "/wake_up"), ("GET", "/is_sleeping"),
                         ("POST", "/release_memory_occupation"), ("POST", "/resume_memory_occupation")]:
        assert await status(client, method, path, json={}) == 404, path
    assert "echo_requests_while_asleep_total" not in await metrics(client)  # nothing said of sleep


async def test_vllm_sleeps_refuses_inference_while_asleep_and_wakes(start):
    client = await start(VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], DEV_MODE, VLLM_API_KEY=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    assert await status(client, "POST", "/sleep?level=1") == 401  # the engine's key, as everywhere
    async with client.get("/is_sleeping", headers=auth) as response:
        assert await response.json() == {"is_sleeping": False}

    assert await status(client, "POST", "/sleep?level=1", headers=auth) == 200
    async with client.get("/is_sleeping", headers=auth) as response:
        assert await response.json() == {"is_sleeping": True}
    for path in ("/v1/chat/completions", "/v1/completions", "/generate", "/"):
        async with client.post(path, json=CHAT, headers=auth) as response:
            assert (response.status, await response.json()) == (503, {"error": "the engine is asleep"})
    assert await status(client, "GET", "/health") == 200  # alive, as vLLM's /health says while asleep
    assert await status(client, "POST", "/sleep?level=1", headers=auth) == 200  # asleep already: nothing to do

    assert await status(client, "POST", "/wake_up", headers=auth) == 200
    async with client.get("/is_sleeping", headers=auth) as response:
        assert await response.json() == {"is_sleeping": False}
    async with client.post("/v1/chat/completions", json=CHAT, headers=auth) as response:
        assert response.status == 200
    async with client.get("/metrics", headers=auth) as response:
        text = await response.text()
    counts = {name: int(value) for name, value in (line.split() for line in text.splitlines() if line.startswith("echo_"))}
    assert counts == {"echo_requests_total": 1, "echo_requests_in_flight": 0, "echo_tokens_generated_total": 2,
                      "echo_sleeping": 0, "echo_sleeps_total": 1, "echo_wakes_total": 1,
                      "echo_requests_while_asleep_total": 4, "echo_requests_cut_by_sleep_total": 0}


@pytest.mark.parametrize("level, expected", [("1", 200), ("2", 200), ("3", 400), ("x", 400)])
async def test_vllm_sleep_takes_level_1_or_2(start, level, expected):
    client = await start(VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], DEV_MODE)
    assert await status(client, "POST", f"/sleep?level={level}") == expected


async def test_a_request_during_the_fall_into_sleep_is_refused(start):
    client = await start(VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], DEV_MODE, ECHO_SLEEP_S="60")
    sleeping = asyncio.create_task(client.post("/sleep"))
    try:
        await until(lambda: _gauge(client, "echo_sleeping", 1))
        assert (await metrics(client))["echo_sleeps_total"] == 0  # not asleep yet: falling
        assert await post(client, "/v1/completions", {"prompt": "a"}) == (503, {"error": "the engine is asleep"})
        assert (await metrics(client))["echo_requests_while_asleep_total"] == 1
    finally:
        sleeping.cancel()


async def _gauge(client, name, value):
    return (await metrics(client))[name] == value


async def test_a_request_during_the_wake_is_refused_until_the_wake_returns(start, capsys):
    client = await start(VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], DEV_MODE, ECHO_SLEEP_S="0", ECHO_WAKE_S="60")
    assert await status(client, "POST", "/sleep") == 200
    waking = asyncio.create_task(client.post("/wake_up"))
    try:
        await until(lambda: "echo engine: waking up" in capsys.readouterr().out)
        assert await post(client, "/v1/completions", {"prompt": "a"}) == (503, {"error": "the engine is asleep"})
        async with client.get("/is_sleeping") as response:
            assert await response.json() == {"is_sleeping": True}
    finally:
        waking.cancel()


async def test_a_sleep_cuts_the_requests_in_flight(start):
    client = await start(VLLM, [*VLLM_ARGV, "--enable-sleep-mode"], DEV_MODE, ECHO_TOKEN_DELAY_S="60")
    stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert stream.status == 200
    plain = asyncio.create_task(post(client, "/v1/completions", {"prompt": "a b"}))
    await until(lambda: _gauge(client, "echo_requests_in_flight", 2))

    assert await status(client, "POST", "/sleep") == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await stream.read()  # cut, not ended
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await plain
    counts = await metrics(client)
    assert (counts["echo_requests_cut_by_sleep_total"], counts["echo_requests_total"], counts["echo_requests_in_flight"]) == (2, 0, 0)


async def test_sglang_releases_and_resumes_its_memory(start):
    client = await start(SGLANG, [*SGLANG_ARGV, "--enable-memory-saver", "--api-key", KEY])
    auth = {"Authorization": f"Bearer {KEY}"}
    assert await status(client, "POST", "/release_memory_occupation", json={}) == 401
    assert await status(client, "GET", "/is_sleeping", headers=auth) == 404  # SGLang has no such route

    async with client.post("/release_memory_occupation", json={}, headers=auth) as response:
        assert (response.status, await response.json()) == (200, None)  # FastAPI's answer to None
    async with client.post("/generate", json={"inputs": "a"}, headers=auth) as response:
        assert (response.status, await response.json()) == (503, {"error": "the engine is asleep"})
    async with client.post("/resume_memory_occupation", data=b"not json", headers=auth) as response:
        assert response.status == 422  # its body is a JSON object, as SGLang's
    async with client.post("/resume_memory_occupation", json={"tags": ["kv_cache", "weights"]}, headers=auth) as response:
        assert response.status == 200
    async with client.post("/generate", json={"inputs": "a"}, headers=auth) as response:
        assert response.status == 200
