"""OpenAI's embeddings route (`POST /v1/embeddings`) over a Sentence-Transformers model, so the
`openai` client's `embeddings.create` works against a toolkit endpoint as it does against TEI or
vLLM. Parsing and rendering only: the vectors come from the loaded handler.

The `openai` client asks for `encoding_format: "base64"` unless told otherwise: little-endian
float32 values, base64-encoded, one string per input."""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tasks import BadRequest

EMBEDDING_TASKS = ("sentence-embeddings", "feature-extraction")
FORMATS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: list[str]
    model: str
    encoding_format: str
    dimensions: int | None


def parse(body: Any, max_inputs: int) -> EmbeddingsRequest:
    if not isinstance(body, Mapping):
        raise BadRequest('send {"input": "text" or ["text", ...], "model": "..."}')
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if (not isinstance(texts, list) or not texts or len(texts) > max_inputs
            or not all(isinstance(t, str) and t for t in texts)):
        raise BadRequest(f'"input" must be a non-empty string or a list of 1 to {max_inputs} non-empty strings '
                         "(token arrays are not taken)")
    encoding = body.get("encoding_format") or "float"
    if encoding not in FORMATS:
        raise BadRequest(f'"encoding_format" must be "float" or "base64", got {encoding!r}')
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise BadRequest(f'"dimensions" must be a positive integer, got {dimensions!r}')
    model = body.get("model")
    return EmbeddingsRequest(texts, model if isinstance(model, str) else "", encoding, dimensions)


def _encode(vector: Sequence[float], encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return list(vector)


def render(request: EmbeddingsRequest, vectors: Sequence[Sequence[float]], tokens: int, model: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, request.encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": request.model or model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
