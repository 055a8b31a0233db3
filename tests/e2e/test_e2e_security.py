"""No user escapes their namespace: `endpointd serve` on the real Docker engine, two ordinary users
in different namespaces (alice, bob) and an admin, each escape of the tenant-isolation issue tried
through the unmodified huggingface_hub client or plain HTTP, and refused. Isolation is checked in
Docker's own view (`docker inspect`) and through ports published on 127.0.0.1 only."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import urllib.error
import urllib.request

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi, InferenceClient
from huggingface_hub.errors import BadRequestError, HfHubHTTPError

from tests.serve_process import ENDPOINTD, Serve, free_port, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
SECRET = "hf_top_secret_value_4711"


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token")
    s.alice = s.add_user("alice", "acme")
    s.bob = s.add_user("bob")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    yield s
    s.close()


def create(serve, token, name, **kw):
    args = dict(
        repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", custom_image=ECHO, type="private",
        min_replica=1, max_replica=1,
    )
    args.update(kw)
    return HfApi(endpoint=serve.url, token=token).create_inference_endpoint(name, **args)


def running(serve, token, name):
    """Wait for the endpoint to run, as its owner sees it."""
    ns = HfApi(endpoint=serve.url, token=token).whoami()["name"]

    def state():
        status, body = http(serve, "GET", f"/v2/endpoint/{ns}/{name}", token)
        return status == 200 and json.loads(body)["status"]["state"] == "running"

    wait_for(state, 120, f"{ns}/{name} to run", interval_s=0.5)


def http(serve, method, path, token=None, host=None, body=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if host:
        headers["Host"] = host
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{serve.url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""  # not listening (yet)


def inspect(name: str) -> dict:
    out = subprocess.run(["/usr/bin/docker", "inspect", name], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def test_host_paths_cannot_be_mounted(serve):
    for path in (str(serve.data_dir), str(serve.data_dir / "endpointd.db-wal"), "/var/run", "/var/run/docker.sock", "/"):
        with pytest.raises(BadRequestError, match="model_roots"):
            create(serve, serve.alice, "escape", repository=path)
    assert not serve.containers(all_states=True)


def test_route_domains_cannot_take_the_servers_traffic(serve):
    # This host's own names as it answers to them (host name, FQDN), any case: the API's, never a tenant's.
    for domain in ("127.0.0.1", "localhost", "0x7f000001", socket.gethostname(), socket.getfqdn().upper()):
        with pytest.raises(BadRequestError, match="route.domain"):
            create(serve, serve.alice, "hijack", domain=domain)
    create(serve, serve.alice, "mine", domain="alice.models.example")
    with pytest.raises(HfHubHTTPError, match="409") as info:
        create(serve, serve.bob, "theirs", domain="alice.models.example")
    assert "another namespace" in str(info.value) and "mine" not in str(info.value)
    # Management calls on the server's own name still reach the API, never an endpoint.
    status, body = http(serve, "GET", "/api/whoami-v2", serve.bob, host=f"127.0.0.1:{serve.port}")
    assert status == 200 and json.loads(body)["name"] == "bob"
    HfApi(endpoint=serve.url, token=serve.alice).delete_inference_endpoint("mine")
    create(serve, serve.bob, "theirs", domain="alice.models.example")  # freed by the delete


def test_engines_are_isolated_and_powerless(serve):
    create(serve, serve.alice, "a")
    create(serve, serve.bob, "b")
    running(serve, serve.alice, "a")
    running(serve, serve.bob, "b")
    (container_a,) = serve.containers("label=endpointd.namespace=alice")
    (container_b,) = serve.containers("label=endpointd.namespace=bob")
    info_a, info_b = inspect(container_a), inspect(container_b)
    networks_a, networks_b = set(info_a["NetworkSettings"]["Networks"]), set(info_b["NetworkSettings"]["Networks"])
    assert len(networks_a) == len(networks_b) == 1 and networks_a != networks_b
    assert "bridge" not in networks_a | networks_b
    host = info_a["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["NET_BIND_SERVICE"]
    assert "no-new-privileges:true" in host["SecurityOpt"] and host["PidsLimit"] > 0 and not host["Privileged"]
    assert host["Memory"] > 0 and host["NanoCpus"] > 0
    assert [m["Destination"] for m in info_a["Mounts"]] == ["/repository"] and not info_a["Mounts"][0]["RW"]
    # The published port answers nobody without the replica's key...
    port = info_a["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=b'{"inputs": "x"}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    # ...while the proxy, which has it, serves the owner and refuses the other tenant.
    assert InferenceClient(model=f"{serve.url}/endpoints/alice/a", token=serve.alice).text_generation("mine") == "mine "
    with pytest.raises(HfHubHTTPError, match="403"):
        InferenceClient(model=f"{serve.url}/endpoints/alice/a", token=serve.bob).text_generation("yours")
    HfApi(endpoint=serve.url, token=serve.alice).delete_inference_endpoint("a")
    wait_for(lambda: not serve.containers("label=endpointd.namespace=alice", all_states=True), 60, "a's replica gone")
    wait_for(lambda: not subprocess.run(
        ["/usr/bin/docker", "network", "ls", "-q", "--filter", "label=endpointd.namespace=alice",
         "--filter", f"label=endpointd.instance={serve.instance}"],
        capture_output=True, text=True, check=True).stdout.strip(), 60, "a's network removed with it")


def test_secrets_never_reach_the_disk_or_an_answer_in_plain_text(serve):
    endpoint = create(serve, serve.alice, "secretive", secrets={"HF_TOKEN": SECRET})
    assert SECRET not in json.dumps(endpoint.raw)
    status, body = http(serve, "GET", "/v2/endpoint/alice/secretive", serve.alice)
    assert status == 200 and SECRET.encode() not in body
    data = serve.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for entry in data.iterdir():
        if entry.is_file() and entry.name != "serve.log":
            assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry.name
            assert SECRET.encode() not in entry.read_bytes(), entry.name
    assert SECRET not in serve.log.read_text()


def test_metrics_and_the_api_tell_nothing_without_a_token(serve):
    create(serve, serve.alice, "quiet")
    assert http(serve, "GET", "/metrics")[0] == 401
    assert http(serve, "GET", "/metrics", serve.bob)[0] == 403
    scraper = serve.cli("tokens", "create", "bob", "--scope", "metrics").strip().splitlines()[-1]
    status, body = http(serve, "GET", "/metrics", scraper)
    assert status == 200 and b"endpointd_" in body
    # Without a token an existing endpoint and a missing one look the same.
    assert http(serve, "GET", "/v2/endpoint/alice/quiet")[0] == http(serve, "GET", "/v2/endpoint/alice/nope")[0] == 401


def test_a_second_serve_on_the_same_data_dir_stops_before_touching_anything(serve):
    create(serve, serve.alice, "held")
    running(serve, serve.alice, "held")
    before = serve.containers()
    env = {**serve.env, "ENDPOINTD_PORT": str(free_port())}
    second = subprocess.run([*ENDPOINTD, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert "another endpointd serve" in second.stderr and "is using the data directory" in second.stderr
    assert serve.containers() == before  # nothing adopted, nothing stopped


def test_setting_the_admin_token_rotates_a_generated_one_out(tmp_path, docker_engine):
    s = Serve(tmp_path / "data", admin_token="")  # no ENDPOINTD_ADMIN_TOKEN: one is generated
    s.data_dir.mkdir(parents=True)
    log = open(s.log, "ab")
    s.process = subprocess.Popen([*ENDPOINTD, "serve"], env=s.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        token_file = s.data_dir / "admin-token"
        wait_for(token_file.exists, 30, "the generated admin token")
        generated = token_file.read_text().strip()
        wait_for(lambda: http(s, "GET", "/api/whoami-v2", generated)[0] == 200, 30, "serve to answer")
        s.stop(signal.SIGTERM)
        s.env["ENDPOINTD_ADMIN_TOKEN"] = s.admin_token = "operator-chosen-admin-token"
        s.start()
        assert http(s, "GET", "/api/whoami-v2", generated)[0] == 401
        assert not token_file.exists()
    finally:
        s.close()


def test_an_older_store_with_plain_secrets_is_sealed_at_start(tmp_path, docker_engine):
    import asyncio

    from autoscaler.model import wire
    from autoscaler.store.store import Store
    s = Serve(tmp_path / "data", admin_token="test-admin-token")
    spec = wire.spec_to_json(wire.parse_create({
        "name": "old", "type": "private", "provider": {"vendor": "local", "region": "local"},
        "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1",
                    "scaling": {"minReplica": 0, "maxReplica": 1, "scaleToZeroTimeout": 15}},
        "model": {"repository": s.model, "framework": "custom", "image": {"custom": ECHO},
                  "secrets": {"HF_TOKEN": SECRET}},
    }))

    async def old_store():
        store = await Store.open(s.data_dir / "endpointd.db")
        await store.add_user("alice")
        await store.create_endpoint("alice", "old", spec)  # as an endpointd before sealing left it
        await store.close()

    s.data_dir.mkdir(parents=True)
    asyncio.run(old_store())
    assert any(SECRET.encode() in p.read_bytes() for p in s.data_dir.iterdir() if p.is_file())
    s.start()
    try:
        wait_for(lambda: "sealed the secrets of 1 endpoint" in s.log.read_text(), 30, "the migration")
        for entry in s.data_dir.iterdir():
            if entry.is_file() and entry.name != "serve.log":
                assert SECRET.encode() not in entry.read_bytes(), entry.name
    finally:
        s.close()
