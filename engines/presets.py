"""Engine presets: an endpoint's `model.image` variant (wire format) -> the ContainerSpec of one replica.

One preset per variant of the Inference Endpoints API (`vLLM`, `tgi`, `sGLang`, `llamacpp`, `tei`,
`huggingface`/`hfServe`, `custom`), each with the engine's own documented command line or
environment variables. Variant keys are camelCase as on the wire; every variant also takes `url`
(image override), `port` and `healthRoute`. Unknown keys are refused rather than ignored.

The endpoint's `env`, `secrets`, `command` and `args` apply on top of the preset:
  - env overrides the preset's variables, except those an engine reserves (a PresetError names it);
  - secrets go to `secret_env` (never logged nor shown) and take precedence over env;
  - `command` replaces the entrypoint and, with it, the preset's arguments (the container runs
    exactly `command + args`);
  - `args` alone are appended to the preset's arguments (the engine's parser keeps the last value,
    so they can also override a preset flag), except the replica's API key (`--api-key`).

Each replica's engine API key (`api_key`) goes where its engine reads one (see VLLM_KEY_ENV); the
variable is reserved.

With `sleep_after_s` (the endpoint's compute.scaling.sleepAfter), the engine is started able to
sleep (engines/sleep.py: how each one sleeps and wakes), by the flags of _sleep_flags; the engines
that cannot sleep are refused.

Errors:
    PresetError       the variant cannot be turned into a container; the message says what to fix.
                      The rules the API's wire format enforces too (the image's shape, env) are
                      engines/spec_rules.py's, with the same sentences.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines import spec_rules
from engines.artifacts import REPOSITORY_TARGET, repository_mounts
from engines.hardware import Resources
from engines.pinned import LLAMA_CPP_BUILD
from engines.runtime import ContainerSpec, RegistryAuth
from engines.sleep import MAX_SLEEP_AFTER_S, MIN_SLEEP_AFTER_S, SleepKind, sleep_kind
from engines.spec_rules import PresetError

GIB = 1024**3

# Operators pin versions with `default_images` (same keys). "-gpu" keys are used when the replica
# has GPUs, for engines that ship separate CPU and CUDA builds.
DEFAULT_IMAGES: Mapping[str, str] = {
    # Pinned tags, never `:latest`: every replica of an endpoint, and every host, then runs the same
    # engine build; operators move them with `[engines]` in the config (default_images). Releases
    # seen published in 2026 (registries cannot be reached from this project's machines: check a
    # tag with `docker manifest inspect` before relying on it).
    "vLLM": "vllm/vllm-openai:v0.21.0",  # vLLM docs, "Using Docker"; tags v<release> on Docker Hub
    "tgi": "ghcr.io/huggingface/text-generation-inference:3.3.5",  # TGI README; 3.3.x: its last line
    "sGLang": "lmsysorg/sglang:v0.5.6",  # SGLang docs, "Method 3: Using docker"; v<release> is the CUDA build
    "llamacpp": "ghcr.io/ggml-org/llama.cpp:server-b9246",  # llama.cpp docs/docker.md: server-b<build>
    "llamacpp-gpu": "ghcr.io/ggml-org/llama.cpp:server-cuda-b9246",  # same page, CUDA server image
    "tei": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8",  # TEI README, CPU image
    # The Ampere-80 build (A100/A30). Other architectures have their own tags (turing-1.8, 86-1.8,
    # 89-1.8, hopper-1.8): pin the one matching the host's GPUs with default_images["tei-gpu"].
    "tei-gpu": "ghcr.io/huggingface/text-embeddings-inference:1.8",
    # endpointd's own inference toolkit (engines/toolkit), built locally by `endpointd images
    # build` under this tag (engines/images.py reads it from here). It serves the repository as
    # huggingface-inference-toolkit does; that project publishes no image of its own.
    "huggingface": "endpointd/inference-toolkit:0.1.0",
    # GPU replicas of the toolkit: the CPU build unless the CUDA one is built here (LOCAL_IMAGES).
    "huggingface-gpu": "endpointd/inference-toolkit:0.1.0",
}

# Images endpointd builds itself (`endpointd images build`): one replaces the key's upstream tag
# above when it is on this host and the operator pinned no other image for that key.
LOCAL_IMAGES: Mapping[str, str] = {
    "llamacpp": f"endpointd/llama-cpp:{LLAMA_CPP_BUILD}",
    # CUDA builds (`endpointd images build --cuda`): chosen for GPU replicas by engines/gpu_images.py.
    "llamacpp-gpu": f"endpointd/llama-cpp:{LLAMA_CPP_BUILD}-cuda",
    "huggingface-gpu": "endpointd/inference-toolkit:0.1.0-cuda",
}

async def with_local_images(
    pinned: Mapping[str, str], present: Callable[[str], Awaitable[bool]]
) -> dict[str, str]:
    """The operator's pins, plus each LOCAL_IMAGES entry that is on this host and not pinned."""
    images = dict(pinned)
    for key, image in LOCAL_IMAGES.items():
        if key.endswith("-gpu"):
            continue  # GPU replicas' images follow the host's GPUs: engines/gpu_images.py
        if key not in images and await present(image):
            images[key] = image
    return images


