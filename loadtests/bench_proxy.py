"""Proxy benchmark: one load, sent direct, through nginx, a bare aiohttp proxy and endpointd, in one run."""

# .venv/bin/python loadtests/bench_proxy.py [--quick]
#
# Targets: a fast upstream (fast_upstream.py) reached directly; nginx (when installed) with upstream
# keep-alive; bare_proxy.py, the Python baseline; endpointd's proxy with an `authenticated`
# endpoint, so auth, pending counting and metrics are all on. Each runs in its own process group.
# Pinning (2 cores): the load (wrk, and this process for the fixed-rate and SSE loads) on core 0;
# the upstream and the proxy under test share core 1. Loopback only; every load is bounded in
# count and time. Figures, not assertions: the aims are reported against, never asserted.

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import aiohttp
import uvloop

HERE = Path(__file__).resolve().parent
LOAD_CORE, SERVER_CORE = 0, 1
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POST_BODY = b'{"inputs": "hello", "parameters": {"max_new_tokens": 1}}'
POST_PATH = "/generate"
CONNECTIONS = 64  # wrk's fixed connection count: enough to saturate any of the targets on one core
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# uvloop's timers fire up to ~1 ms early or late, as large as the effect measured: the fixed-rate
# generator sleeps to within SPIN_S of each send time, then yields to the loop until it is due.
SPIN_S = 0.002
SSE_STREAMS, SSE_GAP_MS = 4, 10
BUSY_CORES = 0.05  # other processes using more CPU than this during a measurement make it unreliable

ROUTES = """
[[users]]
name = "bench"
tokens = ["{token}"]

[[endpoints]]
namespace = "bench"
name = "e"
type = "authenticated"
replicas = ["127.0.0.1:{upstream}"]
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream replica {{ server 127.0.0.1:{upstream}; keepalive {connections}; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replica;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""

WRK_LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs. Targets take turns, round after round, so that a slow
    phase of the machine (other VMs on the host) spreads over all of them, not onto one."""

    rounds: int
    warmup_s: int
    throughput_s: int
    rate: int  # requests/s for the latency measurement: moderate, far below any target's saturation
    rate_s: float
    sse_events: int  # per stream and round


FULL = Plan(rounds=3, warmup_s=1, throughput_s=5, rate=200, rate_s=4.0, sse_events=100)
QUICK = Plan(rounds=1, warmup_s=1, throughput_s=2, rate=200, rate_s=2.0, sse_events=30)


@dataclass
class Samples:
    """What the rounds measured for one target."""

    rps: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    sse_delays_ms: list[float] = field(default_factory=list)
    foreign_cores: list[float] = field(default_factory=list)  # CPU other processes used meanwhile


