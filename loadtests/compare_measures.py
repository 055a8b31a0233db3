"""The three scaling measures on the same load: SmolLM2 on llama.cpp (2 slots per replica), a
stream-heavy locust run (`StreamUser`, STREAM_API=openai) against one endpoint per measure in turn,
then the same time idle; the replica count every second, and when each scaled up and back.

# endpointd serve must run with a short window and stabilization, e.g.
#   ENDPOINTD_SCALE_WINDOW_S=10 ENDPOINTD_STABILIZATION_S=30 .venv/bin/endpointd serve &
# ENDPOINTD_URL=http://127.0.0.1:8080 HF_TOKEN=$(cat endpointd-data/admin-token) \\
#   .venv/bin/python loadtests/compare_measures.py [--users 6] [--load-s 60] [--idle-s 60]

Figures, not assertions; loopback only; every run bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = os.environ.get("ENDPOINTD_URL", "http://127.0.0.1:8080").rstrip("/")
TOKEN = os.environ["HF_TOKEN"]
MEASURES = ({"pendingRequests": 1.5}, {"engineQueue": 2}, {"hardwareUsage": 80})


def call(method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{BASE}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def create(name: str, measure: dict, repository: str) -> None:
    call("POST", "/v2/endpoint/admin", {
        "name": name, "type": "private", "provider": {"vendor": "local", "region": "local"},
        "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1",
                    "scaling": {"minReplica": 1, "maxReplica": 2, "measure": measure}},
        "model": {"repository": repository, "framework": "pytorch",
                  "image": {"llamacpp": {"modelPath": "SmolLM2-135M-Instruct.Q4_1.gguf", "ctxSize": 4096, "nParallel": 2}}},
    })
    deadline = time.monotonic() + 300
    while call("GET", f"/v2/endpoint/admin/{name}")["status"]["state"] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not run within 300 s")
        time.sleep(0.5)


def run(name: str, users: int, load_s: int, idle_s: int) -> list[tuple[float, int]]:
    series: list[tuple[float, int]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            status = call("GET", f"/v2/endpoint/admin/{name}")["status"]
            series.append((round(time.monotonic() - started, 1), status.get("readyReplica", 0)))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    env = {**os.environ, "ENDPOINTD_URL": BASE, "ENDPOINT": f"admin/{name}", "STREAM_API": "openai",
           "STREAM_TOKENS": "128"}
    locust = [str(Path(sys.executable).parent / "locust"), "-f", str(HERE / "locustfile.py"), "--headless",
              "-u", str(users), "-r", str(users), "-t", f"{load_s}s", "--only-summary", "StreamUser"]
    done = subprocess.run(locust, env=env, capture_output=True, text=True, timeout=load_s + 120)
    summary = [line for line in done.stdout.splitlines() + done.stderr.splitlines()
               if "chat stream" in line or "first token" in line or "tokens streamed" in line]
    print(f"  locust: {' | '.join(' '.join(line.split()) for line in summary[-3:])}")
    time.sleep(idle_s)
    stop.set()
    sampler.join()
    return series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--load-s", type=int, default=60)
    parser.add_argument("--idle-s", type=int, default=60)
    parser.add_argument("--repository", default=str(Path("endpointd-data/models/smollm2").resolve()))
    args = parser.parse_args()
    rows = []
    for measure in MEASURES:
        (metric, threshold), = measure.items()
        name = f"cmp-{metric.lower()}"[:32]
        print(f"{metric} {threshold}: creating {name}", flush=True)
        try:
            call("DELETE", f"/v2/endpoint/admin/{name}")
        except urllib.error.HTTPError:
            pass
        create(name, measure, args.repository)
        series = run(name, args.users, args.load_s, args.idle_s)
        call("DELETE", f"/v2/endpoint/admin/{name}")
        up = next((t for t, n in series if n >= 2), None)
        down = next((t for t, n in series if up is not None and t > up and n == 1), None)
        rows.append((f"{metric} {threshold}", max(n for _, n in series), up, down))
        print("  replicas: " + " ".join(f"{t:g}:{n}" for t, n in series[::5]), flush=True)
    print(f"\n{args.users} streaming users for {args.load_s} s, then {args.idle_s} s idle; 1 to 2 replicas (x1)")
    print("| measure | most replicas | 2nd replica ready at (s) | back to 1 at (s) |\n|---|---:|---:|---:|")
    for measure, most, up, down in rows:
        print(f"| {measure} | {most} | {up if up is not None else '–'} | {down if down is not None else '–'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