# Docker's default /dev/shm is 64 MiB; engines that exchange tensors between processes (NCCL,
# vLLM's multiprocessing ring buffers) need more. Values from each engine's documented `docker run`.
VLLM_SHM_BYTES = 10 * GIB  # vLLM docs ask for --ipc=host or a large --shm-size
SGLANG_SHM_BYTES = 32 * GIB  # SGLang's docker example: --shm-size 32g
TGI_SHM_BYTES = 1 * GIB  # TGI README: --shm-size 1g

# The inference toolkit's entrypoint.sh always binds 5000; a `port` key only says where a
# replacement image (`url`) listens.
TOOLKIT_PORT = 5000
# What the toolkit is told (engines/toolkit/server.py reads them, as the reference toolkit does).
TOOLKIT_MODEL_DIR_ENV = "HF_MODEL_DIR"
TOOLKIT_TASK_ENV = "HF_TASK"
TOOLKIT_FRAMEWORK_ENV = "HF_FRAMEWORK"
# Task and framework names as the API takes them ("sentence-embeddings", "pytorch"), any case.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")

# Offload every layer when the replica has GPUs: llama.cpp clamps the number to the model's layers.
LLAMACPP_ALL_LAYERS = 999

# Variables the reference service reserves for llama.cpp, plus LLAMA_ARG_THREADS_HTTP: the name
# llama-server actually reads (common/arg.cpp) where the reference docs write LLAMA_ARG_HTTP_THREADS.
LLAMACPP_RESERVED = frozenset({
    "LLAMA_ARG_MODEL", "LLAMA_ARG_HTTP_THREADS", "LLAMA_ARG_THREADS_HTTP", "LLAMA_ARG_N_GPU_LAYERS",
    "LLAMA_ARG_EMBEDDINGS", "LLAMA_ARG_HOST", "LLAMA_ARG_PORT", "LLAMA_ARG_NO_MMAP",
    "LLAMA_ARG_CTX_SIZE", "LLAMA_ARG_N_PARALLEL", "LLAMA_ARG_ENDPOINT_METRICS",
})
LLAMACPP_MODES = ("text-generation", "embedding")

# How each engine takes the replica's API key (the launcher makes one per replica; the proxy and the
# health probes send it as `Authorization: Bearer <key>`). An environment variable when the engine
# reads one, so that the key is not in the engine's command line (which `ps` shows every user of
# the host); it goes to `secret_env`, never logged nor shown. Checked in each engine's source:
#   vLLM       VLLM_API_KEY (entrypoints/openai/api_server.py: `args.api_key or envs.VLLM_API_KEY`).
#              Guards /v1, /v2, /inference, /cohere only (serve/utils/server_utils.py,
#              GUARDED_PREFIX): /health and /metrics stay open, and so do its few other routes.
#   SGLang     --api-key only (server_args.py: a plain argparse flag, no variable): the one key in a
#              command line, so `ps` on the host shows it. /health*, /ready*, /metrics open
#              (srt/utils/auth.py).
#   TGI        API_KEY (launcher: clap `long, env` on `api_key`, since 2.3.0; the launcher hands it
#              to the router as `--api-key`). Guards the inference routes; /health, /info, /metrics open.
#   TEI        API_KEY (router/src/main.rs, clap `long, env`). /health, /ping, /metrics, GET / open
#              since 1.5.1 (before, /health needed the key too: the probes send it anyway).
#   llama.cpp  LLAMA_API_KEY (common/arg.cpp: `--api-key` … set_env). /health, /v1/health, /models,
#              /v1/models, / open.
#   echo       ECHO_API_KEY (engines/echo/server.py). Everything but /health needs it.
#   toolkit    TOOLKIT_API_KEY (engines/toolkit/server.py). Everything but GET /health and GET / needs
#              it; an image that replaces the toolkit (`url`) and ignores it only leaves itself open.
# No other custom image takes one: endpointd cannot know whether or how it would.
VLLM_KEY_ENV = "VLLM_API_KEY"
SGLANG_KEY_FLAG = "--api-key"
TGI_KEY_ENV = "API_KEY"
TEI_KEY_ENV = "API_KEY"
LLAMACPP_KEY_ENV = "LLAMA_API_KEY"
ECHO_KEY_ENV = "ECHO_API_KEY"
TOOLKIT_KEY_ENV = "TOOLKIT_API_KEY"
# The project's own test engine, run as a custom image: it takes a key too. Any tag or digest.
ECHO_REPOSITORY = "endpointd/echo"
# Flags by which `model.args` would replace the replica's key (and lock the proxy out of it).
KEY_FLAGS = frozenset({"--api-key", "--api-key-file"})

