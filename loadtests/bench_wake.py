"""Every wake tier, measured: SmolLM2-135M-Instruct on llama.cpp (the image `endpointd images
build` makes) behind `endpointd serve`, woken by a streamed chat completion from each tier, and
beside it, in the same run, a bare `docker run` of the same image and model to its first token.

# .venv/bin/python loadtests/bench_wake.py [--quick] [--wakes N]

Tiers, alternating within each round so that all see the same drift:
- cold: today's only path before the ladder; a serve with park_ttl_s 0, so a scale-to-zero
  removes the container and the held request creates one;
- parked: a scale-to-zero stops the container and keeps it; the held request starts it again;
- sleeping: sleepAfter 1 s; llama.cpp puts itself to sleep (its model memory released) and the
  request, sent without X-Scale-Up-Timeout, wakes it inside the engine (endpointd only forwards);
- sleeping, driven: the echo engine standing in for vLLM (its sleep routes, ECHO_WAKE_S of wake),
  which endpointd puts to sleep and wakes: its `woke` event gives endpointd's share of such a wake.

Per wake: request sent → first content event (the client's clock), and the endpoint's `woke`
event (autoscaler/control/wakes.py): asked → release, in phases. endpointd's share is what the
engine does not do: prepare (wake call to the container's create or start, or the engine's wake
call) + release (readiness passed to the held request freed); the engine's is create + start +
wake + ready. The bare cold start: `docker run -d` → /health 200 (polled every 20 ms) → the same
streamed request → first content event. Figures, not assertions: the issue's aims (first token
after a wake ≤ 0.5× the bare cold start; endpointd's share ≤ 50 ms p95) are reported against.
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_proxy import percentile as pct  # noqa: E402 - beside this file

from engines import images, models  # noqa: E402
from tests.serve_process import Serve, wait_for  # noqa: E402

DOCKER = "/usr/bin/docker"
ADMIN = "bench-admin-token"
NAME = "smol"  # the served model name
GGUF = models.MODELS["smollm2"].filename
N_PARALLEL, CTX_SIZE = 2, 2048
MESSAGES = [{"role": "user", "content": "What color is the sky on a clear day?"}]
HOLD_S = 120
READY_TIMEOUT_S = 180.0
BARE_POLL_S = 0.02  # the bare start's /health poll: endpointd's fast readiness poll


@dataclass
class Wake:
    total_s: float  # request sent → first content event
    woke_s: float | None  # the woke event: asked → release; None when the engine woke by itself
    phases: dict[str, float]

    @property
    def endpointd_s(self) -> float:
        return self.phases.get("prepare", 0.0) + self.phases.get("release", 0.0)

    @property
    def engine_s(self) -> float:
        return sum(self.phases.get(p, 0.0) for p in ("create", "start", "wake", "ready"))


async def first_token(url: str, headers: dict[str, str]) -> float:
    """Seconds from sending a streamed chat completion to its first content event."""
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "stream": True}
    timeout = aiohttp.ClientTimeout(total=HOLD_S + 30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:
        sent = time.perf_counter()
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"status {response.status}: {(await response.text())[:200]}")
            async for line in response.content:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if choices[0].get("delta", {}).get("content"):
                        return time.perf_counter() - sent
    raise RuntimeError("no content event")


class Endpoint:
    """One endpoint of user `bench` on one serve, created with a raw v2 body."""

    def __init__(self, serve: Serve, token: str, name: str, image: dict, scaling: dict, env: dict | None = None):
        self.serve, self.token, self.name = serve, token, name
        self.url = f"{serve.url}/endpoints/bench/{name}"
        self.since = 0
        body = {"name": name, "type": "private", "provider": {"vendor": "local", "region": "local"},
                "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x2",
                            "scaling": {"maxReplica": 1, **scaling}},
                "model": {"repository": str(Path(serve.model).parent / "smollm2"), "framework": "pytorch",
                          "image": image, "env": env or {}}}
        self.call("POST", "/v2/endpoint/bench", body)
        wait_for(lambda: self.status()["state"] == "running", READY_TIMEOUT_S, f"{name} to run", interval_s=0.2)
        asyncio.run(first_token(self.url, self.auth))  # the model's pages in memory

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.serve.url}{path}", data=data, method=method,
                                         headers={**self.auth, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def serve_states(self) -> list[str]:
        """`docker ps -a` states of this endpoint's containers."""
        done = subprocess.run([DOCKER, "ps", "-a", "--format", "{{.State}}", "--filter",
                               f"label=endpointd.instance={self.serve.instance}", "--filter",
                               f"label=endpointd.name={self.name}"], capture_output=True, text=True, check=True)
        return done.stdout.split()

    def status(self) -> dict:
        return self.call("GET", f"/v2/endpoint/bench/{self.name}")["status"]

    def wait_tier(self, tier: str) -> None:
        wait_for(lambda: self.status().get("tier") == tier, 120, f"{self.name} to be {tier}", interval_s=0.05)

    def new_events(self) -> list[dict]:
        found = self.call("GET", f"/v2/endpoint/bench/{self.name}/events?since={self.since}&limit=1000")
        self.since = found["last"]
        return found["items"]

    def woke(self) -> dict:
        return wait_for(lambda: next((e for e in self.new_events() if e["kind"] == "woke"), None), 30,
                        f"{self.name}'s woke event", interval_s=0.05)


