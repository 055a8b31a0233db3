"""Engine presets produce each engine's documented flags and variables, and refuse what they cannot run."""

from __future__ import annotations

import pytest

from engines.hardware import Resources
from engines.presets import (
    LLAMACPP_RESERVED,
    PRESETS,
    PresetError,
    build_container_spec,
)
from engines.runtime import Mount, RegistryAuth
from engines.spec_rules import VARIANTS

MODEL = "/var/lib/endpointd/models/gpt2"
REPO_MOUNT = (Mount(source=MODEL, target="/repository"),)
CPU2 = Resources(cpus=2.0, memory_bytes=4 * 1024**3, gpu_count=0)
GPU1 = Resources(cpus=None, memory_bytes=None, gpu_count=1, gpu_device_ids=("GPU-a",))
GPU2 = Resources(cpus=None, memory_bytes=None, gpu_count=2, gpu_device_ids=("GPU-a", "GPU-b"))
GPU4 = Resources(cpus=None, memory_bytes=None, gpu_count=4, gpu_device_ids=("GPU-a", "GPU-b", "GPU-c", "GPU-d"))
GIB = 1024**3
# The pinned defaults (presets.DEFAULT_IMAGES), spelled out: a change of an engine's version shows here.
VLLM_IMAGE = "vllm/vllm-openai:v0.21.0"
SGLANG_IMAGE = "lmsysorg/sglang:v0.5.6"
TEI_CPU_IMAGE = "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8"
TEI_GPU_IMAGE = "ghcr.io/huggingface/text-embeddings-inference:1.8"
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.5"
LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-b9246"
LLAMACPP_GPU_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-cuda-b9246"
TOOLKIT_IMAGE = "endpointd/inference-toolkit:0.1.0"


def spec(image, resources=GPU1, **kw):
    kw.setdefault("model_dir", MODEL)
    return build_container_spec(image, served_model_name="e1", resources=resources, **kw)


# (image variant, resources, expected image, port, entrypoint, args, shm) — vLLM and SGLang are
# configured by command-line flags; the tensor-parallel size defaults to every GPU of the replica.
VLLM = ("python3", "-m", "vllm.entrypoints.openai.api_server")
VLLM_BASE = ("--model", "/repository", "--served-model-name", "e1", "--host", "0.0.0.0", "--port", "8000")
SGLANG = ("python3", "-m", "sglang.launch_server")
SGLANG_BASE = ("--model-path", "/repository", "--served-model-name", "e1", "--host", "0.0.0.0", "--port", "30000")