_COMMON_KEYS = ("url", "port", *spec_rules.HEALTH_ROUTE_KEYS)

# What makes each engine able to sleep (engines/sleep.py), from each engine's source:
#   vLLM       --enable-sleep-mode, and VLLM_SERVER_DEV_MODE=1: its API server mounts /sleep,
#              /wake_up and /is_sleeping only in dev mode. The variable mounts vLLM's other dev
#              routes too: the proxy refuses them all (proxy/core/engine_routes.py).
#   SGLang     --enable-memory-saver (server_args.py) for /release_memory_occupation and /resume_...
#   llama.cpp  --sleep-idle-seconds N (common/arg.cpp; a flag only, no LLAMA_ARG_ variable): it
#              sleeps by itself after N seconds without a task.
VLLM_DEV_MODE_ENV = "VLLM_SERVER_DEV_MODE"
LLAMACPP_SLEEP_FLAG = "--sleep-idle-seconds"


def _sleep_flags(kind: SleepKind, sleep_after_s: int) -> tuple[tuple[str, ...], Mapping[str, str]]:
    """The arguments and variables that let the engine sleep."""
    if kind is SleepKind.VLLM:
        return ("--enable-sleep-mode",), {VLLM_DEV_MODE_ENV: "1"}
    if kind is SleepKind.SGLANG:
        return ("--enable-memory-saver",), {}
    return (LLAMACPP_SLEEP_FLAG, str(sleep_after_s)), {}


def _check_sleep_after(variant: str, sleep_after_s: Any) -> SleepKind:
    """How the variant's engine sleeps; PresetError for a value out of range or an engine that cannot."""
    if isinstance(sleep_after_s, bool) or not isinstance(sleep_after_s, int) or not (
            MIN_SLEEP_AFTER_S <= sleep_after_s <= MAX_SLEEP_AFTER_S):
        raise PresetError(
            f"compute.scaling.sleepAfter must be a whole number of seconds from {MIN_SLEEP_AFTER_S} to "
            f"{MAX_SLEEP_AFTER_S}, got {sleep_after_s!r}"
        )
    kind = sleep_kind({variant: {}})
    if kind is None:
        raise PresetError(
            f"compute.scaling.sleepAfter is set, but the {variant} engine (model.image.{variant}) cannot sleep: "
            f"only vLLM, sGLang and llamacpp can; remove compute.scaling.sleepAfter (or scale to zero instead)"
        )
    return kind


