"""Runtime logs end to end: `endpointd serve` on the real Docker engine with the echo engine (which
logs `METHOD PATH STATUS` per request), driven by the unmodified huggingface_hub client and plain
HTTP: a request's line shows up in `…/logs` and live over `…/logs/sse`, the filters work, a
replica's lines outlive its scale-down and go with the endpoint's delete, a secret's value never
appears, and no one reads another namespace's logs."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiohttp
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from tests.serve_process import ENDPOINTD, Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
# Liveness every second (the echo engine does not log its health probes).
# No parked tier here: these tests follow a replica's logs past the removal of its container.
FAST = {"ENDPOINTD_LIVENESS_INTERVAL_S": "1", "ENDPOINTD_SWEEP_INTERVAL_S": "3600", "ENDPOINTD_PARK_TTL_S": "0"}
LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ([A-Za-z0-9_.-]+) (.*)$")
SECRET = "hf_logs_secret_value_0815"
ADMIN = "admin"  # the admin's namespace


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=FAST)
    s.alice = s.add_user("alice", "acme")
    s.bob = s.add_user("bob")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)  # what `wait()` sends
    yield s
    s.close()


def create(serve: Serve, name: str, token: str | None = None, **kw):
    args = dict(
        repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", type="public", custom_image=ECHO,
        min_replica=1, max_replica=1,
    )
    args.update(kw)
    return HfApi(endpoint=serve.url, token=token or serve.admin_token).create_inference_endpoint(name, **args)


def running(serve: Serve, name: str, **kw):
    endpoint = create(serve, name, **kw)
    endpoint.wait(timeout=120, refresh_every=0.5)
    return endpoint


def http(serve: Serve, path: str, token: str | None, params: dict | None = None, method: str = "GET",
         data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    url = serve.url + path + (("?" + urllib.parse.urlencode(params)) if params else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def logs(serve: Serve, name: str, ns: str = ADMIN, token: str | None = None, **params) -> list[str]:
    status, headers, body = http(serve, f"/v2/endpoint/{ns}/{name}/logs", token or serve.admin_token,
                                 {k: str(v) for k, v in params.items()})
    assert status == 200, body
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    return body.decode().splitlines()


def fields(line: str) -> tuple[str, str, str]:
    match = LINE.match(line)
    assert match, f"not `TIME REPLICA TEXT`: {line!r}"
    return match.groups()


def call(serve: Serve, name: str, path: str) -> int:
    """An inference request to the (public) endpoint; the echo engine logs it."""
    return http(serve, f"/endpoints/{ADMIN}/{name}{path}", None, method="POST", data=b"{}")[0]


def logged(serve: Serve, name: str, needle: str, **params) -> list[str]:
    """Wait for a line containing `needle` in the endpoint's logs; those lines."""
    def found():
        hits = [line for line in logs(serve, name, tail=1000, **params) if needle in line]
        return hits or None

    return wait_for(found, 60, f"{needle!r} in the logs of {name}", interval_s=0.2)


def test_a_request_shows_up_and_tail_and_replica_filter(serve):
    running(serve, "logs1", min_replica=2, max_replica=2)
    marker = f"marker-{uuid.uuid4().hex}"
    assert call(serve, "logs1", f"/{marker}") == 404  # the echo engine's own 404, logged
    (line,) = logged(serve, "logs1", marker)
    _, replica, text = fields(line)
    assert text == f"POST /{marker} 404"

    # Each replica's log is collected by a follower of its own, started when a poll first sees the
    # container: the other replica's lines may arrive after the marker's.
    def both_replicas():
        lines = logs(serve, "logs1", tail=1000)  # each replica's two start lines, and the marker
        ids = {fields(line)[1] for line in lines}
        return ids if len(ids) == 2 and len(lines) >= 5 else None

    replicas = wait_for(both_replicas, 60, "lines of both replicas")
    assert len(logs(serve, "logs1", tail=1)) == 1
    five = [fields(line) for line in logs(serve, "logs1", tail=5)]
    assert len(five) == 5 and [t for t, _, _ in five] == sorted(t for t, _, _ in five)  # oldest first
    stored = len(logs(serve, "logs1", tail=1000))
    assert min(stored, 50) <= len(logs(serve, "logs1")) <= 50  # the default: the latest 50

    assert replica in replicas
    for rid in replicas:
        own = logs(serve, "logs1", replica=rid, tail=1000)
        assert own and {fields(line_)[1] for line_ in own} == {rid}
    assert any(marker in line_ for line_ in logs(serve, "logs1", replica=replica, tail=1000))
    assert logs(serve, "logs1", replica="nosuch") == []

    status, _, body = http(serve, f"/v2/endpoint/{ADMIN}/logs1/logs", serve.admin_token, {"tail": "0"})
    assert status == 400 and "tail" in json.loads(body)["error"]


async def test_sse_delivers_a_new_line_after_the_request_that_logged_it(serve):
    await asyncio.to_thread(running, serve, "logs2")
    marker = f"live-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {serve.admin_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{serve.url}/v2/endpoint/{ADMIN}/logs2/logs/sse", params={"tail": "1"},
                               headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            first = await r.content.readline()  # the backlog's one line: the stream is open
            assert first.startswith(b"data: "), first
            async with session.post(f"{serve.url}/endpoints/{ADMIN}/logs2/{marker}", data=b"{}") as answer:
                assert answer.status == 404
            async with asyncio.timeout(60):  # generous: it comes within about a second
                while True:
                    raw = await r.content.readline()
                    assert raw, "the stream ended before the line came"
                    if raw.startswith(b"data: ") and marker.encode() in raw:
                        break
            assert fields(raw[len(b"data: "):].decode().rstrip("\n"))[2] == f"POST /{marker} 404"


