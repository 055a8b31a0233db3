"""The echo engine in-process: every route, every knob and failure, and the real huggingface_hub client."""

import asyncio
import inspect
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import ValidationError

from engines.echo.server import EMBEDDING_DIM, Settings, main, make_app

TOKEN = {"logprob": -0.1, "special": False}  # what every TGI token carries besides its id and text


async def until(condition, timeout_s=5.0):
    """Wait for a condition (a plain or an async callable), checked every few milliseconds."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = condition()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.002)


@pytest.fixture
def exits():
    """The exit codes the engine asked for (its `exit_process`, instead of os._exit)."""
    return []


@pytest.fixture
async def start(exits):
    clients = []

    async def start(**settings):
        client = TestClient(TestServer(make_app(Settings(**settings), exit_process=exits.append)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def post(client, path, body):
    async with client.post(path, json=body) as response:
        return response.status, await response.json()


async def sse(response):
    """An SSE answer's events: each `data: <one line>` then a blank line; JSON-decoded, "[DONE]" kept."""
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    *events, rest = (await response.text()).split("\n\n")
    assert rest == "" and all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]


async def metrics(client):
    async with client.get("/metrics") as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        lines = (await response.text()).splitlines()
    return {name: int(value) for name, value in (line.split() for line in lines if line.startswith("echo_"))}


async def healthy(client):
    async with client.get("/health") as response:
        return response.status == 200


# --- readiness ---


async def test_listens_at_once_but_answers_503_until_the_startup_delay_has_passed(start):
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = await start(startup_delay_s=0.05)
    async with client.get("/health") as response:
        assert response.status == 503 and await response.json() == {"error": "loading"}
    for path in ("/", "/generate", "/v1/chat/completions"):
        assert await post(client, path, {"inputs": "x"}) == (503, {"error": "loading"})
    await until(lambda: healthy(client))
    assert loop.time() - started >= 0.05
    assert await post(client, "/generate", {"inputs": "x"}) == (200, {"generated_text": "x "})
    assert (await metrics(client))["echo_requests_total"] == 1  # the 503s were not answers


async def test_never_ready_keeps_health_at_503(start):
    client = await start(never_ready=True)  # no start-up delay: without the flag it would be ready now
    async with client.get("/health") as response:
        assert response.status == 503
    assert await post(client, "/generate", {"inputs": "x"}) == (503, {"error": "loading"})


async def test_info_and_models(start):
    client = await start()
    async with client.get("/info") as response:
        info = await response.json()
    assert info["model_id"] == "echo" and info["model_pipeline_tag"] == "text-generation"
    async with client.get("/v1/models") as response:
        models = await response.json()
    assert models["object"] == "list" and [(m["id"], m["object"]) for m in models["data"]] == [("echo", "model")]


# --- TGI ---


async def test_generate_echoes_the_words_up_to_max_new_tokens(start):
    client = await start()
    assert await post(client, "/generate", {"inputs": "hello  big\nworld"}) == (200, {"generated_text": "hello big world "})
    assert await post(client, "/generate", {"inputs": "", "parameters": {}}) == (200, {"generated_text": "echo "})
    assert await post(client, "/generate", {"inputs": " ".join(map(str, range(30)))}) == (
        200, {"generated_text": " ".join(map(str, range(20))) + " "},  # the default cap
    )
    status, body = await post(client, "/generate", {"inputs": "a b c", "parameters": {"max_new_tokens": 2, "details": True, "seed": 7}})
    assert body == {"generated_text": "a b ", "details": {
        "finish_reason": "length", "generated_tokens": 2, "seed": 7, "prefill": [],
        "tokens": [{"id": 0, "text": "a ", **TOKEN}, {"id": 1, "text": "b ", **TOKEN}],
    }}
    status, body = await post(client, "/generate", {"inputs": "a", "parameters": {"details": True}})
    assert body["details"]["finish_reason"] == "eos_token" and body["details"]["seed"] is None


