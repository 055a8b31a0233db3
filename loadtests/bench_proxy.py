"""Proxy benchmark: one load, sent direct, through nginx, a bare aiohttp proxy and endpointd
(its raw server), in one run; then endpointd raw with two workers against one."""

# .venv/bin/python loadtests/bench_proxy.py [--quick]
#
# Targets: a fast upstream (fast_upstream.py) reached directly; nginx (when installed) with upstream
# keep-alive; bare_proxy.py, the Python baseline; endpointd's proxy (`endpointd proxy`, the raw
# server) with an `authenticated` endpoint, so auth, pending counting and metrics are all on.
# Each runs in its own process group.
# Measured for each: small-request throughput at saturation (wrk); latency at a moderate fixed rate
# (open loop); SSE events/s at saturation over SSE_STREAMS streams of small events; the per-event
# delay (upstream emission to client arrival) at half endpointd raw's saturated SSE rate, the same
# rate for every target; memory per open idle stream (the target's RSS, all its processes, with
# IDLE_STREAMS streams open, less before).
# Pinning (2 cores): the load (wrk, and this process for the other loads) on core 0; the upstream
# and the proxy under test share core 1. The workers comparison cannot be pinned so on 2 cores:
# there both workers, the upstream and wrk share both cores (said so in the output).
# Loopback only; every load is bounded in count and time. Figures, not assertions: the aims are
# reported against, never asserted.

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import platform
import re
import resource
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
SSE_STREAMS = 1000  # concurrent token streams: a busy GPU host's
IDLE_STREAMS = 1000  # open streams for the memory measurement
OPEN_TIMEOUT_S = 60.0  # for every stream of a load to have its response head
SSE_SATURATION_EVENTS = 10**7  # per stream: more than any run sends; the streams are closed after the window
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
# the bench user's token may read /metrics (to show counting was on)
ROUTES = ROUTES.replace('tokens = ["{token}"]', 'tokens = ["{token}"]\nscopes = ["metrics"]')

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
worker_rlimit_nofile 20000;
events {{ worker_connections 10000; }}
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
    sse_s: float  # the SSE saturation window, after a second of warm-up
    sse_paced_s: float  # how long the paced SSE load runs


FULL = Plan(rounds=3, warmup_s=1, throughput_s=5, rate=200, rate_s=4.0, sse_s=4.0, sse_paced_s=4.0)
QUICK = Plan(rounds=1, warmup_s=1, throughput_s=2, rate=200, rate_s=2.0, sse_s=2.0, sse_paced_s=2.0)


@dataclass
class Samples:
    """What the rounds measured for one target."""

    rps: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    sse_eps: list[float] = field(default_factory=list)  # events/s at saturation, one per round
    sse_delays_ms: list[float] = field(default_factory=list)
    stream_kb: list[float] = field(default_factory=list)  # memory per open idle stream, one per round
    foreign_cores: list[float] = field(default_factory=list)  # CPU other processes used meanwhile


@dataclass(frozen=True)
class Result:
    rps: float  # the median round's
    p50_ms: float
    p99_ms: float
    sse_eps: float  # the median round's
    sse_p50_ms: float
    sse_p99_ms: float
    stream_kb: float  # the largest round's: the first, whose heap was fresh (later rounds reuse what it freed)

    @classmethod
    def of(cls, samples: Samples) -> Result:
        lat, sse = sorted(samples.latencies_ms), sorted(samples.sse_delays_ms) or [math.nan]
        return cls(
            statistics.median(samples.rps), percentile(lat, 0.5), percentile(lat, 0.99),
            median(samples.sse_eps), percentile(sse, 0.5), percentile(sse, 0.99),
            max((v for v in samples.stream_kb if not math.isnan(v)), default=math.nan),
        )


def median(values: list[float]) -> float:
    """Of the rounds that measured something (NaN: a missing measurement, reported when it happened)."""
    measured = [v for v in values if not math.isnan(v)]
    return statistics.median(measured) if measured else math.nan


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
        self.by_url: dict[str, int] = {}  # a target's URL -> its session id

    def start(self, name: str, cmd: list[str], url: str, cores: str | None = None) -> str:
        """Start `cmd` (on SERVER_CORE unless `cores` says otherwise), wait until a POST through
        `url` succeeds, return `url`."""
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                ["taskset", "-c", cores or str(SERVER_CORE), *cmd], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.stack.callback(stop, process)
        self.sessions.add(process.pid)
        self.by_url[url] = process.pid
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