class _Options:
    """One variant's dict, read key by key with type checks; `leftover()` is whatever was not read."""

    def __init__(self, variant: str, body: Mapping[str, Any]) -> None:
        self.variant = variant
        self._body = body
        self._read: set[str] = set()

    def path(self, key: str) -> str:
        return f"model.image.{self.variant}.{key}"

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self._body.get(key)

    def integer(self, key: str, minimum: int = 1) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise PresetError(f"{self.path(key)} must be an integer >= {minimum}, got {value!r}")
        return value

    def text(self, key: str) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise PresetError(f"{self.path(key)} must be a non-empty string, got {value!r}")
        return value

    def flag(self, key: str) -> bool | None:
        value = self._get(key)
        if value is not None and not isinstance(value, bool):
            raise PresetError(f"{self.path(key)} must be true or false, got {value!r}")
        return value

    def relative_path(self, key: str) -> str | None:
        value = self.text(key)
        if value is not None and (value.startswith("/") or ".." in value.split("/")):
            raise PresetError(
                f"{self.path(key)} must be a path inside the repository such as \"model-q4_k_m.gguf\", got {value!r}"
            )
        return value

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self._get(key)
        if value is not None and not isinstance(value, Mapping):
            raise PresetError(f"{self.path(key)} must be an object, got {value!r}")
        return value

    def leftover(self) -> list[str]:
        return sorted(set(self._body) - self._read)


@dataclass(frozen=True)
class _Engine:
    """What a preset decides, before the endpoint's env/secrets/command/args are applied."""

    image_key: str | None  # key into DEFAULT_IMAGES; None: the variant must name its image (`url`)
    port: int
    entrypoint: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    shm_size_bytes: int | None = None
    reserved_env: frozenset[str] = frozenset()
    needs_model: bool = True
    registry_auth: RegistryAuth | None = None
    key_env: str | None = None  # the variable the engine reads its API key from
    key_flag: str | None = None  # else the flag it takes it by; neither: the engine takes no key


def _flags(options: _Options, table: Sequence[tuple[str, str, Callable[[str], Any]]]) -> list[str]:
    """`--flag value` for each (key, flag, reader) of the table the variant sets."""
    out: list[str] = []
    for key, flag, read in table:
        value = read(key)
        if value is not None:
            out += [flag, str(value)]
    return out


