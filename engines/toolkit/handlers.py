"""Loading what serves a repository, as huggingface-inference-toolkit does: the repository's own
`handler.py` (`EndpointHandler(path)`, called with the request's body), a Sentence-Transformers
model, or a Transformers `pipeline` for the task. Each handler is a callable `data -> JSON value`
that runs in a worker thread (torch releases the GIL while it computes).

torch, transformers and sentence-transformers are imported here, lazily: tasks.py and server.py
stay importable without them (the unit tests run on the host's venv).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .tasks import FEATURE_EXTRACTION, Backend, BadRequest, Plan, ToolkitError, text_inputs

log = logging.getLogger("toolkit")

Handler = Callable[[Mapping[str, Any]], Any]

# Inputs per request for the text tasks: a bound on one request's work and memory.
MAX_BATCH = 256
# A repository's requirements.txt is installed at start; an index that is unreachable (no
# network on the endpoint, or a proxy) must not hold the start for ever.
REQUIREMENTS_TIMEOUT_S = 600
# Parameters taken by SentenceTransformer.encode, by their wire name.
ENCODE_PARAMETERS = {"normalize": "normalize_embeddings", "prompt_name": "prompt_name", "batch_size": "batch_size",
                     "dimensions": "truncate_dim"}


# Where the container's CPU limit (Docker's NanoCpus, the instance's vCPUs) is: cgroup v2, then v1.
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cpu_limit(v2: Path = CGROUP_V2_CPU_MAX, quota: Path = CGROUP_V1_QUOTA, period: Path = CGROUP_V1_PERIOD) -> int | None:
    """The CPUs the container may use (its quota, rounded up), or None when unlimited or unknown."""
    try:
        if v2.is_file():
            limit, _, length = v2.read_text().strip().partition(" ")
            return None if limit == "max" else max(1, -(-int(limit) // int(length or "100000")))
        if quota.is_file() and period.is_file():
            q, p = int(quota.read_text()), int(period.read_text())
            return None if q <= 0 or p <= 0 else max(1, -(-q // p))
    except (OSError, ValueError):
        return None
    return None


def device() -> str:
    """"cuda" when a GPU is visible (the replica was given one), else "cpu". On the CPU, torch's
    threads follow the container's CPU limit: by default torch starts one per core of the host,
    which a 2-CPU replica on a 64-core host would spend switching between them."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    limit = cpu_limit()
    if limit is not None and limit < torch.get_num_threads():
        torch.set_num_threads(limit)
    return "cpu"


def jsonable(value: Any) -> Any:
    """A pipeline's output as JSON: numpy and torch values become lists and numbers."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def install_requirements(repository: Path, timeout_s: float = REQUIREMENTS_TIMEOUT_S) -> bool:
    """`pip install -r requirements.txt` when the repository has one. A failure (no index
    reachable, a conflict) is logged and the start goes on: the handler's import then says what is
    missing, if anything is. Requirements already satisfied need no network."""
    requirements = repository / "requirements.txt"
    if not requirements.is_file():
        return True
    log.info("installing %s", requirements)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-input", "-r", str(requirements)],
            capture_output=True, text=True, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        log.warning("pip install -r %s took over %g s; going on without it", requirements, timeout_s)
        return False
    for line in (result.stdout + result.stderr).splitlines()[-10:]:
        log.info("pip: %s", line)
    if result.returncode != 0:
        log.warning("pip install -r %s failed (exit code %d); going on without it", requirements, result.returncode)
        return False
    return True


def custom_handler(repository: Path, handler_file: str) -> Handler:
    """The repository's `EndpointHandler(path=...)`, called with the whole request body."""
    install_requirements(repository)
    path = repository / handler_file
    sys.path.insert(0, str(repository))  # the handler may import its sibling modules
    spec = importlib.util.spec_from_file_location("handler", path)
    if spec is None or spec.loader is None:
        raise ToolkitError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler_class = getattr(module, "EndpointHandler", None)
    if handler_class is None:
        raise ToolkitError(f"{path} defines no EndpointHandler class (see \"Create your own Inference handler\")")
    instance = handler_class(path=str(repository))
    if not callable(instance):
        raise ToolkitError(f"{path}: EndpointHandler has no __call__(self, data)")
    return lambda data: jsonable(instance(dict(data)))