def start_endpointd(servers: Servers, upstream: int, *extra: str, cores: str | None = None) -> str:
    endpointd = shutil.which("endpointd", path=str(Path(sys.executable).parent))
    if endpointd is None:
        raise RuntimeError(f"no endpointd beside {sys.executable}: pip install -e . in that environment")
    routes = servers.tmp / "routes.toml"
    routes.write_text(ROUTES.format(token=TOKEN, upstream=upstream))
    port = free_port()
    cmd = [endpointd, "proxy", "--routes", str(routes), "--port", str(port), *extra]
    name = "-".join(("endpointd", *extra)).replace("--", "")
    return servers.start(name, cmd, f"http://127.0.0.1:{port}/endpoints/bench/e", cores=cores)


def start_targets(servers: Servers, upstream_core: int = SERVER_CORE) -> tuple[dict[str, str], int]:
    """Start the upstream and every proxy in front of it; their base URLs by name, and the upstream's port."""
    upstream = free_port()
    py = sys.executable
    fast = [py, str(HERE / "fast_upstream.py"), str(upstream)]
    targets = {"direct": servers.start("upstream", fast, f"http://127.0.0.1:{upstream}", cores=str(upstream_core))}
    if shutil.which("nginx"):
        targets["nginx"] = start_nginx(servers, upstream)
    port = free_port()
    bare = [py, str(HERE / "bare_proxy.py"), str(port), str(upstream)]
    targets["bare aiohttp"] = servers.start("bare", bare, f"http://127.0.0.1:{port}")
    targets["endpointd raw"] = start_endpointd(servers, upstream, "--workers", "1")  # one core: one process
    return targets, upstream


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


def wrk(url: str, seconds: int, lua: Path, cores: str = str(LOAD_CORE)) -> str:
    cmd = ["taskset", "-c", cores, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(lua), url]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout


def throughput(url: str, plan: Plan, lua: Path, cores: str = str(LOAD_CORE)) -> float:
    """Requests/s at saturation, after a warm-up (pools filled, caches hot); any failure is fatal."""
    wrk(url, plan.warmup_s, lua, cores)
    out = wrk(url, plan.throughput_s, lua, cores)
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


class SseReader(asyncio.Protocol):
    """One SSE stream read at the socket: counts events (and, when `delays` is given, records
    each one's delay from its emission at the upstream), at a few microseconds per read, so the
    reader is not what is measured."""

    def __init__(self, request: bytes, counter: list[int], delays: list[float] | None, opened: asyncio.Event | None,
                 expected: int | None = None):
        self.request = request
        self.expected = expected  # events after which the stream is complete (it stays open otherwise: keep-alive)
        self.seen = 0
        self.counter = counter
        self.delays = delays
        self.opened = opened
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.opened is not None:
            self.opened.set()
            self.opened = None
        if self.delays is None:
            self.counter[0] += (self.tail + data).count(b"\n\n")
            self.tail = data[-1:]
            return
        now = time.monotonic_ns()
        parts = (self.tail + data).split(b"\n\n")
        self.tail = parts.pop()
        for part in parts:
            at = part.rfind(b"data: ")
            if at >= 0:
                self.delays.append((now - int(part[at:].split()[2])) / 1e6)
        self.counter[0] += len(parts)
        self.seen += len(parts)
        if self.expected is not None and self.seen >= self.expected:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def sse_request(url: str, events: int, gap_ms: float) -> tuple[str, int, bytes]:
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    target = f"/{path}/sse?n={events}&ms={gap_ms:g}".replace("//", "/")
    head = f"GET {target} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    return host, int(port), head.encode()


async def open_streams(url: str, n: int, events: int, gap_ms: float, counter: list[int],
                       delays: list[float] | None = None, stagger_s: float = 0.0,
                       expected: int | None = None) -> list[SseReader]:
    """`n` streams, their heads sent (staggered over `stagger_s`), each reading its first bytes."""
    host, port, request = sse_request(url, events, gap_ms)
    loop = asyncio.get_running_loop()
    readers: list[SseReader] = []
    opened: list[asyncio.Event] = []
    start = time.perf_counter()
    for k in range(n):
        if stagger_s:
            await until(start + k * stagger_s / n)
        event = asyncio.Event()
        _, reader = await loop.create_connection(lambda event=event: SseReader(request, counter, delays, event, expected),
                                                 host, port)
        readers.append(reader)
        opened.append(event)
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            await asyncio.gather(*(e.wait() for e in opened))
    except TimeoutError:
        late = sum(not e.is_set() for e in opened)
        await close_streams(readers)
        raise StreamsStalled(f"{url}: {late} of {n} streams had no response within {OPEN_TIMEOUT_S:g} s") from None
    return readers