def _gpu_parallelism(options: _Options, resources: Resources, tp: int | None, dp: int = 1) -> int | None:
    """The tensor-parallel size: the variant's, else every GPU of the replica; never more GPUs than it has."""
    if resources.gpu_count == 0:
        return tp
    tp = tp if tp is not None else max(resources.gpu_count // dp, 1)
    if tp * dp > resources.gpu_count:
        asked = (f"{options.path('tensorParallelSize')} × dataParallelSize = {tp} × {dp} = {tp * dp}" if dp > 1
                 else f"{options.path('tensorParallelSize')} = {tp}")
        raise PresetError(
            f"{asked} GPUs, but the instance has {resources.gpu_count}: use at most {resources.gpu_count} "
            f"(or a larger instanceSize)"
        )
    return tp


def _vllm(options: _Options, port: int, served_model_name: str, resources: Resources) -> _Engine:
    dp = options.integer("dataParallelSize")
    tp = _gpu_parallelism(options, resources, options.integer("tensorParallelSize"), dp or 1)
    args = ["--model", REPOSITORY_TARGET, "--served-model-name", served_model_name,
            "--host", "0.0.0.0", "--port", str(port)]
    if tp is not None:
        args += ["--tensor-parallel-size", str(tp)]
    if dp is not None:
        args += ["--data-parallel-size", str(dp)]
    args += _flags(options, [
        ("maxNumSeqs", "--max-num-seqs", options.integer),
        ("maxNumBatchedTokens", "--max-num-batched-tokens", options.integer),
        ("kvCacheDtype", "--kv-cache-dtype", options.text),
    ])
    # The module form works in every vLLM image (`vllm serve` took a positional model in some).
    return _Engine("vLLM", port, ("python3", "-m", "vllm.entrypoints.openai.api_server"), tuple(args),
                   shm_size_bytes=VLLM_SHM_BYTES, reserved_env=frozenset({VLLM_KEY_ENV}), key_env=VLLM_KEY_ENV)


def _sglang(options: _Options, port: int, served_model_name: str, resources: Resources) -> _Engine:
    tp = _gpu_parallelism(options, resources, options.integer("tensorParallelSize"))
    args = ["--model-path", REPOSITORY_TARGET, "--served-model-name", served_model_name,
            "--host", "0.0.0.0", "--port", str(port)]
    if tp is not None:
        args += ["--tp", str(tp)]
    args += _flags(options, [
        ("maxRunningRequests", "--max-running-requests", options.integer),
        ("maxPrefillTokens", "--max-prefill-tokens", options.integer),
        # -1 disables chunked prefill (SGLang server arguments).
        ("chunkedPrefillSize", "--chunked-prefill-size", lambda key: options.integer(key, minimum=-1)),
        ("kvCacheDtype", "--kv-cache-dtype", options.text),
    ])
    return _Engine("sGLang", port, ("python3", "-m", "sglang.launch_server"), tuple(args),
                   shm_size_bytes=SGLANG_SHM_BYTES, key_flag=SGLANG_KEY_FLAG)


def _tgi(options: _Options, port: int, served_model_name: str, resources: Resources) -> _Engine:
    # text-generation-launcher reads every flag from the environment variable of the same name.
    env = {"MODEL_ID": REPOSITORY_TARGET, "PORT": str(port)}
    if resources.gpu_count:
        env["NUM_SHARD"] = str(resources.gpu_count)
    for key, name in [
        ("maxInputLength", "MAX_INPUT_TOKENS"),  # MAX_INPUT_LENGTH is its deprecated alias since TGI 2.1
        ("maxTotalTokens", "MAX_TOTAL_TOKENS"),
        ("maxBatchPrefillTokens", "MAX_BATCH_PREFILL_TOKENS"),
        ("maxBatchTotalTokens", "MAX_BATCH_TOTAL_TOKENS"),
    ]:
        value = options.integer(key)
        if value is not None:
            env[name] = str(value)
    quantize = options.text("quantize")
    if quantize is not None:
        env["QUANTIZE"] = quantize
    if options.flag("disableCustomKernels"):
        env["DISABLE_CUSTOM_KERNELS"] = "true"
    return _Engine("tgi", port, env=env, shm_size_bytes=TGI_SHM_BYTES,
                   reserved_env=frozenset({"MODEL_ID", "PORT", TGI_KEY_ENV}), key_env=TGI_KEY_ENV)


def _tei(options: _Options, port: int, served_model_name: str, resources: Resources) -> _Engine:
    args = ["--model-id", REPOSITORY_TARGET, "--port", str(port)]
    args += _flags(options, [
        ("maxBatchTokens", "--max-batch-tokens", options.integer),
        ("maxConcurrentRequests", "--max-concurrent-requests", options.integer),
        ("pooling", "--pooling", options.text),
    ])
    return _Engine("tei-gpu" if resources.gpu_count else "tei", port, args=tuple(args),
                   reserved_env=frozenset({TEI_KEY_ENV}), key_env=TEI_KEY_ENV)


def _llamacpp(options: _Options, port: int, served_model_name: str, resources: Resources) -> _Engine:
    model_path = options.relative_path("modelPath")
    if model_path is None:
        raise PresetError(
            f"{options.path('modelPath')} is required: the .gguf file to serve, relative to the "
            f"repository root, e.g. \"model-q4_k_m.gguf\""
        )
    # llama-server reads each flag from LLAMA_ARG_* (common/arg.cpp, `set_env`).
    env = {
        "LLAMA_ARG_MODEL": posixpath.join(REPOSITORY_TARGET, model_path),
        "LLAMA_ARG_ALIAS": served_model_name,
        "LLAMA_ARG_HOST": "0.0.0.0",
        "LLAMA_ARG_PORT": str(port),
        "LLAMA_ARG_ENDPOINT_METRICS": "1",
    }
    for key, name, minimum in [
        ("ctxSize", "LLAMA_ARG_CTX_SIZE", 0),  # 0: the model's own context length
        ("nParallel", "LLAMA_ARG_N_PARALLEL", 1),
        ("threadsHttp", "LLAMA_ARG_THREADS_HTTP", 1),
        ("nGpuLayers", "LLAMA_ARG_N_GPU_LAYERS", 0),
    ]:
        value = options.integer(key, minimum)
        if value is not None:
            env[name] = str(value)
    if resources.gpu_count and "LLAMA_ARG_N_GPU_LAYERS" not in env:
        env["LLAMA_ARG_N_GPU_LAYERS"] = str(LLAMACPP_ALL_LAYERS)
    mmproj = options.relative_path("mmprojModelPath")
    if mmproj is not None:
        env["LLAMA_ARG_MMPROJ"] = posixpath.join(REPOSITORY_TARGET, mmproj)
    mode = options.text("mode")
    if mode is not None and mode not in LLAMACPP_MODES:
        raise PresetError(f"{options.path('mode')} {mode!r} is not one of {', '.join(LLAMACPP_MODES)}")
    if mode == "embedding":
        env["LLAMA_ARG_EMBEDDINGS"] = "1"
    pooling = options.text("pooling")
    if pooling is not None:
        env["LLAMA_ARG_POOLING"] = pooling
    return _Engine("llamacpp-gpu" if resources.gpu_count else "llamacpp", port, env=env,
                   reserved_env=LLAMACPP_RESERVED | {LLAMACPP_KEY_ENV}, key_env=LLAMACPP_KEY_ENV)


def _huggingface(
    options: _Options, port: int, served_model_name: str, resources: Resources, *,
    task: str | None = None, framework: str | None = None,
) -> _Engine:
    # endpointd's inference toolkit: loads /repository (its handler.py if there is one) and serves
    # POST / and GET /health. `env` is the FAQ's `image.huggingface.env`, applied like model.env.
    reserved = frozenset({TOOLKIT_MODEL_DIR_ENV, TOOLKIT_KEY_ENV})
    env = {TOOLKIT_MODEL_DIR_ENV: REPOSITORY_TARGET}
    for key, name, value in (("task", TOOLKIT_TASK_ENV, task), ("framework", TOOLKIT_FRAMEWORK_ENV, framework)):
        if value is None:
            continue
        if not isinstance(value, str) or not _NAME.match(value):
            raise PresetError(
                f"model.{key} must be a name of letters, digits and dashes (at most 64), "
                f"such as \"{'feature-extraction' if key == 'task' else 'pytorch'}\", got {value!r}"
            )
        env[name] = value.lower()  # the toolkit's (and Transformers') names are lowercase
    image_env = options.mapping("env") or {}
    _check_reserved(f"image.{options.variant}.env", image_env, reserved, options.variant)
    env.update(image_env)
    return _Engine("huggingface-gpu" if resources.gpu_count else "huggingface", port, env=env,
                   reserved_env=reserved, key_env=TOOLKIT_KEY_ENV)


def _is_echo(image: str) -> bool:
    """Whether the image is the project's echo engine (`endpointd/echo`, any tag or digest)."""
    repository = image.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return repository == ECHO_REPOSITORY


def reads_model(image: Mapping[str, Any]) -> bool:
    """False for an engine that serves no model files: the echo engine answers from the request
    alone. For it, a Hub repository is only a name: nothing is looked up, downloaded or mounted."""
    (variant, options), = image.items()
    url = options.get("url") if isinstance(options, Mapping) else None
    return not (variant == "custom" and isinstance(url, str) and _is_echo(url))


def _custom(options: _Options, port: int, served_model_name: str, resources: Resources) -> _Engine:
    url = options.text("url") or ""  # never empty: spec_rules.image requires it of a custom image
    # Any other image is the user's: endpointd cannot know whether or how it takes a key.
    key_env = ECHO_KEY_ENV if _is_echo(url) else None
    reserved = frozenset({key_env}) if key_env else frozenset()
    credentials = options.mapping("credentials")  # its username and password checked by spec_rules.image
    auth = None if credentials is None else RegistryAuth(credentials["username"], credentials.get("password"))
    env = options.mapping("env") or {}
    _check_reserved("image.custom.env", env, reserved, "custom")
    return _Engine(None, port, env=dict(env), needs_model=False, registry_auth=auth, reserved_env=reserved,
                   key_env=key_env)


@dataclass(frozen=True)
class _Preset:
    build: Callable[..., _Engine]  # (options, port, served_model_name, resources, **model_info)
    default_port: int
    keys: tuple[str, ...]  # the variant's own keys, besides url/port/healthRoute
    takes_model_info: bool = False  # build() also takes the endpoint's task= and framework=


PRESETS: Mapping[str, _Preset] = {
    "vLLM": _Preset(_vllm, 8000, (
        "tensorParallelSize", "dataParallelSize", "maxNumSeqs", "maxNumBatchedTokens", "kvCacheDtype")),
    "tgi": _Preset(_tgi, 80, (
        "maxInputLength", "maxTotalTokens", "maxBatchPrefillTokens", "maxBatchTotalTokens", "quantize",
        "disableCustomKernels")),
    "sGLang": _Preset(_sglang, 30000, (
        "tensorParallelSize", "maxRunningRequests", "maxPrefillTokens", "chunkedPrefillSize", "kvCacheDtype")),
    "llamacpp": _Preset(_llamacpp, 8080, (
        "modelPath", "ctxSize", "nParallel", "threadsHttp", "nGpuLayers", "mmprojModelPath", "mode", "pooling")),
    "tei": _Preset(_tei, 80, ("maxBatchTokens", "maxConcurrentRequests", "pooling")),
    "huggingface": _Preset(_huggingface, TOOLKIT_PORT, ("env",), takes_model_info=True),
    "hfServe": _Preset(_huggingface, TOOLKIT_PORT, ("env",), takes_model_info=True),
    "custom": _Preset(_custom, 80, ("credentials", "env")),  # env: as in the UI's exported payloads
}


def _check_reserved(name: str, values: Mapping[str, str], reserved: frozenset[str], variant: str) -> None:
    for key in values:
        if key in reserved:
            raise PresetError(
                f"model.{name} sets {key}, which the {variant} preset reserves; set it through "
                f"model.image.{variant} instead (reserved: {', '.join(sorted(reserved))})"
            )


def _able_to_sleep(
    engine: _Engine, variant: str, sleep_after_s: int, command: Sequence[str] | None, args: Sequence[str] | None,
    env: Mapping[str, str], secrets: Mapping[str, str],
) -> _Engine:
    """The engine with its sleep flags (_sleep_flags) added to the preset's own arguments and variables."""
    kind = _check_sleep_after(variant, sleep_after_s)
    if command is not None:
        raise PresetError(
            f"compute.scaling.sleepAfter needs the {variant} preset's own arguments (they turn sleeping on), "
            f"but model.command replaces them; remove model.command (model.args alone are added to them) "
            f"or compute.scaling.sleepAfter"
        )
    flags, flag_env = _sleep_flags(kind, sleep_after_s)
    for arg in args or ():
        if kind is SleepKind.LLAMACPP and isinstance(arg, str) and arg.split("=", 1)[0] == LLAMACPP_SLEEP_FLAG:
            raise PresetError(
                f"model.args sets {LLAMACPP_SLEEP_FLAG}, which endpointd sets from compute.scaling.sleepAfter; "
                f"remove the flag"
            )
    for source, values in (("env", env), ("secrets", secrets)):
        for key in flag_env:
            if key in values:
                raise PresetError(
                    f"model.{source} sets {key}, which endpointd sets to {flag_env[key]} when "
                    f"compute.scaling.sleepAfter is set (the engine serves its sleep routes only then); remove it"
                )
    return dataclasses.replace(
        engine, args=(*(engine.args or ()), *flags), env={**engine.env, **flag_env},
        reserved_env=engine.reserved_env | frozenset(flag_env),
    )


def declares_health_route(image: Mapping[str, Any]) -> bool:
    """Whether the replica's readiness is its health route answering 200. A custom image that
    names none is ready once its port accepts connections (the reference service treats it as
    ready at start): `readiness.wait_ready(..., tcp=True)`. Every preset's engine has /health."""
    if not isinstance(image, Mapping) or len(image) != 1:
        return True
    (variant, body), = image.items()
    if str(variant).lower() != "custom" or not isinstance(body, Mapping):
        return True
    return bool(body.get("healthRoute") or body.get("health_route"))


def build_container_spec(
    image: Mapping[str, Any],
    *,
    model_dir: str | None,
    served_model_name: str,
    resources: Resources,
    env: Mapping[str, str] = {},
    secrets: Mapping[str, str] = {},
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    default_images: Mapping[str, str] | None = None,
    api_key: str | None = None,
    task: str | None = None,
    framework: str | None = None,
    sleep_after_s: int | None = None,
) -> ContainerSpec:
    """The container for one replica of an endpoint whose `model.image` is `image`.

    `api_key`: the replica's engine API key, given to engines that take one (see the table at
    `VLLM_KEY_ENV`) and kept as `ContainerSpec.api_key`; that is None when the engine got none
    (it takes none, or takes it only as a flag and `command` replaced the preset's arguments).

    `task` and `framework`: the endpoint's model.task and model.framework, which the inference
    toolkit (`huggingface`) is given as HF_TASK and HF_FRAMEWORK; other engines ignore them.

    `sleep_after_s`: the endpoint's compute.scaling.sleepAfter (seconds, 1 to 86400), or None. Set,
    the engine is started able to sleep (see _sleep_flags); PresetError for an engine that cannot
    (only vLLM, SGLang and llama.cpp can), and when `command` replaces the preset's arguments,
    which carry the flags."""
    name, body = spec_rules.image(image)
    options = _Options(name, body)
    preset = PRESETS[name]

    url = options.text("url")
    port = options.integer("port", minimum=1) or preset.default_port
    if port > 65535:
        raise PresetError(f"{options.path('port')} must be a TCP port, 1 to 65535, got {port}")
    # "" for a custom image that names no health route: ready, and alive, while its port accepts
    # connections (the container's label keeps that, so an adopted replica is checked the same way).
    health_route = options.text("healthRoute") or options.text("health_route") or (
        "/health" if declares_health_route(image) else "")

    model_info = {"task": task, "framework": framework} if preset.takes_model_info else {}
    engine = preset.build(options, port, served_model_name, resources, **model_info)
    unknown = [key for key in options.leftover() if key not in preset.keys + _COMMON_KEYS]
    if unknown:
        raise PresetError(
            f"model.image.{name} has unknown keys {', '.join(unknown)}; it takes "
            f"{', '.join(preset.keys + _COMMON_KEYS[:3])}"
        )

    images = dict(DEFAULT_IMAGES)
    if default_images:
        bad = sorted(set(default_images) - set(DEFAULT_IMAGES))
        if bad:
            raise PresetError(f"default_images has unknown keys {', '.join(bad)}; known: {', '.join(DEFAULT_IMAGES)}")
        images.update(default_images)

    if engine.needs_model and model_dir is None:
        raise PresetError(f"the {name} preset serves the model's files, but none were fetched (model_dir is None)")
    if model_dir is not None and not model_dir.startswith("/"):
        raise PresetError(f"model_dir must be an absolute host path, got {model_dir!r}")
    if len(resources.gpu_device_ids) != resources.gpu_count:
        raise PresetError(
            f"the replica needs {resources.gpu_count} GPUs but has {len(resources.gpu_device_ids)} device ids "
            f"assigned; assign them with GpuAllocator before building its container"
        )

    env, secrets = spec_rules.env(env, "model.env"), spec_rules.env(secrets, "model.secrets", secret=True)
    if sleep_after_s is not None:
        engine = _able_to_sleep(engine, name, sleep_after_s, command, args, env, secrets)
    _check_reserved("env", env, engine.reserved_env, name)
    _check_reserved("secrets", secrets, engine.reserved_env, name)
    spec_rules.disjoint(env, secrets)
    merged_env = {**engine.env, **env}
    for key in secrets:  # a secret replaces the preset's value and never sits in the plain env
        merged_env.pop(key, None)

    if engine.key_env or engine.key_flag:
        for arg in args or ():
            if isinstance(arg, str) and arg.split("=", 1)[0] in KEY_FLAGS:
                raise PresetError(
                    f"model.args sets {arg.split('=', 1)[0]}: endpointd gives each replica a key of its own "
                    f"(and the proxy sends it); remove the flag"
                )
    secret_env = dict(secrets)
    entrypoint: tuple[str, ...] | None
    final_args: tuple[str, ...] | None
    if command is not None:
        entrypoint, final_args = tuple(command), tuple(args or ())
    else:
        entrypoint = engine.entrypoint
        final_args = engine.args if args is None else (*(engine.args or ()), *args)
    given_key = None
    if api_key is not None and engine.key_env:
        secret_env[engine.key_env] = api_key
        given_key = api_key
    elif api_key is not None and engine.key_flag and command is None:
        final_args = (*(final_args or ()), engine.key_flag, api_key)  # last: the parser keeps the last value
        given_key = api_key

    if url is None:
        # Only the custom preset has no image key, and spec_rules.image requires its url.
        assert engine.image_key is not None
        url = images[engine.image_key]
    return ContainerSpec(
        image=url,
        port=port,
        health_route=health_route,
        entrypoint=entrypoint,
        args=final_args,
        env=merged_env,
        secret_env=secret_env,
        mounts=repository_mounts(model_dir) if model_dir is not None else (),
        shm_size_bytes=engine.shm_size_bytes,
        cpus=resources.cpus,
        memory_bytes=resources.memory_bytes,
        gpu_device_ids=resources.gpu_device_ids,
        registry_auth=engine.registry_auth,
        api_key=given_key,
    )
