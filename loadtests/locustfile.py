"""Load tests of one endpoint through endpointd, with locust. Three scenarios, one user class each:

    SteadyUser      steady text generation against a warm endpoint
    ColdStartUser   a burst of clients against an endpoint at zero, each holding with X-Scale-Up-Timeout
    StreamUser      long SSE streams (generate_stream, or OpenAI chat with STREAM_API=openai), each
                    read to the end

Run headless, bounded in time (loopback only), e.g. against `./demo`'s endpoint:

    ENDPOINTD_URL=http://127.0.0.1:8080 ENDPOINT=admin/demo HF_TOKEN=$(cat endpointd-data/admin-token) \\
      .venv/bin/locust -f loadtests/locustfile.py --headless -u 20 -r 20 -t 60s SteadyUser

Locust prints failures and latency percentiles; this file adds the endpoint's replica count over
time (sampled every second from the management API) as lines `replicas t=… ready=… target=… state=…`
and, at the end, the whole series.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

import gevent
from locust import HttpUser, between, constant, events, task

BASE = os.environ.get("ENDPOINTD_URL", "http://127.0.0.1:8080").rstrip("/")
ENDPOINT = os.environ.get("ENDPOINT", "admin/demo")
TOKEN = os.environ.get("HF_TOKEN", "")
HOLD_S = os.environ.get("SCALE_UP_TIMEOUT_S", "120")
STREAM_TOKENS = int(os.environ.get("STREAM_TOKENS", "200"))
STREAM_API = os.environ.get("STREAM_API", "tgi")  # tgi | openai
TOKENS: list[tuple[float, int]] = []  # (when a chat stream ended, its tokens), for tokens/s
AUTH = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
SERIES: list[tuple[float, int, int, str]] = []


def _status() -> dict:
    request = urllib.request.Request(f"{BASE}/v2/endpoint/{ENDPOINT}", headers=AUTH)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)["status"]


def _sample_replicas(environment) -> None:
    started = time.monotonic()
    while environment.runner is not None and environment.runner.state not in ("stopped", "quitting"):
        try:
            status = _status()
            row = (round(time.monotonic() - started, 1), status.get("readyReplica", 0), status.get("targetReplica", 0), status["state"])
            SERIES.append(row)
            print("replicas t={} ready={} target={} state={}".format(*row), flush=True)
        except OSError as error:
            print(f"replicas: cannot read the endpoint's status: {error}", flush=True)
        gevent.sleep(1.0)


@events.test_start.add_listener
def _start_sampler(environment, **kwargs) -> None:
    gevent.spawn(_sample_replicas, environment)


@events.quitting.add_listener
def _print_series(environment, **kwargs) -> None:
    print("replica count over time (s, ready, target, state):")
    for row in SERIES:
        print("  {:>7} {:>3} {:>3} {}".format(*row))


class _EndpointUser(HttpUser):
    abstract = True
    host = BASE

    def on_start(self) -> None:
        self.client.headers.update(AUTH)


class SteadyUser(_EndpointUser):
    wait_time = between(0.05, 0.2)

    @task
    def generate(self) -> None:
        self.client.post(f"/endpoints/{ENDPOINT}/generate", json={"inputs": "steady load " * 4}, name="generate")


class ColdStartUser(_EndpointUser):
    """Scale the endpoint to zero first (POST …/scale-to-zero); every user then sends one held request at once."""

    wait_time = constant(3600)  # one request each: the burst is the spawn

    @task
    def held(self) -> None:
        self.client.post(
            f"/endpoints/{ENDPOINT}/generate", json={"inputs": "woken by a burst"},
            headers={"X-Scale-Up-Timeout": HOLD_S}, name="held generate",
        )


class StreamUser(_EndpointUser):
    """Long streams read to the end. STREAM_API=tgi (default): `generate_stream` (the echo engine,
    TGI); STREAM_API=openai: `/v1/chat/completions` with `stream: true` (llama.cpp, vLLM, SGLang),
    exactly STREAM_TOKENS tokens each (`ignore_eos`), with the time to the first token reported as
    its own row ("first token") and tokens per second at the end."""

    wait_time = between(0.5, 1.0)

    @task
    def stream(self) -> None:
        if STREAM_API == "openai":
            self._chat()
            return
        body = {"inputs": "token " * STREAM_TOKENS, "parameters": {"max_new_tokens": STREAM_TOKENS}}
        with self.client.post(f"/endpoints/{ENDPOINT}/generate_stream", json=body, stream=True, catch_response=True, name="stream") as response:
            events_seen = sum(1 for line in response.iter_lines() if line.startswith(b"data:"))
            if events_seen != STREAM_TOKENS:
                response.failure(f"stream cut: {events_seen} of {STREAM_TOKENS} events")

    def _chat(self) -> None:
        body = {"model": ENDPOINT.split("/")[-1], "stream": True, "max_tokens": STREAM_TOKENS, "ignore_eos": True,
                "temperature": 0, "messages": [{"role": "user", "content": "Tell me a long story about the sea."}]}
        sent = time.perf_counter()
        first = None
        tokens = 0
        with self.client.post(f"/endpoints/{ENDPOINT}/v1/chat/completions", json=body, stream=True,
                              catch_response=True, name="chat stream", headers={"X-Scale-Up-Timeout": HOLD_S}) as response:
            for line in response.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
                        self.environment.events.request.fire(
                            request_type="SSE", name="first token", response_time=(first - sent) * 1000,
                            response_length=0, exception=None, context={})
            if tokens != STREAM_TOKENS:
                response.failure(f"stream cut: {tokens} of {STREAM_TOKENS} tokens")
        TOKENS.append((time.perf_counter(), tokens))


@events.quitting.add_listener
def _print_tokens(environment, **kwargs) -> None:
    if TOKENS:
        span = TOKENS[-1][0] - TOKENS[0][0]
        total = sum(n for _, n in TOKENS)
        print(f"tokens streamed: {total} in {len(TOKENS)} streams"
              + (f", {total / span:.1f} tokens/s over the run" if span > 0 else ""))