def from_zero(endpoint: Endpoint, tier: str) -> Wake:
    """Scale to zero (parks or removes), then a held request wakes it."""
    endpoint.call("POST", f"/v2/endpoint/bench/{endpoint.name}/scale-to-zero")
    endpoint.wait_tier(tier)
    # Settled: a cold wake starts from no container at all (not beside one still being removed),
    # a parked one from its stopped container.
    wanted = ["exited"] if tier == "parked" else []
    wait_for(lambda: endpoint.serve_states() == wanted, 60, f"{endpoint.name} settled at zero", interval_s=0.05)
    endpoint.new_events()
    total = asyncio.run(first_token(endpoint.url, {**endpoint.auth, "X-Scale-Up-Timeout": str(HOLD_S)}))
    event = endpoint.woke()
    return Wake(total, event["inputs"]["seconds"], event["inputs"]["phases"])


def from_sleep(endpoint: Endpoint, driven: bool) -> Wake:
    """Wait until it sleeps, then a request without X-Scale-Up-Timeout wakes it."""
    endpoint.wait_tier("sleeping")
    endpoint.new_events()
    total = asyncio.run(first_token(endpoint.url, endpoint.auth))
    if not driven:
        return Wake(total, None, {})
    event = endpoint.woke()
    return Wake(total, event["inputs"]["seconds"], event["inputs"]["phases"])


def bare_start(repository: Path) -> float:
    """`docker run` → first content event, one fresh container of the same image and model."""
    name = f"endpointd-bench-wake-{os.getpid()}"
    began = time.perf_counter()
    try:
        subprocess.run([
            DOCKER, "run", "-d", "--rm", "--name", name, "--cpus", "2", "-p", "127.0.0.1::8080",
            "-v", f"{repository}:/m:ro", "-e", f"LLAMA_ARG_MODEL=/m/{GGUF}", "-e", f"LLAMA_ARG_ALIAS={NAME}",
            "-e", "LLAMA_ARG_HOST=0.0.0.0", "-e", "LLAMA_ARG_PORT=8080", "-e", f"LLAMA_ARG_N_PARALLEL={N_PARALLEL}",
            "-e", f"LLAMA_ARG_CTX_SIZE={CTX_SIZE}", images.LLAMA_CPP_IMAGE,
        ], check=True, capture_output=True)
        port = subprocess.run([DOCKER, "port", name, "8080/tcp"], check=True, capture_output=True,
                              text=True).stdout.split()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(healthy, READY_TIMEOUT_S, "the bare llama-server", interval_s=BARE_POLL_S)
        asyncio.run(first_token(url, {}))
        return time.perf_counter() - began
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)