@pytest.mark.parametrize("image, resources, want_image, port, entrypoint, args, shm", [
    ({"vLLM": {}}, GPU1, VLLM_IMAGE, 8000, VLLM,
     VLLM_BASE + ("--tensor-parallel-size", "1"), 10 * GIB),
    ({"vLLM": {}}, GPU4, VLLM_IMAGE, 8000, VLLM,
     VLLM_BASE + ("--tensor-parallel-size", "4"), 10 * GIB),  # 4 GPUs / dp 1 = tp 4
    ({"vLLM": {"dataParallelSize": 2}}, GPU4, VLLM_IMAGE, 8000, VLLM,
     VLLM_BASE + ("--tensor-parallel-size", "2", "--data-parallel-size", "2"), 10 * GIB),  # 4 / 2 = tp 2
    ({"vLLM": {"tensorParallelSize": 2, "maxNumSeqs": 64, "maxNumBatchedTokens": 8192,
               "kvCacheDtype": "fp8"}}, GPU2, VLLM_IMAGE, 8000, VLLM,
     VLLM_BASE + ("--tensor-parallel-size", "2", "--max-num-seqs", "64", "--max-num-batched-tokens", "8192",
                  "--kv-cache-dtype", "fp8"), 10 * GIB),
    ({"vLLM": {"url": "vllm/vllm-openai:v0.9.1", "port": 9000}}, GPU1, "vllm/vllm-openai:v0.9.1", 9000, VLLM,
     VLLM_BASE[:-1] + ("9000", "--tensor-parallel-size", "1"), 10 * GIB),
    ({"vLLM": {}}, CPU2, VLLM_IMAGE, 8000, VLLM, VLLM_BASE, 10 * GIB),  # no GPU: no tp flag
    ({"sGLang": {}}, GPU2, SGLANG_IMAGE, 30000, SGLANG, SGLANG_BASE + ("--tp", "2"), 32 * GIB),
    ({"sGLang": {"tensorParallelSize": 1, "maxRunningRequests": 32, "maxPrefillTokens": 16384,
                 "chunkedPrefillSize": -1, "kvCacheDtype": "fp8_e5m2"}}, GPU1, SGLANG_IMAGE, 30000,
     SGLANG, SGLANG_BASE + ("--tp", "1", "--max-running-requests", "32", "--max-prefill-tokens", "16384",
                            "--chunked-prefill-size", "-1", "--kv-cache-dtype", "fp8_e5m2"), 32 * GIB),
    ({"tei": {}}, CPU2, TEI_CPU_IMAGE, 80, None,
     ("--model-id", "/repository", "--port", "80"), None),
    ({"tei": {"maxBatchTokens": 16384, "maxConcurrentRequests": 512, "pooling": "mean"}}, GPU1,
     TEI_GPU_IMAGE, 80, None,
     ("--model-id", "/repository", "--port", "80", "--max-batch-tokens", "16384",
      "--max-concurrent-requests", "512", "--pooling", "mean"), None),
])
def test_flag_configured_presets(image, resources, want_image, port, entrypoint, args, shm):
    got = spec(image, resources)
    assert (got.image, got.port, got.entrypoint, got.args, got.shm_size_bytes) == (
        want_image, port, entrypoint, args, shm)
    assert got.health_route == "/health"
    assert got.mounts == REPO_MOUNT
    assert got.gpu_device_ids == resources.gpu_device_ids
    assert (got.cpus, got.memory_bytes) == (resources.cpus, resources.memory_bytes)


# (image variant, resources, expected image, port, env) — TGI, llama.cpp and the toolkit read env.
LLAMA_BASE = {"LLAMA_ARG_MODEL": "/repository/m.gguf", "LLAMA_ARG_ALIAS": "e1", "LLAMA_ARG_HOST": "0.0.0.0",
              "LLAMA_ARG_PORT": "8080", "LLAMA_ARG_ENDPOINT_METRICS": "1"}


@pytest.mark.parametrize("image, resources, want_image, port, env", [
    ({"tgi": {}}, GPU1, TGI_IMAGE, 80,
     {"MODEL_ID": "/repository", "PORT": "80", "NUM_SHARD": "1"}),
    ({"tgi": {"maxInputLength": 1024, "maxTotalTokens": 2048, "maxBatchPrefillTokens": 4096,
              "maxBatchTotalTokens": 32768, "quantize": "bitsandbytes", "disableCustomKernels": True}},
     GPU2, TGI_IMAGE, 80,
     {"MODEL_ID": "/repository", "PORT": "80", "NUM_SHARD": "2", "MAX_INPUT_TOKENS": "1024",
      "MAX_TOTAL_TOKENS": "2048", "MAX_BATCH_PREFILL_TOKENS": "4096", "MAX_BATCH_TOTAL_TOKENS": "32768",
      "QUANTIZE": "bitsandbytes", "DISABLE_CUSTOM_KERNELS": "true"}),
    ({"tgi": {"disableCustomKernels": False}}, CPU2, TGI_IMAGE, 80,
     {"MODEL_ID": "/repository", "PORT": "80"}),  # no GPU: no NUM_SHARD; false: the flag stays unset
    ({"llamacpp": {"modelPath": "m.gguf"}}, CPU2, LLAMACPP_IMAGE, 8080, LLAMA_BASE),
    ({"llamacpp": {"modelPath": "m.gguf"}}, GPU1, LLAMACPP_GPU_IMAGE, 8080,
     LLAMA_BASE | {"LLAMA_ARG_N_GPU_LAYERS": "999"}),  # GPU: every layer offloaded by default
    ({"llamacpp": {"modelPath": "m.gguf", "ctxSize": 8192, "nParallel": 4, "threadsHttp": 8, "nGpuLayers": 20,
                   "mmprojModelPath": "vision/mmproj.gguf", "mode": "embedding", "pooling": "mean"}},
     GPU1, LLAMACPP_GPU_IMAGE, 8080,
     LLAMA_BASE | {"LLAMA_ARG_CTX_SIZE": "8192", "LLAMA_ARG_N_PARALLEL": "4", "LLAMA_ARG_THREADS_HTTP": "8",
                   "LLAMA_ARG_N_GPU_LAYERS": "20", "LLAMA_ARG_MMPROJ": "/repository/vision/mmproj.gguf",
                   "LLAMA_ARG_EMBEDDINGS": "1", "LLAMA_ARG_POOLING": "mean"}),
    ({"llamacpp": {"modelPath": "m.gguf", "mode": "text-generation", "port": 9090}}, CPU2,
     LLAMACPP_IMAGE, 9090, LLAMA_BASE | {"LLAMA_ARG_PORT": "9090"}),
    ({"huggingface": {}}, CPU2, TOOLKIT_IMAGE, 5000, {"HF_MODEL_DIR": "/repository"}),
    ({"hfServe": {}}, CPU2, TOOLKIT_IMAGE, 5000, {"HF_MODEL_DIR": "/repository"}),
])
def test_env_configured_presets(image, resources, want_image, port, env):
    got = spec(image, resources)
    assert (got.image, got.port, dict(got.env)) == (want_image, port, env)
    assert (got.entrypoint, got.args) == (None, None)  # the image's own entrypoint and CMD
    assert got.health_route == "/health"
    assert got.mounts == REPO_MOUNT


