"""schemathesis over the management API's own OpenAPI document, against `endpointd serve` on the
real Docker engine: a few hundred generated requests with a fixed seed, as an admin, bounded in
count and time. Zero server errors, zero dropped connections, no traceback in the log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_process import Serve

pytestmark = pytest.mark.docker
SCHEMATHESIS = str(Path(sys.executable).with_name("st"))
EXAMPLES_PER_OPERATION = 40  # 10 operations, four phases: about 800 requests in all
SEED = 20261202


# Real names for the path parameters, so that generated requests reach an existing endpoint (and
# its lifecycle) instead of 404s; the bodies stay generated.
CONFIG = """
[parameters]
"path.ns" = "alice"
"path.name" = "fuzzed"
"""


def test_generated_requests_find_no_server_error(tmp_path, docker_engine):
    s = Serve(tmp_path / "data", admin_token="fuzz-admin-token")
    s.cli("users", "add", "alice", "--org", "acme")
    s.start()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    import huggingface_hub.constants as hub_constants
    from huggingface_hub import HfApi

    hub_constants.INFERENCE_ENDPOINTS_ENDPOINT = f"{s.url}/v2"
    HfApi(endpoint=s.url, token=s.admin_token).create_inference_endpoint(
        "fuzzed", namespace="alice", repository=s.model, framework="custom", accelerator="cpu",
        instance_size="x1", instance_type="intel-icl", region="local", vendor="local", min_replica=0,
        max_replica=1, scale_to_zero_timeout=15, custom_image={"url": "endpointd/echo:latest"},
    )
    try:
        run = subprocess.run(
            [SCHEMATHESIS, "--config-file", str(config), "run", f"{s.url}/v2/openapi.json", "--url", s.url,
             "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES_PER_OPERATION),
             # The logs' SSE stream lasts until its client leaves: each case would cost the whole
             # request timeout (most of the run). Its parameters are the plain logs route's, fuzzed.
             "--exclude-path-regex", "/logs/sse$",
             "--seed", str(SEED), "--generation-deterministic", "--workers", "1", "--request-timeout", "30",
             "-H", f"Authorization: Bearer {s.admin_token}", "--no-color"],
            capture_output=True, text=True, timeout=600,
        )
        report = run.stdout[-6000:] + run.stderr[-2000:]
        print(report)
        assert run.returncode == 0, report
        log = s.log.read_text()
        assert "Traceback" not in log, log[-4000:]
    finally:
        s.close()
