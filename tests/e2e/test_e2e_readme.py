"""The README's code, run as a new user would paste it, against a real `endpointd serve`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_process import Serve

pytestmark = pytest.mark.docker
README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_URL = "http://127.0.0.1:8080"


def hf_snippet() -> str:
    """The Python block right after 'Point the `huggingface_hub` client at endpointd'."""
    text = README.read_text()
    start = text.index("Point the `huggingface_hub` client at endpointd")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None, "the README has no Python block after the hf client's set-up sentence"
    return match.group(1)


def test_the_readme_hf_snippet_points_the_client_at_endpointd(tmp_path, docker_engine):
    serve = Serve(tmp_path / "data", admin_token="test-admin-token")
    serve.start()
    try:
        snippet = hf_snippet()
        assert DEFAULT_URL in snippet
        # As pasted, then the first call a user makes; only the port differs from the README's.
        code = snippet.replace(DEFAULT_URL, serve.url) + (
            "\nfrom huggingface_hub import HfApi\n"
            "print('endpoints:', [e.name for e in HfApi().list_inference_endpoints()])\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "ENDPOINTD_"))}
        env["HF_TOKEN"] = serve.admin_token
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "endpoints: []"
    finally:
        serve.close()