def test_tgi_and_toolkit_shared_memory():
    assert spec({"tgi": {}}).shm_size_bytes == 1 * GIB  # TGI README: --shm-size 1g
    assert spec({"huggingface": {}}, CPU2).shm_size_bytes is None


def test_custom_runs_any_image_with_credentials():
    got = spec(
        {"custom": {"url": "ghcr.io/x/tgi:1", "healthRoute": "/ready", "port": 8000,
                    "credentials": {"username": "u", "password": "s3cret"}}},
        CPU2, model_dir=None, env={"A": "1"}, command=["python"], args=["-m", "x"],
    )
    assert (got.image, got.port, got.health_route) == ("ghcr.io/x/tgi:1", 8000, "/ready")
    assert (got.entrypoint, got.args, dict(got.env), got.mounts) == (("python",), ("-m", "x"), {"A": "1"}, ())
    assert got.registry_auth == RegistryAuth(username="u", password="s3cret")
    assert "s3cret" not in repr(got)


def test_custom_defaults_port_80_and_no_health_route():
    got = spec({"custom": {"url": "img:tag"}}, CPU2)
    assert (got.port, got.health_route, got.registry_auth) == (80, "", None)  # "": ready once the port listens
    assert (got.entrypoint, got.args) == (None, None)
    assert got.mounts == REPO_MOUNT  # the model is still mounted when there is one


def test_custom_credentials_without_password():
    got = spec({"custom": {"url": "img", "credentials": {"username": "u"}}}, CPU2)
    assert got.registry_auth == RegistryAuth(username="u", password=None)


def test_legacy_snake_case_health_route():
    assert spec({"custom": {"url": "img", "health_route": "/hc"}}, CPU2).health_route == "/hc"


@pytest.mark.parametrize("args, command, want_entrypoint, want_args", [
    (["--enable-lora"], None, VLLM, VLLM_BASE + ("--tensor-parallel-size", "1", "--enable-lora")),  # appended
    (None, ["vllm", "serve"], ("vllm", "serve"), ()),  # command replaces entrypoint and preset args
    (["/repository"], ["vllm", "serve"], ("vllm", "serve"), ("/repository",)),
])
def test_user_command_and_args_on_top_of_preset(args, command, want_entrypoint, want_args):
    got = spec({"vLLM": {}}, args=args, command=command)
    assert (got.entrypoint, got.args) == (want_entrypoint, want_args)


