"""Replica timelines, events, the audit log and the CLI that reads them, on the real Docker engine
through `endpointd serve` (runtime logs and metrics have files of their own)."""

from __future__ import annotations

import json
import signal
import urllib.request

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
SECRET = "hf_observed_secret_31337"


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    # No parked tier: the timelines here follow a replica to its removal and a new one after it.
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env={"ENDPOINTD_PARK_TTL_S": "0"})
    s.alice = s.add_user("alice")
    s.bob = s.add_user("bob")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.alice)
    yield s
    s.close()


def call(serve, method, path, token, request_id=None, body=None):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if request_id:
        headers["X-Request-Id"] = request_id
    request = urllib.request.Request(f"{serve.url}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_timeline_events_and_audit_as_a_user_sees_them(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = api.create_inference_endpoint(
        "watched", repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", min_replica=0, max_replica=1,
        scale_to_zero_timeout=15, custom_image=ECHO, secrets={"HF_TOKEN": SECRET},
    )
    endpoint.wait(timeout=120, refresh_every=0.5)
    status, body = call(serve, "GET", "/v2/endpoint/alice/watched/replica", serve.alice)
    (replica,) = body["items"]
    assert status == 200 and replica["state"] == "running"
    assert [t["state"] for t in replica["timeline"]][0] == "pending" and "running" in [t["state"] for t in replica["timeline"]]
    call(serve, "PUT", "/v2/endpoint/alice/watched", serve.alice, "req-update", {"tags": ["t"]})
    call(serve, "POST", "/v2/endpoint/alice/watched/pause", serve.alice, "req-pause")
    call(serve, "POST", "/v2/endpoint/alice/watched/resume", serve.alice, "req-resume")
    call(serve, "POST", "/v2/endpoint/alice/watched/scale-to-zero", serve.alice, "req-zero")

    def stopped():
        items = call(serve, "GET", "/v2/endpoint/alice/watched/replica", serve.alice)[1]["items"]
        return any(r["id"] == replica["id"] and r["state"] == "stopped" for r in items)

    wait_for(stopped, 60, "the first replica to be listed as stopped")
    events = call(serve, "GET", "/v2/endpoint/alice/watched/events", serve.alice)[1]["items"]
    kinds = [e["kind"] for e in events]
    assert {"replica_starting", "replica_ready", "paused", "scaled_to_zero", "replica_stopped"} <= set(kinds)
    audit = call(serve, "GET", "/v2/audit/alice", serve.alice)[1]["items"]
    assert [(a["action"], a["user"], a["requestId"]) for a in audit[:4]] == [
        ("scale-to-zero", "alice", "req-zero"), ("resume", "alice", "req-resume"),
        ("pause", "alice", "req-pause"), ("update", "alice", "req-update"),
    ]
    assert audit[4]["action"] == "create"
    assert SECRET not in json.dumps(events) + json.dumps(audit)
    for path in ("/v2/endpoint/alice/watched/replica", "/v2/endpoint/alice/watched/events", "/v2/audit/alice"):
        assert call(serve, "GET", path, serve.bob)[0] == 403

    # The CLI reads the same, with the admin token from the data directory's settings.
    described = serve.cli("endpoints", "describe", "alice/watched")
    assert "alice/watched: scaledToZero" in described and replica["id"] in described and "scaled_to_zero" in described
    assert "alice/watched" in serve.cli("endpoints", "ls", "*")
    lines = serve.cli("audit", "alice", "--endpoint", "watched").splitlines()
    assert "scale-to-zero" in lines[0] and "req-zero" in lines[0] and SECRET not in "".join(lines)
    listed = serve.cli("hf", "endpoints", "ls", "--namespace", "alice")
    assert "watched" in listed


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_events_and_timelines_survive_a_restart_and_the_cursor_goes_on(serve, how):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = api.create_inference_endpoint(
        "kept", repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", min_replica=0, max_replica=1,
        scale_to_zero_timeout=15, custom_image=ECHO,
    )
    endpoint.wait(timeout=120, refresh_every=0.5)
    path = "/v2/endpoint/alice/kept"
    (first,) = call(serve, "GET", f"{path}/replica", serve.alice)[1]["items"]
    call(serve, "POST", f"{path}/scale-to-zero", serve.alice)
    replicas = lambda: call(serve, "GET", f"{path}/replica", serve.alice)[1]["items"]  # noqa: E731
    wait_for(lambda: [r["state"] for r in replicas()] == ["stopped"], 60, "the first replica to stop")
    call(serve, "POST", f"{path}/resume", serve.alice)
    wait_for(lambda: [r["state"] for r in replicas()] == ["stopped", "running"], 120, "a second replica")
    before = replicas()
    old = call(serve, "GET", f"{path}/events?limit=1000", serve.alice)[1]
    assert old["items"] and old["last"] == old["items"][-1]["seq"]

    serve.stop(how)
    serve.start()

    def adopted():
        page = call(serve, "GET", f"{path}/events?since={old['last']}", serve.alice)[1]
        return page if "replica_adopted" in [e["kind"] for e in page["items"]] else None

    # On unchanged code the cursor restarted at 1: `since` the last id seen found nothing new.
    new = wait_for(adopted, 60, "the adoption to be listed after the last event seen before the restart")
    assert all(e["seq"] > old["last"] for e in new["items"]) and new["last"] > old["last"]
    everything = call(serve, "GET", f"{path}/events?limit=1000", serve.alice)[1]["items"]
    assert everything[: len(old["items"])] == old["items"]  # what was seen is still there, as it was
    after = replicas()
    assert [r["id"] for r in after] == [r["id"] for r in before] and first["id"] == after[0]["id"]
    assert after[0] == before[0]  # the stopped replica's timeline, as it was
    assert after[1]["state"] == "running"
    assert after[1]["timeline"][: len(before[1]["timeline"])] == before[1]["timeline"]  # it goes on
    endpoint.delete()
