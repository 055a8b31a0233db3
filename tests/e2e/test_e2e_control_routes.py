"""The engines' control routes through the real `endpointd proxy` in front of a real engine
container: the echo engine (engines/echo/server.py), which logs every request it gets as
`METHOD PATH STATUS`, behind endpoints that say they run vLLM and SGLang (`engine` in the routes
file) and behind one that names no engine. Each control route, however spelled, is the proxy's
JSON 404 and never appears in the engine's log; ordinary routes still reach it."""

from __future__ import annotations

import http.client
import json
import subprocess
import uuid

import pytest

from engines.images import ECHO_IMAGE
from tests.proxy_harness import free_port
from tests.serve_process import ENDPOINTD, wait_for

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker"

VLLM_ROUTES = [
    ("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping"), ("POST", "/collective_rpc"),
    ("POST", "/reset_prefix_cache"), ("POST", "/start_profile"), ("POST", "/pause"), ("POST", "/scale_elastic_ep"),
    # Spellings the engine's router would take as /sleep, or that another stack in front would.
    ("POST", "/%73leep"), ("POST", "//sleep"), ("POST", "/sleep/"), ("POST", "/./sleep"), ("POST", "/v1/../sleep"),
    ("PUT", "/SLEEP"), ("POST", "/%2573leep"),
]
SGLANG_ROUTES = [
    ("POST", "/release_memory_occupation"), ("POST", "/resume_memory_occupation"),
    ("POST", "/update_weights_from_disk"), ("POST", "/update_weights_from_distributed"),
    ("POST", "/update_weights_from_tensor"), ("POST", "/flush_cache"), ("GET", "/flush_cache"),
    ("POST", "/abort_request"), ("POST", "/init_weights_update_group"), ("POST", "/configure_logging"),
]


def docker(*args: str) -> str:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=True).stdout.strip()


def call(port: int, method: str, target: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request with its target sent byte for byte (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, target, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def echo(docker_engine):
    """An echo engine container on a random local port: its name and address."""
    name = f"endpointd-test-control-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "-p", "127.0.0.1::80", ECHO_IMAGE)
    try:
        address = docker("port", name, "80/tcp").splitlines()[0]
        port = int(address.rpartition(":")[2])

        def healthy() -> bool:
            try:
                return call(port, "GET", "/health")[0] == 200
            except OSError:
                return False

        wait_for(healthy, 30, "the echo engine's /health")
        yield name, address
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)


@pytest.fixture
def proxy(tmp_path, echo):
    """`endpointd proxy` in front of the echo container: its port."""
    _, address = echo
    routes = tmp_path / "routes.toml"
    routes.write_text("".join(
        f'[[endpoints]]\nnamespace = "acme"\nname = "{name}"\ntype = "public"\nreplicas = ["{address}"]\n{engine}\n'
        for name, engine in (("vllm", 'engine = "vllm"'), ("sglang", 'engine = "sglang"'), ("custom", ""))
    ))
    port = free_port()
    log = open(tmp_path / "proxy.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen([*ENDPOINTD, "proxy", "--routes", str(routes), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            assert process.poll() is None, (tmp_path / "proxy.log").read_text()
            try:
                return call(port, "GET", "/endpoints/acme/vllm/health")[0] == 200
            except OSError:
                return False

        wait_for(listening, 30, "endpointd proxy to serve the echo engine's /health")
        yield port
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def engine_log(echo) -> list[str]:
    name, _ = echo
    done = subprocess.run([DOCKER, "logs", name], capture_output=True, text=True, check=True)
    return (done.stdout + done.stderr).splitlines()


def test_control_routes_are_refused_by_the_proxy_and_never_reach_the_engine(proxy, echo):
    for endpoint, routes in (("vllm", VLLM_ROUTES), ("sglang", SGLANG_ROUTES)):
        for method, tail in routes:
            status, headers, body = call(proxy, method, f"/endpoints/acme/{endpoint}{tail}", b"{}")
            assert status == 404, (endpoint, method, tail, status, body)
            assert headers["content-type"].startswith("application/json")
            error = json.loads(body)["error"]  # OpenAI's shape under /v1 (proxy/core/errors.py)
            assert "control routes" in (error["message"] if tail.startswith("/v1/") else error), body

    # Ordinary routes still reach the engine, with their query strings.
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello there"}]}).encode()
    for endpoint in ("vllm", "sglang"):
        status, _, body = call(proxy, "POST", f"/endpoints/acme/{endpoint}/v1/chat/completions?x=1", chat)
        assert status == 200, body
        assert "hello there" in json.loads(body)["choices"][0]["message"]["content"]
        assert call(proxy, "GET", f"/endpoints/acme/{endpoint}/health")[0] == 200
    # An endpoint that names no engine keeps every route: its /sleep reaches the engine, which has none.
    status, headers, _ = call(proxy, "POST", "/endpoints/acme/custom/sleep")
    assert status == 404 and not headers.get("content-type", "").startswith("application/json")

    # The engine logs in the order it answered: once the last request is in its log, every earlier
    # one that reached it is too. Only the two chats and the custom endpoint's /sleep did.
    wait_for(lambda: any(line.endswith("POST /sleep 404") for line in engine_log(echo)), 30,
             "the custom endpoint's /sleep in the engine's log")
    requests = [line.split() for line in engine_log(echo)]
    reached = [words[1] for words in requests if len(words) == 3 and words[0] in {"GET", "POST", "PUT"}]
    assert reached == ["/v1/chat/completions", "/v1/chat/completions", "/sleep"], reached