class StreamsStalled(Exception):
    """Streams that did not start: the measurement of that target is reported as missing, with why."""


async def close_streams(readers: list[SseReader]) -> None:
    for reader in readers:
        reader.transport.abort()
    await asyncio.gather(*(r.closed for r in readers))


async def sse_saturation(url: str, plan: Plan) -> float:
    """Events/s forwarded with SSE_STREAMS streams each emitting as fast as it may (the
    upstream waits while a connection's buffer is full), counted over a window after a warm-up."""
    counter = [0]
    readers = await open_streams(url, SSE_STREAMS, SSE_SATURATION_EVENTS, 0, counter)
    try:
        await asyncio.sleep(1.0)  # warm-up: every stream flowing
        before, started = counter[0], time.perf_counter()
        await asyncio.sleep(plan.sse_s)  # the measurement window
        return (counter[0] - before) / (time.perf_counter() - started)
    finally:
        await close_streams(readers)


async def sse_paced(url: str, plan: Plan, rate: float) -> list[float]:
    """Per-event delays (ms, emission to arrival) at `rate` events/s in all over SSE_STREAMS
    streams, staggered so that their events do not coincide."""
    gap_ms = SSE_STREAMS / rate * 1000
    events = max(3, int(plan.sse_paced_s * rate / SSE_STREAMS))
    counter, delays = [0], []
    readers = await open_streams(url, SSE_STREAMS, events, gap_ms, counter, delays, stagger_s=gap_ms / 1000,
                                 expected=events)
    async with asyncio.timeout(plan.sse_paced_s + gap_ms * events / 1000 + 60):
        await asyncio.gather(*(r.closed for r in readers))
    if counter[0] != SSE_STREAMS * events:
        raise RuntimeError(f"{url}: got {counter[0]} SSE events, expected {SSE_STREAMS * events}")
    return delays


def rss_kb(session: int) -> int:
    """Resident memory (KiB) of every process of a session."""
    total = 0
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(path.read_text().rsplit(")", 1)[1].split()[3]) != session:
                continue
            status = (path.parent / "status").read_text()
        except OSError:
            continue
        total += int(re.search(r"^VmRSS:\s+(\d+)", status, re.M)[1]) if "VmRSS" in status else 0
    return total


async def stream_memory(url: str, session: int) -> float:
    """KiB per open idle stream (each has its response head and waits for its first event): the
    target's RSS growth from IDLE_STREAMS open streams to twice as many. Marginal: the first
    IDLE_STREAMS reuse what earlier loads (as many streams) left allocated in the heap."""
    counter = [0]
    first = await open_streams(url, IDLE_STREAMS, 1, 600_000, counter)
    await asyncio.sleep(0.5)  # what the servers allocate after the first bytes settles
    before = rss_kb(session)
    second = await open_streams(url, IDLE_STREAMS, 1, 600_000, counter)
    await asyncio.sleep(0.5)
    after = rss_kb(session)
    await close_streams(first + second)
    return (after - before) / IDLE_STREAMS


def measure_round(url: str, plan: Plan, lua: Path, servers: Servers, samples: Samples) -> None:
    """One round of a target's throughput, latency, SSE saturation and memory measurements, and
    how busy other processes kept the machine."""
    before, started = foreign_ticks(servers.sessions), time.monotonic()
    samples.rps.append(throughput(url + POST_PATH, plan, lua))
    samples.latencies_ms += uvloop.run(fixed_rate(url + POST_PATH, plan))
    for into, measure in ((samples.sse_eps, lambda: sse_saturation(url, plan)),
                          (samples.stream_kb, lambda: stream_memory(url, servers.by_url[url]))):
        try:
            into.append(uvloop.run(measure()))
        except StreamsStalled as stalled:
            print(f"MISSING: {stalled}", flush=True)
            into.append(math.nan)
    after = foreign_ticks(servers.sessions)
    used_s = sum(n - before.get(pid, 0) for pid, n in after.items()) / os.sysconf("SC_CLK_TCK")
    samples.foreign_cores.append(used_s / (time.monotonic() - started))