def test_a_replicas_logs_survive_its_scale_down_and_go_with_the_delete(serve):
    api = HfApi(endpoint=serve.url, token=serve.admin_token)
    running(serve, "logs3", min_replica=0, scale_to_zero_timeout=60)
    marker = f"kept-{uuid.uuid4().hex}"
    call(serve, "logs3", f"/{marker}")
    (line,) = logged(serve, "logs3", marker)
    replica = fields(line)[1]

    api.scale_to_zero_inference_endpoint("logs3")
    wait_for(lambda: not serve.containers("label=endpointd.name=logs3", all_states=True), 60,
             "the replica's container to be gone")
    assert any(marker in line_ for line_ in logs(serve, "logs3", replica=replica, tail=1000))

    api.delete_inference_endpoint("logs3")
    status, _, body = http(serve, f"/v2/endpoint/{ADMIN}/logs3/logs", serve.admin_token)
    assert status == 404 and "error" in json.loads(body)
    db = sqlite3.connect(f"file:{serve.data_dir / 'logs.db'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM lines WHERE text LIKE ?", (f"%{marker}%",)).fetchone() == (0,)
    finally:
        db.close()
    running(serve, "logs3")  # the same name again: a new endpoint, with none of the old lines
    wait_for(lambda: logs(serve, "logs3"), 60, "the new endpoint's first lines")
    assert not any(marker in line_ for line_ in logs(serve, "logs3", tail=10_000))


def test_a_secret_value_never_appears(serve):
    running(serve, "logs4", secrets={"HF_TOKEN": SECRET})
    assert call(serve, "logs4", f"/leak/{SECRET}") == 404  # the engine logs the path, secret and all
    (line,) = logged(serve, "logs4", "/leak/")
    assert fields(line)[2] == "POST /leak/*** 404"
    assert not any(SECRET in line_ for line_ in logs(serve, "logs4", tail=10_000))
    stored = b"".join(p.read_bytes() for p in serve.data_dir.glob("logs.db*"))
    assert SECRET.encode() not in stored


def test_no_one_reads_another_namespaces_logs(serve):
    create(serve, "mine", serve.alice, type="private")
    for path in ("/v2/endpoint/alice/mine/logs", "/v2/endpoint/alice/mine/logs/sse"):
        status, _, body = http(serve, path, serve.bob)
        assert status == 403 and "error" in json.loads(body), (path, status, body)
        status, _, body = http(serve, path, None)
        assert status == 401 and "error" in json.loads(body), (path, status, body)
        status, _, body = http(serve, path.replace("mine", "nosuch"), serve.alice)
        assert status == 404 and "error" in json.loads(body), (path, status, body)
    assert http(serve, "/v2/endpoint/alice/mine/logs", serve.alice)[0] == 200
    assert http(serve, "/v2/endpoint/alice/mine/logs", serve.admin_token)[0] == 200


def test_a_restarted_endpointd_keeps_collecting_without_duplicating(serve):
    running(serve, "logs5")
    before = f"before-{uuid.uuid4().hex}"
    call(serve, "logs5", f"/{before}")
    (line,) = logged(serve, "logs5", before)
    replica = fields(line)[1]
    serve.stop()  # the engine container keeps running; the next start adopts it
    serve.start()
    after = f"after-{uuid.uuid4().hex}"
    wait_for(lambda: call(serve, "logs5", f"/{after}") == 404, 60, "the adopted replica to answer")
    logged(serve, "logs5", after)
    texts = [fields(line)[2] for line in logs(serve, "logs5", replica=replica, tail=10_000)]
    assert texts.count(f"POST /{before} 404") == 1  # read again from the start, stored once
    assert texts.count("echo engine listening on :80") == 1


def test_the_cli_prints_and_follows_the_logs(serve):
    running(serve, "logs6")
    marker = f"cli-{uuid.uuid4().hex}"
    call(serve, "logs6", f"/{marker}")
    logged(serve, "logs6", marker)
    printed = serve.cli("logs", f"{ADMIN}/logs6", "--tail", "1000").splitlines()
    (line,) = [line_ for line_ in printed if marker in line_]
    replica = fields(line)[1]
    assert len(serve.cli("logs", f"{ADMIN}/logs6", "--tail", "2").splitlines()) == 2
    assert all(fields(line_)[1] == replica for line_ in serve.cli("logs", f"{ADMIN}/logs6", "--replica", replica).splitlines())

    follower = subprocess.Popen([*ENDPOINTD, "logs", f"{ADMIN}/logs6", "-f", "--tail", "1"], env=serve.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, follower.kill)  # a stream that never brings the line ends the test
    watchdog.start()
    try:
        fields(follower.stdout.readline().rstrip("\n"))  # the backlog's line: it follows
        later = f"followed-{uuid.uuid4().hex}"
        call(serve, "logs6", f"/{later}")
        for printed_line in follower.stdout:  # ends only when the line comes (or the stream does)
            if later in printed_line:
                assert fields(printed_line.rstrip("\n"))[2] == f"POST /{later} 404"
                break
        else:
            raise AssertionError(f"the follower ended before {later!r}: {follower.stderr.read()}")
    finally:
        watchdog.cancel()
        follower.kill()
        follower.wait()
