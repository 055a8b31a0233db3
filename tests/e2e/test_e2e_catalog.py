"""The catalog end to end: `endpointd serve` on the real Docker engine with an operator's recipe
file beside the shipped recipes; the unmodified huggingface_hub client lists them and deploys an
echo-engine recipe that becomes running and answers; the `hf` CLI does the same through
`endpointd hf`; and the engine suggestion says whether the toolkit's image is on this host."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from engines.presets import DEFAULT_IMAGES
from tests.serve_process import Serve

pytestmark = pytest.mark.docker
PINNED = "endpointd/echo:latest"

# An operator's recipe: the echo engine on the test's model directory, under the model root.
OPERATOR_RECIPES = '''
[[model]]
repo_id = "e2ecat/echo"
license = "MIT"
task = "text-generation"
added = 2026-12-02
repository = "{model_root}/model"
framework = "custom"

[[model.recipe]]
id = "e2ecat-echo-cpu"
accelerator = "cpu"
instance_type = "intel-icl"
instance_size = "x1"
image = { custom = { url = "endpointd/echo:latest", healthRoute = "/health" } }
type = "authenticated"
'''


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    recipes = tmp_path / "recipes.toml"
    recipes.write_text(OPERATOR_RECIPES)
    # The operator pins the toolkit's image (to one this host has): the suggestion checks that one.
    s = Serve(tmp_path / "data", admin_token="test-admin-token",
              extra_env={"ENDPOINTD_CATALOG_FILES": str(recipes), "ENDPOINTD_ENGINE_IMAGE_HUGGINGFACE": PINNED})
    s.alice = s.add_user("alice", "acme")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setattr(hub_constants, "INFERENCE_CATALOG_ENDPOINT", f"{s.url}/api/v1/catalog")
    monkeypatch.setenv("HF_TOKEN", s.alice)
    yield s
    s.close()


def test_the_client_lists_and_deploys_recipes_that_run(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    models = {m.repo_id: m for m in api.list_inference_catalog()}
    assert [r.id for r in models["e2ecat/echo"].recipes] == ["e2ecat-echo-cpu"]
    assert [r.id for r in models["endpointd/echo"].recipes] == ["endpointd-echo-cpu"]  # shipped

    endpoint = api.create_inference_endpoint_from_catalog("endpointd/echo", name="e2ecat-shipped")
    assert endpoint.namespace == "alice"
    endpoint.wait(timeout=120, refresh_every=0.5)
    assert endpoint.status == "running"
    assert endpoint.client.text_generation("from the catalog") == "from the catalog "
    assert endpoint.raw["model"]["revision"] is None  # the echo engine reads no model: nothing to pin

    endpoint = api.create_inference_endpoint_from_catalog(recipe_id="e2ecat-echo-cpu", name="e2ecat-operator")
    endpoint.wait(timeout=120, refresh_every=0.5)
    assert endpoint.raw["type"] == "authenticated" and endpoint.repository == serve.model
    assert endpoint.client.text_generation("operator recipe") == "operator recipe "


def test_the_hf_cli_lists_and_deploys_through_endpointd_hf(serve):
    listed = serve.cli("hf", "--url", serve.url, "--token", serve.alice, "endpoints", "catalog", "ls", "--format", "json")
    rows = json.loads(listed)
    assert {row["recipe_id"] for row in rows} >= {"e2ecat-echo-cpu", "endpointd-echo-cpu", "minilm-l6-toolkit-cpu"}

    serve.cli("hf", "--url", serve.url, "--token", serve.alice, "endpoints", "catalog", "deploy",
              "--recipe", "e2ecat-echo-cpu", "--name", "e2ecat-cli")
    endpoint = HfApi(endpoint=serve.url, token=serve.alice).get_inference_endpoint("e2ecat-cli")
    endpoint.wait(timeout=120, refresh_every=0.5)
    assert endpoint.client.text_generation("cli") == "cli "


def catalog_listing(serve: Serve) -> dict[str, dict]:
    request = urllib.request.Request(f"{serve.url}/api/v1/catalog/list",
                                     headers={"Authorization": f"Bearer {serve.alice}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return {r["publicId"]: r for m in json.loads(response.read())["items"] for r in m["recipes"]}


def test_every_listed_recipe_deploys_here_or_is_refused_with_its_reason(serve):
    """On this host as it is (no registry, no Hub, nothing created beforehand): every recipe the
    catalog lists as deployable deploys through the client and runs; every other one is listed
    with the reason, and a deploy is refused with that sentence."""
    api = HfApi(endpoint=serve.url, token=serve.alice)
    recipes = catalog_listing(serve)
    assert {"endpointd-echo-cpu", "e2ecat-echo-cpu"} <= {rid for rid, r in recipes.items() if r["deployable"]}
    for rid, recipe in sorted(recipes.items()):
        name = f"every-{rid}"[:32].rstrip("-")
        if recipe["deployable"]:
            assert recipe["reason"] is None
            endpoint = api.create_inference_endpoint_from_catalog(recipe_id=rid, name=name)
            endpoint.wait(timeout=300, refresh_every=1)
            assert endpoint.status == "running", (rid, endpoint.raw["status"])
            endpoint.delete()
            continue
        assert recipe["reason"], rid
        with pytest.raises(HfHubHTTPError) as refused:
            api.create_inference_endpoint_from_catalog(recipe_id=rid, name=name)
        assert refused.value.response.status_code == 400
        assert recipe["reason"] in refused.value.response.json()["error"]
    assert api.list_inference_endpoints() == []


def suggestion(serve: Serve, repository) -> dict:
    query = urllib.parse.urlencode({"repository": str(repository), "accelerator": "cpu"})
    request = urllib.request.Request(f"{serve.url}/v2/engines/suggest?{query}",
                                     headers={"Authorization": f"Bearer {serve.alice}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_suggestion_says_whether_the_engine_image_is_here(serve):
    body = suggestion(serve, serve.model)
    assert (body["engine"], body["image"]) == ("huggingface", {"huggingface": {}})
    here = subprocess.run(["/usr/bin/docker", "image", "inspect", PINNED], capture_output=True).returncode == 0
    assert here  # the echo image: the e2e tests need it anyway
    assert (body["containerImage"], body["present"], body["mustPull"]) == (PINNED, True, False)

    st = Path(serve.model).parent / "e2ecat-st"  # a sentence-transformers model: TEI, not pinned here
    st.mkdir()
    (st / "modules.json").write_text("[]")
    body = suggestion(serve, st)
    image = DEFAULT_IMAGES["tei"]
    here = subprocess.run(["/usr/bin/docker", "image", "inspect", image], capture_output=True).returncode == 0
    if here:
        assert (body["engine"], body["containerImage"], body["present"], body["mustPull"]) == ("tei", image, True, False)
    else:  # no registry is reachable from this project's machines: TEI cannot run, the toolkit can
        assert (body["engine"], body["task"], body["containerImage"], body["runnable"]) == (
            "huggingface", "feature-extraction", PINNED, True)
        assert f"the image {image} is not on this host and cannot be pulled" in body["passedOver"]["tei"]


def hf_cli(serve: Serve, *args: str, hf_token: str) -> subprocess.CompletedProcess:
    """`endpointd hf ARGS…` with HF_TOKEN set in its environment, as a user of the `hf` CLI has it."""
    from tests.serve_process import ENDPOINTD

    return subprocess.run([*ENDPOINTD, "hf", *args], env={**serve.env, "HF_TOKEN": hf_token},
                          capture_output=True, text=True, timeout=60)


def test_endpointd_hf_token_wins_over_hf_token_in_the_environment(serve):
    """`--token` is what the user asked for on this command line: HF_TOKEN (another account's, or a
    Hub token) must not replace it. Without `--token`, HF_TOKEN is the `hf` CLI's own setting."""
    bob = serve.add_user("bob")
    listed = hf_cli(serve, "--url", serve.url, "--token", serve.alice, "endpoints", "ls", "--namespace", "alice",
                    hf_token=bob)
    assert listed.returncode == 0, listed.stderr
    refused = hf_cli(serve, "--url", serve.url, "endpoints", "ls", "--namespace", "alice", hf_token=bob)
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr
