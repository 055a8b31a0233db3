"""CI smoke test of endpointd's own image: `endpointd serve` in a container of the engine it drives
(the host's Docker socket mounted, the data dir and a model root on volumes) deploys an echo
endpoint and serves a request through it, driven by the unmodified huggingface_hub client from
the host. In a container, endpointd reaches the replica by name on the endpoint's network, which
it joins; nothing of the replica is published on the host."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from engines.images import CONTEXT_LABEL, ECHO_IMAGE, ENDPOINTD_IMAGE, endpointd_digest
from tests.serve_process import free_port, wait_for

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker"
ADMIN_TOKEN = "image-smoke-admin-token"
ECHO = {"url": ECHO_IMAGE, "healthRoute": "/health", "env": {}}


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def answers(url: str) -> bool:
    request = urllib.request.Request(f"{url}/api/whoami-v2", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.fixture
def containerised(tmp_path, docker_engine, monkeypatch):
    """endpointd/endpointd running as the docs run it, with volumes for the data and the models."""
    for image in (ENDPOINTD_IMAGE, ECHO_IMAGE):
        if subprocess.run([DOCKER, "image", "inspect", image], capture_output=True).returncode != 0:
            pytest.fail(f"the image {image} is missing: run `endpointd images build`")
    labels = json.loads(docker("image", "inspect", ENDPOINTD_IMAGE))[0]["Config"]["Labels"] or {}
    if labels.get(CONTEXT_LABEL) != endpointd_digest():
        pytest.fail(f"the image {ENDPOINTD_IMAGE} is older than the sources: run `endpointd images build`")
    data, models = tmp_path / "data", tmp_path / "models"
    (models / "model").mkdir(parents=True)
    (models / "model" / "config.json").write_text("{}")
    data.mkdir()
    name, port = f"tkimg-{uuid.uuid4().hex[:8]}", free_port()
    url = f"http://127.0.0.1:{port}"
    docker(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", f"{data}:/data", "-v", f"{models}:/models:ro",
        "-e", f"ENDPOINTD_ADMIN_TOKEN={ADMIN_TOKEN}", "-e", "ENDPOINTD_MODEL_ROOTS=/models",
        "-e", f"ENDPOINTD_EXTERNAL_URL={url}", "-e", "ENDPOINTD_CPU_OVERCOMMIT=8", ENDPOINTD_IMAGE,
    )
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{url}/v2")
    monkeypatch.setenv("HF_TOKEN", ADMIN_TOKEN)
    try:
        def up():
            state = json.loads(docker("inspect", name))[0]["State"]
            if not state["Running"]:
                raise AssertionError(f"endpointd's container exited ({state['ExitCode']}):\n{docker('logs', name)}")
            return answers(url)

        wait_for(up, 60, "the containerised endpointd to answer")
        yield name, url
    finally:
        logs = subprocess.run([DOCKER, "logs", name], capture_output=True, text=True).stdout
        docker("rm", "-f", name, check=False)
        instance = (data / "instance-id").read_text().strip() if (data / "instance-id").exists() else None
        if instance:  # replicas outlive endpointd by design: remove the test's own
            left = docker("ps", "-aq", "--filter", f"label=endpointd.instance={instance}").split()
            if left:
                docker("rm", "-f", *left, check=False)
            for network in docker("network", "ls", "-q", "--filter", f"label=endpointd.instance={instance}").split():
                docker("network", "rm", network, check=False)
        print(logs[-3000:])


def test_the_containerised_endpointd_deploys_and_serves_an_echo_endpoint(containerised):
    name, url = containerised
    api = HfApi(endpoint=url, token=ADMIN_TOKEN)
    endpoint = api.create_inference_endpoint(
        "tkimg-echo", repository="/models/model", framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="us-east-1", vendor="aws", custom_image=ECHO, type="authenticated",
    )
    endpoint.wait(timeout=180, refresh_every=1)
    assert endpoint.status == "running"
    assert endpoint.url.startswith(f"{url}/endpoints/")
    assert endpoint.client.text_generation("through the container") == "through the container "

    instance = docker("exec", name, "cat", "/data/instance-id").strip()
    [replica] = docker("ps", "-q", "--filter", f"label=endpointd.instance={instance}").split()
    details = json.loads(docker("inspect", replica))[0]
    # Nothing published on the host: endpointd reaches the replica on the endpoint's network...
    assert not any(details["NetworkSettings"]["Ports"].values())
    [network] = details["NetworkSettings"]["Networks"]
    own = json.loads(docker("inspect", name))[0]
    assert network in own["NetworkSettings"]["Networks"]  # ... which its own container joined
    # The model root's volume, seen by Docker at its host path, is the replica's /repository.
    assert any(m["Destination"] == "/repository" and m["Source"].endswith("/models/model") for m in details["Mounts"])

    api.delete_inference_endpoint("tkimg-echo")
    wait_for(lambda: not docker("ps", "-aq", "--filter", f"label=endpointd.instance={instance}").split(), 60,
             "the replica to be removed")
    # The endpoint's network is gone too: endpointd left it before removing it.
    wait_for(lambda: network not in docker("network", "ls", "--format", "{{.Name}}").split(), 60,
             "the endpoint's network to be removed")