def counted_by_endpointd(url: str) -> int:
    """Requests endpointd's /metrics recorded as answered 200: proof that counting was on."""
    base = url.split("/endpoints/")[0]
    with urllib.request.urlopen(urllib.request.Request(base + "/metrics", headers=AUTH), timeout=5) as response:
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
    lat = sorted(samples.latencies_ms)
    busy = samples.foreign_cores[-1]
    warning = f"   WARNING: other processes used {busy:.0%} of a core: unreliable" if busy > BUSY_CORES else ""
    print(f"round {round_no} {name:>17}: {samples.rps[-1]:7.0f} req/s   latency so far p50 {percentile(lat, 0.5):5.2f} "
          f"p99 {percentile(lat, 0.99):5.2f} ms   SSE {samples.sse_eps[-1]:7.0f} events/s   "
          f"{samples.stream_kb[-1]:5.1f} KiB per open stream{warning}", flush=True)


def print_paced(name: str, round_no: int, rate: float, samples: Samples) -> None:
    sse = sorted(samples.sse_delays_ms) or [math.nan]
    print(f"round {round_no} {name:>17}: SSE at {rate:.0f} events/s: delay so far p50 {percentile(sse, 0.5):6.2f} "
          f"p99 {percentile(sse, 0.99):6.2f} ms", flush=True)


def print_summary(results: dict[str, Result], plan: Plan, rate: float, workers: tuple[float, float] | None) -> None:
    d, n = results["direct"], results.get("nginx")
    for name in ("endpointd raw",):
        e = results[name]
        add50, add99 = e.p50_ms - d.p50_ms, e.p99_ms - d.p99_ms
        line = f"\n{name}: throughput {e.rps / d.rps:.2f}x direct"
        if n:
            line += f", {e.rps / n.rps:.2f}x nginx" + (f" (aim >= 0.5: {verdict(e.rps / n.rps >= 0.5)})"
                                                       if name.endswith("raw") else "")
        print(line + f", {e.rps / results['bare aiohttp'].rps:.2f}x bare aiohttp")
        print(f"  added latency at {plan.rate} req/s: p50 {add50:+.2f} ms (aim <= 0.3: {verdict(add50 <= 0.3)}), "
              f"p99 {add99:+.2f} ms (aim <= 1: {verdict(add99 <= 1)})")
        if n:
            print(f"  SSE events/s at saturation: {e.sse_eps / n.sse_eps:.2f}x nginx "
                  f"(aim >= 0.5: {verdict(e.sse_eps / n.sse_eps >= 0.5)})")
        print(f"  SSE delay added per event at {rate:.0f} events/s: p50 {e.sse_p50_ms - d.sse_p50_ms:+.2f} ms, "
              f"p99 {e.sse_p99_ms - d.sse_p99_ms:+.2f} ms")
        print(f"  memory per open idle stream: {e.stream_kb:.1f} KiB (aim <= 20 KB: {verdict(e.stream_kb * 1.024 <= 20)})")
    if workers is not None:
        one, two = workers
        print(f"\nendpointd raw, 2 workers against 1: {two:.0f} against {one:.0f} req/s = {two / one:.2f}x "
              f"(aim >= 1.7: {verdict(two / one >= 1.7)}); on {os.cpu_count()} cores the load generator and the "
              "upstream share the workers' cores" + ("" if (os.cpu_count() or 1) > 2 else
                                                     " (no third core here: the aim cannot be measured as stated)"))


