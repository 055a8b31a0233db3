"""Engine metrics: each ready replica's own `/metrics`, scraped every few seconds and normalised
into three per-replica signals, whatever the engine:

    queue      requests waiting for the engine to take them   (a count)
    running    requests the engine is working on now          (a count)
    kv_cache   how full its KV cache is                       (0..1)

They are signals for people and dashboards (the analytics series, the per-endpoint OpenMetrics
export, the main /metrics) and the scaler's engine-queue strategy. Beside them, two counters for
usage, where the engine keeps them: the prompt tokens it took in and the tokens it generated,
since the engine's process started (usage.py turns them into deltas):

    vLLM       vllm:prompt_tokens_total, vllm:generation_tokens_total
    TGI        the sums of its histograms tgi_request_input_length, tgi_request_generated_tokens
    SGLang     sglang:prompt_tokens_total, sglang:generation_tokens_total
    llama.cpp  llamacpp:prompt_tokens_total + llamacpp:prompt_tokens_cached_total (the first
               leaves out prompt tokens reused from the cache: checked on the image's server),
               llamacpp:tokens_predicted_total

The names each engine exports for the signals, checked in their sources:

    vLLM       vllm:num_requests_waiting, vllm:num_requests_running, vllm:kv_cache_usage_perc
               (0..1 despite its name; before v0.10 vllm:gpu_cache_usage_perc)
    TGI        tgi_queue_size, tgi_batch_current_size                  (no KV-cache figure)
    TEI        te_queue_size                                           (no batch or cache gauge)
    SGLang     sglang:num_queue_reqs, sglang:num_running_reqs, sglang:token_usage (0..1)
    llama.cpp  llamacpp:requests_deferred, llamacpp:requests_processing (with --metrics), and in
               builds before the unified KV cache llamacpp:kv_cache_usage_ratio
    echo       the vLLM names (engines/echo/server.py), computed from its real requests

Counts are summed over an engine's samples (vLLM and SGLang label each data-parallel engine or
rank); the KV-cache figure is the fullest one (the one that makes requests wait first). An engine
without /metrics (a custom image, llama.cpp without --metrics) answers 404 or 501: it is asked
again only every NO_METRICS_RETRY_S. A scrape that fails keeps nothing: a value older than
STALE_AFTER scrape intervals is dropped, never shown as current.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from engines.runtime import EndpointKey
from proxy.core.control import Replica

log = logging.getLogger("endpointd.engine_metrics")

SCRAPE_INTERVAL_S = 5.0  # engines update their gauges continuously; 5 s is a dashboard's refresh
SCRAPE_TIMEOUT_S = 2.0  # a busy engine still answers /metrics in milliseconds; 2 s means it is stuck
# vLLM's /metrics with per-model histograms is a few hundred kB; anything far larger is not metrics.
MAX_BODY_BYTES = 8 << 20
NO_METRICS_RETRY_S = 60.0  # an engine without /metrics is asked again this often (it may gain it)
STALE_AFTER = 3  # scrape intervals after which a replica's last values are no longer shown
QUEUE, RUNNING, KV_CACHE = "queue", "running", "kv_cache"

# For each signal, the names it is read from, in order of preference: the first one an engine
# exports wins (vLLM's new KV-cache name before its old one, which newer vLLM still exports).
SOURCES: Mapping[str, tuple[str, ...]] = {
    QUEUE: ("vllm:num_requests_waiting", "tgi_queue_size", "te_queue_size", "sglang:num_queue_reqs",
            "llamacpp:requests_deferred"),
    RUNNING: ("vllm:num_requests_running", "tgi_batch_current_size", "sglang:num_running_reqs",
              "llamacpp:requests_processing"),
    KV_CACHE: ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage",
               "llamacpp:kv_cache_usage_ratio"),
}
# The token counters: for each, the engines' alternatives in order of preference; an alternative
# counts when its first name is exported, and is the sum of the names of it that are.
TOKENS_IN, TOKENS_OUT = "tokens_in", "tokens_out"
COUNTERS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    TOKENS_IN: (("vllm:prompt_tokens_total",), ("sglang:prompt_tokens_total",), ("tgi_request_input_length_sum",),
                ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total")),
    TOKENS_OUT: (("vllm:generation_tokens_total",), ("sglang:generation_tokens_total",),
                 ("tgi_request_generated_tokens_sum",), ("llamacpp:tokens_predicted_total",)),
}
WANTED = frozenset(
    [name for names in SOURCES.values() for name in names]
    + [name for alternatives in COUNTERS.values() for names in alternatives for name in names]
)
_PREFIXES = tuple(sorted({name.split(":")[0].split("_")[0] for name in WANTED}))  # cheap line filter


@dataclass(frozen=True, slots=True)
class EngineSignals:
    queue: float | None = None
    running: float | None = None
    kv_cache: float | None = None  # 0..1

    def __bool__(self) -> bool:
        return self.queue is not None or self.running is not None or self.kv_cache is not None


def parse(text: str, wanted: frozenset[str] = WANTED) -> dict[str, list[float]]:
    """The values of the wanted metrics in a Prometheus (or OpenMetrics) text body, by name.

    A line scan rather than a full parser: a vLLM body is mostly histogram buckets that are not
    wanted, and only lines that start with a wanted name are split. Labels are skipped (quoted
    values may hold spaces, braces and escaped quotes); an unparsable value is left out."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith(_PREFIXES):
            continue
        end = len(line)
        for i, ch in enumerate(line):
            if ch == "{" or ch == " " or ch == "\t":
                end = i
                break
        name = line[:end]
        if name not in wanted:
            continue
        rest = line[end:]
        if rest.startswith("{"):
            close = _label_end(rest)
            if close < 0:
                continue
            rest = rest[close + 1:]
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])  # an optional timestamp may follow
        except ValueError:
            continue
        if math.isfinite(value):
            found.setdefault(name, []).append(value)
    return found


