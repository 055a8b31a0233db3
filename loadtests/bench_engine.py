"""A real LLM, reached directly and through endpointd: SmolLM2-135M-Instruct on llama.cpp's server
(the image `endpointd images build` makes), streaming chat completions at concurrency 1, 4 and 16.

# .venv/bin/python loadtests/bench_engine.py [--quick]

For each concurrency and each path (direct: the container's published port; endpointd: its raw
data plane with its default worker processes, an `authenticated` endpoint, so auth, pending
counting and metrics are all on), in alternating rounds: time to first token p50/p99 (request sent
to the first content event), tokens/s per stream and in total, and the delay between two content
events p99. Every stream asks for exactly TOKENS tokens (`ignore_eos`, temperature 0), so the
paths do the same work. Figures, not assertions: the aims (≥ 0.98× direct tokens/s, ≤ +2 ms time
to first token, ≤ +1 ms inter-token p99) are reported against. Loopback only; bounded in count
and time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_proxy import free_port  # noqa: E402 - beside this file
from bench_proxy import percentile as pct

from engines import images, models  # noqa: E402

DOCKER = "/usr/bin/docker"
TOKEN = "bench-token"
TOKENS = 64
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
CONCURRENCY = (1, 4, 16)
READY_TIMEOUT_S = 60.0
STAGGER_S = 0.05
COUNTER = itertools.count()
REQUEST_TIMEOUT_S = 120.0
ROUTES = """
[[users]]
name = "bench"
tokens = ["{token}"]

