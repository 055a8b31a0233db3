"""What the inference toolkit serves, decided from the repository's files alone (no torch here):
the task (HF_TASK, else derived as huggingface-inference-toolkit derives it), the backend that
serves it, and each request's `inputs`/`parameters`.

Errors:
    ToolkitError        the repository or the settings cannot be served; the message says what to fix
      BadRequest        one request is malformed (HTTP 400); the message says what to send instead
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

# huggingface-inference-toolkit's tasks served by Sentence-Transformers (its const.py and
# sentence_transformers_utils.py): embeddings, similarity, and ranking with a cross-encoder.
SENTENCE_TASKS = ("sentence-embeddings", "sentence-similarity", "sentence-ranking")
# Served by Sentence-Transformers too when the repository is a sentence-transformers one: one
# pooled vector per input (what TEI and the Hub's feature-extraction return), not token vectors.
FEATURE_EXTRACTION = "feature-extraction"
# Files that mark a sentence-transformers repository (SentenceTransformer.__init__ reads them).
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
# The reference derives a task from the model class's name in config.json ("architectures"):
# the first suffix that matches wins, so longer suffixes come first.
ARCHITECTURE_TASKS: tuple[tuple[str, str], ...] = (
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForSeq2SeqLM", "text2text-generation"),
    ("ForMaskedLM", "fill-mask"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForMultipleChoice", "zero-shot-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSemanticSegmentation", "image-segmentation"),
    ("ForAudioClassification", "audio-classification"),
    ("ForDepthEstimation", "depth-estimation"),
    ("Model", "feature-extraction"),
)
# The files read to decide: small JSON and a README's front matter, never weights.
CONFIG_MAX_BYTES = 4 * 1024 * 1024
README_MAX_BYTES = 256 * 1024
TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
FRONT_MATTER_TAG = re.compile(r"^pipeline_tag:\s*['\"]?([a-z0-9-]+)['\"]?\s*$", re.MULTILINE)
# The reference's name for the custom handler's file (HF_DEFAULT_PIPELINE_NAME).
HANDLER_FILE = "handler.py"


class ToolkitError(Exception):
    """The repository or the toolkit's settings cannot be served; the message says what to fix."""


class BadRequest(ToolkitError):
    """One request is malformed (HTTP 400)."""


class Backend(StrEnum):
    CUSTOM = "custom"  # the repository's handler.py
    SENTENCE_TRANSFORMERS = "sentence-transformers"
    PIPELINE = "pipeline"  # transformers.pipeline(task)


@dataclass(frozen=True)
class Plan:
    task: str
    backend: Backend


def _read_json(path: Path) -> Mapping[str, Any] | None:
    if not path.is_file():
        return None
    if path.stat().st_size > CONFIG_MAX_BYTES:
        raise ToolkitError(f"{path} is larger than {CONFIG_MAX_BYTES} bytes: not a model config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ToolkitError(f"{path} is not valid JSON: {error}") from None
    return data if isinstance(data, Mapping) else None


def is_sentence_transformers(repository: Path) -> bool:
    return any((repository / name).is_file() for name in SENTENCE_TRANSFORMERS_FILES)


def readme_pipeline_tag(repository: Path) -> str | None:
    """The model card's `pipeline_tag` (its YAML front matter), as the Hub shows it."""
    readme = repository / "README.md"
    if not readme.is_file():
        return None
    with readme.open("rb") as file:
        text = file.read(README_MAX_BYTES).decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    match = FRONT_MATTER_TAG.search(text[3:end if end != -1 else len(text)])
    return match.group(1) if match else None


def task_from_architecture(config: Mapping[str, Any]) -> str | None:
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        return None
    for suffix, task in ARCHITECTURE_TASKS:
        if architectures[0].endswith(suffix):
            return task
    return None


def derive_task(repository: Path) -> str:
    """The task of a repository given no HF_TASK: a sentence-transformers repository's is
    sentence-embeddings; else its model card's pipeline_tag; else its config's architecture."""
    if is_sentence_transformers(repository):
        return "sentence-embeddings"
    tag = readme_pipeline_tag(repository)
    if tag is not None:
        return tag
    config = _read_json(repository / "config.json")
    task = task_from_architecture(config) if config is not None else None
    if task is None:
        raise ToolkitError(
            f"cannot tell the task of {repository}: it has no sentence-transformers files, no pipeline_tag in "
            f"README.md and no known architecture in config.json; set the endpoint's task (HF_TASK), "
            f"e.g. \"text-classification\""
        )
    return task


def plan(repository: Path, task: str | None, handler_file: str = HANDLER_FILE) -> Plan:
    """The task and the backend that serves `repository` (a custom handler.py always wins, as in
    the reference, whatever the task)."""
    if task is not None and not TASK_NAME.match(task):
        raise ToolkitError(f"HF_TASK {task!r} is not a task name such as \"feature-extraction\"")
    if not repository.is_dir():
        raise ToolkitError(f"the repository {repository} is not a directory: mount the model there (HF_MODEL_DIR)")
    if (repository / handler_file).is_file():
        return Plan(task or "custom", Backend.CUSTOM)
    task = task or derive_task(repository)
    if task in SENTENCE_TASKS or (task == FEATURE_EXTRACTION and is_sentence_transformers(repository)):
        return Plan(task, Backend.SENTENCE_TRANSFORMERS)
    return Plan(task, Backend.PIPELINE)


# Keys a client may put beside "inputs" (huggingface_hub sends feature-extraction's at the root,
# TEI's way); they join the parameters.
ROOT_PARAMETERS = frozenset({
    "normalize", "prompt_name", "truncate", "truncation_direction", "dimensions", "encoding_format",
})


def parse_request(body: Any) -> tuple[Any, dict[str, Any]]:
    """`inputs` and `parameters` of a decoded JSON body; BadRequest says what is missing."""
    if not isinstance(body, Mapping):
        raise BadRequest('the body must be a JSON object such as {"inputs": "Hello", "parameters": {}}')
    if "inputs" not in body:
        raise BadRequest('the body has no "inputs": send {"inputs": ..., "parameters": {...}}')
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise BadRequest(f'"parameters" must be an object, got {type(parameters).__name__}')
    unknown = sorted(set(body) - {"inputs", "parameters"} - ROOT_PARAMETERS)
    if unknown:
        raise BadRequest(f"unknown keys {', '.join(unknown)}: the body takes inputs, parameters"
                         f" (and {', '.join(sorted(ROOT_PARAMETERS))})")
    merged = {key: body[key] for key in ROOT_PARAMETERS if body.get(key) is not None}
    merged.update(parameters)
    return body["inputs"], merged


def text_inputs(inputs: Any, task: str, max_items: int) -> str | list[str]:
    """A string or a non-empty list of at most `max_items` strings, else BadRequest."""
    if isinstance(inputs, str):
        return inputs
    if isinstance(inputs, list) and inputs and all(isinstance(item, str) for item in inputs):
        if len(inputs) > max_items:
            raise BadRequest(f"{task} takes at most {max_items} inputs per request, got {len(inputs)}")
        return inputs
    raise BadRequest(f'{task} takes "inputs" as a string or a list of strings, got {type(inputs).__name__}')