def test_user_env_overrides_preset_and_secrets_stay_secret():
    got = spec({"tgi": {"maxTotalTokens": 2048}}, env={"MAX_TOTAL_TOKENS": "4096", "A": "1"},
               secrets={"HF_TOKEN": "hf_secret", "QUANTIZE": "awq"})
    assert dict(got.env) == {"MODEL_ID": "/repository", "PORT": "80", "NUM_SHARD": "1",
                             "MAX_TOTAL_TOKENS": "4096", "A": "1"}
    assert dict(got.secret_env) == {"HF_TOKEN": "hf_secret", "QUANTIZE": "awq"}
    assert "hf_secret" not in repr(got) and "hf_secret" not in str(got)


def test_hub_snapshot_also_mounts_its_blobs():
    snapshot = "/cache/models--org--name/snapshots/abc123"
    got = spec({"vLLM": {}}, model_dir=snapshot)
    assert got.mounts == (Mount(source=snapshot, target="/repository"),
                          Mount(source="/cache/models--org--name/blobs", target="/blobs"))


def test_default_images_pin_versions():
    pinned = {"tei": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8", "llamacpp-gpu": "llama:b5000-cuda"}
    assert spec({"tei": {}}, CPU2, default_images=pinned).image == pinned["tei"]
    assert spec({"llamacpp": {"modelPath": "m.gguf"}}, default_images=pinned).image == "llama:b5000-cuda"
    assert spec({"vLLM": {}}, default_images=pinned).image == VLLM_IMAGE


def test_variant_names_are_the_apis_exactly():
    # One list for the wire format and the presets: "vllm" is refused by both, as the API always did.
    assert set(PRESETS) == set(VARIANTS)
    with pytest.raises(PresetError, match="model.image must be an object with exactly one key among vLLM, sGLang"):
        spec({"vllm": {}})


@pytest.mark.parametrize("reserved", sorted(LLAMACPP_RESERVED))
def test_llamacpp_reserved_env_is_refused(reserved):
    with pytest.raises(PresetError, match=f"sets {reserved}, which the llamacpp preset reserves"):
        spec({"llamacpp": {"modelPath": "m.gguf"}}, env={reserved: "1"})


def test_llamacpp_other_env_passes():
    got = spec({"llamacpp": {"modelPath": "m.gguf"}}, CPU2, env={"LLAMA_ARG_FLASH_ATTN": "on"})
    assert got.env["LLAMA_ARG_FLASH_ATTN"] == "on"


# (kwargs, image, the sentence fragment the error must contain)
@pytest.mark.parametrize("image, kw, message", [
    ({"neuron": {}}, {}, "exactly one key among vLLM, sGLang, tgi, tei, llamacpp, hfServe, custom, huggingface; "
                         'got {"neuron": {}}'),
    ({}, {}, "exactly one key"),
    ({"vLLM": {}, "tgi": {}}, {}, "exactly one key"),
    ({"vLLM": "fast"}, {}, "model.image.vLLM must be a JSON object; got \"fast\""),
    ({"llamacpp": {}}, {}, "model.image.llamacpp.modelPath is required"),
    ({"llamacpp": {"modelPath": "/etc/passwd"}}, {}, "modelPath must be a path inside the repository"),
    ({"llamacpp": {"modelPath": "../x.gguf"}}, {}, "modelPath must be a path inside the repository"),
    ({"llamacpp": {"modelPath": "m.gguf", "mode": "rerank"}}, {}, "'rerank' is not one of text-generation, embedding"),
    ({"llamacpp": {"modelPath": "m.gguf", "ctxSize": -1}}, {}, "ctxSize must be an integer >= 0"),
    ({"custom": {}}, {}, "model.image.custom.url must be the image to run, a non-empty string"),
    ({"custom": {"url": "img", "credentials": {"password": "p"}}}, {}, "credentials.username must be"),
    ({"custom": {"url": 5}}, {}, "model.image.custom.url must be the image to run, a non-empty string such as \"ghcr.io/acme/server:1.2\"; got 5"),
    ({"vLLM": {"maxNumSeqs": "64"}}, {}, "maxNumSeqs must be an integer >= 1, got '64'"),
    ({"vLLM": {"maxNumSeqs": True}}, {}, "maxNumSeqs must be an integer >= 1, got True"),
    ({"vLLM": {"port": 70000}}, {}, "port must be a TCP port, 1 to 65535, got 70000"),
    ({"vLLM": {"healthRoute": "health"}}, {}, "healthRoute must be a path starting with '/'"),
    ({"vLLM": {"tensorParallelSize": 2, "dataParallelSize": 2}}, {},
     "2 × 2 = 4 GPUs, but the instance has 1"),
    ({"sGLang": {"tensorParallelSize": 2}}, {}, "tensorParallelSize = 2 GPUs, but the instance has 1"),
    ({"tgi": {"disableCustomKernels": "yes"}}, {}, "disableCustomKernels must be true or false"),
    ({"tgi": {"maxInputTokens": 10}}, {}, "unknown keys maxInputTokens; it takes maxInputLength"),
    ({"vLLM": {}}, {"model_dir": None}, "the vLLM preset serves the model's files, but none were fetched"),
    ({"vLLM": {}}, {"model_dir": "models/gpt2"}, "model_dir must be an absolute host path"),
    ({"vLLM": {}}, {"resources": Resources(None, None, gpu_count=2)}, "needs 2 GPUs but has 0 device ids"),
    ({"tgi": {}}, {"env": {"PORT": "9"}}, "sets PORT, which the tgi preset reserves"),
    ({"tgi": {}}, {"secrets": {"MODEL_ID": "x"}}, "model.secrets sets MODEL_ID"),
    ({"tgi": {}}, {"env": {"A": "1"}, "secrets": {"A": "2"}}, "model.env and model.secrets both set A"),
    ({"tgi": {}}, {"env": {"A": 1}}, "model.env.A must be a string; got 1"),
    ({"tgi": {}}, {"secrets": {"A": 1}}, "model.secrets.A must be a string; got a number (not shown: it is a secret)"),
    ({"tgi": {}}, {"default_images": {"tgi-gpu": "x"}}, "default_images has unknown keys tgi-gpu"),
])
def test_errors_say_what_to_fix(image, kw, message):
    with pytest.raises(PresetError) as caught:
        spec(image, **kw)
    assert message in str(caught.value)


# --- the engine API key ---------------------------------------------------------------------------

KEY = "k3y-of-the-replica"

# (variant, resources, how the engine takes its key: ("env", VARIABLE) as a secret, ("flag", FLAG) in
# its arguments, or None) — from each engine's source: vLLM reads VLLM_API_KEY (vllm/envs.py; the
# --api-key flag takes precedence), SGLang only --api-key (server_args.py), llama-server
# LLAMA_API_KEY (common/arg.cpp: --api-key … set_env), TEI and TGI (>= 2.3) API_KEY (clap `long,
# env` on `api_key`), the echo engine ECHO_API_KEY; the inference toolkit and other images have none.
@pytest.mark.parametrize("image, resources, takes", [
    ({"vLLM": {}}, GPU1, ("env", "VLLM_API_KEY")),
    ({"sGLang": {}}, GPU1, ("flag", "--api-key")),
    ({"llamacpp": {"modelPath": "m.gguf"}}, CPU2, ("env", "LLAMA_API_KEY")),
    ({"tei": {}}, CPU2, ("env", "API_KEY")),
    ({"tgi": {}}, GPU1, ("env", "API_KEY")),
    ({"custom": {"url": "endpointd/echo:latest"}}, CPU2, ("env", "ECHO_API_KEY")),
    ({"custom": {"url": "endpointd/echo"}}, CPU2, ("env", "ECHO_API_KEY")),
    ({"custom": {"url": "endpointd/echo:dev"}}, CPU2, ("env", "ECHO_API_KEY")),
    ({"custom": {"url": "endpointd/echo-fork:1"}}, CPU2, None),
    ({"custom": {"url": "acme/endpointd/echo:1"}}, CPU2, None),
    ({"custom": {"url": "ghcr.io/acme/server:1"}}, CPU2, None),
    ({"huggingface": {}}, CPU2, ("env", "TOOLKIT_API_KEY")),
    ({"hfServe": {}}, CPU2, ("env", "TOOLKIT_API_KEY")),
])
def test_each_engine_gets_the_replicas_key_its_own_way(image, resources, takes):
    got = spec(image, resources, api_key=KEY)
    assert got.api_key == (KEY if takes else None)
    if takes and takes[0] == "env":
        assert got.secret_env == {takes[1]: KEY} and takes[1] not in got.env
    elif takes:
        assert got.args[-2:] == (takes[1], KEY) and not got.secret_env
    else:
        assert not got.secret_env and KEY not in (got.args or ()) and KEY not in got.env.values()
    assert KEY not in repr(got)
    without = spec(image, resources)  # no key asked for: the engine gets none
    assert without.api_key is None and not without.secret_env and KEY not in (without.args or ())


def test_a_key_in_the_environment_survives_a_user_command_a_flag_does_not():
    got = spec({"vLLM": {}}, api_key=KEY, command=["vllm", "serve"], args=["/repository"])
    assert (got.entrypoint, got.args, got.secret_env, got.api_key) == (("vllm", "serve"), ("/repository",), {"VLLM_API_KEY": KEY}, KEY)
    got = spec({"sGLang": {}}, api_key=KEY, command=["python3", "-m", "sglang.launch_server"])
    assert (got.args, got.api_key) == ((), None)  # the container runs exactly the user's command: no key


@pytest.mark.parametrize("image, where, name", [
    ({"vLLM": {}}, "env", "VLLM_API_KEY"),
    ({"llamacpp": {"modelPath": "m.gguf"}}, "secrets", "LLAMA_API_KEY"),
    ({"tei": {}}, "env", "API_KEY"),
    ({"tgi": {}}, "secrets", "API_KEY"),
    ({"custom": {"url": "endpointd/echo:latest"}}, "env", "ECHO_API_KEY"),
])
def test_the_key_variable_is_reserved(image, where, name):
    with pytest.raises(PresetError, match=f"model.{where} sets {name}, which the .* preset reserves"):
        spec(image, CPU2, api_key=KEY, **{where: {name: "mine"}})


def test_the_echo_images_own_env_may_not_set_its_key_either():
    with pytest.raises(PresetError, match="model.image.custom.env sets ECHO_API_KEY"):
        spec({"custom": {"url": "endpointd/echo:latest", "env": {"ECHO_API_KEY": "mine"}}}, CPU2, api_key=KEY)


@pytest.mark.parametrize("image, flag", [
    ({"vLLM": {}}, "--api-key"),
    ({"sGLang": {}}, "--api-key=mine"),
    ({"tei": {}}, "--api-key"),
    ({"llamacpp": {"modelPath": "m.gguf"}}, "--api-key-file"),
])
def test_user_args_may_not_replace_the_key(image, flag):
    with pytest.raises(PresetError, match="model.args sets --api-key.*endpointd gives each replica a key of its own"):
        spec(image, api_key=KEY, args=[flag, "mine"])


def test_other_images_take_any_args():
    got = spec({"custom": {"url": "img"}}, CPU2, api_key=KEY, args=["--api-key", "theirs"])
    assert got.args == ("--api-key", "theirs") and got.api_key is None


# --- limits follow the instance --------------------------------------------------------------------

GPU1_LIMITED = Resources(cpus=None, memory_bytes=21 * GIB, gpu_count=1, gpu_device_ids=("GPU-a",))


@pytest.mark.parametrize("image, resources, cpus, memory", [
    ({"tgi": {}}, CPU2, 2.0, 4 * GIB),
    ({"vLLM": {}}, GPU1_LIMITED, None, 21 * GIB),  # a GPU instance: its share of the host's memory
    ({"custom": {"url": "img"}}, CPU2, 2.0, 4 * GIB),
])
def test_cpu_and_memory_limits_follow_the_instance(image, resources, cpus, memory):
    got = spec(image, resources)
    assert (got.cpus, got.memory_bytes) == (cpus, memory)
    assert got.capabilities == ("NET_BIND_SERVICE",)  # every engine: all other capabilities dropped
    assert all(m.read_only for m in got.mounts)  # nothing of the host is writable


def test_no_default_image_is_latest():
    from engines.presets import DEFAULT_IMAGES

    assert [key for key, image in DEFAULT_IMAGES.items() if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]] == []