@dataclass(frozen=True)
class Result:
    rps: float  # the median round's
    p50_ms: float
    p99_ms: float
    sse_p50_ms: float
    sse_p99_ms: float
    sse_max_ms: float

    @classmethod
    def of(cls, samples: Samples) -> Result:
        lat, sse = sorted(samples.latencies_ms), sorted(samples.sse_delays_ms)
        return cls(
            statistics.median(samples.rps), percentile(lat, 0.5), percentile(lat, 0.99),
            percentile(sse, 0.5), percentile(sse, 0.99), sse[-1],
        )


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Terminate the process group, then kill it if it has not exited in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    """Poll until a POST through `url` answers 200; fail early if the process died."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    request = urllib.request.Request(url + POST_PATH, data=POST_BODY, headers=AUTH, method="POST")
    last: object = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = f"status {error.code}"
        except OSError as error:
            last = error
        time.sleep(0.05)  # poll interval, not a synchronisation: the loop waits on the condition
    tail = log.read_text()[-2000:]
    raise RuntimeError(f"{log.stem} not ready at {url} after {READY_TIMEOUT_S:g} s ({last}):\n{tail}")


class Servers:
    """The processes under test, on the server core, each in its own session (its id is its pid)
    so that stopping it stops its children too; all stopped when `stack` closes."""

    def __init__(self, stack: ExitStack, tmp: Path):
        self.stack = stack
        self.tmp = tmp
        self.sessions: set[int] = set()

    def start(self, name: str, cmd: list[str], url: str) -> str:
        """Start `cmd`, wait until a POST through `url` succeeds, return `url`."""
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CORE), *cmd], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.stack.callback(stop, process)
        self.sessions.add(process.pid)
        wait_ready(process, url, log)
        return url


def start_nginx(servers: Servers, upstream: int) -> str:
    tmp = servers.tmp
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=upstream, port=port, connections=CONNECTIONS))
    cmd = ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
    return servers.start("nginx", cmd, f"http://127.0.0.1:{port}")


def start_endpointd(servers: Servers, upstream: int) -> str:
    endpointd = shutil.which("endpointd", path=str(Path(sys.executable).parent))
    if endpointd is None:
        raise RuntimeError(f"no endpointd beside {sys.executable}: pip install -e . in that environment")
    routes = servers.tmp / "routes.toml"
    routes.write_text(ROUTES.format(token=TOKEN, upstream=upstream))
    port = free_port()
    cmd = [endpointd, "proxy", "--routes", str(routes), "--port", str(port)]
    return servers.start("endpointd", cmd, f"http://127.0.0.1:{port}/endpoints/bench/e")


def start_targets(servers: Servers) -> dict[str, str]:
    """Start the upstream and every proxy in front of it; their base URLs by name."""
    upstream = free_port()
    py = sys.executable
    fast = [py, str(HERE / "fast_upstream.py"), str(upstream)]
    targets = {"direct": servers.start("upstream", fast, f"http://127.0.0.1:{upstream}")}
    if shutil.which("nginx"):
        targets["nginx"] = start_nginx(servers, upstream)
    port = free_port()
    bare = [py, str(HERE / "bare_proxy.py"), str(port), str(upstream)]
    targets["bare aiohttp"] = servers.start("bare", bare, f"http://127.0.0.1:{port}")
    targets["endpointd"] = start_endpointd(servers, upstream)
    return targets


def foreign_ticks(sessions: set[int]) -> dict[int, int]:
    """CPU ticks used so far by each process outside the benchmark (this process, its children
    and the servers' sessions) and outside the kernel's threads."""
    me = os.getpid()
    ticks = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process has gone
            continue
        pid, ppid, sid = int(path.parent.name), int(fields[1]), int(fields[3])
        if pid in (2, me) or ppid in (2, me) or sid in sessions:
            continue
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


# --- measurements --------------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def wrk(url: str, seconds: int, lua: Path) -> str:
    cmd = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(lua), url]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout


def throughput(url: str, plan: Plan, lua: Path) -> float:
    """Requests/s at saturation, after a warm-up (pools filled, caches hot); any failure is fatal."""
    wrk(url, plan.warmup_s, lua)
    out = wrk(url, plan.throughput_s, lua)
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise RuntimeError(f"{url}: failures under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])


async def until(when: float) -> None:
    """Return at `when` (perf_counter) within microseconds, letting the loop serve I/O meanwhile."""
    if (ahead := when - time.perf_counter() - SPIN_S) > 0:
        await asyncio.sleep(ahead)
    while time.perf_counter() < when:
        await asyncio.sleep(0)


async def fixed_rate(url: str, plan: Plan) -> list[float]:
    """Latencies (ms) at `plan.rate` requests/s, open loop: requests leave on schedule whatever
    the answers, and latency runs from the scheduled time, so a stall shows instead of hiding
    (no coordinated omission)."""
    latencies: list[float] = []
    headers = {**AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(at: float) -> None:
            async with session.post(url, data=POST_BODY, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: status {response.status}")
            latencies.append((time.perf_counter() - at) * 1e3)

        for _ in range(50):  # warm-up: connections opened, code paths hot
            await one(time.perf_counter())
        latencies.clear()
        start = time.perf_counter() + 0.01
        tasks = []
        for i in range(int(plan.rate * plan.rate_s)):
            at = start + i / plan.rate
            await until(at)
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)
    return latencies


async def sse_delays(url: str, events: int) -> list[float]:
    """Per-event delays (ms) from emission at the upstream to arrival here, over SSE_STREAMS
    concurrent streams, started staggered so that their events do not coincide."""
    delays: list[float] = []
    target = f"{url}/sse?n={events}&ms={SSE_GAP_MS}"
    async with aiohttp.ClientSession() as session:

        async def one(offset_s: float) -> None:
            await asyncio.sleep(offset_s)
            async with session.get(target, headers=AUTH) as response:
                async for line in response.content:
                    if line.startswith(b"data: "):
                        delays.append((time.monotonic_ns() - int(line.split()[2])) / 1e6)

        await asyncio.gather(*(one(k * SSE_GAP_MS / 1000 / SSE_STREAMS) for k in range(SSE_STREAMS)))
    if len(delays) != SSE_STREAMS * events:
        raise RuntimeError(f"{url}: got {len(delays)} SSE events, expected {SSE_STREAMS * events}")
    return delays


def measure_round(url: str, plan: Plan, lua: Path, sessions: set[int], samples: Samples) -> None:
    """One round of all three measurements of a target, and how busy other processes kept the machine."""
    before, started = foreign_ticks(sessions), time.monotonic()
    samples.rps.append(throughput(url + POST_PATH, plan, lua))
    samples.latencies_ms += uvloop.run(fixed_rate(url + POST_PATH, plan))
    samples.sse_delays_ms += uvloop.run(sse_delays(url, plan.sse_events))
    after = foreign_ticks(sessions)
    used_s = sum(n - before.get(pid, 0) for pid, n in after.items()) / os.sysconf("SC_CLK_TCK")
    samples.foreign_cores.append(used_s / (time.monotonic() - started))


def counted_by_endpointd(url: str) -> int:
    """Requests endpointd's /metrics recorded as answered 200: proof that counting was on."""
    base = url.split("/endpoints/")[0]
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r'^endpointd_proxy_requests_total\{[^}]*code="200"[^}]*\} ([\d.e+]+)$', text, re.M)
    return int(sum(float(n) for n in found))


