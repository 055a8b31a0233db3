"""The engine suggestion: its rules as a table over repository facts, the GGUF pick, and the route
(`GET /v2/engines/suggest`) in process on a real store, with local directories under a model root
and a hand-made huggingface_hub cache read by the real client offline."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest

from engines.artifacts import RepoFacts, describe
from engines.availability import ImageInventory
from engines.presets import DEFAULT_IMAGES
from engines.suggest import SuggestError, gguf_files, pick_gguf, suggest
from tests.api_harness import ApiWorld
from tests.unit.test_revision import COMMIT, cache_repo

GIB = 1 << 30
LLAMA = {"architectures": ["LlamaForCausalLM"]}


def facts(files, config=None, library=None, tags=(), pipeline_tag=None) -> RepoFacts:
    files = files if isinstance(files, dict) else dict.fromkeys(files, 1)
    return RepoFacts("org/m", COMMIT, files, config or {}, library, frozenset(tags), pipeline_tag)


@pytest.mark.parametrize("repo, accelerator, variant, settings, rule", [
    # 1. a handler.py: the toolkit runs it, whatever else the repository has
    (facts(["handler.py", "m-Q4_K_M.gguf"]), "gpu", "huggingface", {}, "handler.py"),
    # 2. GGUF files: llama.cpp
    (facts(["m-Q8_0.gguf", "m-Q4_K_M.gguf"]), "cpu", "llamacpp", {"modelPath": "m-Q4_K_M.gguf"}, "GGUF"),
    (facts(["m.gguf", "mmproj-m-f16.gguf"], LLAMA), "gpu", "llamacpp",
     {"modelPath": "m.gguf", "mmprojModelPath": "mmproj-m-f16.gguf"}, "GGUF"),
    (facts(["e-Q4_K_M.gguf"], tags=["sentence-transformers"]), "cpu", "llamacpp",
     {"modelPath": "e-Q4_K_M.gguf", "mode": "embedding"}, "GGUF"),
    # 3. sentence-transformers or an embedding model: TEI
    (facts(["config.json", "modules.json", "model.safetensors"]), "cpu", "tei", {}, "embedding"),
    (facts(["config.json"], library="sentence-transformers"), "gpu", "tei", {}, "embedding"),
    (facts(["config.json"], pipeline_tag="feature-extraction"), "cpu", "tei", {}, "embedding"),
    # 4. text generation, an architecture vLLM supports, a GPU: vLLM
    (facts(["config.json", "model.safetensors"], LLAMA), "gpu", "vLLM", {}, "vLLM supports (LlamaForCausalLM)"),
    (facts(["config.json"], LLAMA, pipeline_tag="text-generation"), "gpu", "vLLM", {}, "vLLM supports"),
    # ... on a CPU, or of another architecture: the toolkit
    (facts(["config.json"], LLAMA), "cpu", "huggingface", {}, "vLLM needs a GPU instance"),
    (facts(["config.json"], {"architectures": ["FancyNewForCausalLM"]}), "gpu", "huggingface", {},
     "not in vLLM's supported list"),
    # 5. anything else: the toolkit
    (facts(["config.json"], {"architectures": ["BertForSequenceClassification"]}, pipeline_tag="text-classification"),
     "gpu", "huggingface", {}, "no specialised engine"),
    (facts([]), "cpu", "huggingface", {}, "no specialised engine"),
])
def test_the_rules(repo, accelerator, variant, settings, rule):
    chosen = suggest(repo, accelerator)
    assert chosen.image == {variant: settings}
    assert rule in chosen.reason


@pytest.mark.parametrize("repo, accelerator, variant, task, rule", [
    # TEI cannot run here: the toolkit embeds, one vector per input as TEI would (feature-extraction)
    (facts(["config.json", "modules.json", "model.safetensors"]), "cpu", "huggingface", "feature-extraction",
     "Text Embeddings Inference cannot run on this host (no TEI here)"),
    (facts(["config.json"], pipeline_tag="sentence-similarity", library="sentence-transformers"), "gpu",
     "huggingface", "feature-extraction", "no TEI here"),
    # vLLM cannot run here: the toolkit generates
    (facts(["config.json", "model.safetensors"], LLAMA), "gpu", "huggingface", "text-generation",
     "vLLM cannot run on this host (no vLLM here)"),
])
def test_an_engine_this_host_cannot_run_is_passed_over(repo, accelerator, variant, task, rule):
    chosen = suggest(repo, accelerator, cannot_run={"tei": "no TEI here", "vLLM": "no vLLM here"})
    assert (chosen.variant, chosen.task) == (variant, task)
    assert rule in chosen.reason


def test_what_cannot_run_changes_nothing_where_no_other_engine_serves():
    gguf = facts(["m-Q4_K_M.gguf"])
    assert suggest(gguf, "cpu", cannot_run={"llamacpp": "no"}).variant == "llamacpp"  # the toolkit reads no GGUF


@pytest.mark.parametrize("files, expected", [
    ({"a-Q8_0.gguf": 8 * GIB, "a-Q4_K_M.gguf": 4 * GIB, "a-Q2_K.gguf": 2 * GIB}, "a-Q4_K_M.gguf"),  # Q4_K_M first
    ({"a-q4_k_m.gguf": 4 * GIB, "b-Q4_K_M.gguf": 3 * GIB}, "b-Q4_K_M.gguf"),  # any case; the smaller of them
    ({"a-Q8_0.gguf": 8 * GIB, "a-Q5_K_S.gguf": 5 * GIB, "a-F16.gguf": 16 * GIB}, "a-Q5_K_S.gguf"),  # else the smallest
    ({"b.gguf": None, "a.gguf": None}, "a.gguf"),  # sizes unknown: by name
    # A split file counts as its parts together, and is named by its first part.
    ({"big/x-00001-of-00002.gguf": 3 * GIB, "big/x-00002-of-00002.gguf": 3 * GIB, "x-Q8_0.gguf": 5 * GIB},
     "x-Q8_0.gguf"),
    ({"Q4_K_M/x-Q4_K_M-00001-of-00002.gguf": GIB, "Q4_K_M/x-Q4_K_M-00002-of-00002.gguf": GIB, "x-Q8_0.gguf": GIB},
     "Q4_K_M/x-Q4_K_M-00001-of-00002.gguf"),
])
def test_the_gguf_pick(files, expected):
    assert pick_gguf(facts(files)) == expected


def test_projectors_and_later_parts_are_never_served():
    repo = facts(["mmproj-f16.gguf", "x-00001-of-00002.gguf", "x-00002-of-00002.gguf", "y.gguf"])
    assert gguf_files(repo) == ["x-00001-of-00002.gguf", "y.gguf"]


def test_the_pick_can_be_overridden():
    repo = facts({"a-Q4_K_M.gguf": 4, "a-Q8_0.gguf": 8})
    chosen = suggest(repo, "cpu", gguf="a-Q8_0.gguf")
    assert chosen.image == {"llamacpp": {"modelPath": "a-Q8_0.gguf"}} and "as asked" in chosen.reason
    assert chosen.ggufs == ("a-Q4_K_M.gguf", "a-Q8_0.gguf")
    with pytest.raises(SuggestError, match=r"gguf 'nope.gguf' is not a GGUF file of org/m; it has: a-Q4_K_M.gguf, a-Q8_0.gguf"):
        suggest(repo, "cpu", gguf="nope.gguf")


@pytest.mark.parametrize("files, framework", [
    (["model.safetensors", "tf_model.h5"], "pytorch"),  # PyTorch if available (the reference's default)
    (["tf_model.h5", "model.onnx"], "tensorflow"),
    (["onnx/model.onnx"], "onnx"),
    (["flax_model.msgpack"], "jax"),
    (["config.json"], "custom"),
])
def test_the_framework_is_the_weights(files, framework):
    assert suggest(facts(files), "cpu").framework == framework


# --- the route ------------------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    w = await ApiWorld().start(tmp_path)
    w.cache = tmp_path / "hub"
    w.api.describe = lambda repository, revision, ns: describe(repository, revision, w.cache)
    w.pulled = {DEFAULT_IMAGES["huggingface"]}
    w.registry = set(DEFAULT_IMAGES.values()) - {DEFAULT_IMAGES["huggingface"]}  # a fake image inventory
    w.asked_registry = []

    async def present(image):
        return image in w.pulled

    async def in_registry(image):
        w.asked_registry.append(image)
        return None if image in w.registry else "lookup ghcr.io: no such host"

    w.api.images = ImageInventory(present, in_registry)
    yield w
    await w.close()


async def get(api, who="alice", **params):
    r = await api.client.get("/v2/engines/suggest", params=params, headers=api.auth(who) if who else {})
    return r.status, await r.json()


async def test_a_local_text_generation_model(api):
    model = api.models / "llama"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA))
    (model / "model.safetensors").write_bytes(b"w")
    status, body = await get(api, repository=str(model))
    assert status == 200, body
    assert (body["engine"], body["image"], body["framework"], body["task"]) == (
        "huggingface", {"huggingface": {}}, "pytorch", "text-generation")
    assert (body["containerImage"], body["present"], body["mustPull"]) == (DEFAULT_IMAGES["huggingface"], True, False)
    assert body["source"] == "local" and body["revision"].startswith("sha256:")
    assert body["downloadPattern"] is None  # a local directory is mounted, not downloaded

    status, body = await get(api, repository=str(model), accelerator="gpu")
    assert (status, body["engine"], body["present"], body["mustPull"]) == (200, "vLLM", False, True)  # pullable
    assert body["containerImage"] == DEFAULT_IMAGES["vLLM"]


async def test_a_cached_hub_gguf_repository(api):
    cache_repo(api.cache, "org/gguf", COMMIT, {"m-Q8_0.gguf": b"8" * 8, "m-Q4_K_M.gguf": b"4" * 4, "README.md": b""})
    status, body = await get(api, repository="org/gguf")
    assert status == 200, body
    assert body["image"] == {"llamacpp": {"modelPath": "m-Q4_K_M.gguf"}}
    assert body["downloadPattern"] == ["m-Q4_K_M.gguf"]  # one quantization, not every one
    assert (body["revision"], body["source"], body["ggufFiles"]) == (COMMIT, "cache", ["m-Q4_K_M.gguf", "m-Q8_0.gguf"])
    status, body = await get(api, repository="org/gguf", gguf="m-Q8_0.gguf")
    assert body["downloadPattern"] == ["m-Q8_0.gguf"]
    status, body = await get(api, repository="org/gguf", gguf="m-F16.gguf")
    assert status == 400 and "gguf 'm-F16.gguf' is not a GGUF file of org/gguf" in body["error"]


async def test_a_cached_sentence_transformers_model(api):
    cache_repo(api.cache, "org/st", COMMIT, {"config.json": b"{}", "modules.json": b"[]", "model.safetensors": b"w"})
    status, body = await get(api, repository="org/st")
    assert (status, body["engine"], body["task"]) == (200, "tei", "sentence-embeddings")
    assert body["containerImage"] == DEFAULT_IMAGES["tei"]


async def test_a_sentence_transformers_model_gets_the_toolkit_where_tei_cannot_run(api):
    api.registry.discard(DEFAULT_IMAGES["tei"])  # not here, and its registry cannot be reached
    cache_repo(api.cache, "org/st", COMMIT, {"config.json": b"{}", "modules.json": b"[]", "model.safetensors": b"w"})
    status, body = await get(api, repository="org/st")
    assert (status, body["engine"], body["task"]) == (200, "huggingface", "feature-extraction")
    assert (body["containerImage"], body["present"], body["runnable"]) == (DEFAULT_IMAGES["huggingface"], True, True)
    assert f"the image {DEFAULT_IMAGES['tei']} is not on this host and cannot be pulled" in body["reason"]
    assert body["passedOver"] == {"tei": body["passedOver"]["tei"]} and "no such host" in body["passedOver"]["tei"]

    await get(api, repository="org/st")  # the registry's answer is kept: asked once
    assert api.asked_registry.count(DEFAULT_IMAGES["tei"]) == 1

    api.pulled.add(DEFAULT_IMAGES["tei"])  # once the image is here, TEI is suggested again
    status, body = await get(api, repository="org/st")
    assert (body["engine"], body["present"], body["runnable"], body["passedOver"]) == ("tei", True, True, {})


async def test_an_image_that_cannot_run_and_has_no_substitute_says_so(api):
    api.registry.discard(DEFAULT_IMAGES["llamacpp"])
    cache_repo(api.cache, "org/gguf", COMMIT, {"m-Q4_K_M.gguf": b"4"})
    status, body = await get(api, repository="org/gguf")
    assert (status, body["engine"], body["present"], body["runnable"]) == (200, "llamacpp", False, False)
    assert "cannot be pulled" in body["unavailable"]


async def test_the_operators_pinned_images_are_the_ones_checked(api):
    api.api.default_images = {"tei": "registry.local/tei:1.5"}
    api.pulled.add("registry.local/tei:1.5")
    cache_repo(api.cache, "org/st", COMMIT, {"modules.json": b"[]"})
    status, body = await get(api, repository="org/st")
    assert (body["containerImage"], body["present"]) == ("registry.local/tei:1.5", True)


async def test_an_unreachable_hub_is_a_502(api):
    status, body = await get(api, repository="org/not-cached")
    assert status == 502 and "the Hub could not be reached" in body["error"]


@pytest.mark.parametrize("params, phrase", [
    ({}, "query parameter repository is required"),
    ({"repository": "org/m", "accelerator": "tpu"}, "query parameter accelerator must be one of cpu, gpu"),
    ({"repository": "x" * 1025}, "query parameter repository must be at most 1024 characters"),
    ({"repository": "org/m", "gguf": "g" * 300}, "query parameter gguf must be at most 256 characters"),
    ({"repository": "org/m", "acelerator": "gpu"}, "unknown query parameter 'acelerator'"),
    ({"repository": "/etc"}, "not under a model root"),
    ({"repository": "a b"}, "is not a Hub repository id"),
])
async def test_bad_parameters_are_a_400(api, params, phrase):
    status, body = await get(api, **params)
    assert status == 400 and phrase in body["error"], body


async def test_a_parameter_given_twice_is_refused(api):
    r = await api.client.get("/v2/engines/suggest?repository=a/b&repository=c/d", headers=api.auth("alice"))
    assert r.status == 400 and "given 2 times" in (await r.json())["error"]


async def test_a_token_is_needed(api):
    status, body = await get(api, who=None, repository="org/m")
    assert status == 401 and "needs a token" in body["error"]
