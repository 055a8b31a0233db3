"""The inference toolkit without torch: which task and backend a repository gets (tables), how a
request is read, and the HTTP server (routes, key, errors, bounds) around an in-memory handler.
The real model runs in tests/e2e/test_e2e_toolkit.py."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engines.toolkit.server import STOP, TOOLKIT, Settings, make_app
from engines.toolkit.tasks import Backend, BadRequest, ToolkitError, derive_task, parse_request, plan

ST_FILES = {"modules.json": "[]", "config_sentence_transformers.json": "{}"}


def repo(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def config(*architectures):
    return json.dumps({"architectures": list(architectures)})


# (repository files, HF_TASK, expected task, expected backend)
@pytest.mark.parametrize("files, task, want_task, backend", [
    # A sentence-transformers repository: sentence-embeddings unless told otherwise (the reference).
    ({**ST_FILES, "config.json": config("BertModel")}, None, "sentence-embeddings", Backend.SENTENCE_TRANSFORMERS),
    # feature-extraction of a sentence-transformers repository: its pooled vectors, by Sentence-Transformers.
    ({**ST_FILES, "config.json": config("BertModel")}, "feature-extraction", "feature-extraction",
     Backend.SENTENCE_TRANSFORMERS),
    ({"sentence_bert_config.json": "{}"}, "sentence-similarity", "sentence-similarity", Backend.SENTENCE_TRANSFORMERS),
    # ... but of a plain Transformers repository: the feature-extraction pipeline (token vectors).
    ({"config.json": config("BertModel")}, "feature-extraction", "feature-extraction", Backend.PIPELINE),
    ({"config.json": config("BertModel")}, None, "feature-extraction", Backend.PIPELINE),
    ({"config.json": config("DistilBertForSequenceClassification")}, None, "text-classification", Backend.PIPELINE),
    ({"config.json": config("GPT2LMHeadModel")}, None, "text-generation", Backend.PIPELINE),
    ({"config.json": config("LlamaForCausalLM")}, None, "text-generation", Backend.PIPELINE),
    ({"config.json": config("T5ForConditionalGeneration")}, None, "text2text-generation", Backend.PIPELINE),
    ({"config.json": config("WhisperForConditionalGeneration")}, "automatic-speech-recognition",
     "automatic-speech-recognition", Backend.PIPELINE),  # HF_TASK wins over the architecture
    ({"config.json": config("BertForTokenClassification")}, None, "token-classification", Backend.PIPELINE),
    ({"config.json": config("ViTForImageClassification")}, None, "image-classification", Backend.PIPELINE),
    # The model card's pipeline_tag comes before the architecture.
    ({"README.md": "---\nlicense: mit\npipeline_tag: fill-mask\n---\n# card", "config.json": config("BertModel")},
     None, "fill-mask", Backend.PIPELINE),
    # handler.py wins over everything, whatever the task.
    ({"handler.py": "", **ST_FILES}, "feature-extraction", "feature-extraction", Backend.CUSTOM),
    ({"handler.py": ""}, None, "custom", Backend.CUSTOM),
])
def test_the_task_and_backend_of_a_repository(tmp_path, files, task, want_task, backend):
    got = plan(repo(tmp_path, files), task)
    assert (got.task, got.backend) == (want_task, backend)


@pytest.mark.parametrize("files, message", [
    ({}, "cannot tell the task of .*: .* set the endpoint's task"),
    ({"config.json": "{}"}, "cannot tell the task"),
    ({"config.json": config("Mystery")}, "cannot tell the task"),
    ({"config.json": "{not json"}, "config.json is not valid JSON"),
    ({"README.md": "no front matter\npipeline_tag: fill-mask"}, "cannot tell the task"),
])
def test_an_undecidable_repository_says_to_set_the_task(tmp_path, files, message):
    with pytest.raises(ToolkitError, match=message):
        derive_task(repo(tmp_path, files))


def test_bad_settings_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ToolkitError, match="is not a directory: mount the model there"):
        plan(tmp_path / "absent", None)
    with pytest.raises(ToolkitError, match="HF_TASK 'Text Classification' is not a task name"):
        plan(tmp_path, "Text Classification")
    with pytest.raises(ToolkitError, match="PORT=70000 is out of range; use 1 to 65535"):
        Settings.from_env({"PORT": "70000"})
    with pytest.raises(ToolkitError, match="TOOLKIT_MAX_BODY_BYTES='lots' is not an integer"):
        Settings.from_env({"TOOLKIT_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ToolkitError, match="HF_DEFAULT_PIPELINE_NAME='../x.py' must be a file name"):
        Settings.from_env({"HF_DEFAULT_PIPELINE_NAME": "../x.py"})


def test_settings_from_the_presets_env():
    got = Settings.from_env({"HF_MODEL_DIR": "/repository", "HF_TASK": "fill-mask", "HF_FRAMEWORK": "PyTorch",
                             "TOOLKIT_API_KEY": "k"})
    assert (str(got.repository), got.task, got.framework, got.api_key, got.port) == (
        "/repository", "fill-mask", "pytorch", "k", 5000)


@pytest.mark.parametrize("body, inputs, parameters", [
    ({"inputs": "hi"}, "hi", {}),
    ({"inputs": ["a", "b"], "parameters": {"top_k": 2}}, ["a", "b"], {"top_k": 2}),
    ({"inputs": "hi", "parameters": None}, "hi", {}),
    # huggingface_hub sends feature-extraction's parameters at the root (TEI's way).
    ({"inputs": "hi", "normalize": True, "prompt_name": None}, "hi", {"normalize": True}),
    ({"inputs": {"source_sentence": "a", "sentences": ["b"]}}, {"source_sentence": "a", "sentences": ["b"]}, {}),
])
def test_a_request_is_inputs_and_parameters(body, inputs, parameters):
    assert parse_request(body) == (inputs, parameters)


@pytest.mark.parametrize("body, message", [
    ([1, 2], "must be a JSON object"),
    ({"text": "hi"}, 'has no "inputs"'),
    ({"inputs": "hi", "parameters": [1]}, '"parameters" must be an object'),
    ({"inputs": "hi", "options": {}}, "unknown keys options"),
])
def test_a_malformed_request_says_what_to_send(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_request(body)


class Handlers:
    """What the toolkit loads, in memory: an echo handler whose load can be held or made to fail."""

    def __init__(self, fail: str | None = None) -> None:
        self.release = threading.Event()
        self.fail = fail
        self.calls: list[dict] = []

    def load(self, repository, chosen, handler_file):
        assert self.release.wait(30), "the test never released the load"
        if self.fail:
            raise RuntimeError(self.fail)

        def handle(data):
            self.calls.append(data)
            if data["inputs"] == "refuse":
                raise ValueError("inputs may not be 'refuse'")
            if data["inputs"] == "crash":
                raise RuntimeError("out of memory")
            if data["inputs"] == "nan":
                return [float("nan")]
            if data["inputs"] == "hold":
                assert self.release.wait(30)
            return {"echo": data["inputs"], "parameters": data["parameters"]}

        return handle


async def client_for(tmp_path, handlers, **env) -> TestClient:
    (tmp_path / "handler.py").write_text("")
    settings = Settings.from_env({"HF_MODEL_DIR": str(tmp_path), **env})
    client = TestClient(TestServer(make_app(settings, loader=handlers.load)))
    await client.start_server()
    return client


async def ready(client: TestClient) -> None:
    for _ in range(600):
        if client.app[TOOLKIT].handler is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the handler never loaded")


async def test_health_answers_503_while_loading_then_200(tmp_path):
    handlers = Handlers()
    client = await client_for(tmp_path, handlers)
    try:
        assert (await client.get("/health")).status == 503
        response = await client.post("/", json={"inputs": "x"})
        assert response.status == 503 and "loading" in (await response.json())["error"]
        handlers.release.set()
        await ready(client)
        assert (await client.get("/health")).status == 200
        assert (await client.get("/")).status == 200
    finally:
        await client.close()


async def test_predict_answers_the_handlers_json(tmp_path):
    handlers = Handlers()
    handlers.release.set()
    client = await client_for(tmp_path, handlers)
    try:
        await ready(client)
        for path in ("/", "/predict"):
            response = await client.post(path, json={"inputs": "hi", "parameters": {"top_k": 1}})
            assert (response.status, await response.json()) == (200, {"echo": "hi", "parameters": {"top_k": 1}})
        # An image or a recording is its own body, as in the reference.
        response = await client.post("/", data=b"\x89PNG", headers={"Content-Type": "image/png"})
        assert response.status == 200 and handlers.calls[-1] == {"inputs": b"\x89PNG", "parameters": {}}
    finally:
        await client.close()


@pytest.mark.parametrize("data, headers, status, message", [
    (b"{nope", {"Content-Type": "application/json"}, 400, "the body is not valid JSON"),
    (b'{"text": "x"}', {"Content-Type": "application/json"}, 400, 'has no "inputs"'),
    (b'{"inputs": "refuse"}', {"Content-Type": "application/json"}, 400, "ValueError: inputs may not be 'refuse'"),
    (b'{"inputs": "crash"}', {"Content-Type": "application/json"}, 500, "the model failed on this request"),
    (b"", {"Content-Type": "audio/wav"}, 400, "the body is empty"),
    (b'{"inputs": "nan"}', {"Content-Type": "application/json"}, 500, "cannot be sent as JSON"),
])
async def test_bad_requests_get_a_sentence_and_their_status(tmp_path, data, headers, status, message):
    handlers = Handlers()
    handlers.release.set()
    client = await client_for(tmp_path, handlers)
    try:
        await ready(client)
        response = await client.post("/", data=data, headers=headers)
        assert response.status == status
        assert message in (await response.json())["error"]
    finally:
        await client.close()


async def test_the_replicas_key_guards_everything_but_health(tmp_path):
    handlers = Handlers()
    handlers.release.set()
    client = await client_for(tmp_path, handlers, TOOLKIT_API_KEY="s3cret")
    try:
        await ready(client)
        assert (await client.get("/health")).status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await client.post("/", json={"inputs": "x"}, headers=headers)
            assert response.status == 401 and "API key" in (await response.json())["error"]
        ok = await client.post("/", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200
    finally:
        await client.close()


async def test_a_body_over_the_bound_is_refused(tmp_path):
    handlers = Handlers()
    handlers.release.set()
    client = await client_for(tmp_path, handlers, TOOLKIT_MAX_BODY_BYTES="1024")
    try:
        await ready(client)
        response = await client.post("/", json={"inputs": "x" * 2000})
        assert response.status == 413
        assert handlers.calls == []
    finally:
        await client.close()


async def test_requests_beyond_the_queue_bound_get_503(tmp_path):
    handlers = Handlers()
    handlers.release.set()
    client = await client_for(tmp_path, handlers, TOOLKIT_MAX_QUEUED="1")
    try:
        await ready(client)
        handlers.release.clear()  # the model is busy with the first request
        first = asyncio.create_task(client.post("/", json={"inputs": "hold"}))
        for _ in range(600):
            if client.app[TOOLKIT].queued == 1:
                break
            await asyncio.sleep(0.01)
        response = await client.post("/", json={"inputs": "x"})
        assert response.status == 503 and "waiting for the model" in (await response.json())["error"]
        handlers.release.set()
        assert (await first).status == 200
    finally:
        await client.close()


async def test_a_failed_load_stops_the_server_with_the_reason(tmp_path):
    handlers = Handlers(fail="no weights in /repository")
    handlers.release.set()
    client = await client_for(tmp_path, handlers)
    try:
        await asyncio.wait_for(client.app[STOP].wait(), 30)
        response = await client.get("/health")
        assert response.status == 503
        assert "loading the model failed: RuntimeError: no weights in /repository" in (await response.json())["error"]
    finally:
        await client.close()


@pytest.mark.parametrize("v2, v1, want", [
    ("200000 100000\n", None, 2),
    ("150000 100000\n", None, 2),  # 1.5 CPUs: two threads
    ("50000 100000\n", None, 1),
    ("max 100000\n", None, None),  # no limit
    (None, ("400000", "100000"), 4),
    (None, ("-1", "100000"), None),
    (None, None, None),
    ("garbage", None, None),
])
def test_torch_threads_follow_the_containers_cpu_limit(tmp_path, v2, v1, want):
    from engines.toolkit.handlers import cpu_limit

    paths = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    if v2 is not None:
        paths[0].write_text(v2)
    if v1 is not None:
        paths[1].write_text(v1[0])
        paths[2].write_text(v1[1])
    assert cpu_limit(*paths) == want


def test_a_repositorys_requirements_are_installed_and_a_failure_does_not_stop_the_start(tmp_path, caplog):
    from engines.toolkit.handlers import install_requirements

    assert install_requirements(tmp_path)  # none: nothing to do
    (tmp_path / "requirements.txt").write_text("pip\n")  # already there: no index needed
    assert install_requirements(tmp_path)
    (tmp_path / "requirements.txt").write_text("this is not a requirement !!\n")
    with caplog.at_level("WARNING", logger="toolkit"):
        assert not install_requirements(tmp_path)
    assert "failed (exit code" in caplog.text and "going on without it" in caplog.text


class EmbeddingHandlers:
    """A loader whose handler embeds like a Sentence-Transformers one: each text's vector is
    [its length, 1.0, 0.5], and the tokens read are the words."""

    def load(self, repository, chosen, handler_file):
        def embed(data):
            return [[float(len(t)), 1.0, 0.5] for t in data["inputs"]]

        def vectors_and_tokens(texts, dimensions):
            vectors = [[float(len(t)), 1.0, 0.5][: dimensions or 3] for t in texts]
            return vectors, sum(len(t.split()) for t in texts)

        embed.vectors_and_tokens = vectors_and_tokens
        return embed


async def test_openai_embeddings_route_answers_floats_and_base64(tmp_path):
    import base64
    import struct

    client = await client_for(tmp_path, EmbeddingHandlers())
    try:
        await ready(client)
        response = await client.post("/v1/embeddings", json={"input": ["one two", "three"], "model": "m"})
        body = await response.json()
        assert response.status == 200, body
        assert body["object"] == "list" and body["model"] == "m"
        assert [d["embedding"] for d in body["data"]] == [[7.0, 1.0, 0.5], [5.0, 1.0, 0.5]]
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        # What the openai client asks for by default: little-endian float32, base64-encoded.
        response = await client.post("/v1/embeddings", json={"input": "abc", "encoding_format": "base64", "dimensions": 2})
        [item] = (await response.json())["data"]
        assert struct.unpack("<2f", base64.b64decode(item["embedding"])) == (3.0, 1.0)
    finally:
        await client.close()


@pytest.mark.parametrize("body, message", [
    ({"input": []}, '"input" must be a non-empty string or a list'),
    ({"input": [1, 2]}, '"input" must be a non-empty string or a list'),
    ({"input": "x", "encoding_format": "int8"}, '"encoding_format" must be "float" or "base64"'),
    ({"input": "x", "dimensions": 0}, '"dimensions" must be a positive integer'),
    ({"input": ["x"] * 257}, "list of 1 to 256"),
])
async def test_openai_embeddings_bad_bodies_get_a_sentence(tmp_path, body, message):
    client = await client_for(tmp_path, EmbeddingHandlers())
    try:
        await ready(client)
        response = await client.post("/v1/embeddings", json=body)
        assert response.status == 400 and message in (await response.json())["error"]
    finally:
        await client.close()


async def test_openai_embeddings_is_not_served_for_other_tasks(tmp_path):
    handlers = Handlers()
    handlers.release.set()
    client = await client_for(tmp_path, handlers)
    try:
        await ready(client)
        response = await client.post("/v1/embeddings", json={"input": "x"})
        assert response.status == 404 and "/v1/embeddings is served for" in (await response.json())["error"]
    finally:
        await client.close()