def _label_end(text: str) -> int:
    """Index of the `}` that closes the label set opening `text`, or -1."""
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = quoted
        elif ch == '"':
            quoted = not quoted
        elif ch == "}" and not quoted:
            return i
    return -1


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Tokens an engine took in and generated since its process started; None where it keeps no count."""

    tokens_in: float | None = None
    tokens_out: float | None = None

    def __bool__(self) -> bool:
        return self.tokens_in is not None or self.tokens_out is not None


def counters(values: Mapping[str, list[float]]) -> EngineCounters:
    """The engine's token counters from its parsed metrics: each summed over its samples (labels,
    data-parallel ranks), never negative."""
    found: dict[str, float] = {}
    for counter, alternatives in COUNTERS.items():
        for names in alternatives:
            if values.get(names[0]):
                found[counter] = max(0.0, sum(sum(values.get(name, ())) for name in names))
                break
    return EngineCounters(found.get(TOKENS_IN), found.get(TOKENS_OUT))


def signals(values: Mapping[str, list[float]]) -> EngineSignals:
    """The engine's signals from its parsed metrics: counts summed, the KV cache the fullest, in 0..1."""
    found: dict[str, float] = {}
    for signal, names in SOURCES.items():
        for name in names:
            samples = values.get(name)
            if samples:
                found[signal] = min(1.0, max(0.0, max(samples))) if signal == KV_CACHE else max(0.0, sum(samples))
                break
    return EngineSignals(found.get(QUEUE), found.get(RUNNING), found.get(KV_CACHE))


@dataclass(frozen=True, slots=True)
class Scraped:
    key: EndpointKey
    signals: EngineSignals
    at: float  # monotonic
    counters: EngineCounters = EngineCounters()


class EngineScraper:
    """Scrapes the ready replicas of every endpoint; `latest()` is what was read recently.

    `poll()` does one round (all replicas at once, each under the timeout) and `run()` repeats
    it; tests call `poll()` with a fake session and clock."""

    def __init__(
        self,
        replicas: Callable[[], Iterable[tuple[EndpointKey, Replica]]],
        session: Callable[[], aiohttp.ClientSession],
        *,
        interval_s: float = SCRAPE_INTERVAL_S,
        timeout_s: float = SCRAPE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._replicas = replicas
        self._session = session
        self.interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._latest: dict[str, Scraped] = {}  # replica id -> its last good scrape
        self._skip_until: dict[str, float] = {}  # replica id -> no /metrics: not asked before then

    def latest(self) -> dict[str, Scraped]:
        """Replica id -> its signals, for replicas scraped successfully within STALE_AFTER intervals."""
        oldest = self._clock() - STALE_AFTER * self.interval_s
        return {rid: s for rid, s in self._latest.items() if s.at >= oldest}

    async def poll(self) -> None:
        targets = list(self._replicas())
        now = self._clock()
        live = {replica.id for _, replica in targets}
        for gone in set(self._latest) - live:
            del self._latest[gone]
        for gone in set(self._skip_until) - live:
            del self._skip_until[gone]
        due = [(key, r) for key, r in targets if self._skip_until.get(r.id, 0.0) <= now]
        results = await asyncio.gather(*(self._scrape(r) for _, r in due), return_exceptions=True)
        now = self._clock()
        for (key, replica), result in zip(due, results, strict=True):
            if isinstance(result, tuple):
                found, counted = result
                if found or counted:
                    self._latest[replica.id] = Scraped(key, found, now, counted)
                else:
                    self._latest.pop(replica.id, None)
            elif result is None:  # the engine has no /metrics
                self._latest.pop(replica.id, None)
                self._skip_until[replica.id] = now + NO_METRICS_RETRY_S
            elif isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation
            # other failures: the last values age out on their own

    async def _scrape(self, replica: Replica) -> tuple[EngineSignals, EngineCounters] | None:
        """The replica's signals and counters; None when it serves no metrics; raises when it did not answer."""
        headers = {"Accept": "text/plain"}
        if replica.api_key:
            headers["Authorization"] = f"Bearer {replica.api_key}"
        async with self._session().get(
            f"http://{replica.address}/metrics", headers=headers, timeout=self._timeout, allow_redirects=False,
        ) as response:
            if response.status in (404, 405, 501):
                return None
            if response.status != 200:
                raise RuntimeError(f"/metrics answered {response.status}")
            body = await response.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return None  # not a metrics page
        # Possibly empty: an engine exports a gauge only once it has set it (TGI before its
        # first request); it is asked again at the usual cadence.
        values = parse(body.decode("utf-8", errors="replace"))
        return signals(values), counters(values)

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("engine metrics round failed")
            await asyncio.sleep(self.interval_s)
