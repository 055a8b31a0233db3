"""The reference's own tutorials, run as written against endpointd (tests/tutorials/ holds their
code, changing only the URL, the token and the model name): the chat application's six chat
functions on SmolLM2 served by llama.cpp, and the embedding pipeline's function on MiniLM served
by the default engine (endpointd's inference toolkit)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from tests.e2e.test_e2e_llamacpp import create as create_smollm2  # noqa: F401 - fixture
from tests.e2e.test_e2e_llamacpp import require_llamacpp_image, serve  # noqa: F401 - fixtures
from tests.e2e.test_e2e_toolkit import MINILM_DIM, minilm_files, require_toolkit_image
from tests.e2e.test_e2e_toolkit import create as create_toolkit
from tests.serve_process import Serve

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
CHAT_FUNCTIONS = ("chat_with_hf_client", "chat_with_openai", "chat_with_requests")
STREAMING_FUNCTIONS = ("chat_with_hf_streaming", "chat_with_streaming", "chat_with_requests_streaming")


def run_tutorial(module: str, code: str, serve: Serve, endpoint) -> object:
    """`code` run after importing tests.tutorials.<module> with the endpoint's URL, a token and
    its name in the environment; it prints one JSON value."""
    env = {**os.environ, "ENDPOINT_URL": endpoint.url, "ENDPOINT_NAME": endpoint.name, "HF_TOKEN": serve.alice,
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", f"from tests.tutorials.{module} import *\n{code}"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_chat_application_tutorial_runs_as_written(serve):
    endpoint = create_smollm2(serve, "chat-bot")
    history = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi! How can I help?"}]
    code = (
        "import json\n"
        f"history = {history!r}\n"
        f"plain = {{name: globals()[name]('What color is the sky on a clear day?', history) for name in {CHAT_FUNCTIONS!r}}}\n"
        f"streamed = {{name: list(globals()[name]('What color is the sky on a clear day?', history)) for name in {STREAMING_FUNCTIONS!r}}}\n"
        "print(json.dumps({'plain': plain, 'streamed': streamed}))\n"
    )
    answers = run_tutorial("chat_bot", code, serve, endpoint)
    for name, text in answers["plain"].items():
        assert isinstance(text, str) and text.strip(), (name, text)
    for name, partials in answers["streamed"].items():
        assert len(partials) > 1, (name, partials)  # the answer grew token by token
        assert all(later.startswith(earlier) for earlier, later in pairwise(partials)), name


def test_the_embedding_pipeline_tutorial_runs_as_written(serve):
    require_toolkit_image()
    model = Path(serve.model).parent / "tutorial-minilm"
    shutil.copytree(minilm_files(), model)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = create_toolkit(api, "embedding-pipeline", model, framework="pytorch", task="feature-extraction")
    endpoint.wait(timeout=300, refresh_every=1)
    contexts = ["Architecturally, the school has a Catholic character.", "The Basilica of the Sacred Heart."]
    code = f"import json\nprint(json.dumps(get_embeddings({{'context': {contexts!r}}})))\n"
    result = run_tutorial("embedding", code, serve, endpoint)
    vectors = result["embeddings"]
    assert len(vectors) == 2 and all(len(v) == MINILM_DIM for v in vectors)
    # The same vectors as the toolkit's own route gives for these texts (floats through base64).
    direct = endpoint.client.feature_extraction(contexts[0])
    assert max(abs(a - b) for a, b in zip(vectors[0], list(direct.reshape(-1)), strict=True)) < 1e-5