def _encode_options(parameters: Mapping[str, Any], dimension: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in parameters.items():
        if name in ("truncate", "truncation_direction"):
            continue  # Sentence-Transformers always truncates at the model's max_seq_length
        if name == "encoding_format":
            if value != "float":
                raise BadRequest(f"parameter encoding_format must be \"float\" (JSON numbers), got {value!r}")
            continue
        if name == "dimensions" and (isinstance(value, bool) or not isinstance(value, int)
                                     or not 1 <= value <= (dimension or value)):
            raise BadRequest(f"parameter dimensions must be an integer from 1 to {dimension}, got {value!r}")
        if name not in ENCODE_PARAMETERS:
            raise BadRequest(f"unknown parameter {name!r}; this task takes {', '.join(sorted(ENCODE_PARAMETERS))}")
        if name == "normalize" and not isinstance(value, bool):
            raise BadRequest(f"parameter normalize must be true or false, got {value!r}")
        if name == "batch_size" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH):
            raise BadRequest(f"parameter batch_size must be an integer from 1 to {MAX_BATCH}, got {value!r}")
        if name == "prompt_name" and not isinstance(value, str):
            raise BadRequest(f"parameter prompt_name must be a string, got {value!r}")
        options[ENCODE_PARAMETERS[name]] = value
    return options


def sentence_transformers_handler(repository: Path, task: str) -> Handler:
    """The reference's Sentence-Transformers tasks, plus feature-extraction (one vector per input)."""
    on = device()
    if task == "sentence-ranking":
        from sentence_transformers import CrossEncoder

        ranker = CrossEncoder(str(repository), device=on)

        def rank(data: Mapping[str, Any]) -> Any:
            pairs = data.get("inputs")
            if isinstance(pairs, list) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
                pairs = [pairs]
            if (not isinstance(pairs, list) or not pairs or len(pairs) > MAX_BATCH
                    or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs)):
                raise BadRequest(f'sentence-ranking takes "inputs" as [query, text] pairs, at most {MAX_BATCH}')
            return {"scores": jsonable(ranker.predict(pairs))}

        return rank

    from sentence_transformers import SentenceTransformer, util

    model = SentenceTransformer(str(repository), device=on, local_files_only=True)
    dimension = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()

    def similarity(data: Mapping[str, Any]) -> Any:
        inputs = data.get("inputs")
        if not isinstance(inputs, Mapping) or not isinstance(inputs.get("source_sentence"), str):
            raise BadRequest('sentence-similarity takes "inputs": {"source_sentence": "...", "sentences": ["...", ...]}')
        sentences = text_inputs(inputs.get("sentences"), task, MAX_BATCH)
        source = model.encode(inputs["source_sentence"], convert_to_tensor=True, show_progress_bar=False)
        others = model.encode(sentences if isinstance(sentences, list) else [sentences], convert_to_tensor=True,
                              show_progress_bar=False)
        return {"similarities": jsonable(util.cos_sim(source, others)[0])}

    def embed(data: Mapping[str, Any]) -> Any:
        inputs = text_inputs(data.get("inputs"), task, MAX_BATCH)
        options = _encode_options(data.get("parameters") or {}, dimension)
        vectors = jsonable(model.encode(inputs, show_progress_bar=False, **options))
        return vectors if task == FEATURE_EXTRACTION else {"embeddings": vectors}

    def vectors_and_tokens(texts: list[str], dimensions: int | None) -> tuple[list[list[float]], int]:
        """One vector per text, and the tokens the model read (OpenAI's `usage`), for /v1/embeddings."""
        options = _encode_options({"dimensions": dimensions} if dimensions is not None else {}, dimension)
        vectors = jsonable(model.encode(texts, show_progress_bar=False, **options))
        tokens = model.tokenize(texts)["attention_mask"].sum().item()
        return vectors, int(tokens)

    if task == "sentence-similarity":
        return similarity
    embed.vectors_and_tokens = vectors_and_tokens  # type: ignore[attr-defined]
    return embed


def pipeline_handler(repository: Path, task: str) -> Handler:
    """`transformers.pipeline(task, model=repository)`, called as `pipe(inputs, **parameters)`."""
    import torch
    from transformers import pipeline

    on = device()
    pipe = pipeline(task, model=str(repository), device=on, dtype=torch.float16 if on == "cuda" else None)

    def predict(data: Mapping[str, Any]) -> Any:
        inputs = data.get("inputs")
        if inputs is None or inputs == "" or inputs == []:
            raise BadRequest(f'{task} needs "inputs"')
        if isinstance(inputs, list) and len(inputs) > MAX_BATCH:
            raise BadRequest(f"{task} takes at most {MAX_BATCH} inputs per request, got {len(inputs)}")
        return jsonable(pipe(inputs, **dict(data.get("parameters") or {})))

    return predict


def load(repository: Path, chosen: Plan, handler_file: str) -> Handler:
    """The handler for the plan (tasks.plan); exceptions of the libraries propagate with their reason."""
    log.info("loading %s for task %s with %s on %s", repository, chosen.task, chosen.backend, device())
    if chosen.backend is Backend.CUSTOM:
        return custom_handler(repository, handler_file)
    if chosen.backend is Backend.SENTENCE_TRANSFORMERS:
        return sentence_transformers_handler(repository, chosen.task)
    return pipeline_handler(repository, chosen.task)