LLAMACPP = {"llamacpp": {"modelPath": GGUF, "nParallel": N_PARALLEL, "ctxSize": CTX_SIZE}}
TIERS = ("cold", "parked", "sleeping", "sleeping, driven (echo as vLLM)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 wakes per tier and 3 bare starts")
    parser.add_argument("--wakes", type=int, default=20)
    args = parser.parse_args()
    n = 3 if args.quick else args.wakes

    with tempfile.TemporaryDirectory(prefix="endpointd-bench-wake-") as tmp:
        # Two serves on one model root: one that never parks (today's cold path), one with the ladder.
        cold_serve = Serve(Path(tmp) / "cold", admin_token=ADMIN, extra_env={"ENDPOINTD_PARK_TTL_S": "0"})
        serve = Serve(Path(tmp) / "ladder", admin_token=ADMIN, extra_env={
            "ENDPOINTD_ENGINE_IMAGE_VLLM": images.ECHO_IMAGE, "ENDPOINTD_MINUTE_S": "1"})
        root = Path(serve.model).parent
        repository = asyncio.run(models.add("smollm2", root, lambda line: print(f"# {line}", flush=True)))
        cold_token, token = cold_serve.add_user("bench"), serve.add_user("bench")
        cold_serve.start()
        serve.start()
        try:
            cold = Endpoint(cold_serve, cold_token, "cold", LLAMACPP, {"minReplica": 0, "scaleToZeroTimeout": 60})
            parked = Endpoint(serve, token, "parked", LLAMACPP, {"minReplica": 0, "scaleToZeroTimeout": 600})
            sleepy = Endpoint(serve, token, "sleepy", LLAMACPP, {"minReplica": 1, "sleepAfter": 1})
            driven = Endpoint(serve, token, "driven", {"vLLM": {}}, {"minReplica": 1, "sleepAfter": 1})
            wakes: dict[str, list[Wake]] = {tier: [] for tier in TIERS}
            bare: list[float] = []
            for i in range(n):
                wakes["cold"].append(from_zero(cold, "cold"))
                wakes["parked"].append(from_zero(parked, "parked"))
                wakes["sleeping"].append(from_sleep(sleepy, driven=False))
                wakes[TIERS[3]].append(from_sleep(driven, driven=True))
                bare.append(bare_start(repository))
                print(f"# round {i + 1}/{n}: " + ", ".join(f"{t} {w[-1].total_s:.3f} s" for t, w in wakes.items())
                      + f", bare {bare[-1]:.3f} s", flush=True)
        finally:
            serve.close()
            cold_serve.close()
    report(wakes, bare)
    return 0


def report(wakes: dict[str, list[Wake]], bare: list[float]) -> None:
    def ms(values: list[float], q: float) -> str:
        return f"{1000 * pct(sorted(values), q):.0f}" if values else "–"

    bare_p50 = pct(sorted(bare), 0.5)
    print(f"\nSmolLM2-135M-Instruct on {images.LLAMA_CPP_IMAGE}, {os.cpu_count()} cores, {len(bare)} rounds: "
          "each tier woken once per round, then a bare start")
    print("| woken from | request → first token p50 / p95 ms | × bare p50 | endpointd's share p50 / p95 ms "
          "| the engine's p50 ms |")
    print("|---|---|---|---|---|")
    for tier, found in wakes.items():
        totals = [w.total_s for w in found]
        timed = [w for w in found if w.woke_s is not None]
        share = f"{ms([w.endpointd_s for w in timed], 0.5)} / {ms([w.endpointd_s for w in timed], 0.95)}" if timed \
            else "0 (the engine wakes itself; endpointd only forwards)"
        engine = ms([w.engine_s for w in timed], 0.5) if timed else "–"
        ratio = pct(sorted(totals), 0.5) / bare_p50
        print(f"| {tier} | {ms(totals, 0.5)} / {ms(totals, 0.95)} | {ratio:.2f}× | {share} | {engine} |")
    print(f"| bare `docker run` → first token | {ms(bare, 0.5)} / {ms(bare, 0.95)} | 1.00× | – | – |")
    for tier, found in wakes.items():
        timed = [w for w in found if w.woke_s is not None]
        if timed:
            phases = {p for w in timed for p in w.phases}
            order = [p for p in ("prepare", "create", "start", "wake", "ready", "release") if p in phases]
            print(f"# {tier}: phases p50 ms " + ", ".join(f"{p} {ms([w.phases.get(p, 0.0) for w in timed], 0.5)}"
                                                        for p in order))
    best = min(pct(sorted(w.total_s for w in found), 0.5) for tier, found in wakes.items() if tier != TIERS[3])
    shares = [w.endpointd_s for found in wakes.values() for w in found if w.woke_s is not None]
    print(f"\naims: a wake's first token ≤ 0.5× bare (best tier p50 here: {best / bare_p50:.2f}×); endpointd's "
          f"share of any wake ≤ 50 ms p95 (here: {ms(shares, 0.95)} ms)")


if __name__ == "__main__":
    sys.exit(main())