def print_markdown(results: dict[str, Result], plan: Plan, rate: float, command: str,
                   workers: tuple[float, float] | None) -> None:
    n = results.get("nginx")
    print("\n| target | req/s at saturation | × nginx | latency p50 / p99 at "
          f"{plan.rate} req/s (ms) | SSE events/s, {SSE_STREAMS} streams | × nginx | SSE delay p50 / p99 at "
          f"{rate:.0f} events/s (ms) | KiB per open stream |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        vs = f"{r.rps / n.rps:.2f}" if n else "–"
        sse_vs = f"{r.sse_eps / n.sse_eps:.2f}" if n else "–"
        print(f"| {name} | {r.rps:.0f} | {vs} | {r.p50_ms:.2f} / {r.p99_ms:.2f} | {r.sse_eps:.0f} | {sse_vs} | "
              f"{r.sse_p50_ms:.2f} / {r.sse_p99_ms:.2f} | {r.stream_kb:.1f} |")
    if workers is not None:
        print(f"| endpointd raw, 1 worker / 2 workers (cores 0-1 shared with wrk) | {workers[0]:.0f} / "
              f"{workers[1]:.0f} ({workers[1] / workers[0]:.2f}x) | | | | | | |")
    print(f"\nMeasured with `{command}` on {environment()}: {plan.rounds} round(s) in which the targets take "
          f"turns; req/s is the median round's (wrk `-t1 -c{CONNECTIONS} -d{plan.throughput_s}s`); latency from "
          f"an open-loop Python generator, {plan.rate * plan.rate_s:.0f} requests a round; SSE events/s over "
          f"{plan.sse_s:g} s with {SSE_STREAMS} streams emitting as fast as the proxy takes them; SSE delay from "
          f"emission at the upstream to arrival, {SSE_STREAMS} streams at {rate:.0f} events/s in all (half endpointd "
          f"raw's saturated rate, the same for every target); memory: RSS with {IDLE_STREAMS} idle streams open, "
          f"less before, per stream. wrk and the Python loads on core {LOAD_CORE}; the upstream and the proxy "
          f"under test on core {SERVER_CORE}.")


def measure_workers(servers: Servers, upstream: int, plan: Plan, lua: Path) -> tuple[float, float] | None:
    """Throughput of endpointd raw with --workers 1 and 2, unpinned (both cores), median of the rounds."""
    from proxy.core.config import ProxyConfig  # the repository's, beside this directory

    if not hasattr(ProxyConfig(), "workers"):
        print("endpointd has no --workers: the workers comparison is skipped")
        return None
    every = ",".join(str(c) for c in sorted(os.sched_getaffinity(0) | {LOAD_CORE, SERVER_CORE}))
    urls = {k: start_endpointd(servers, upstream, "--workers", str(k), cores=every) for k in (1, 2)}
    rps: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(plan.rounds):
        for k, url in urls.items():
            rps[k].append(throughput(url + POST_PATH, plan, lua, cores=every))
            print(f"workers {k}: {rps[k][-1]:.0f} req/s", flush=True)
    return statistics.median(rps[1]), statistics.median(rps[2])


RETURN_200_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx-upstream.pid;
error_log {tmp}/nginx-upstream-error.log;
events {{ worker_connections 10000; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/upstream-body;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 '{{"generated_text": "x"}}'; }} }}
}}
"""
HOST = "e.bench.test"
HOST_ROUTES = ROUTES.replace('replicas = ["127.0.0.1:{upstream}"]', f'replicas = ["127.0.0.1:{{upstream}}"]\ndomain = "{HOST}"')


def reconcile(stack: ExitStack, tmp: Path, plan: Plan, lua: Path) -> list[tuple[str, float, float, float]]:
    """Small requests with nginx `return 200` as the upstream (a cost near zero) instead of the
    Python one, on the proxy's core or on the load's, endpointd routed by path or by Host: which
    difference of setup moves endpointd's ratio to nginx. Rows: (where the upstream runs, nginx
    req/s, endpointd by path, endpointd by Host); one worker pinned to the server core."""
    rows = []
    host_lua = tmp / "post-host.lua"
    host_lua.write_text(lua.read_text() + f'wrk.headers["Host"] = "{HOST}"\n')
    for where, core in (("the proxy's core", SERVER_CORE), ("the load's core", LOAD_CORE)):
        sub = tmp / f"reconcile-{core}"
        (sub / "upstream-body").mkdir(parents=True)
        servers = Servers(stack, sub)
        port = free_port()
        conf = sub / "upstream.conf"
        conf.write_text(RETURN_200_CONF.format(tmp=sub, port=port))
        servers.start("nginx-return-200", ["nginx", "-p", str(sub), "-e", str(sub / "nginx-upstream-error.log"),
                                           "-c", str(conf)], f"http://127.0.0.1:{port}", cores=str(core))
        nginx = start_nginx(servers, port)
        endpointd = shutil.which("endpointd", path=str(Path(sys.executable).parent))
        routes = sub / "host-routes.toml"
        routes.write_text(HOST_ROUTES.format(token=TOKEN, upstream=port))
        proxy_port = free_port()
        by_path = servers.start("endpointd-host", [endpointd, "proxy", "--routes", str(routes), "--port", str(proxy_port),
                                                   "--workers", "1"], f"http://127.0.0.1:{proxy_port}/endpoints/bench/e")
        got = ([], [], [])
        for _ in range(plan.rounds):
            got[0].append(throughput(nginx + POST_PATH, plan, lua))
            got[1].append(throughput(by_path + POST_PATH, plan, lua))
            got[2].append(throughput(f"http://127.0.0.1:{proxy_port}{POST_PATH}", plan, host_lua))
        rows.append((where, *(statistics.median(g) for g in got)))
        print(f"nginx return 200 on {where}: nginx {rows[-1][1]:.0f}, endpointd by path {rows[-1][2]:.0f}, "
              f"by Host {rows[-1][3]:.0f} req/s", flush=True)
    return rows


# --- main ----------------------------------------------------------------------------------------


def print_reconcile(rows: list[tuple[str, float, float, float]]) -> None:
    print("\n| nginx `return 200` upstream on | nginx req/s | endpointd by path | × nginx | endpointd by Host | × nginx |")
    print("|---|---:|---:|---:|---:|---:|")
    for where, nginx, path, host in rows:
        print(f"| {where} | {nginx:.0f} | {path:.0f} | {path / nginx:.2f} | {host:.0f} | {host / nginx:.2f} |")


def interrupted(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks that stop the servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke test of the harness")
    parser.add_argument("--upstream-on-load-core", action="store_true",
                        help="run the upstream on the load's core, so the proxy under test has its core alone")
    parser.add_argument("--reconcile", action="store_true",
                        help="only the small-request throughput with nginx `return 200` as the upstream, by path and by Host")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: needs {tool} (apt-get install -y wrk util-linux)")
    signal.signal(signal.SIGTERM, interrupted)
    os.sched_setaffinity(0, {LOAD_CORE})
    gc.disable()  # a collection in the load generator would show as the servers' latency; runs are bounded
    command = " ".join([".venv/bin/python", "loadtests/bench_proxy.py", *sys.argv[1:]])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of streams, here and in the servers
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory(prefix="endpointd-bench-") as tmp, ExitStack() as stack:
        tmp_path = Path(tmp)
        lua = tmp_path / "post.lua"
        lua.write_text(WRK_LUA.format(body=POST_BODY.decode(), token=TOKEN))
        if args.reconcile:
            print_reconcile(reconcile(stack, tmp_path, plan, lua))
            return
        servers = Servers(stack, tmp_path)
        targets, upstream = start_targets(servers, LOAD_CORE if args.upstream_on_load_core else SERVER_CORE)
        samples = {name: Samples() for name in targets}
        rate = 0.0
        for round_no in range(1, plan.rounds + 1):
            for name, url in targets.items():
                measure_round(url, plan, lua, servers, samples[name])
                print_round(name, round_no, samples[name])
            # Paced SSE: every target at the same rate, half of endpointd raw's saturation so far.
            rate = median(samples["endpointd raw"].sse_eps) / 2
            for name, url in targets.items():
                try:
                    samples[name].sse_delays_ms += uvloop.run(sse_paced(url, plan, rate))
                except (StreamsStalled, RuntimeError) as stalled:
                    print(f"MISSING: {stalled}", flush=True)
                print_paced(name, round_no, rate, samples[name])
        for name in ("endpointd raw",):
            print(f"{name} counted {counted_by_endpointd(targets[name])} requests answered 200 in its metrics")
        workers = measure_workers(servers, upstream, plan, lua)
    results = {name: Result.of(s) for name, s in samples.items()}
    busy = sum(cores > BUSY_CORES for s in samples.values() for cores in s.foreign_cores)
    if busy:
        print(f"\nWARNING: {busy} of {plan.rounds * len(samples)} measurements ran while other processes used "
              f"over {BUSY_CORES:.0%} of a core: rerun on a quiet machine before quoting these figures")
    print_summary(results, plan, rate, workers)
    print_markdown(results, plan, rate, command, workers)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started is stopped", file=sys.stderr)
        sys.exit(130)
