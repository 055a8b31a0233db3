"""A host full of replicas, on the real Docker engine: endpoints sized to fill this host's CPUs
(ENDPOINTD_CPU_OVERCOMMIT=1), then one more. What waits says why, as a status, an event, an answer
to its callers and the provider route."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from engines.hardware import host_cpu_count
from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env={"ENDPOINTD_CPU_OVERCOMMIT": "1"})
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)
    yield s
    s.close()


def get(serve: Serve, path: str) -> dict:
    request = urllib.request.Request(serve.url + path, headers={"Authorization": f"Bearer {serve.admin_token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def call(serve: Serve, name: str, hold_s: int) -> tuple[int, str]:
    """A held request to a public endpoint: its status and X-Error-Message."""
    request = urllib.request.Request(f"{serve.url}/endpoints/admin/{name}/generate", data=b'{"inputs": "x"}',
                                     headers={"X-Scale-Up-Timeout": str(hold_s), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=hold_s + 60) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("X-Error-Message", "")


def kinds(serve: Serve, name: str) -> list[str]:
    return [e["kind"] for e in get(serve, f"/v2/endpoint/admin/{name}/events?limit=100")["items"]]


def test_a_full_host_says_what_is_missing_and_a_wake_that_cannot_be_placed_is_refused_at_once(serve):
    cpus = host_cpu_count()
    api = HfApi(endpoint=serve.url, token=serve.admin_token)
    common = dict(repository=serve.model, framework="custom", accelerator="cpu", instance_type="intel-icl",
                  region="local", vendor="local", custom_image=ECHO, type="public", max_replica=1)
    fillers = [f"fill{i}" for i in range(cpus)]
    for name in fillers:  # one x1 replica per CPU: the host is full
        api.create_inference_endpoint(name, instance_size="x1", min_replica=0, scale_to_zero_timeout=60, **common)
    for name in fillers:
        api.get_inference_endpoint(name).wait(timeout=180, refresh_every=0.5)

    x1 = next(c for c in get(serve, "/v2/provider/admin")["vendors"][0]["regions"][0]["computes"]
              if c["instanceSize"] == "x1")
    assert (x1["status"], x1["quota"]) == ("not_available", {"maxAccelerators": cpus, "usedAccelerators": cpus})

    waiting = api.create_inference_endpoint("late", instance_size="x1", min_replica=1, **common)
    reason = f"no free CPUs for this endpoint's x1 instance (it needs 1 CPU; {cpus} of {cpus} in use by {cpus} replicas)"
    wait_for(lambda: waiting.fetch().status == "pending", 60, "the third endpoint to be pending")
    assert waiting.raw["status"]["message"] == f"waiting for capacity: {reason}"
    assert "waiting_for_capacity" in kinds(serve, "late")
    status, message = call(serve, "late", hold_s=30)  # not held: nothing can start until someone scales down
    assert status == 503 and reason in message, message

    # A filler scaled to zero frees its CPU; the waiting endpoint takes it, and the filler, woken
    # now, is told at once that it cannot be placed, and why.
    api.scale_to_zero_inference_endpoint(fillers[0])
    waiting.wait(timeout=180, refresh_every=0.5)
    status, message = call(serve, fillers[0], hold_s=30)
    assert status == 503 and reason in message, message
    first = api.get_inference_endpoint(fillers[0])
    wait_for(lambda: first.fetch().status == "pending", 60, "the woken filler to wait, pending")
    assert reason in first.raw["status"]["message"] and "waiting_for_capacity" in kinds(serve, fillers[0])

    # Once another scales down, the woken one runs.
    api.scale_to_zero_inference_endpoint("late")
    first.wait(timeout=180, refresh_every=0.5)
    assert call(serve, fillers[0], hold_s=30) == (200, "")
