"""The control plane's promises on the real Docker engine, as a hostile, careful user tries them:
`endpointd serve`, the unmodified huggingface_hub client, the echo engine, `docker ps` sampled
while things happen. Each test is one of the defects the control-plane issue reproduced (its
number in the name)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
import urllib.request

import aiohttp
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi, InferenceClient

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
FAST = {
    "ENDPOINTD_SCALE_WINDOW_S": "2", "ENDPOINTD_STABILIZATION_S": "5", "ENDPOINTD_MINUTE_S": "1",
    "ENDPOINTD_SCALE_INTERVAL_S": "0.5", "ENDPOINTD_LIVENESS_INTERVAL_S": "1",
    # The drill must show that lifecycle actions leave nothing behind by themselves: the orphan
    # sweep, their backstop, is kept out of the way here (and tested on its own below).
    "ENDPOINTD_SWEEP_INTERVAL_S": "3600",
}


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
        custom_image={**ECHO, "env": env or {}}, min_replica=0, max_replica=1, scale_to_zero_timeout=60,
    )
    args.update(kw)
    return HfApi(endpoint=serve.url).create_inference_endpoint(name, **args)


def containers(serve: Serve, name: str, all_states: bool = True) -> list[str]:
    return serve.containers(f"label=endpointd.name={name}", all_states=all_states)


class Sampler:
    """`docker ps` of this endpointd's containers every 200 ms, in a thread, while a test acts."""

    def __init__(self, serve: Serve):
        self.serve, self.samples, self._stop = serve, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            names = self.serve.containers(all_states=True)
            by_endpoint: dict[str, int] = {}
            for name in names:
                endpoint = name.rsplit("-", 1)[0]
                by_endpoint[endpoint] = by_endpoint.get(endpoint, 0) + 1
            self.samples.append(by_endpoint)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def metric(serve: Serve, name: str, **labels) -> float:
    request = urllib.request.Request(f"{serve.url}/metrics", headers={"Authorization": f"Bearer {serve.admin_token}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_1_2_lifecycle_calls_during_starts_leave_no_container_and_never_exceed_max(serve):
    api = HfApi(endpoint=serve.url)
    slow_start = {"ECHO_STARTUP_DELAY_S": "1"}  # a wide window between create and ready
    with Sampler(serve) as sampler:
        for i in range(6):
            name = f"drill{i}"
            endpoint = create(serve, name, env=slow_start)
            wait_for(lambda name=name: containers(serve, name), 60, f"{name}'s container to be created")
            action = i % 3
            if action == 0:
                endpoint.delete()
            elif action == 1:
                endpoint.pause()
            else:
                endpoint.scale_to_zero()
            # Lifecycle calls back to back on the one before, as a hurried user does.
            for _ in range(3):
                if action == 2:
                    endpoint.resume()
                    endpoint.scale_to_zero()
        wait_for(lambda: not serve.containers(all_states=True), 60, "every drill container to be gone")
    assert max(max(s.values(), default=0) for s in sampler.samples) <= 1  # maxReplica 1, no roll
    for i in range(6):
        if i % 3:
            status = api.get_inference_endpoint(f"drill{i}").status
            assert status in ("paused", "scaledToZero"), status  # never `failed` (defect 4)


def test_1_an_orphan_container_is_swept(tmp_path, docker_engine):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env={"ENDPOINTD_SWEEP_INTERVAL_S": "0.5"})
    s.start()
    try:
        labels = ["endpointd.managed=true", f"endpointd.instance={s.instance}", "endpointd.namespace=admin",
                  "endpointd.name=ghost", "endpointd.replica=ghost1", "endpointd.revision=1"]
        subprocess.run(["/usr/bin/docker", "run", "-d", "--name", f"endpointd-ghost-{s.instance}",
                        *[a for label in labels for a in ("--label", label)], "endpointd/echo:latest"],
                       check=True, capture_output=True)
        wait_for(lambda: not s.containers(all_states=True), 30, "the orphan to be stopped")
        assert "orphan container" in s.log.read_text()
    finally:
        s.close()


def test_3_a_users_scale_to_zero_is_not_undone(serve):
    endpoint = create(serve, "zero")
    endpoint.wait(timeout=120, refresh_every=0.5)
    endpoint.scale_to_zero()
    wait_for(lambda: endpoint.fetch().status == "scaledToZero" and not containers(serve, "zero", all_states=False), 60, "scale to zero")
    # Many scaler rounds later (0.5 s apart) and many liveness and reconcile rounds too, still zero.
    rounds = metric(serve, "endpointd_scale_decisions_total", endpoint="admin/zero")
    wait_for(lambda: metric(serve, "endpointd_scale_decisions_total", endpoint="admin/zero") >= rounds + 10,
             60, "ten more scaling rounds")
    assert endpoint.fetch().status == "scaledToZero" and not containers(serve, "zero", all_states=False)
    # A client request after it does wake it.
    held = InferenceClient(model=endpoint.url, headers={"X-Scale-Up-Timeout": "60"})
    assert held.text_generation("wake") == "wake "
    endpoint.delete()


def test_5_delete_then_create_the_same_name(serve):
    create(serve, "again").wait(timeout=120, refresh_every=0.5)
    HfApi(endpoint=serve.url).delete_inference_endpoint("again")
    endpoint = create(serve, "again")
    endpoint.wait(timeout=120, refresh_every=0.5)
    assert endpoint.status == "running"
    assert InferenceClient(model=endpoint.url).text_generation("new") == "new "
    endpoint.delete()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_6_a_wake_survives_an_unrelated_update_and_a_restart(serve, how):
    endpoint = create(serve, "woken")
    endpoint.wait(timeout=120, refresh_every=0.5)
    endpoint.scale_to_zero()
    wait_for(lambda: endpoint.fetch().status == "scaledToZero" and not containers(serve, "woken", all_states=False), 60, "zero")
    held = InferenceClient(model=endpoint.url, headers={"X-Scale-Up-Timeout": "60"})
    assert held.text_generation("wake") == "wake "
    endpoint.wait(timeout=60, refresh_every=0.5)
    woken = containers(serve, "woken", all_states=False)
    assert len(woken) == 1
    HfApi(endpoint=serve.url).update_inference_endpoint("woken", tags=["tags only"])  # an unrelated PUT
    serve.stop(how)
    serve.start()
    endpoint = HfApi(endpoint=serve.url).get_inference_endpoint("woken")
    endpoint.wait(timeout=60, refresh_every=0.5)
    assert endpoint.status == "running"
    assert containers(serve, "woken", all_states=False) == woken  # adopted, never stopped
    assert InferenceClient(model=endpoint.url).text_generation("still") == "still "  # no 503, no cold start
    endpoint.delete()


def test_8_a_hung_replica_gives_504_quickly_and_is_replaced(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token",
              extra_env={**FAST, "ENDPOINTD_UPSTREAM_RESPONSE_START_TIMEOUT_S": "2"})
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    monkeypatch.setenv("HF_TOKEN", s.admin_token)
    paused = None
    try:
        endpoint = create(s, "hang", min_replica=1, scale_to_zero_timeout=None)
        endpoint.wait(timeout=120, refresh_every=0.5)
        (paused,) = containers(s, "hang", all_states=False)
        subprocess.run(["/usr/bin/docker", "pause", paused], check=True, capture_output=True)

        async def call():
            async with aiohttp.ClientSession() as session:
                async with session.post(endpoint.url + "/generate", json={"inputs": "x"}) as r:
                    return r.status, await r.json()

        status, body = asyncio.run(call())
        assert status == 504 and "sent no response headers within 2 s" in body["error"]
        wait_for(lambda: paused not in containers(s, "hang") and containers(s, "hang", all_states=False),
                 60, "the hung replica to be replaced")
        endpoint.wait(timeout=60, refresh_every=0.5)
        assert InferenceClient(model=endpoint.url).text_generation("again") == "again "
        endpoint.delete()
    finally:
        if paused:
            subprocess.run(["/usr/bin/docker", "unpause", paused], capture_output=True)
        s.close()


def test_9_a_hundred_held_streams_are_all_served_by_one_replica(serve):
    endpoint = create(serve, "burst", env={"ECHO_TOKEN_DELAY_S": "0.2"})  # 8 s streams
    endpoint.wait(timeout=120, refresh_every=0.5)
    endpoint.scale_to_zero()
    wait_for(lambda: endpoint.fetch().status == "scaledToZero" and not containers(serve, "burst", all_states=False), 60, "zero")

    async def burst():
        async with aiohttp.ClientSession() as session:
            async def stream():
                body = {"inputs": "t " * 40, "parameters": {"max_new_tokens": 40}}
                async with session.post(endpoint.url + "/generate_stream", json=body,
                                        headers={"X-Scale-Up-Timeout": "20"}) as r:
                    events = [line async for line in r.content if line.startswith(b"data:")]
                    return r.status, len(events)

            return await asyncio.gather(*(stream() for _ in range(100)))

    results = asyncio.run(burst())
    assert results == [(200, 40)] * 100  # none refused while the replica was ready
    endpoint.delete()