async def test_root_answers_a_list_and_ignores_stream_false(start):
    client = await start()
    assert await post(client, "/", {"inputs": "p q", "stream": False}) == (200, [{"generated_text": "p q "}])


@pytest.mark.parametrize("path, body", [
    ("/generate_stream", {"inputs": "p q r", "parameters": {"max_new_tokens": 2}}),
    ("/", {"inputs": "p q r", "parameters": {"max_new_tokens": 2}, "stream": True}),
])
async def test_tgi_streams_one_event_per_token_the_last_with_the_text_and_details(start, path, body):
    client = await start()
    async with client.post(path, json=body) as response:
        events = await sse(response)
    assert events == [
        {"index": 0, "token": {"id": 0, "text": "p ", **TOKEN}, "generated_text": None, "details": None},
        {"index": 1, "token": {"id": 1, "text": "q ", **TOKEN}, "generated_text": "p q ",
         "details": {"finish_reason": "length", "generated_tokens": 2, "seed": None}},
    ]


# --- OpenAI ---


async def test_chat_completion_echoes_the_last_user_message(start):
    client = await start()
    messages = [{"role": "user", "content": "old"}, {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "ignored"}]
    status, body = await post(client, "/v1/chat/completions", {"model": "tgi", "messages": messages})
    assert status == 200 and body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    assert (body["object"], body["model"]) == ("chat.completion", "echo")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hi there "},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


async def test_chat_completion_streams_chunks_then_a_finish_then_usage_then_done(start):
    client = await start()
    body = {"model": "dummy", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 2,
            "stream": True, "stream_options": {"include_usage": True}}
    async with client.post("/v1/chat/completions", json=body) as response:
        *chunks, done = await sse(response)
    assert done == "[DONE]"
    assert {(c["object"], c["model"], c["id"]) for c in chunks} == {("chat.completion.chunk", "echo", chunks[0]["id"])}
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": "a "}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"role": "assistant", "content": "b "}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_completions_plain_and_streamed(start):
    client = await start()
    status, body = await post(client, "/v1/completions", {"prompt": ["x", "y z"], "max_tokens": 2})
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": "x y ", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    async with client.post("/v1/completions", json={"prompt": "x", "stream": True}) as response:
        events = await sse(response)
    assert [(e["object"], e["choices"]) for e in events[:-1]] == [
        ("text_completion", [{"index": 0, "text": "x ", "logprobs": None, "finish_reason": None}]),
        ("text_completion", [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]),
    ]
    assert events[-1] == "[DONE]"


async def test_embeddings_are_deterministic_per_text(start):
    client = await start()
    status, body = await post(client, "/v1/embeddings", {"model": "x", "input": ["a b", "c", "a b"]})
    data = body["data"]
    assert [(d["object"], d["index"], len(d["embedding"])) for d in data] == [("embedding", i, EMBEDDING_DIM) for i in range(3)]
    assert data[0]["embedding"] == data[2]["embedding"] != data[1]["embedding"]
    assert all(0 <= x <= 1 for x in data[0]["embedding"])
    assert (body["object"], body["model"], body["usage"]) == ("list", "echo", {"prompt_tokens": 5, "total_tokens": 5})
    status, single = await post(client, "/v1/embeddings", {"input": "c"})
    assert single["data"][0]["embedding"] == data[1]["embedding"]


async def test_feature_extraction_task_answers_embeddings_on_root(start):
    client = await start(task="feature-extraction")
    status, body = await post(client, "/v1/embeddings", {"input": ["a", "b"]})
    expected = [d["embedding"] for d in body["data"]]
    assert await post(client, "/", {"inputs": "a", "normalize": True}) == (200, [expected[0]])
    assert await post(client, "/", {"inputs": ["a", "b"]}) == (200, expected)
    assert await post(client, "/generate", {"inputs": "a"}) == (200, {"generated_text": "a "})  # TGI still there


# --- failures, counters, knobs ---


