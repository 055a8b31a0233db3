"""Two teams on one host, one of them capped: `endpointd serve` on the real Docker engine, a quota
of 2 CPUs and 3 endpoints on team A's org namespace set with the CLI (x1 instances: 1 CPU each;
the host's CPUs are overcommitted, tests/serve_process.py, so the quota and not the host binds).
Team A at its quota gets a clear 409 on create and a waiting status on scale-up, and a request to
the waiting endpoint is answered at once saying why; team B, with no quota, is unaffected; a
scale-to-zero in team A frees its share and the waiting endpoint starts; after a restart the quota
and the replicas adopted still hold a woken endpoint back."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
FULL = ("namespace teama's quota of 2 CPUs is reached (2 CPUs in use by 2 replicas; this endpoint's x1 instance "
        "needs 1 CPU)")


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token")
    s.alice = s.add_user("alice", "teama")
    s.bob = s.add_user("bob", "teamb")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    yield s
    s.close()


def create(serve, token, ns, name, low=1, high=1):
    return HfApi(endpoint=serve.url, token=token).create_inference_endpoint(
        name, namespace=ns, repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", custom_image=ECHO, type="private",
        min_replica=low, max_replica=high,
    )


def http(serve, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{serve.url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def status(serve, token, ns, name) -> dict:
    return http(serve, "GET", f"/v2/endpoint/{ns}/{name}", token)[1]["status"]


def wait_state(serve, token, ns, name, state, message=""):
    wait_for(lambda: (s := status(serve, token, ns, name))["state"] == state and message in s.get("message", ""),
             120, f"{ns}/{name} to be {state}", interval_s=0.5)


def test_a_team_at_its_quota_is_refused_and_waits_while_the_other_team_is_unaffected(serve):
    s = serve
    shown = s.cli("quotas", "set", "teama", "--cpus", "2", "--endpoints", "3")
    assert "  cpus                  2            0" in shown and "  endpoints             3            0" in shown

    create(s, s.alice, "teama", "a1", 1, 2)
    create(s, s.alice, "teama", "a2")
    for name in ("b1", "b2", "b3"):  # team B: as many as it likes
        create(s, s.bob, "teamb", name)
    for name in ("a1", "a2"):
        wait_state(s, s.alice, "teama", name, "running")

    # A create that could never fit: a clear 409 naming the quota, the use and the ask
    with pytest.raises(HfHubHTTPError) as refused:
        create(s, s.alice, "teama", "a3")
    assert refused.value.response.status_code == 409
    assert ("endpoint teama/a3 is not created: namespace teama's quota of 2 CPUs cannot fit it: 2 CPUs in use and it "
            "asks for 1 CPU more") in refused.value.response.json()["error"]

    # minReplica 0 may fit one day: created, it wants a replica now and waits for the quota's room
    create(s, s.alice, "teama", "a3", 0, 1)
    wait_state(s, s.alice, "teama", "a3", "pending", f"waiting for capacity: {FULL}")
    code, body = http(s, "POST", "/endpoints/teama/a3/", s.alice, {"inputs": "hi"})
    assert code == 503 and FULL in body["error"]  # answered at once, saying why
    code, body = http(s, "GET", "/v2/endpoint/teama/a3/events", s.alice)
    assert [e["reason"] for e in body["items"] if e["kind"] == "waiting_for_capacity"] == [
        f"no replica can be placed now: {FULL}; it starts once capacity is freed"]
    with pytest.raises(HfHubHTTPError) as refused:  # the fourth endpoint
        create(s, s.alice, "teama", "a4", 0, 1)
    assert "namespace teama's quota of 3 endpoints cannot fit it" in refused.value.response.json()["error"]

    # Team B is unaffected: every one of its endpoints runs, and it has no quota
    for name in ("b1", "b2", "b3"):
        wait_state(s, s.bob, "teamb", name, "running")
    assert http(s, "GET", "/v2/quotas/teamb", s.bob)[1]["quota"]["cpus"] is None
    assert http(s, "GET", "/v2/quotas/teama", s.bob)[0] == 403

    # Team A reads its own quota and use; only the admin may change it
    code, body = http(s, "GET", "/v2/quotas/teama", s.alice)
    assert (code, body["use"]) == (200, {"gpus": 0, "cpus": 2, "memory": 4 << 30, "replicas": 2, "endpoints": 3})
    assert http(s, "PUT", "/v2/quotas/teama", s.alice, {"cpus": 8})[0] == 403
    teama = s.containers("label=endpointd.namespace=teama")
    assert len(teama) == 2, teama

    # A scale-to-zero frees team A's share: the waiting endpoint starts in it
    HfApi(endpoint=s.url, token=s.alice).get_inference_endpoint("a2", namespace="teama").scale_to_zero()
    wait_state(s, s.alice, "teama", "a3", "running")
    assert len(s.containers("label=endpointd.namespace=teama")) == 2

    # After a restart the quota holds still, and the adopted replicas count toward it: a request to
    # the parked a2 wakes it, but its container does not start beyond the quota
    s.stop()
    s.start()
    code, body = http(s, "GET", "/v2/quotas/teama", s.alice)
    assert (body["quota"]["cpus"], body["use"]["cpus"], body["use"]["replicas"]) == (2, 2, 2)
    code, body = http(s, "POST", "/endpoints/teama/a2/", s.alice, {"inputs": "hi"})
    assert code == 503 and FULL in body["error"]
    wait_state(s, s.alice, "teama", "a2", "pending", f"waiting for capacity: {FULL}")
    assert len(s.containers("label=endpointd.namespace=teama")) == 2

    listed = s.cli("quotas", "list")
    assert listed.splitlines()[1].split()[:3] == ["teama", "0/-", "2/2"]
    assert "quota-set" in s.cli("audit", "teama", "--action", "quota-set")
    assert "no quota now" in s.cli("quotas", "unset", "teama")
