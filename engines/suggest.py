"""Which engine to run a repository with: a suggestion, as the reference's UI makes one. The first
rule that matches wins:

  1. a `handler.py` at the root                      → the inference toolkit (`huggingface`): it runs it;
  2. GGUF files                                      → `llamacpp`, serving the file `pick_gguf` chooses;
  3. a sentence-transformers or embedding model      → `tei`;
  4. a text-generation model of an architecture vLLM supports, on a GPU instance → `vLLM`;
  5. anything else                                   → the inference toolkit (`huggingface`).

What this host can run comes first: an engine in `cannot_run` (its image is not here and cannot
be pulled: engines/availability.py) is passed over where the toolkit also serves the model (TEI's
embeddings as the toolkit's `feature-extraction`, vLLM's text generation), with the reason said.

A pure function of `RepoFacts` (engines/artifacts.py) and what the caller found: no network, no Docker.

Errors:
    SuggestError   a parameter cannot be honoured (a `gguf` the repository does not have)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from engines.artifacts import SPLIT_GGUF, RepoFacts
from engines.errors import EndpointdError

# The GGUF quantization chosen when none is asked for: Q4_K_M is what llama.cpp's own docs and the
# reference's catalog default to (a good size/quality trade-off). Without one, the smallest file.
PREFERRED_QUANT = "Q4_K_M"

# Architectures (config.json `architectures`) vLLM serves, from its "Supported Models" list
# (docs.vllm.ai, text generation). Not exhaustive: others fall to the toolkit, which runs them too.
VLLM_ARCHITECTURES = frozenset({
    "AquilaForCausalLM", "ArcticForCausalLM", "BaiChuanForCausalLM", "BaichuanForCausalLM", "BloomForCausalLM",
    "ChatGLMModel", "CohereForCausalLM", "Cohere2ForCausalLM", "DbrxForCausalLM", "DeciLMForCausalLM",
    "DeepseekForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "ExaoneForCausalLM",
    "FalconForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GlmForCausalLM",
    "GPT2LMHeadModel", "GPTBigCodeForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM", "GraniteForCausalLM",
    "GraniteMoeForCausalLM", "InternLMForCausalLM", "InternLM2ForCausalLM", "JAISLMHeadModel", "JambaForCausalLM",
    "LlamaForCausalLM", "MambaForCausalLM", "MiniCPMForCausalLM", "MiniCPM3ForCausalLM", "MistralForCausalLM",
    "MixtralForCausalLM", "MPTForCausalLM", "NemotronForCausalLM", "OLMoForCausalLM", "OLMo2ForCausalLM",
    "OLMoEForCausalLM", "OPTForCausalLM", "OrionForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM",
    "PhiMoEForCausalLM", "PersimmonForCausalLM", "QWenLMHeadModel", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "StableLmForCausalLM", "Starcoder2ForCausalLM",
    "SolarForCausalLM", "XverseForCausalLM", "GptOssForCausalLM",
})
TEXT_GENERATION_TAGS = frozenset({"text-generation", "text2text-generation", "conversational"})
EMBEDDING_TAGS = frozenset({"feature-extraction", "sentence-similarity", "text-embeddings-inference"})
# Files sentence-transformers writes beside a model it saved.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
MMPROJ = re.compile(r"(^|/)mmproj[^/]*\.gguf$", re.IGNORECASE)


class SuggestError(EndpointdError, ValueError):
    """The suggestion cannot honour a parameter; the message says what to send instead."""

    status = 400


@dataclass(frozen=True)
class Suggestion:
    image: Mapping[str, Any]  # {variant: settings}: what `model.image` takes
    task: str | None
    framework: str
    reason: str  # which rule chose it, in a sentence
    ggufs: tuple[str, ...] = field(default=())  # the GGUF files to choose among (llamacpp)

    @property
    def variant(self) -> str:
        return next(iter(self.image))


def gguf_files(facts: RepoFacts) -> list[str]:
    """The servable GGUF files: every `.gguf` but projectors (mmproj) and the parts after the first of
    a split file (llama.cpp loads the others from the first)."""
    out = []
    for name in sorted(facts.files):
        if not name.lower().endswith(".gguf") or MMPROJ.search(name):
            continue
        split = SPLIT_GGUF.fullmatch(name)
        if split and int(split["part"]) != 1:
            continue
        out.append(name)
    return out


def _size(facts: RepoFacts, name: str) -> int:
    """A split file's size is its parts' together; an unknown size sorts last."""
    split = SPLIT_GGUF.fullmatch(name)
    if split is None:
        size = facts.files.get(name)
        return size if size is not None else 1 << 62
    parts = [n for n in facts.files if (m := SPLIT_GGUF.fullmatch(n)) and m["stem"] == split["stem"]]
    sizes = [size for n in parts if (size := facts.files.get(n)) is not None]
    return sum(sizes) if len(sizes) == len(parts) else 1 << 62


def pick_gguf(facts: RepoFacts, asked: str | None = None) -> str:
    """`asked` when the repository has it; else the file with Q4_K_M in its name (the smallest such);
    else the smallest GGUF file (names break ties)."""
    files = gguf_files(facts)
    if asked is not None:
        if asked not in facts.files or not asked.lower().endswith(".gguf"):
            raise SuggestError(
                f"gguf {asked!r} is not a GGUF file of {facts.repository}; it has: {', '.join(files) or 'none'}")
        return asked
    preferred = [f for f in files if PREFERRED_QUANT.lower() in PurePosixPath(f).name.lower()]
    return min(preferred or files, key=lambda name: (_size(facts, name), name))


def _mmproj(facts: RepoFacts) -> str | None:
    projectors = sorted((n for n in facts.files if MMPROJ.search(n)), key=lambda n: (_size(facts, n), n))
    return projectors[0] if projectors else None


def _is_embedding(facts: RepoFacts) -> bool:
    return (
        facts.library == "sentence-transformers" or "sentence-transformers" in facts.tags
        or bool(EMBEDDING_TAGS & ({facts.pipeline_tag} | facts.tags))
        or any(name in facts.files for name in SENTENCE_TRANSFORMERS_FILES)
    )


def architectures(facts: RepoFacts) -> list[str]:
    value = facts.config.get("architectures")
    return [a for a in value if isinstance(a, str)] if isinstance(value, list) else []


def _is_text_generation(facts: RepoFacts) -> bool:
    if facts.pipeline_tag is not None:
        return facts.pipeline_tag in TEXT_GENERATION_TAGS
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures(facts))


def framework_of(facts: RepoFacts) -> str:
    """The framework whose weights the repository has: PyTorch when it has them (the reference's
    default, "PyTorch if available"), else TensorFlow, ONNX, JAX; `custom` when none of them."""
    suffixes = {PurePosixPath(name).suffix.lower() for name in facts.files}
    for framework, found in (("pytorch", {".safetensors", ".bin", ".pt", ".pth"}), ("tensorflow", {".h5"}),
                             ("onnx", {".onnx"}), ("jax", {".msgpack"})):
        if suffixes & found:
            return framework
    return "custom"


# Engines the toolkit can stand in for when their image cannot run here.
REPLACEABLE = ("tei", "vLLM")
# The toolkit's task for an embedding model: one pooled vector per input, what TEI answers, and what
# huggingface_hub's `InferenceClient.feature_extraction` reads.
TOOLKIT_EMBEDDING_TASK = "feature-extraction"


def suggest(facts: RepoFacts, accelerator: str, gguf: str | None = None,
            cannot_run: Mapping[str, str] | None = None) -> Suggestion:
    """The engine for `facts` on an `accelerator` ("cpu" or "gpu") instance, by the rules above;
    `cannot_run`: variant -> why its image cannot run on this host."""
    cannot_run = cannot_run or {}
    framework = framework_of(facts)
    task = facts.pipeline_tag
    if "handler.py" in facts.files:
        return Suggestion({"huggingface": {}}, task, "custom",
                          "the repository has a handler.py, which the inference toolkit runs")
    ggufs = gguf_files(facts)
    if ggufs or gguf is not None:
        chosen = pick_gguf(facts, gguf)
        settings: dict[str, Any] = {"modelPath": chosen}
        projector = _mmproj(facts)
        if projector is not None:
            settings["mmprojModelPath"] = projector
        if _is_embedding(facts):
            settings["mode"] = "embedding"
        how = ("as asked" if gguf is not None else
               f"the {PREFERRED_QUANT} quantization" if PREFERRED_QUANT.lower() in chosen.lower() else "the smallest")
        return Suggestion({"llamacpp": settings}, task or "text-generation", "custom",
                          f"the repository has GGUF files: llama.cpp serves {chosen} ({how}; pass gguf= to choose "
                          f"another)", tuple(ggufs))
    if _is_embedding(facts):
        if "tei" in cannot_run:
            return Suggestion({"huggingface": {}}, TOOLKIT_EMBEDDING_TASK, framework,
                              f"a sentence-transformers / embedding model; Text Embeddings Inference cannot run on "
                              f"this host ({cannot_run['tei']}): the inference toolkit serves it as "
                              f"{TOOLKIT_EMBEDDING_TASK}, one vector per input")
        return Suggestion({"tei": {}}, task or "sentence-embeddings", framework,
                          "a sentence-transformers / embedding model: Text Embeddings Inference serves it")
    if _is_text_generation(facts):
        supported = [a for a in architectures(facts) if a in VLLM_ARCHITECTURES]
        if supported and accelerator == "gpu" and "vLLM" in cannot_run:
            return Suggestion({"huggingface": {}}, task or "text-generation", framework,
                              f"a text-generation model of an architecture vLLM supports ({supported[0]}), but vLLM "
                              f"cannot run on this host ({cannot_run['vLLM']}): the inference toolkit serves it")
        if supported and accelerator == "gpu":
            return Suggestion({"vLLM": {}}, task or "text-generation", framework,
                              f"a text-generation model of an architecture vLLM supports ({supported[0]}) on a GPU")
        why = ("vLLM needs a GPU instance" if supported else
               f"its architecture ({', '.join(architectures(facts)) or 'unknown'}) is not in vLLM's supported list")
        return Suggestion({"huggingface": {}}, task or "text-generation", framework,
                          f"a text-generation model, but {why}: the inference toolkit serves it")
    return Suggestion({"huggingface": {}}, task, framework,
                      "no specialised engine fits: the inference toolkit serves it with a Transformers pipeline")
