"""Today's cold wake, measured: SmolLM2-135M-Instruct on llama.cpp (the image `endpointd images
build` makes) behind `endpointd serve`, scaled to zero, then woken by a streamed chat completion
sent with X-Scale-Up-Timeout; beside it, in the same run, a bare `docker run` of the same image
and model to its first token.

# .venv/bin/python loadtests/bench_wake.py [--quick] [--wakes N]

Per wake: request sent → first content event (the client's clock), and the endpoint's `woke`
event (autoscaler/control/wakes.py): asked → release, in phases. endpointd's share is what the
engine does not do: prepare (wake call to container create: the owner's step, artifacts, image
check) + release (readiness passed to the held request freed); the engine's is create + start +
ready (Docker and llama-server). What the client sees beyond the wake (its request reaching the
wake call, the forward, the engine's first token) is reported as "outside". The bare cold start:
`docker run -d` → /health 200 (polled every 20 ms, as endpointd's readiness does at first) → the
same streamed request → first content event. Figures, not assertions: the issue's aims (first
token after a wake ≤ 0.5× the bare cold start; endpointd's share ≤ 50 ms p95) are reported
against. Loopback only; bounded in count and time.
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
import huggingface_hub.constants as hub_constants
from huggingface_hub import HfApi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_proxy import percentile as pct  # noqa: E402 - beside this file

from engines import images, models  # noqa: E402
from tests.serve_process import Serve, wait_for  # noqa: E402

DOCKER = "/usr/bin/docker"
ADMIN = "bench-admin-token"
NAME = "smol"
GGUF = models.MODELS["smollm2"].filename
N_PARALLEL, CTX_SIZE = 2, 2048
MESSAGES = [{"role": "user", "content": "What color is the sky on a clear day?"}]
HOLD_S = 120
READY_TIMEOUT_S = 180.0
BARE_POLL_S = 0.02  # the bare start's /health poll: endpointd's fast readiness poll


@dataclass
class Wake:
    total_s: float  # request sent → first content event
    woke_s: float  # the woke event: asked → release
    phases: dict[str, float]

    @property
    def endpointd_s(self) -> float:
        return self.phases.get("prepare", 0.0) + self.phases.get("release", 0.0)

    @property
    def engine_s(self) -> float:
        return sum(self.phases.get(p, 0.0) for p in ("create", "start", "ready"))

    @property
    def outside_s(self) -> float:
        return self.total_s - self.woke_s


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


def events(serve: Serve, token: str, since: int) -> tuple[list[dict], int]:
    request = urllib.request.Request(f"{serve.url}/v2/endpoint/bench/{NAME}/events?since={since}&limit=1000",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        found = json.loads(response.read())
    return found["items"], found["last"]


def wake_once(serve: Serve, token: str, endpoint, url: str, since: int) -> tuple[Wake, int]:
    endpoint.scale_to_zero()
    wait_for(lambda: not serve.containers(all_states=True), 60, "the replica to be removed", interval_s=0.1)
    _, since = events(serve, token, since)
    total = asyncio.run(first_token(url, {"Authorization": f"Bearer {token}", "X-Scale-Up-Timeout": str(HOLD_S)}))

    def woke():
        nonlocal since
        items, since = events(serve, token, since)
        return next((e for e in items if e["kind"] == "woke"), None)

    event = wait_for(woke, 30, "the wake's event", interval_s=0.1)
    return Wake(total, event["inputs"]["seconds"], event["inputs"]["phases"]), since


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 wakes and 3 bare starts")
    parser.add_argument("--wakes", type=int, default=20)
    args = parser.parse_args()
    n = 3 if args.quick else args.wakes

    with tempfile.TemporaryDirectory(prefix="endpointd-bench-wake-") as tmp:
        serve = Serve(Path(tmp) / "data", admin_token=ADMIN)
        root = Path(serve.model).parent
        repository = asyncio.run(models.add("smollm2", root, lambda line: print(f"# {line}", flush=True)))
        token = serve.add_user("bench")
        serve.start()
        hub_constants.INFERENCE_ENDPOINTS_ENDPOINT = f"{serve.url}/v2"  # the client's endpoints API: this serve
        try:
            endpoint = HfApi(endpoint=serve.url, token=token).create_inference_endpoint(
                NAME, repository=str(repository), framework="pytorch", accelerator="cpu", instance_size="x2",
                instance_type="intel-icl", region="local", vendor="local", type="private", min_replica=0,
                max_replica=1, scale_to_zero_timeout=60,
                custom_image={"llamacpp": {"modelPath": GGUF, "nParallel": N_PARALLEL, "ctxSize": CTX_SIZE}},
            )
            endpoint.wait(timeout=READY_TIMEOUT_S, refresh_every=0.5)
            url = endpoint.url
            asyncio.run(first_token(url, {"Authorization": f"Bearer {token}"}))  # the model's pages in memory
            wakes: list[Wake] = []
            bare: list[float] = []
            since = 0
            for i in range(n):  # alternating, so both see the same drift
                wake, since = wake_once(serve, token, endpoint, url, since)
                wakes.append(wake)
                bare.append(bare_start(repository))
                print(f"# wake {i + 1}/{n}: {wake.total_s:.3f} s (woke {wake.woke_s:.3f} s: {wake.phases}); "
                      f"bare {bare[-1]:.3f} s", flush=True)
        finally:
            serve.close()
    report(wakes, bare)
    return 0


def report(wakes: list[Wake], bare: list[float]) -> None:
    def row(what: str, values: list[float]) -> str:
        ordered = sorted(values)
        return f"| {what} | {1000 * pct(ordered, 0.5):.0f} | {1000 * pct(ordered, 0.95):.0f} |"

    print(f"\nSmolLM2-135M-Instruct on {images.LLAMA_CPP_IMAGE}, {os.cpu_count()} cores, {len(wakes)} wakes "
          f"and {len(bare)} bare starts, alternating")
    print("| | p50 ms | p95 ms |")
    print("|---|---|---|")
    print(row("wake through endpointd: request → first token", [w.total_s for w in wakes]))
    print(row("… endpointd's share (prepare + release)", [w.endpointd_s for w in wakes]))
    print(row("… the engine's (create + start + ready)", [w.engine_s for w in wakes]))
    for phase in ("prepare", "create", "start", "ready", "release"):
        print(row(f"… phase {phase}", [w.phases.get(phase, 0.0) for w in wakes]))
    print(row("… outside the wake (to the wake call, forward, first token)", [w.outside_s for w in wakes]))
    print(row("bare `docker run` → first token", bare))
    ratio = pct(sorted(w.total_s for w in wakes), 0.5) / pct(sorted(bare), 0.5)
    share = pct(sorted(w.endpointd_s for w in wakes), 0.95)
    print(f"\naims: wake ≤ 0.5× bare (p50 here: {ratio:.2f}×); endpointd's share ≤ 50 ms p95 (here: "
          f"{1000 * share:.0f} ms)")


if __name__ == "__main__":
    sys.exit(main())
