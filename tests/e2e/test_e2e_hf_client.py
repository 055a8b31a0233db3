"""Acceptance: the unmodified huggingface_hub client drives `endpointd serve` on the real Docker
engine, with the echo engine as a custom image."""

from __future__ import annotations

import json
import signal
import urllib.request

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi, InferenceClient
from huggingface_hub.errors import BadRequestError, HfHubHTTPError, InferenceEndpointError

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token")
    s.alice = s.add_user("alice", "acme")
    s.eve = s.add_user("eve")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    # InferenceEndpoint objects (wait, fetch, .client) resolve the token like the CLI does.
    monkeypatch.setenv("HF_TOKEN", s.alice)
    yield s
    s.close()


def create(api: HfApi, serve: Serve, name: str, **kw):
    args = dict(
        repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="us-east-1", vendor="aws", custom_image=ECHO, type="private",
    )
    args.update(kw)
    return api.create_inference_endpoint(name, **args)


def test_the_client_drives_the_whole_lifecycle(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = create(api, serve, "echo", min_replica=0, max_replica=2, scale_to_zero_timeout=15)
    assert endpoint.namespace == "alice"  # from whoami
    endpoint.wait(timeout=120, refresh_every=1)
    assert endpoint.status == "running"
    assert endpoint.url == f"{serve.url}/endpoints/alice/echo"

    client, url = endpoint.client, endpoint.url
    assert client.text_generation("hello from the client") == "hello from the client "
    assert list(client.text_generation("one two", stream=True)) == ["one ", "two "]
    chunks = list(client.chat_completion([{"role": "user", "content": "stream me"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "stream me "

    # Private: another user's token is refused by the proxy.
    with pytest.raises(HfHubHTTPError, match="403"):
        InferenceClient(model=url, token=serve.eve).text_generation("x")

    assert api.get_inference_endpoint("echo").status == "running"
    assert [e.name for e in api.list_inference_endpoints()] == ["echo"]
    assert [e.name for e in api.list_inference_endpoints(namespace="*")] == ["echo"]

    endpoint.pause()
    assert endpoint.status == "paused"
    with pytest.raises(BadRequestError, match="is paused"):
        InferenceClient(model=url).text_generation("x")  # refused, and it does not wake
    assert api.get_inference_endpoint("echo").status == "paused"
    endpoint.resume().wait(timeout=120, refresh_every=1)
    assert endpoint.client.text_generation("back") == "back "
    with pytest.raises(BadRequestError, match="already running"):
        api.resume_inference_endpoint("echo", running_ok=False)  # the client hides it by default

    endpoint.scale_to_zero()
    wait_for(lambda: endpoint.fetch().status == "scaledToZero", 60, "scaledToZero")
    with pytest.raises(HfHubHTTPError, match="503"):
        InferenceClient(model=url).text_generation("no hold")
    # That request woke it; put it back to zero, then a held request is served through the cold start.
    wait_for(lambda: endpoint.fetch().status == "running", 60, "running after the wake")
    endpoint.scale_to_zero()
    wait_for(lambda: endpoint.fetch().status == "scaledToZero", 60, "scaledToZero")
    held = InferenceClient(model=url, headers={"X-Scale-Up-Timeout": "60"})
    assert held.text_generation("held through a cold start") == "held through a cold start "

    endpoint.wait(timeout=60, refresh_every=1)
    endpoint.update(min_replica=2, max_replica=2)  # scaling only: nothing restarts
    wait_for(lambda: endpoint.fetch().raw["status"]["readyReplica"] == 2, 60, "two ready replicas")
    before = {r for r in _replicas(serve)}
    endpoint.update(custom_image={**ECHO, "env": {"ECHO_TOKEN_DELAY_S": "0"}, "healthRoute": "/info"})
    wait_for(lambda: endpoint.fetch().status == "running" and not before & _replicas(serve), 120, "the roll to finish")
    assert endpoint.raw["healthRoute"] == "/info"
    assert endpoint.client.text_generation("rolled") == "rolled "

    endpoint.delete()
    with pytest.raises(HfHubHTTPError, match="404"):
        api.get_inference_endpoint("echo")
    wait_for(lambda: not _replicas(serve), 60, "containers removed")


def test_restart_adopts_running_replicas_and_loses_nothing(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    create(api, serve, "durable", type="public").wait(timeout=120, refresh_every=1)
    before = _replicas(serve)
    assert serve.stop(signal.SIGTERM) == 0
    assert _replicas(serve) == before  # engine containers outlive endpointd
    serve.start()
    endpoint = api.get_inference_endpoint("durable")
    endpoint.wait(timeout=60, refresh_every=1)
    assert _replicas(serve) == before  # adopted, not restarted
    assert InferenceClient(model=endpoint.url).text_generation("still here") == "still here "
    endpoint.delete()
    wait_for(lambda: not _replicas(serve), 60, "containers removed")


def test_provider_lists_this_hosts_hardware(serve):
    hardware = HfApi(endpoint=serve.url, token=serve.alice).list_inference_endpoints_hardware()
    cpu = [h for h in hardware if h.accelerator == "cpu"]
    assert cpu and cpu[0].instance_size == "x1" and cpu[0].vendor == "local"
    assert all(h.accelerator == "cpu" for h in hardware)  # no GPU on this host


def test_errors_are_json_sentences_with_the_right_status(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    with pytest.raises(BadRequestError, match="name must be 1 to 32 lowercase letters"):
        create(api, serve, "Bad_Name")
    with pytest.raises(BadRequestError, match=r"minReplica must be an integer between 0 and maxReplica \(2\); got 3"):
        create(api, serve, "e", min_replica=3, max_replica=2)
    with pytest.raises(BadRequestError, match="not a GPU of this host"):
        create(api, serve, "e", accelerator="gpu", instance_type="nvidia-h100")
    with pytest.raises(HfHubHTTPError, match="403"):
        create(api, serve, "e", namespace="eve")
    create(api, serve, "dup", min_replica=0, scale_to_zero_timeout=15)
    with pytest.raises(HfHubHTTPError, match="409"):
        create(api, serve, "dup")
    with pytest.raises(HfHubHTTPError, match="404"):
        api.get_inference_endpoint("nope")
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi(endpoint=serve.url, token="wrong").whoami()
    api.delete_inference_endpoint("dup")


def _replicas(serve: Serve) -> set[str]:
    return set(serve.containers())


def test_start_failures_end_in_failed_with_the_exit_code_and_logs(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    broken = {**ECHO, "env": {"ECHO_STARTUP_DELAY_S": "-1"}}  # the engine refuses it and exits 2
    endpoint = create(api, serve, "broken", custom_image=broken)
    with pytest.raises(InferenceEndpointError, match="failed to deploy"):
        endpoint.wait(timeout=120, refresh_every=1)  # three attempts, 1 s and 2 s apart
    message = endpoint.raw["status"]["message"]
    assert "exited with code 2" in message
    assert "ECHO_STARTUP_DELAY_S='-1' is invalid" in message
    endpoint.delete()


def test_a_crashed_replica_is_replaced(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    crashing = {**ECHO, "env": {"ECHO_CRASH_AFTER_REQUESTS": "1"}}
    endpoint = create(api, serve, "crashy", custom_image=crashing)
    endpoint.wait(timeout=120, refresh_every=1)
    first = _replicas(serve)
    assert endpoint.client.text_generation("last words") == "last words "  # then it exits with 3
    wait_for(lambda: _replicas(serve) and _replicas(serve) != first, 60, "a replacement replica")
    endpoint.wait(timeout=60, refresh_every=1)
    assert endpoint.client.text_generation("new replica") == "new replica "
    endpoint.delete()


def test_revoked_tokens_stop_working_and_actions_are_audited(serve):
    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = create(api, serve, "audited", type="authenticated")
    endpoint.wait(timeout=120, refresh_every=1)
    output = serve.cli("tokens", "create", "eve", "--label", "short-lived")
    token_id, token = output.split()[1], output.strip().splitlines()[-1]
    client = InferenceClient(model=endpoint.url, token=token)
    assert client.text_generation("before") == "before "
    serve.cli("tokens", "revoke", token_id)  # from another process, while serve runs

    def refused():
        try:
            client.text_generation("after")
        except HfHubHTTPError as error:
            return "401" in str(error)
        return False

    wait_for(refused, 15, "the revoked token to be refused", interval_s=0.5)
    endpoint.delete()

    import asyncio

    from autoscaler.store.store import Store

    async def audit():
        store = await Store.open(serve.data_dir / "endpointd.db")
        try:
            return await store.list_audit("alice")
        finally:
            await store.close()

    entries = asyncio.run(audit())
    assert [(e.action, e.name, e.actor) for e in entries[:2]] == [("delete", "audited", "alice"), ("create", "audited", "alice")]
    assert entries[1].source_ip == "127.0.0.1" and entries[1].request_id
    assert entries[1].details["repository"] == serve.model


def test_sigterm_lets_a_stream_in_flight_finish(serve):
    import http.client
    import json

    api = HfApi(endpoint=serve.url, token=serve.alice)
    slow = {**ECHO, "env": {"ECHO_TOKEN_DELAY_S": "0.2"}}
    endpoint = create(api, serve, "slow", custom_image=slow, type="public")
    endpoint.wait(timeout=120, refresh_every=1)
    # Plain http.client: huggingface_hub's sync streaming closes a response still in flight.
    conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=30)
    conn.request("POST", "/endpoints/alice/slow/generate_stream", body=json.dumps({"inputs": "one two three four five six"}))
    response = conn.getresponse()
    events = [response.readline()]  # the stream is open and flowing
    serve.process.send_signal(signal.SIGTERM)
    events += [line for line in response if line.startswith(b"data:")]
    assert b'"generated_text": "one two three four five six "' in events[-1]
    assert serve.process.wait(timeout=60) == 0
    serve.process = None



# Serves GET / (a directory listing) on 8000 and no health route at all.
NO_HEALTH_SERVER = (
    "import http.server\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 8000), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
)


def test_a_custom_image_without_a_health_route_runs_once_its_port_listens(serve):
    """The reference treats such an image as ready at start: endpointd waits for its port to accept
    connections, not for a /health that never answers (the default would wait 30 minutes)."""
    api = HfApi(endpoint=serve.url, token=serve.alice)
    endpoint = create(api, serve, "nohealth", custom_image={"url": "endpointd/echo:latest", "port": 8000})
    # The client has no `command`; the API takes it: a server of Python's own in the echo image.
    body = json.dumps({"model": {"command": ["python3", "-c", NO_HEALTH_SERVER]}}).encode()
    request = urllib.request.Request(f"{serve.url}/v2/endpoint/alice/nohealth", data=body, method="PUT", headers={
        "Authorization": f"Bearer {serve.alice}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    endpoint.wait(timeout=120, refresh_every=1)
    assert endpoint.status == "running"
    request = urllib.request.Request(f"{endpoint.url}/", headers={"Authorization": f"Bearer {serve.alice}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and b"Directory listing" in response.read()