[[endpoints]]
namespace = "bench"
name = "smol"
type = "authenticated"
replicas = ["127.0.0.1:{port}"]
"""


@dataclass
class Stream:
    ttft_s: float
    gaps_s: list[float]
    tokens: int
    duration_s: float


@dataclass
class Figures:
    streams: list[Stream] = field(default_factory=list)
    wall_s: float = 0.0
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        ttft = sorted(s.ttft_s for s in self.streams) or [math.nan]
        gaps = sorted(g for s in self.streams for g in s.gaps_s) or [math.nan]
        per_stream = [s.tokens / s.duration_s for s in self.streams if s.duration_s > 0]
        return {
            "ttft_p50_ms": 1000 * pct(ttft, 0.5), "ttft_p99_ms": 1000 * pct(ttft, 0.99),
            "tok_s_stream": statistics.median(per_stream) if per_stream else math.nan,
            "tok_s_total": sum(s.tokens for s in self.streams) / self.wall_s if self.wall_s else math.nan,
            "gap_p99_ms": 1000 * pct(gaps, 0.99), "failures": self.failures,
        }


async def one_stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int) -> Stream:
    # A prompt of its own per request: llama.cpp gives a request the slot whose cached prompt is
    # most like it, so identical prompts would queue behind one slot.
    messages = [{"role": "user", "content": f"{PROMPT[0]['content']} Story number {n}."}]
    body = {"model": "smol", "messages": messages, "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "ignore_eos": True}
    sent = time.perf_counter()
    times: list[float] = []
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"status {response.status}: {(await response.text())[:200]}")
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                times.append(time.perf_counter())
    if not times:
        raise RuntimeError("no content events")
    return Stream(times[0] - sent, [b - a for a, b in itertools.pairwise(times)], len(times), times[-1] - sent)


async def load(url: str, headers: dict[str, str], concurrency: int, per_client: int) -> Figures:
    figures = Figures()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    # A connection per request on both paths: llama-server closes idle keep-alive connections (a
    # reused one fails as "server disconnected"), and each one it keeps open holds one of its
    # HTTP threads. endpointd's own connections to the replica are its business.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def client(index: int) -> None:
            # Clients start STAGGER_S apart: sixteen prompts landing in the same millisecond make
            # llama.cpp process them as one batch before any first token, on either path.
            await asyncio.sleep(index * STAGGER_S)
            for _ in range(per_client):
                try:
                    figures.streams.append(await one_stream(session, url, headers, next(COUNTER)))
                except (TimeoutError, aiohttp.ClientError, RuntimeError) as error:
                    figures.failures += 1
                    figures.errors.append(f"{type(error).__name__}: {error}"[:200])

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        figures.wall_s = time.perf_counter() - started
    return figures


def wait_http(url: str, headers: dict[str, str], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)  # poll interval while the server starts
    raise RuntimeError(f"{what} did not answer 200 at {url} within {READY_TIMEOUT_S:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per_client = {1: 4, 4: 2, 16: 1} if args.quick else {1: 12, 4: 6, 16: 3}

    with tempfile.TemporaryDirectory(prefix="endpointd-bench-engine-") as tmp:
        root = Path(tmp) / "models"
        root.mkdir()
        repository = asyncio.run(models.add("smollm2", root, lambda line: print(f"# {line}", flush=True)))
        gguf = models.MODELS["smollm2"].filename
        name = f"endpointd-bench-engine-{os.getpid()}"
        subprocess.run([
            DOCKER, "run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::8080", "-v", f"{repository}:/m:ro",
            "-e", f"LLAMA_ARG_MODEL=/m/{gguf}", "-e", "LLAMA_ARG_HOST=0.0.0.0", "-e", "LLAMA_ARG_PORT=8080",
            "-e", f"LLAMA_ARG_N_PARALLEL={max(CONCURRENCY)}", "-e", f"LLAMA_ARG_CTX_SIZE={max(CONCURRENCY) * 512}",
            # HTTP threads for both paths at once: endpointd keeps its connections to the replica
            # open between requests, and each open connection holds one of llama-server's threads.
            "-e", f"LLAMA_ARG_THREADS_HTTP={4 * max(CONCURRENCY)}",
            "-e", "LLAMA_ARG_ENDPOINT_METRICS=1", images.LLAMA_CPP_IMAGE,
        ], check=True, capture_output=True)
        proxy = None
        try:
            port = subprocess.run([DOCKER, "port", name, "8080/tcp"], check=True, capture_output=True,
                                  text=True).stdout.split()[0].rsplit(":", 1)[1]
            direct = f"http://127.0.0.1:{port}"
            wait_http(f"{direct}/health", {}, "llama-server")
            routes = Path(tmp) / "routes.toml"
            routes.write_text(ROUTES.format(token=TOKEN, port=port))
            proxy_port = free_port()
            endpointd = shutil.which("endpointd", path=str(Path(sys.executable).parent)) or "endpointd"
            log = open(Path(tmp) / "proxy.log", "wb")
            proxy = subprocess.Popen([endpointd, "proxy", "--routes", str(routes), "--port", str(proxy_port)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            through = f"http://127.0.0.1:{proxy_port}/endpoints/bench/smol"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            wait_http(f"{through}/health", auth, "endpointd's proxy")
            asyncio.run(load(direct, {}, 2, 1))  # warm-up: the model's pages in memory, both paths' connections
            asyncio.run(load(through, auth, 2, 1))
            results: dict[tuple[int, str], Figures] = {}
            for concurrency in CONCURRENCY:
                for _ in range(args.rounds):  # alternating, so both paths see the same drift
                    for path, url, headers in (("direct", direct, {}), ("endpointd", through, auth)):
                        got = asyncio.run(load(url, headers, concurrency, per_client[concurrency]))
                        total = results.setdefault((concurrency, path), Figures())
                        total.streams += got.streams
                        total.wall_s += got.wall_s
                        total.failures += got.failures
                        total.errors += got.errors
            report(results, args)
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(10)
            subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)
    return 0


def report(results: dict[tuple[int, str], Figures], args: argparse.Namespace) -> None:
    print(f"\nSmolLM2-135M-Instruct Q4_1 on {images.LLAMA_CPP_IMAGE}, {os.cpu_count()} cores, {TOKENS} tokens "
          f"per stream, {args.rounds} alternating rounds per concurrency")
    head = "| concurrency | path | TTFT p50 ms | TTFT p99 ms | tok/s per stream | tok/s total | gap p99 ms | failures |"
    print(head)
    print("|" + "---|" * 8)
    for concurrency in CONCURRENCY:
        rows = {path: results[(concurrency, path)].row() for path in ("direct", "endpointd")}
        for path, r in rows.items():
            print(f"| {concurrency} | {path} | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | {r['tok_s_stream']:.1f} "
                  f"| {r['tok_s_total']:.1f} | {r['gap_p99_ms']:.1f} | {r['failures']} |")
        d, e = rows["direct"], rows["endpointd"]
        print(f"| {concurrency} | endpointd vs direct | {e['ttft_p50_ms'] - d['ttft_p50_ms']:+.1f} ms "
              f"| {e['ttft_p99_ms'] - d['ttft_p99_ms']:+.1f} ms | {e['tok_s_stream'] / d['tok_s_stream']:.3f}× "
              f"| {e['tok_s_total'] / d['tok_s_total']:.3f}× | {e['gap_p99_ms'] - d['gap_p99_ms']:+.1f} ms | |")
    for (concurrency, path), figures in sorted(results.items()):
        if figures.errors:
            print(f"failures at concurrency {concurrency}, {path}: {figures.errors[0]}")
    print("\naims: tokens/s ≥ 0.98× direct; TTFT ≤ +2 ms; inter-token p99 ≤ +1 ms (each concurrency)")


if __name__ == "__main__":
    sys.exit(main())
