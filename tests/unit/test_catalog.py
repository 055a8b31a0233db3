"""The inference catalog: the shipped recipes and an operator's file are checked at load with
errors that name the file, the recipe and the key; the routes answer the unmodified
huggingface_hub client (`list_inference_catalog`, `create_inference_endpoint_from_catalog`), in
process on a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from autoscaler.model.catalog import SHIPPED, CatalogError, endpoint_name, load_catalog
from autoscaler.model.wire import NAME
from tests.api_harness import ApiWorld

ECHO_RECIPE = '''
[[model]]
repo_id = "acme/echo"
license = "MIT"
task = "text-generation"
added = 2026-11-30
repository = "{model_root}/tiny"
framework = "custom"

[[model.recipe]]
id = "acme-echo-cpu"
accelerator = "cpu"
instance_type = "intel-icl"
instance_size = "x1"
image = { custom = { url = "endpointd/echo:latest" } }

[[model.recipe]]
id = "acme-echo-gpu"
accelerator = "gpu"
instance_type = "nvidia-l4"
instance_size = "x1"
image = { custom = { url = "endpointd/echo:latest" } }
max_replica = 2
'''

GGUF_RECIPES = '''
[[model]]
repo_id = "acme/llm-gguf"
license = "Apache 2.0"
task = "text-generation"
added = 2026-11-29T10:00:00Z

[[model.recipe]]
id = "llm-q8"
accelerator = "cpu"
instance_type = "intel-icl"
instance_size = "x4"
image = { llamacpp = { modelPath = "llm-Q8_0.gguf" } }

[[model.recipe]]
id = "llm-q4"
accelerator = "cpu"
instance_type = "intel-icl"
instance_size = "x2"
image = { llamacpp = { modelPath = "llm-Q4_K_M.gguf", ctxSize = 4096 } }
default = true
'''


def write(tmp_path: Path, text: str, name: str = "recipes.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- loading --------------------------------------------------------------------------------------


def test_the_shipped_catalog_loads_and_every_recipe_is_valid():
    catalog = load_catalog(())
    ids = [r.id for m in catalog.models for r in m.recipes]
    assert {"endpointd-echo-cpu", "minilm-l6-toolkit-cpu", "minilm-l6-tei-cpu"} <= set(ids)
    assert catalog.choose("sentence-transformers/all-MiniLM-L6-v2").id == "minilm-l6-toolkit-cpu"  # its default
    assert load_catalog((), shipped=False).models == ()


def test_an_operators_file_adds_recipes(tmp_path):
    catalog = load_catalog([write(tmp_path, ECHO_RECIPE), write(tmp_path, GGUF_RECIPES, "more.toml")])
    assert catalog.recipe("acme-echo-gpu").max_replica == 2
    assert catalog.recipe("acme-echo-cpu").min_replica == 1 and catalog.recipe("llm-q4").gguf_file == "llm-Q4_K_M.gguf"
    assert catalog.choose("acme/llm-gguf").id == "llm-q4"  # the default
    assert catalog.choose("acme/llm-gguf", gguf_file="llm-Q8_0.gguf").id == "llm-q8"
    assert catalog.choose("acme/echo", accelerator="gpu").id == "acme-echo-gpu"
    assert catalog.choose("acme/echo").id == "acme-echo-cpu"  # no default: the first listed
    with pytest.raises(CatalogError, match=r"no recipe of acme/echo runs on accelerator gpu with ggufFile x.gguf; "
                                           r"its recipes: acme-echo-cpu \(cpu\), acme-echo-gpu \(gpu\)"):
        catalog.choose("acme/echo", "gpu", "x.gguf")
    with pytest.raises(CatalogError, match="model acme/none is not in the catalog"):
        catalog.choose("acme/none")


def test_listing_filters(tmp_path):
    catalog = load_catalog([write(tmp_path, ECHO_RECIPE), write(tmp_path, GGUF_RECIPES, "more.toml")], shipped=False)
    item = catalog.listing(search="ECHO", why_not={"acme-echo-gpu": "this host has no GPU"})[0]
    assert item == {
        "repoId": "acme/echo", "modelName": "echo", "authorName": "acme", "license": "MIT", "task": "text-generation",
        "createdAt": "2026-11-30T00:00:00.000Z",
        "recipes": [
            {"publicId": "acme-echo-cpu", "accelerator": "cpu", "engineType": "custom", "ggufFile": None,
             "revision": None, "instanceType": "intel-icl", "instanceSize": "x1", "deployable": True, "reason": None},
            {"publicId": "acme-echo-gpu", "accelerator": "gpu", "engineType": "custom", "ggufFile": None,
             "revision": None, "instanceType": "nvidia-l4", "instanceSize": "x1", "deployable": False,
             "reason": "this host has no GPU"},
        ],
    }
    ids = lambda **kw: [r["publicId"] for m in catalog.listing(**kw) for r in m["recipes"]]  # noqa: E731
    assert ids(accelerator="gpu") == ["acme-echo-gpu"]
    assert ids(engine="LlamaCpp") == ["llm-q8", "llm-q4"]
    assert ids(license="apache 2.0") == ["llm-q8", "llm-q4"]
    assert ids(task="text-generation", limit=1) == ["acme-echo-cpu", "acme-echo-gpu"]
    assert ids(task="summarization") == []


@pytest.mark.parametrize("text, phrase", [
    ("[[model]\n", "is not valid TOML"),
    ('recipes = []\n', "unknown top-level key recipes"),
    (ECHO_RECIPE.replace('license = "MIT"', 'license = "MIT"\nlicence = "x"'), "model acme/echo: unknown key licence"),
    (ECHO_RECIPE.replace('repo_id = "acme/echo"', 'repo_id = "../etc"'), "repo_id = '../etc' is invalid"),
    (ECHO_RECIPE.replace('id = "acme-echo-cpu"', 'id = "Acme Echo"'), "id = 'Acme Echo' is invalid"),
    (ECHO_RECIPE.replace('accelerator = "cpu"', 'accelerator = "tpu"'),
     "recipe acme-echo-cpu: accelerator = 'tpu' is invalid: it must be one of cpu, gpu"),
    (ECHO_RECIPE.replace('instance_size = "x1"\nimage', 'instance_size = "one"\nimage'),
     'recipe acme-echo-cpu: compute.instanceSize must be an instance size such as "x1"'),
    (ECHO_RECIPE.replace('{ custom = { url = "endpointd/echo:latest" } }\n\n', '{ kustom = {} }\n\n', 1),
     "recipe acme-echo-cpu: model.image must be an object with exactly one key"),
    (ECHO_RECIPE.replace('image = { custom = { url = "endpointd/echo:latest" } }\n\n', '\n', 1),
     "recipe acme-echo-cpu: image = None is invalid: it must be a table naming one engine"),
    (ECHO_RECIPE.replace('{ custom = { url = "endpointd/echo:latest" } }\n\n', '"custom"\n\n', 1),
     "recipe acme-echo-cpu: image = 'custom' is invalid: it must be a table naming one engine"),
    (GGUF_RECIPES.replace("ctxSize = 4096", "ctxSize = 4096, nope = 1"),
     "recipe llm-q4: model.image.llamacpp has unknown keys nope"),
    (GGUF_RECIPES.replace('{ modelPath = "llm-Q8_0.gguf" }', "{}"), "recipe llm-q8: model.image.llamacpp.modelPath is required"),
    (ECHO_RECIPE.replace("max_replica = 2", "max_replica = 0"), "max_replica = 0 is invalid: it must be an integer between 1"),
    (ECHO_RECIPE.replace("max_replica = 2", "scale_to_zero_timeout = 30"),
     "compute.scaling.scaleToZeroTimeout needs compute.scaling.minReplica 0"),
    (ECHO_RECIPE.replace("added = 2026-11-30", 'added = "yesterday"'), "added = 'yesterday' is invalid"),
    (ECHO_RECIPE.replace('[[model.recipe]]\nid = "acme-echo-gpu"', '[[model.recipe]]\nid = "acme-echo-cpu"'),
     "recipe id acme-echo-cpu is already used in"),
    ('[[model]]\nrepo_id = "a/b"\nlicense = "x"\ntask = "t"\nadded = 2026-01-01\n', "model a/b: needs at least one"),
])
def test_a_bad_recipe_stops_the_load_naming_the_file_and_the_fix(tmp_path, text, phrase):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog([path])
    assert str(path) in str(caught.value) and phrase in str(caught.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CatalogError, match=f"cannot read the catalog file {tmp_path}/none.toml"):
        load_catalog([tmp_path / "none.toml"])


def test_the_shipped_file_documents_the_format():
    header = SHIPPED.read_text().split("\n[[model]]\n")[0]
    for key in ("repo_id", "license", "task", "added", "repository", "{model_root}", "framework", "revision",
                "prepare", "accelerator", "instance_type", "instance_size", "image", "min_replica", "max_replica",
                "scale_to_zero_timeout", "type", "env", "default"):
        assert key in header, key


def test_generated_names_are_valid_endpoint_names(tmp_path):
    catalog = load_catalog([write(tmp_path, ECHO_RECIPE)])
    for recipe_id in ("acme-echo-cpu", "minilm-l6-toolkit-cpu"):
        names = {endpoint_name(catalog.recipe(recipe_id)) for _ in range(20)}
        assert len(names) > 1 and all(NAME.fullmatch(n) for n in names), names
    assert endpoint_name(catalog.recipe("minilm-l6-toolkit-cpu")).startswith("all-minilm-l6-v2-")


# --- the routes, driven by the unmodified client ---------------------------------------------------------


@pytest.fixture
async def api(tmp_path, monkeypatch):
    w = await ApiWorld().start(tmp_path)
    w.api.catalog = load_catalog([write(tmp_path, ECHO_RECIPE)])
    w.url = str(w.client.make_url("")).rstrip("/")
    monkeypatch.setattr(huggingface_hub.constants, "INFERENCE_CATALOG_ENDPOINT", f"{w.url}/api/v1/catalog")
    monkeypatch.setattr(huggingface_hub.constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{w.url}/v2")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield w
    await w.close()


def hf(api, who="alice") -> HfApi:
    return HfApi(endpoint=api.url, token=api.tokens[who])


async def test_the_client_lists_the_catalog(api):
    models = await asyncio.to_thread(hf(api).list_inference_catalog)
    by_id = {m.repo_id: m for m in models}
    assert by_id["acme/echo"].author == "acme" and by_id["acme/echo"].name == "echo"
    assert [r.id for r in by_id["acme/echo"].recipes] == ["acme-echo-cpu", "acme-echo-gpu"]
    assert "sentence-transformers/all-MiniLM-L6-v2" in by_id  # the shipped ones too
    gpu = await asyncio.to_thread(hf(api).list_inference_catalog, accelerator="gpu", engine="custom")
    assert [(m.repo_id, [r.id for r in m.recipes]) for m in gpu] == [("acme/echo", ["acme-echo-gpu"])]


async def test_the_client_deploys_a_model_and_a_recipe(api):
    endpoint = await asyncio.to_thread(hf(api).create_inference_endpoint_from_catalog, "acme/echo", name="from-repo")
    assert (endpoint.name, endpoint.namespace, endpoint.repository) == ("from-repo", "alice", str(api.models / "tiny"))
    assert endpoint.raw["model"]["image"] == {"custom": {"url": "endpointd/echo:latest"}}
    assert endpoint.raw["tags"] == ["catalog:acme-echo-cpu"]
    assert endpoint.raw["model"]["revision"].startswith("sha256:")  # pinned, as any create

    endpoint = await asyncio.to_thread(hf(api).create_inference_endpoint_from_catalog, recipe_id="acme-echo-cpu",
                                       namespace="acme")
    assert endpoint.namespace == "acme" and endpoint.name.startswith("echo-")
    listed = await asyncio.to_thread(hf(api).list_inference_endpoints, namespace="acme")
    assert [e.name for e in listed] == [endpoint.name]


async def test_deploys_are_audited_as_creates_with_their_recipe(api):
    await asyncio.to_thread(hf(api).create_inference_endpoint_from_catalog, "acme/echo", name="audited")
    r = await api.client.get("/v2/audit/alice", headers=api.auth("alice"))
    items = (await r.json())["items"]
    assert [(i["action"], i["endpoint"], i["details"]["recipe"]) for i in items] == [("create", "audited", "acme-echo-cpu")]


@pytest.mark.parametrize("call, status, phrase", [
    (lambda h: h.create_inference_endpoint_from_catalog("acme/nope"), 404, "model acme/nope is not in the catalog"),
    (lambda h: h.create_inference_endpoint_from_catalog(recipe_id="nope"), 404, "recipe nope is not in the catalog"),
    (lambda h: h.create_inference_endpoint_from_catalog("acme/echo", gguf_file="x.gguf"), 404, "no recipe of acme/echo"),
    (lambda h: h.create_inference_endpoint_from_catalog("acme/echo", namespace="bob"), 403,
     "user alice may not manage namespace bob"),
    (lambda h: h.create_inference_endpoint_from_catalog("acme/echo", name="Not A Name"), 400, "name must be 1 to 32"),
])
async def test_refusals_reach_the_client_as_errors(api, call, status, phrase):
    with pytest.raises(HfHubHTTPError) as caught:
        await asyncio.to_thread(call, hf(api))
    assert caught.value.response.status_code == status
    assert phrase in caught.value.response.json()["error"]


async def test_a_name_taken_is_a_409(api):
    await asyncio.to_thread(hf(api).create_inference_endpoint_from_catalog, "acme/echo", name="twice")
    with pytest.raises(HfHubHTTPError) as caught:
        await asyncio.to_thread(hf(api).create_inference_endpoint_from_catalog, "acme/echo", name="twice")
    assert caught.value.response.status_code == 409


@pytest.mark.parametrize("path, body, phrase", [
    ("/api/v1/catalog/model/acme/echo/deploy", [], "the request body must be a JSON object"),
    ("/api/v1/catalog/model/acme/echo/deploy", {}, "namespace is required"),
    ("/api/v1/catalog/model/acme/echo/deploy", {"namespace": "alice", "accelerator": "tpu"}, "accelerator must be one of"),
    ("/api/v1/catalog/model/acme/echo/deploy", {"namespace": "alice", "config": []}, "config must be an object"),
    ("/api/v1/catalog/model/acme/echo/deploy", {"namespace": "alice", "config": {"name": "x" * 300}},
     "config.name must be a non-empty string of at most 256"),
    ("/api/v1/catalog/recipe/acme-echo-cpu/deploy", {"namespace": "alice", "ggufFile": "x.gguf"},
     "ggufFile cannot be used with a recipe id"),
])
async def test_bad_deploy_bodies_are_a_400(api, path, body, phrase):
    r = await api.client.post(path, json=body, headers=api.auth("alice"))
    assert r.status == 400 and phrase in (await r.json())["error"]


@pytest.mark.parametrize("query, phrase", [
    ("limit=0", "limit must be an integer between 1 and 1000"),
    ("limit=many", "limit must be an integer between 1 and 1000"),
    ("search=" + "s" * 300, "search must be at most 256 characters"),
    ("sort=name", "unknown query parameter 'sort'"),
])
async def test_bad_list_parameters_are_a_400(api, query, phrase):
    r = await api.client.get(f"/api/v1/catalog/list?{query}", headers=api.auth("alice"))
    assert r.status == 400 and phrase in (await r.json())["error"]


async def test_the_catalog_needs_a_token(api):
    for method, path in [("GET", "/api/v1/catalog/list"), ("POST", "/api/v1/catalog/recipe/acme-echo-cpu/deploy")]:
        r = await api.client.request(method, path, json={"namespace": "alice"})
        assert r.status == 401
    assert await api.store.list_endpoints() == []


# --- what deploys on this host ------------------------------------------------------------------------

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def shipped(api, tmp_path, monkeypatch):
    """The shipped catalog on a host like this one: the echo and toolkit images built here, no
    registry reachable, the Hub unreachable and nothing in the model cache."""
    from functools import partial

    from engines.artifacts import describe, hub_facts
    from engines.availability import ImageInventory
    from engines.presets import DEFAULT_IMAGES

    def unreachable(repository, revision, token):
        raise OSError("Name or service not known")

    no_hub = partial(hub_facts, model_info=unreachable)  # the real lookup, on a host without the Hub

    api.api.catalog = load_catalog(())
    api.cache = tmp_path / "hub"
    api.api.describe = lambda repository, revision, namespace: describe(repository, revision, api.cache, hub=no_hub)
    here = {"endpointd/echo:latest", DEFAULT_IMAGES["huggingface"]}

    async def present(image):
        return image in here

    async def in_registry(image):
        return "lookup ghcr.io: no such host"

    api.api.images = ImageInventory(present, in_registry)
    return api


async def listed(api) -> dict[str, dict]:
    r = await api.client.get("/api/v1/catalog/list", headers=api.auth("alice"))
    assert r.status == 200
    return {recipe["publicId"]: recipe for model in (await r.json())["items"] for recipe in model["recipes"]}


async def test_the_shipped_echo_recipe_deploys_with_no_model_directory(shipped):
    """The echo engine reads no model: its recipe names no directory anyone must create first,
    and nothing is looked up on the Hub for it."""
    assert (await listed(shipped))["endpointd-echo-cpu"]["deployable"] is True
    endpoint = await asyncio.to_thread(hf(shipped).create_inference_endpoint_from_catalog, "endpointd/echo",
                                       name="shipped-echo")
    assert (endpoint.repository, endpoint.raw["model"]["revision"]) == ("endpointd/echo", None)
    assert endpoint.raw["model"]["image"] == {"custom": {"url": "endpointd/echo:latest", "healthRoute": "/health"}}


async def test_recipes_that_cannot_deploy_here_are_listed_with_why_and_refused_with_it(shipped):
    from engines.presets import DEFAULT_IMAGES

    recipes = await listed(shipped)
    tei, toolkit = recipes["minilm-l6-tei-cpu"], recipes["minilm-l6-toolkit-cpu"]
    assert tei["deployable"] is False
    assert f"the image {DEFAULT_IMAGES['tei']} is not on this host and cannot be pulled" in tei["reason"]
    assert toolkit["deployable"] is False and f"{MINILM} is not cached on this host" in toolkit["reason"]
    assert recipes["endpointd-echo-cpu"] == {**recipes["endpointd-echo-cpu"], "deployable": True, "reason": None}

    for call, reasons in (
        (lambda h: h.create_inference_endpoint_from_catalog(recipe_id="minilm-l6-tei-cpu"), [tei["reason"]]),
        (lambda h: h.create_inference_endpoint_from_catalog(MINILM), [tei["reason"], toolkit["reason"]]),
    ):
        with pytest.raises(HfHubHTTPError) as caught:
            await asyncio.to_thread(call, hf(shipped))
        assert caught.value.response.status_code == 400
        said = caught.value.response.json()["error"]
        assert "cannot deploy on this host" in said and all(reason in said for reason in reasons), said
    assert await shipped.store.list_endpoints() == []


async def test_a_model_deploys_once_this_host_has_what_it_needs(shipped):
    from tests.unit.test_revision import COMMIT, cache_repo

    cache_repo(shipped.cache, MINILM, COMMIT, {"config.json": b"{}", "modules.json": b"[]", "model.safetensors": b"w"})
    recipes = await listed(shipped)
    assert recipes["minilm-l6-toolkit-cpu"]["deployable"] is True  # cached: the toolkit serves it offline
    endpoint = await asyncio.to_thread(hf(shipped).create_inference_endpoint_from_catalog, MINILM, name="minilm")
    assert endpoint.raw["model"]["image"] == {"huggingface": {}} and endpoint.raw["model"]["revision"] == COMMIT


async def test_what_deploys_here_is_kept_for_its_ttl_then_asked_again(shipped):
    """A listing asks for every recipe it shows: each answer is kept `ttl_s` (injected time), so a
    slow Hub or registry is asked once per recipe and period, and a change on the host shows after it."""
    from autoscaler.control.catalog_host import RecipeChecks

    now = [0.0]
    asked: list[str] = []
    describe = shipped.api.describe

    async def counting(repository, revision, namespace):
        asked.append(repository)
        return await describe(repository, revision, namespace)

    shipped.api.describe = counting
    checks = RecipeChecks(shipped.api, ttl_s=60.0, clock=lambda: now[0])
    recipe = shipped.api.catalog.recipe("minilm-l6-toolkit-cpu")
    assert "is not cached on this host" in await checks.why_not(recipe, "alice")
    assert "is not cached on this host" in await checks.why_not(recipe, "alice")
    assert asked == [MINILM]

    from tests.unit.test_revision import COMMIT, cache_repo

    cache_repo(shipped.cache, MINILM, COMMIT, {"config.json": b"{}", "modules.json": b"[]", "model.safetensors": b"w"})
    now[0] = 59.0
    assert await checks.why_not(recipe, "alice") is not None  # still the kept answer
    now[0] = 60.0
    assert await checks.why_not(recipe, "alice") is None and asked == [MINILM, MINILM]


async def test_the_smollm2_recipe_says_how_to_add_its_model_then_deploys(shipped):
    """The shipped SmolLM2 recipe needs `endpointd models add smollm2` and the llama.cpp image built
    here: each missing piece is the reason it is listed with, and once both are there it deploys."""
    from engines.presets import LOCAL_IMAGES

    recipe = (await listed(shipped))["smollm2-135m-llamacpp-cpu"]
    assert recipe["deployable"] is False
    assert recipe["reason"] == "its model is not on this host yet: run `endpointd models add smollm2` first"

    model = shipped.api.limits.roots.roots[0] / "smollm2"
    model.mkdir()
    (model / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    # Answers are kept a minute per namespace: another namespace asks afresh.
    r = await shipped.client.get("/api/v1/catalog/list", headers=shipped.auth("bob"))
    again = {x["publicId"]: x for m in (await r.json())["items"] for x in m["recipes"]}
    assert again["smollm2-135m-llamacpp-cpu"]["reason"].endswith("build it here with `endpointd images build llamacpp`")

    from engines.availability import ImageInventory
    from engines.presets import DEFAULT_IMAGES

    async def present(image):
        return image in {LOCAL_IMAGES["llamacpp"], DEFAULT_IMAGES["huggingface"], "endpointd/echo:latest"}

    async def in_registry(image):
        return "lookup ghcr.io: no such host"

    shipped.api.images = ImageInventory(present, in_registry)
    shipped.api.default_images = {"llamacpp": LOCAL_IMAGES["llamacpp"]}  # what serve picks once it is built
    r = await shipped.client.get("/api/v1/catalog/list", headers=shipped.auth("admin"))
    ready = {x["publicId"]: x for m in (await r.json())["items"] for x in m["recipes"]}
    assert ready["smollm2-135m-llamacpp-cpu"]["deployable"] is True, ready["smollm2-135m-llamacpp-cpu"]
