"""Restarts of `endpointd serve` on the real Docker engine, as an operator does them (SIGTERM,
SIGKILL), with what serves at that moment: a woken endpoint, a failed update, a roll under way, an
endpoint deleted a moment before; and a hung (paused) engine, replaced by the liveness checks.
Each test is a defect of section 4 of issue 17, reproduced here first."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi, InferenceClient

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
FAST = {
    "ENDPOINTD_SCALE_WINDOW_S": "2", "ENDPOINTD_STABILIZATION_S": "5", "ENDPOINTD_MINUTE_S": "1",
    "ENDPOINTD_SCALE_INTERVAL_S": "0.5", "ENDPOINTD_LIVENESS_INTERVAL_S": "1",
    "ENDPOINTD_SWEEP_INTERVAL_S": "3600",  # what is left behind must not be hidden by the sweep
}
# The echo engine refuses to start with this (it needs at least 1): a revision that always fails.
BROKEN = {"ECHO_MAX_RUNNING": "0"}


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=FAST)
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)
    yield s
    s.close()


def create(serve: Serve, name: str, *, env=None, **kw):
    args = dict(
        repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", type="public",
        custom_image={**ECHO, "env": env or {}}, min_replica=1, max_replica=1,
    )
    args.update(kw)
    return HfApi(endpoint=serve.url).create_inference_endpoint(name, **args)


def update_env(serve: Serve, name: str, env: dict[str, str]):
    """A new revision: the same image with another environment."""
    return HfApi(endpoint=serve.url).update_inference_endpoint(name, custom_image={**ECHO, "env": env})


def running_containers(serve: Serve, name: str) -> list[str]:
    return serve.containers(f"label=endpointd.name={name}")


def container_id(name: str) -> str:
    return subprocess.run(["/usr/bin/docker", "inspect", "--format", "{{.Id}}", name],
                          capture_output=True, text=True, check=True).stdout.strip()


def get(serve: Serve, path: str):
    request = urllib.request.Request(f"{serve.url}{path}", headers={"Authorization": f"Bearer {serve.admin_token}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def events(serve: Serve, name: str, since_wall: float = 0.0) -> list[dict]:
    items = get(serve, f"/v2/endpoint/admin/{name}/events?limit=1000")["items"]
    return [e for e in items if datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp() >= since_wall]


def first_status(serve: Serve, name: str) -> str:
    """The status of the first read of the endpoint that the restarted endpointd answers."""
    def read():
        try:
            return get(serve, f"/v2/endpoint/admin/{name}")["status"]["state"]
        except (urllib.error.URLError, ConnectionError):
            return None

    return wait_for(read, 30, "a first answer about the endpoint")


def scale_rounds(serve: Serve, name: str) -> float:
    request = urllib.request.Request(f"{serve.url}/metrics", headers={"Authorization": f"Bearer {serve.admin_token}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    prefix = "endpointd_scale_decisions_total{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and f'endpoint="admin/{name}"' in line)


def wait_rounds(serve: Serve, name: str, rounds: int = 6) -> None:
    """Let the control plane act for a while: `rounds` more scaling rounds of the endpoint."""
    start = scale_rounds(serve, name)
    wait_for(lambda: scale_rounds(serve, name) >= start + rounds, 60, f"{rounds} more scaling rounds")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_an_adopted_ready_replica_is_running_at_the_first_read(serve, how):
    endpoint = create(serve, "adopted", min_replica=0, scale_to_zero_timeout=60)
    endpoint.wait(timeout=120, refresh_every=0.5)
    (before,) = running_containers(serve, "adopted")
    serve.stop(how)
    serve.start()
    assert first_status(serve, "adopted") == "running"  # never `initializing` while it serves
    assert running_containers(serve, "adopted") == [before]
    assert InferenceClient(model=endpoint.url).text_generation("served") == "served "
    endpoint.delete()


def test_a_restart_after_a_failed_update_keeps_the_old_revision_serving(serve):
    endpoint = create(serve, "kept")
    endpoint.wait(timeout=120, refresh_every=0.5)
    (old,) = running_containers(serve, "kept")
    old_id = container_id(old)
    update_env(serve, "kept", BROKEN)
    wait_for(lambda: endpoint.fetch().status == "updateFailed", 120, "the update to fail")
    serve.stop(signal.SIGKILL)
    restarted_at = time.time()
    serve.start()
    assert first_status(serve, "kept") == "updateFailed"
    wait_rounds(serve, "kept")
    assert endpoint.fetch().status == "updateFailed"
    assert [container_id(c) for c in running_containers(serve, "kept")] == [old_id]  # adopted, never stopped
    kinds = [e["kind"] for e in events(serve, "kept", restarted_at)]
    assert "replica_starting" not in kinds and "replica_failed" not in kinds, kinds  # not retried
    assert InferenceClient(model=endpoint.url).text_generation("old") == "old "
    # Resume tries the new revision again, as before the restart: it fails again, the old one serves.
    endpoint.resume()
    wait_for(lambda: "replica_failed" in [e["kind"] for e in events(serve, "kept", restarted_at)], 60, "a new try")
    wait_for(lambda: endpoint.fetch().status == "updateFailed", 120, "the update to fail again")
    assert [container_id(c) for c in running_containers(serve, "kept")] == [old_id]
    endpoint.delete()


def test_a_restart_during_a_roll_keeps_the_old_revision_serving_until_the_new_one_is_ready(serve):
    endpoint = create(serve, "rolling")
    endpoint.wait(timeout=120, refresh_every=0.5)
    (old,) = running_containers(serve, "rolling")
    update_env(serve, "rolling", {"ECHO_STARTUP_DELAY_S": "8"})
    wait_for(lambda: endpoint.fetch().status == "updating" and len(running_containers(serve, "rolling")) == 2,
             60, "the roll to start its new replica")
    serve.stop(signal.SIGTERM)
    serve.start()
    assert first_status(serve, "rolling") == "updating"
    assert old in running_containers(serve, "rolling")
    # No cold start: the old revision answers at once, without X-Scale-Up-Timeout.
    assert InferenceClient(model=endpoint.url).text_generation("during") == "during "
    wait_for(lambda: endpoint.fetch().status == "running" and old not in running_containers(serve, "rolling"),
             120, "the roll to finish")
    assert len(running_containers(serve, "rolling")) == 1
    endpoint.delete()


def test_an_endpoint_deleted_just_before_a_sigterm_leaves_nothing_running(serve):
    create(serve, "gone").wait(timeout=120, refresh_every=0.5)
    assert running_containers(serve, "gone")
    HfApi(endpoint=serve.url).delete_inference_endpoint("gone")
    assert serve.stop(signal.SIGTERM) == 0
    assert serve.containers("label=endpointd.name=gone", all_states=True) == []
    networks = subprocess.run(
        ["/usr/bin/docker", "network", "ls", "-q", "--filter", f"label=endpointd.instance={serve.instance}",
         "--filter", "label=endpointd.name=gone"], capture_output=True, text=True, check=True,
    ).stdout.split()
    assert networks == []


def test_a_paused_engine_is_replaced_after_its_liveness_checks(tmp_path, docker_engine, monkeypatch):
    interval_s, failures = 2.0, 2
    s = Serve(tmp_path / "data", admin_token="test-admin-token",
              extra_env={**FAST, "ENDPOINTD_LIVENESS_INTERVAL_S": str(interval_s),
                         "ENDPOINTD_LIVENESS_FAILURES": str(failures)})
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)
    paused = None
    try:
        endpoint = create(s, "hung")
        endpoint.wait(timeout=120, refresh_every=0.5)
        (paused,) = running_containers(s, "hung")
        subprocess.run(["/usr/bin/docker", "pause", paused], check=True, capture_output=True)
        paused_at = time.time()

        def unresponsive():
            return [e for e in events(s, "hung") if e["kind"] == "replica_unresponsive"]

        (event,) = wait_for(unresponsive, 120, "the hung replica to be taken out")
        took = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp() - paused_at
        # `failures` checks `interval_s` apart, each allowed at most `interval_s` to answer, plus
        # up to one interval before the first check and one of slack for a loaded host.
        assert took < interval_s * (failures + 2) + interval_s, f"replaced {took:.1f} s after the pause"
        wait_for(lambda: paused not in running_containers(s, "hung") and running_containers(s, "hung"),
                 60, "the hung replica to be replaced")
        endpoint.wait(timeout=60, refresh_every=0.5)
        assert InferenceClient(model=endpoint.url).text_generation("again") == "again "
        endpoint.delete()
    finally:
        if paused:
            subprocess.run(["/usr/bin/docker", "unpause", paused], capture_output=True)
        s.close()
