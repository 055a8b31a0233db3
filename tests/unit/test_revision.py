"""Revision pinning and the download pattern: what a repository is at create time (a commit, or a
local directory's content hash), and which of its files an engine needs. Offline: a hand-made
huggingface_hub cache read by the real client in offline mode, local directories, and the API in
process on a real store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import huggingface_hub.constants
import pytest

from engines import artifacts
from engines.artifacts import (
    ArtifactError,
    HubUnreachable,
    RepoFacts,
    cached_facts,
    content_hash,
    describe,
    download_pattern,
    hub_facts,
    local_facts,
)
from tests.api_harness import ApiWorld

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NEWER = "89abcdef0123456789abcdef0123456789abcdef"
TEXT = (*artifacts.SMALL_FILES,)


@pytest.fixture
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE into its constants at import; its HTTP layer checks the constant.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def cache_repo(cache: Path, repository: str, commit: str, files: dict[str, bytes], ref: str = "main") -> Path:
    """The layout snapshot_download leaves: blobs, a snapshot of relative links, refs/<ref>."""
    storage = cache / ("models--" + repository.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for i, (name, content) in enumerate(files.items()):
        blob = storage / "blobs" / f"{commit[:8]}{i}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


def facts(files, source="hub", **kw) -> RepoFacts:
    return RepoFacts("org/m", COMMIT, dict.fromkeys(files, 10) if not isinstance(files, dict) else files,
                     source=source, **kw)


# --- a local directory's content hash ------------------------------------------------------------


def test_the_content_hash_is_stable_and_changes_with_any_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "w.bin").write_bytes(b"1234")
    first = content_hash(tmp_path)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert content_hash(tmp_path) == first
    stat = (tmp_path / "sub" / "w.bin").stat()

    (tmp_path / "sub" / "w.bin").write_bytes(b"12345")  # a write: size and mtime move
    second = content_hash(tmp_path)
    assert second != first
    (tmp_path / "sub" / "w.bin").write_bytes(b"1234")
    os.utime(tmp_path / "sub" / "w.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_hash(tmp_path) == first  # the same names, sizes and times: the same hash

    (tmp_path / "sub" / "w.bin").rename(tmp_path / "sub" / "x.bin")
    assert content_hash(tmp_path) != first
    (tmp_path / "sub" / "x.bin").rename(tmp_path / "sub" / "w.bin")
    (tmp_path / "extra.txt").write_text("")
    assert content_hash(tmp_path) != first


def test_local_facts_list_files_and_read_the_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text("{}")
    got = local_facts(str(tmp_path))
    assert (got.source, got.revision) == ("local", content_hash(tmp_path))
    assert got.files == {"config.json": len(json.dumps({"architectures": ["LlamaForCausalLM"]})),
                         "1_Pooling/config.json": 2}
    assert got.config == {"architectures": ["LlamaForCausalLM"]}


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b"{" * 100_000])
def test_a_config_that_is_no_object_reads_as_none(tmp_path, content):
    (tmp_path / "config.json").write_bytes(content)
    assert local_facts(str(tmp_path)).config == {}


# --- a Hub repository: the commit it names now -----------------------------------------------------


@pytest.mark.parametrize("revision, expected", [(None, COMMIT), ("main", COMMIT), ("v1", NEWER), (NEWER, NEWER)])
def test_the_cache_resolves_branches_tags_and_commits(tmp_path, revision, expected):
    cache_repo(tmp_path, "org/m", COMMIT, {"config.json": b"{}"})
    cache_repo(tmp_path, "org/m", NEWER, {"config.json": b"{}", "model.safetensors": b"x" * 5}, ref="v1")
    got = cached_facts("org/m", revision, tmp_path)
    assert got is not None and (got.revision, got.source) == (expected, "cache")


@pytest.mark.parametrize("revision", ["nope", "../../x", "f" * 40])
def test_the_cache_knows_nothing_of_other_revisions(tmp_path, revision):
    cache_repo(tmp_path, "org/m", COMMIT, {"config.json": b"{}"})
    assert cached_facts("org/m", revision, tmp_path) is None
    assert cached_facts("org/other", None, tmp_path) is None


def test_offline_the_real_client_falls_back_to_the_cache(tmp_path, offline):
    cache_repo(tmp_path, "org/m", COMMIT, {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"w" * 7})
    got = hub_facts("org/m", None, tmp_path)  # the real model_info: it raises OfflineModeIsEnabled
    assert (got.revision, got.source, got.config) == (COMMIT, "cache", {"model_type": "bert"})
    assert got.files == {"config.json": 22, "model.safetensors": 7}


def test_offline_without_the_cache_the_hub_is_unreachable(tmp_path, offline):
    with pytest.raises(HubUnreachable, match=r"the Hub could not be reached to resolve model repository 'org/m' "
                                             r"\(revision main\) to a commit .* does not hold it"):
        hub_facts("org/m", None, tmp_path)


class _Sibling:
    def __init__(self, rfilename, size):
        self.rfilename, self.size = rfilename, size


class _Info:
    sha = COMMIT
    siblings = [_Sibling("config.json", 100), _Sibling("model-Q4_K_M.gguf", 4 << 30)]
    config = {"architectures": ["LlamaForCausalLM"]}
    library_name = "transformers"
    tags = ["gguf", "text-generation"]
    pipeline_tag = "text-generation"


def test_the_hub_answer_becomes_facts(tmp_path):
    asked = []

    def model_info(repository, revision, token):
        asked.append((repository, revision))
        return _Info()

    got = hub_facts("org/m", "main", tmp_path, model_info=model_info)
    assert asked == [("org/m", "main")]
    assert got == RepoFacts("org/m", COMMIT, {"config.json": 100, "model-Q4_K_M.gguf": 4 << 30},
                            {"architectures": ["LlamaForCausalLM"]}, "transformers",
                            frozenset({"gguf", "text-generation"}), "text-generation", "hub")


def test_a_hub_answer_without_a_commit_is_refused(tmp_path):
    class NoSha(_Info):
        sha = None

    with pytest.raises(ArtifactError, match="without a commit sha"):
        hub_facts("org/m", None, tmp_path, model_info=lambda *a: NoSha())


def test_an_invalid_repository_id_says_so(tmp_path):
    with pytest.raises(ArtifactError, match="is not a Hub repository id"):
        hub_facts("a b c", None, tmp_path)  # validated by huggingface_hub itself, before any request


async def test_describe_takes_local_paths_as_they_are(tmp_path):
    (tmp_path / "m").mkdir()
    got = await describe(str(tmp_path / "m"), "ignored", tmp_path / "cache")
    assert got.source == "local" and got.revision == content_hash(tmp_path / "m")


# --- the download pattern --------------------------------------------------------------------------


WEIGHTS = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "model.onnx", "flax_model.msgpack"]


@pytest.mark.parametrize("image, framework, files, expected", [
    # The chosen framework's weights only, with the small files every loader reads.
    ({"tgi": {}}, "pytorch", WEIGHTS, (*TEXT, "*.safetensors")),
    ({"vLLM": {}}, "PyTorch", WEIGHTS, (*TEXT, "*.safetensors")),
    ({"huggingface": {}}, "pytorch", ["config.json", "pytorch_model.bin", "tf_model.h5"],
     (*TEXT, "*.bin", "*.pt", "*.pth")),  # no safetensors: the legacy PyTorch files
    ({"huggingface": {}}, "tensorflow", WEIGHTS, (*TEXT, "*.h5")),
    ({"tei": {}}, "onnx", WEIGHTS, (*TEXT, "*.onnx", "*.onnx_data", "*.onnx.data")),
    ({"huggingface": {}}, "jax", WEIGHTS, (*TEXT, "*.msgpack")),
    # One GGUF file, not every quantization; every part of a split one; its projector.
    ({"llamacpp": {"modelPath": "m-Q4_K_M.gguf"}}, "custom", ["m-Q4_K_M.gguf", "m-Q8_0.gguf"], ("m-Q4_K_M.gguf",)),
    ({"llamacpp": {"modelPath": "q/m-00001-of-00003.gguf", "mmprojModelPath": "mmproj-f16.gguf"}}, "custom", [],
     ("q/m-*-of-00003.gguf", "mmproj-f16.gguf")),
    # Whatever the code may read: everything.
    ({"custom": {"url": "img"}}, "pytorch", WEIGHTS, None),
    ({"huggingface": {}}, "pytorch", [*WEIGHTS, "handler.py"], None),
    ({"huggingface": {}}, "custom", WEIGHTS, None),
])
def test_download_patterns(image, framework, files, expected):
    assert download_pattern(image, framework, facts(files)) == expected


def test_a_local_directory_downloads_nothing():
    assert download_pattern({"tgi": {}}, "pytorch", facts(WEIGHTS, source="local")) is None


def test_a_framework_without_its_weights_is_refused():
    with pytest.raises(ArtifactError, match=r"model.framework 'tensorflow' needs weights matching \*.h5 in org/m, "
                                            r"which has none \(its files end in .json, .safetensors\)"):
        download_pattern({"tgi": {}}, "tensorflow", facts(["config.json", "model.safetensors"]))


# --- through the API: pinned at create, shown on the endpoint ------------------------------------------


@pytest.fixture
async def api(tmp_path, offline):
    w = await ApiWorld().start(tmp_path)
    w.cache = tmp_path / "hub"
    # the real Hub client, offline: the cache answers
    w.api.describe = lambda repository, revision, ns: describe(repository, revision, w.cache)
    yield w
    await w.close()


def hub_body(api, name="e1", **model):
    return api.body(name, **{"repository": "org/m", "framework": "pytorch", "image": {"tgi": {}}, **model})


async def post(api, body, who="alice"):
    r = await api.client.post(f"/v2/endpoint/{who}", json=body, headers=api.auth(who))
    return r.status, await r.json()


async def put(api, name, body, who="alice"):
    r = await api.client.put(f"/v2/endpoint/{who}/{name}", json=body, headers=api.auth(who))
    return r.status, await r.json()


async def test_a_local_repository_records_its_content_hash(api):
    status, body = await post(api, api.body())
    assert status == 200
    assert body["model"]["revision"] == content_hash(api.models / "tiny")
    assert body["model"]["downloadPattern"] is None  # mounted as it is
    stored = await (await api.client.get("/v2/endpoint/alice/e1", headers=api.auth("alice"))).json()
    assert stored["model"]["revision"] == body["model"]["revision"]


@pytest.mark.parametrize("revision", [None, "main"])
async def test_an_unpinned_hub_revision_is_pinned_to_its_commit(api, revision):
    cache_repo(api.cache, "org/m", COMMIT, {"config.json": b"{}", "model.safetensors": b"w", "tf_model.h5": b"t"})
    status, body = await post(api, hub_body(api, revision=revision))
    assert status == 200, body
    assert body["model"]["revision"] == COMMIT
    assert body["model"]["downloadPattern"] == [*TEXT, "*.safetensors"]
    rec = await api.store.get_endpoint("alice", "e1")
    assert api.api.spec(rec).model.revision == COMMIT  # what the launcher fetches


async def test_updates_repin_only_when_the_model_source_changes(api):
    cache_repo(api.cache, "org/m", COMMIT, {"config.json": b"{}", "model.safetensors": b"w", "model.onnx": b"o"})
    assert (await post(api, hub_body(api)))[0] == 200
    cache_repo(api.cache, "org/m", NEWER, {"config.json": b"{}", "model.safetensors": b"w2"})  # main moved on

    status, body = await put(api, "e1", {"compute": {"scaling": {"maxReplica": 1, "minReplica": 1}}, "tags": ["x"]})
    assert status == 200 and body["model"]["revision"] == COMMIT  # nothing of the model: the pin holds
    status, body = await put(api, "e1", {"model": {"framework": "onnx"}})
    assert status == 200 and body["model"]["revision"] == COMMIT
    assert body["model"]["downloadPattern"] == [*TEXT, "*.onnx", "*.onnx_data", "*.onnx.data"]
    status, body = await put(api, "e1", {"model": {"revision": None, "framework": "pytorch"}})
    assert status == 200 and body["model"]["revision"] == NEWER  # asked again: the latest commit
    assert body["model"]["downloadPattern"] == [*TEXT, "*.safetensors"]
    assert (await api.store.get_endpoint("alice", "e1")).revision == 3  # created at 1, then two rolls


async def test_a_sent_download_pattern_is_kept(api):
    cache_repo(api.cache, "org/m", COMMIT, {"config.json": b"{}", "model.safetensors": b"w"})
    status, body = await post(api, hub_body(api, downloadPattern=["*.json", "model.safetensors"]))
    assert status == 200 and body["model"]["downloadPattern"] == ["*.json", "model.safetensors"]


@pytest.mark.parametrize("pattern, phrase", [
    ([], "model.downloadPattern must be a list of 1 to 64 file patterns"),
    (["x"] * 65, "model.downloadPattern must be a list of 1 to 64 file patterns"),
    (["a" * 257], "each at most 256 characters"),
    ("*.json", "model.downloadPattern must be a list"),
])
async def test_a_bad_download_pattern_is_refused(api, pattern, phrase):
    status, body = await post(api, hub_body(api, downloadPattern=pattern))
    assert status == 400 and phrase in body["error"]


async def test_an_unreachable_hub_is_a_502_that_says_what_to_do(api):
    status, body = await post(api, hub_body(api))
    assert status == 502
    assert "the Hub could not be reached to resolve model repository 'org/m'" in body["error"]
    assert "put the repository under a model root" in body["error"]
    assert await api.store.list_endpoints() == []  # nothing half-created


async def test_a_framework_the_repository_lacks_is_a_400(api):
    cache_repo(api.cache, "org/m", COMMIT, {"config.json": b"{}", "model.safetensors": b"w"})
    status, body = await post(api, hub_body(api, framework="tensorflow"))
    assert status == 400 and "model.framework 'tensorflow' needs weights matching *.h5" in body["error"]


async def test_task_framework_and_the_toolkit_env_are_kept(api):
    image = {"huggingface": {"env": {"HF_TRUST_REMOTE_CODE": "0"}}}
    status, body = await post(api, api.body(framework="pytorch", task="feature-extraction", image=image))
    assert status == 200, body
    assert (body["model"]["task"], body["model"]["framework"], body["model"]["image"]) == (
        "feature-extraction", "pytorch", image)


@pytest.mark.parametrize("env, phrase", [
    ("A=1", 'model.image.huggingface.env must be a JSON object'),
    ({"A": 1}, "model.image.huggingface.env.A must be a string"),
])
async def test_a_bad_toolkit_env_is_refused(api, env, phrase):
    status, body = await post(api, api.body(image={"huggingface": {"env": env}}))
    assert status == 400 and phrase in body["error"]


async def test_the_guides_first_example_is_taken_as_sent(api, monkeypatch):
    """No custom_image: the client sends {"huggingface": {}}, the toolkit; task and framework are kept."""
    import asyncio

    from huggingface_hub import HfApi

    from autoscaler.control.launcher import EngineLauncher
    from engines.fake import FakeRuntime
    from engines.gpus import GpuAllocator

    launcher = EngineLauncher(FakeRuntime(), None, inventory=[], allocator=GpuAllocator([]), downloads=api.cache,
                              ready_deadline_s=1, cpu_count=4, memory_bytes=16 << 30)
    api.api.check = launcher.check  # the real preset check, as serve wires it
    url = str(api.client.make_url("")).rstrip("/")
    monkeypatch.setattr(huggingface_hub.constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{url}/v2")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the client talks to endpointd
    endpoint = await asyncio.to_thread(
        HfApi(endpoint=url, token=api.tokens["alice"]).create_inference_endpoint,
        "my-endpoint-name", repository=str(api.models / "tiny"), framework="pytorch", task="text-generation",
        # The guide says type="protected"; this client refuses that itself, asking for "authenticated".
        accelerator="cpu", vendor="aws", region="us-east-1", type="authenticated", instance_size="x2",
        instance_type="intel-icl",
    )
    assert (endpoint.framework, endpoint.task, endpoint.revision) == (
        "pytorch", "text-generation", content_hash(api.models / "tiny"))
    assert endpoint.raw["model"]["image"] == {"huggingface": {}}
    assert endpoint.raw["type"] == "authenticated"


async def test_a_launch_says_when_a_local_repository_changed_since_it_was_recorded(tmp_path, caplog):
    from autoscaler.control.launcher import EngineLauncher

    (tmp_path / "config.json").write_text("{}")
    recorded = content_hash(tmp_path)
    await EngineLauncher._check_local_content("e1", str(tmp_path), recorded, tmp_path)
    assert "changed since it was recorded" not in caplog.text
    (tmp_path / "weights.bin").write_bytes(b"new")
    await EngineLauncher._check_local_content("e1", str(tmp_path), recorded, tmp_path)
    assert f"the local repository {tmp_path} changed since it was recorded ({recorded}, now " in caplog.text