@pytest.mark.parametrize("path, body, error", [
    ("/generate", b"not json", "the body is not JSON"),
    ("/generate", b"\xff", "the body is not JSON"),
    ("/generate", b"[1]", "the body must be a JSON object"),
    ("/generate", {"parameters": {}}, "`inputs` must be a string"),
    ("/", {"inputs": ["a"]}, "`inputs` must be a string"),
    ("/generate", {"inputs": "a", "parameters": [1]}, "`parameters` must be an object"),
    ("/generate_stream", {"inputs": "a", "parameters": {"max_new_tokens": 0}}, "`max_new_tokens` must be a positive integer, got 0"),
    ("/", {"inputs": "a", "parameters": {"max_new_tokens": True}}, "`max_new_tokens` must be a positive integer, got True"),
    ("/v1/chat/completions", {"messages": []}, "`messages` must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": "5"},
     "`max_tokens` must be a positive integer, got '5'"),
    ("/v1/completions", {}, "`prompt` must be a string or a non-empty list of strings"),
    ("/v1/embeddings", {"input": [1, 2]}, "`input` must be a string or a non-empty list of strings"),
])
async def test_a_bad_request_is_a_422_in_tgi_error_shape(start, path, body, error):
    client = await start()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(path, data=data, headers={"Content-Type": "application/json"}) as response:
        assert (response.status, await response.json()) == (422, {"error": error, "error_type": "validation"})
    assert await metrics(client) == {"echo_requests_total": 1, "echo_requests_in_flight": 0, "echo_tokens_generated_total": 0}


async def test_each_request_is_logged_with_its_status(start, capsys):
    client = await start()
    await post(client, "/generate", {"inputs": "a"})
    await post(client, "/v1/completions", {})
    async with client.get("/nowhere") as response:
        assert response.status == 404
    async with client.get("/generate") as response:
        assert response.status == 405
    assert capsys.readouterr().out.splitlines() == [
        "echo engine ready", "POST /generate 200", "POST /v1/completions 422", "GET /nowhere 404", "GET /generate 405",
    ]


async def test_health_and_metrics_probes_are_not_logged(start, capsys):
    """Probes come every few seconds from endpointd: logged, they would fill the log tail and hide
    the requests."""
    client = await start(startup_delay_s=0.05)
    async with client.get("/health") as response:
        assert response.status == 503  # still starting: probed, not logged either
    await until(lambda: healthy(client))
    await metrics(client)
    await post(client, "/generate", {"inputs": "a"})
    async with client.get("/health") as response:
        assert response.status == 200
    assert capsys.readouterr().out.splitlines() == ["echo engine ready", "POST /generate 200"]


async def test_metrics_count_requests_and_tokens(start):
    client = await start()
    await post(client, "/generate", {"inputs": "a b c"})
    async with client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "d e"}], "stream": True}) as response:
        await response.read()
    assert await metrics(client) == {"echo_requests_total": 2, "echo_requests_in_flight": 0, "echo_tokens_generated_total": 5}


async def test_token_delay_paces_each_flushed_event_and_plain_answers(start):
    delay_s = 0.03
    client = await start(token_delay_s=delay_s)
    loop = asyncio.get_running_loop()
    arrivals = []
    async with client.post("/generate_stream", json={"inputs": "a b c"}) as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                arrivals.append(loop.time())
    assert len(arrivals) == 3
    assert arrivals[-1] - arrivals[0] >= 2 * delay_s * 0.9  # sent as produced, not all at the end
    started = loop.time()
    await post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a b c"}]})
    assert loop.time() - started >= 3 * delay_s * 0.9


async def test_in_flight_covers_a_stream_and_is_released_when_its_client_leaves(start, capsys):
    client = await start(token_delay_s=0.005)
    response = await client.post("/generate_stream", json={"inputs": "w " * 20})
    assert (await response.content.readline()).startswith(b"data: ")
    assert (await metrics(client))["echo_requests_in_flight"] == 1
    response.close()  # the client goes away mid-stream
    await until(lambda: "POST /generate_stream 499" in capsys.readouterr().out)
    counters = await metrics(client)
    assert (counters["echo_requests_in_flight"], counters["echo_requests_total"]) == (0, 0)  # left, not answered
    assert counters["echo_tokens_generated_total"] < 20