# --- report --------------------------------------------------------------------------------------


def environment() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    nginx = "no nginx"
    if shutil.which("nginx"):
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, aiohttp {version('aiohttp')}, "
            f"uvloop {version('uvloop')}, {nginx.removeprefix('nginx version: ')}")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_round(name: str, round_no: int, samples: Samples) -> None:
    lat, sse = sorted(samples.latencies_ms), sorted(samples.sse_delays_ms)
    busy = samples.foreign_cores[-1]
    warning = f"   WARNING: other processes used {busy:.0%} of a core: unreliable" if busy > BUSY_CORES else ""
    print(f"round {round_no} {name:>12}: {samples.rps[-1]:7.0f} req/s   latency so far p50 {percentile(lat, 0.5):5.2f} "
          f"p99 {percentile(lat, 0.99):5.2f} ms   SSE delay so far p50 {percentile(sse, 0.5):5.2f} "
          f"p99 {percentile(sse, 0.99):5.2f} ms{warning}", flush=True)


def print_summary(results: dict[str, Result], plan: Plan) -> None:
    d, e, b, n = results["direct"], results["endpointd"], results["bare aiohttp"], results.get("nginx")
    ratio = e.rps / b.rps
    add50, add99 = e.p50_ms - d.p50_ms, e.p99_ms - d.p99_ms
    print("\nendpointd throughput: "
          f"{e.rps / d.rps:.2f}x direct, " + (f"{e.rps / n.rps:.2f}x nginx, " if n else "")
          + f"{ratio:.2f}x bare aiohttp (aim >= 0.90: {verdict(ratio >= 0.9)})")
    print(f"endpointd added latency at {plan.rate} req/s: p50 {add50:+.2f} ms (aim <= 1: {verdict(add50 <= 1)}), "
          f"p99 {add99:+.2f} ms (aim <= 3: {verdict(add99 <= 3)})")
    for name in (k for k in results if k != "direct"):
        r = results[name]
        print(f"{name} added SSE delay per event: p50 {r.sse_p50_ms - d.sse_p50_ms:+.2f} ms, "
              f"p99 {r.sse_p99_ms - d.sse_p99_ms:+.2f} ms, max {r.sse_max_ms - d.sse_max_ms:+.2f} ms")
    print(f"endpointd worst SSE event delay, upstream to client: {e.sse_max_ms:.2f} ms "
          f"(aim <= 5: {verdict(e.sse_max_ms <= 5)})")