def test_the_toolkit_image_is_the_one_images_build_makes():
    from engines import images

    assert images.TOOLKIT_IMAGE == TOOLKIT_IMAGE == spec({"huggingface": {}}, CPU2).image


@pytest.mark.parametrize("task, framework, want", [
    ("sentence-embeddings", "pytorch", {"HF_TASK": "sentence-embeddings", "HF_FRAMEWORK": "pytorch"}),
    ("text-classification", None, {"HF_TASK": "text-classification"}),
    (None, "custom", {"HF_FRAMEWORK": "custom"}),
    (None, None, {}),  # the toolkit derives the task from the repository
    ("Text-Classification", "PyTorch", {"HF_TASK": "text-classification", "HF_FRAMEWORK": "pytorch"}),
])
def test_the_toolkit_is_told_the_task_and_framework(task, framework, want):
    got = spec({"huggingface": {}}, CPU2, task=task, framework=framework)
    assert dict(got.env) == {"HF_MODEL_DIR": "/repository", **want}


def test_other_engines_ignore_task_and_framework():
    assert spec({"tei": {}}, CPU2, task="feature-extraction", framework="pytorch").env == {}


@pytest.mark.parametrize("task, framework, message", [
    ("Feature Extraction", None, "model.task must be a name of letters, digits and dashes"),
    ("x" * 65, None, "model.task must be a name"),
    (None, "py/torch", "model.framework must be a name .* such as \"pytorch\""),
    (None, 3, "model.framework must be a name"),
])
def test_bad_task_or_framework_says_what_to_send(task, framework, message):
    with pytest.raises(PresetError, match=message):
        spec({"huggingface": {}}, CPU2, task=task, framework=framework)