@pytest.mark.parametrize("path, body, ending", [
    ("/generate", {"inputs": "last words"}, '{"generated_text": "last words "}'),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "last words"}], "stream": True}, "data: [DONE]\n\n"),
])
async def test_crash_after_requests_exits_with_code_3_after_sending_that_answer(start, exits, capsys, path, body, ending):
    client = await start(crash_after_requests=2)
    assert await post(client, "/generate", {"inputs": "first"}) == (200, {"generated_text": "first "})
    assert exits == []
    async with client.post(path, json=body) as response:
        assert response.status == 200 and (await response.text()).endswith(ending)  # the whole answer
    await until(lambda: exits == [3])
    assert "echo engine: exiting with code 3 after 2 inference requests (ECHO_CRASH_AFTER_REQUESTS)" in capsys.readouterr().out


# --- the real huggingface_hub client ---


@pytest.fixture
async def hf(start, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    client = await start()
    async with AsyncInferenceClient(model=f"http://127.0.0.1:{client.port}") as hf:
        yield hf


async def test_text_generation_with_the_real_client(hf):
    assert await hf.text_generation("hello big world") == "hello big world "
    assert await hf.text_generation("a b c d", max_new_tokens=2) == "a b "
    out = await hf.text_generation("a b", details=True)
    assert (out.generated_text, out.details.finish_reason, out.details.generated_tokens) == ("a b ", "eos_token", 2)
    assert [t.text for t in out.details.tokens] == ["a ", "b "]
    assert [t async for t in await hf.text_generation("one two three", stream=True)] == ["one ", "two ", "three "]
    events = [e async for e in await hf.text_generation("one two three", stream=True, details=True, max_new_tokens=2)]
    assert [e.token.text for e in events] == ["one ", "two "]
    assert (events[-1].generated_text, events[-1].details.finish_reason) == ("one two ", "length")
    with pytest.raises(ValidationError, match="`max_new_tokens` must be a positive integer, got 0"):
        await hf.text_generation("a", max_new_tokens=0)


async def test_chat_completion_with_the_real_client(hf):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    out = await hf.chat_completion(messages)
    assert (out.choices[0].message.content, out.choices[0].finish_reason, out.usage.completion_tokens) == ("hi there ", "stop", 2)
    chunks = [c async for c in await hf.chat_completion(messages, stream=True, max_tokens=1)]
    assert [c.choices[0].delta.content for c in chunks] == ["hi ", ""]
    assert chunks[-1].choices[0].finish_reason == "length"


# --- the API key ---

ECHO_KEY = "k3y-of-this-replica"
ROUTES = [("GET", "/info"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/generate"),
          ("POST", "/"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
          ("POST", "/generate_stream"), ("GET", "/no-such-route")]
BODIES = {"/generate": {"inputs": "a"}, "/": {"inputs": "a"}, "/generate_stream": {"inputs": "a"},
          "/v1/chat/completions": {"messages": [{"role": "user", "content": "a"}]},
          "/v1/completions": {"prompt": "a"}, "/v1/embeddings": {"input": "a"}}


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("authorization, allowed", [
    (None, False),
    ("Bearer wrong", False),
    (ECHO_KEY, False),  # the bare key, without the scheme
    (f"Basic {ECHO_KEY}", False),
    (f"Bearer {ECHO_KEY}x", False),
    (f"Bearer {ECHO_KEY}", True),
    (f"bearer {ECHO_KEY}", True),  # the scheme is case-insensitive (RFC 9110)
])
async def test_with_a_key_every_route_but_health_needs_it(start, method, path, authorization, allowed):
    client = await start(api_key=ECHO_KEY)
    headers = {"Authorization": authorization} if authorization else {}
    async with client.request(method, path, json=BODIES.get(path), headers=headers) as response:
        if allowed:
            assert response.status == (404 if path == "/no-such-route" else 200)
        else:
            assert response.status == 401
            assert (await response.json()) == {"error": "a valid `Authorization: Bearer <key>` header is required",
                                               "error_type": "authentication"}
    async with client.get("/health") as response:  # readiness is probed without the key
        assert response.status == 200


async def test_without_a_key_every_route_is_open(start):
    client = await start()
    status, _ = await post(client, "/generate", {"inputs": "a"})
    assert status == 200


async def test_a_refused_request_is_logged_without_the_key(start, capsys):
    client = await start(api_key=ECHO_KEY)
    async with client.post("/generate", json={"inputs": "a"}, headers={"Authorization": "Bearer guess"}) as response:
        assert response.status == 401
    out = capsys.readouterr().out
    assert "POST /generate 401" in out and ECHO_KEY not in out and "guess" not in out


def test_the_key_is_never_shown():
    settings = Settings.from_env({"ECHO_API_KEY": ECHO_KEY})
    assert settings.api_key == ECHO_KEY and ECHO_KEY not in repr(settings)
    assert Settings.from_env({"ECHO_API_KEY": ""}).api_key is None  # empty: no key


# --- settings ---


def test_settings_from_env_reads_every_knob():
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({
        "PORT": "8081", "ECHO_STARTUP_DELAY_S": "1.5", "ECHO_TOKEN_DELAY_S": "0", "ECHO_CRASH_AFTER_REQUESTS": "2",
        "ECHO_NEVER_READY": "TRUE", "ECHO_TASK": "feature-extraction",
    }) == Settings(port=8081, startup_delay_s=1.5, token_delay_s=0.0, crash_after_requests=2, never_ready=True,
                   task="feature-extraction")
    assert Settings.from_env({"ECHO_NEVER_READY": "0", "ECHO_CRASH_AFTER_REQUESTS": ""}) == Settings()


@pytest.mark.parametrize("name, value, error", [
    ("PORT", "x", "PORT='x' is invalid: it must be an integer from 1 to 65535"),
    ("PORT", "65536", "PORT='65536' is invalid: it must be an integer from 1 to 65535"),
    ("ECHO_STARTUP_DELAY_S", "-1", "ECHO_STARTUP_DELAY_S='-1' is invalid: it must be a number >= 0"),
    ("ECHO_STARTUP_DELAY_S", "inf", "ECHO_STARTUP_DELAY_S='inf' is invalid: it must be a number >= 0"),
    ("ECHO_TOKEN_DELAY_S", "nan", "ECHO_TOKEN_DELAY_S='nan' is invalid: it must be a number >= 0"),
    ("ECHO_CRASH_AFTER_REQUESTS", "0", "ECHO_CRASH_AFTER_REQUESTS='0' is invalid: it must be an integer >= 1"),
    ("ECHO_CRASH_AFTER_REQUESTS", "1.5", "ECHO_CRASH_AFTER_REQUESTS='1.5' is invalid: it must be an integer >= 1"),
    ("ECHO_NEVER_READY", "maybe", "ECHO_NEVER_READY='maybe' is invalid: it must be one of 1, true, 0, false"),
    ("ECHO_TASK", "ocr", "ECHO_TASK='ocr' is invalid: it must be one of text-generation, feature-extraction"),
])
def test_an_invalid_knob_names_the_variable_the_value_and_the_range(name, value, error):
    with pytest.raises(ValueError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value) == error


def test_main_exits_non_zero_on_an_invalid_knob(monkeypatch, capsys):
    monkeypatch.setenv("ECHO_TOKEN_DELAY_S", "fast")
    assert main() == 2
    assert capsys.readouterr().err == "echo engine: ECHO_TOKEN_DELAY_S='fast' is invalid: it must be a number >= 0\n"