def print_markdown(results: dict[str, Result], plan: Plan, command: str) -> None:
    d, n = results["direct"], results.get("nginx")
    print("\n| target | req/s at saturation | × direct | × nginx | latency p50 / p99 at "
          f"{plan.rate} req/s (ms) | SSE event delay p50 / p99 / max (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        vs_nginx = f"{r.rps / n.rps:.2f}" if n else "–"
        print(f"| {name} | {r.rps:.0f} | {r.rps / d.rps:.2f} | {vs_nginx} | {r.p50_ms:.2f} / {r.p99_ms:.2f} | "
              f"{r.sse_p50_ms:.2f} / {r.sse_p99_ms:.2f} / {r.sse_max_ms:.2f} |")
    print(f"\nMeasured with `{command}` on {environment()}: {plan.rounds} round(s) in which the targets take "
          f"turns; req/s is the median round's (wrk `-t1 -c{CONNECTIONS} -d{plan.throughput_s}s`); latency from "
          f"an open-loop Python generator, {plan.rate * plan.rate_s:.0f} requests a round; SSE: {SSE_STREAMS} "
          f"streams of {plan.sse_events} events {SSE_GAP_MS} ms apart a round. wrk and the generator on core "
          f"{LOAD_CORE}; the upstream and the proxy under test on core {SERVER_CORE}.")


# --- main ----------------------------------------------------------------------------------------


def interrupted(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks that stop the servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke test of the harness")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: needs {tool} (apt-get install -y wrk util-linux)")
    signal.signal(signal.SIGTERM, interrupted)
    os.sched_setaffinity(0, {LOAD_CORE})
    gc.disable()  # a collection in the load generator would show as the servers' latency; runs are bounded
    command = " ".join([".venv/bin/python", "loadtests/bench_proxy.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="endpointd-bench-") as tmp, ExitStack() as stack:
        tmp_path = Path(tmp)
        lua = tmp_path / "post.lua"
        lua.write_text(WRK_LUA.format(body=POST_BODY.decode(), token=TOKEN))
        servers = Servers(stack, tmp_path)
        targets = start_targets(servers)
        samples = {name: Samples() for name in targets}
        for round_no in range(1, plan.rounds + 1):
            for name, url in targets.items():
                measure_round(url, plan, lua, servers.sessions, samples[name])
                print_round(name, round_no, samples[name])
        print(f"endpointd counted {counted_by_endpointd(targets['endpointd'])} requests answered 200 in its metrics")
    results = {name: Result.of(s) for name, s in samples.items()}
    busy = sum(cores > BUSY_CORES for s in samples.values() for cores in s.foreign_cores)
    if busy:
        print(f"\nWARNING: {busy} of {plan.rounds * len(samples)} measurements ran while other processes used "
              f"over {BUSY_CORES:.0%} of a core: rerun on a quiet machine before quoting these figures")
    print_summary(results, plan)
    print_markdown(results, plan, command)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started is stopped", file=sys.stderr)
        sys.exit(130)
