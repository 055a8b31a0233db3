"""A Hub model deployed through `endpointd serve` on the real Docker engine, downloaded by the real
huggingface_hub client from a local imitation of the Hub (tests/fake_hub.py): the endpoint's status
says the bytes done of the total while the download runs, the download lands in the namespace's
own cache under no model root (the default one, DATA_DIR/models, included), another tenant cannot
mount it by naming its path, and the replica is given only its own snapshot."""

from __future__ import annotations

import json
import os
import re
import subprocess

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import BadRequestError

from tests.e2e.test_e2e_security import http, inspect, running
from tests.fake_hub import COMMIT, FakeHub, Repo
from tests.serve_process import Serve, wait_for

# The echo engine under another name: endpointd treats it as a user's image, which reads its model
# (the echo image itself reads none, so nothing would be downloaded for it).
READER_IMAGE = "endpointd/model-reader:test"
READER = {"url": READER_IMAGE, "healthRoute": "/health", "env": {}}

pytestmark = pytest.mark.docker
MIB = 1 << 20
WEIGHTS = os.urandom(24 * MIB)  # over two of huggingface_hub's 10 MiB read chunks
PROGRESS = re.compile(r"fetching model artifacts of org/private: ([\d.]+) MiB of 24\.0 MiB \((\d+) %\)")


@pytest.fixture
def hub():
    with FakeHub({"org/private": Repo({"config.json": b"{}", "model.safetensors": WEIGHTS})}) as hub:
        yield hub


@pytest.fixture
def serve(tmp_path, docker_engine, hub, monkeypatch):
    subprocess.run(["/usr/bin/docker", "tag", "endpointd/echo:latest", READER_IMAGE], check=True, capture_output=True)
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)  # the default model root, where Hub downloads once landed
    s = Serve(data, admin_token="test-admin-token", extra_env={
        "HF_ENDPOINT": hub.url, "HF_HUB_DOWNLOAD_TIMEOUT": "60", "HF_HUB_DISABLE_TELEMETRY": "1",
        "ENDPOINTD_MODEL_ROOTS": f"{data / 'models'}:{tmp_path / 'models'}",
    })
    s.alice = s.add_user("alice")
    s.bob = s.add_user("bob")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    yield s
    s.close()


def create(serve, token, name, repository):
    return HfApi(endpoint=serve.url, token=token).create_inference_endpoint(
        name, repository=repository, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", custom_image=READER, type="private",
        min_replica=1, max_replica=1)


def message(serve, token, ns, name) -> str:
    status, body = http(serve, "GET", f"/v2/endpoint/{ns}/{name}", token)
    return json.loads(body)["status"]["message"] if status == 200 else ""


def test_a_hub_download_shows_its_bytes_and_stays_its_namespaces(serve, hub):
    held = hub.hold("org/private", "model.safetensors", after_bytes=12 * MIB)
    try:
        create(serve, serve.alice, "priv", "org/private")
        # While the download runs (held part-way), the status says the bytes done of the total.
        seen = wait_for(lambda: PROGRESS.search(message(serve, serve.alice, "alice", "priv")), 120,
                        "the status message to show the download's bytes", interval_s=0.1)
        assert 10 <= float(seen[1]) < 24 and 0 < int(seen[2]) < 100
        assert held.reached.is_set()
    finally:
        held.released.set()
    running(serve, serve.alice, "priv")

    snapshot = serve.data_dir / "hub" / "alice" / "models--org--private" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").read_bytes() == WEIGHTS
    assert not any((serve.data_dir / "models").iterdir())  # nothing downloaded into the model root
    # bob names alice's download, where it is and where an older endpointd put it: refused.
    old_place = serve.data_dir / "models" / "models--org--private" / "snapshots" / COMMIT
    for path in (snapshot, snapshot.parent.parent / "blobs", old_place):
        with pytest.raises(BadRequestError, match="model_roots"):
            create(serve, serve.bob, "steal", str(path))
    # alice's replica is given her snapshot and its blobs, nothing else of the cache.
    [container] = serve.containers()
    mounts = {m["Destination"]: m["Source"] for m in inspect(container)["Mounts"]}
    assert mounts == {"/repository": str(snapshot), "/blobs": str(snapshot.parent.parent / "blobs")}