def test_the_faqs_image_huggingface_env_is_merged_like_model_env():
    got = spec({"huggingface": {"env": {"HF_TRUST_REMOTE_CODE": "1", "HF_TASK": "fill-mask"}}}, CPU2,
               task="text-classification", env={"A": "1"})
    # image.huggingface.env overrides the preset's values, model.env overrides both.
    assert dict(got.env) == {"HF_MODEL_DIR": "/repository", "HF_TASK": "fill-mask", "HF_TRUST_REMOTE_CODE": "1", "A": "1"}
    assert spec({"huggingface": {"env": {"X": "2"}}}, CPU2, env={"X": "3"}).env["X"] == "3"


@pytest.mark.parametrize("variant_env, message", [
    ({"HF_MODEL_DIR": "/etc"}, "model.image.huggingface.env sets HF_MODEL_DIR, which the huggingface preset reserves"),
    ({"TOOLKIT_API_KEY": "mine"}, "model.image.huggingface.env sets TOOLKIT_API_KEY"),
    ({"A": 1}, r"model.image.huggingface.env.A must be a string; got 1"),
])
def test_the_toolkit_env_refuses_reserved_keys_and_non_strings(variant_env, message):
    with pytest.raises(PresetError, match=message):
        spec({"huggingface": {"env": variant_env}}, CPU2, api_key=KEY)
    with pytest.raises(PresetError, match="model.image.huggingface.env must be a JSON object"):
        spec({"huggingface": {"env": ["A=1"]}}, CPU2)


@pytest.mark.parametrize("image, declared", [
    ({"custom": {"url": "ghcr.io/acme/server:1"}}, False),  # ready once its port accepts connections
    ({"custom": {"url": "ghcr.io/acme/server:1", "healthRoute": "/ready"}}, True),
    ({"custom": {"url": "ghcr.io/acme/server:1", "health_route": "/ready"}}, True),
    ({"Custom": {"url": "ghcr.io/acme/server:1", "healthRoute": ""}}, False),
    ({"tgi": {}}, True),
    ({"huggingface": {}}, True),
    ({}, True),  # not a variant: build_container_spec says why
])
def test_which_images_declare_a_health_route(image, declared):
    from engines.presets import declares_health_route

    assert declares_health_route(image) is declared
