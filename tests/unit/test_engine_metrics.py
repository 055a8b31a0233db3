"""Engine metrics: each engine's /metrics text parsed into queue, running and KV cache (tables of
bodies as the engines write them), the scraper against an in-process engine (its key sent, an
engine without /metrics asked rarely, failed scrapes aging out), and the echo engine's vLLM gauges
computed from its real requests."""

from __future__ import annotations

import asyncio
import inspect

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.observe.engine_metrics import (
    NO_METRICS_RETRY_S,
    STALE_AFTER,
    EngineCounters,
    EngineScraper,
    EngineSignals,
    counters,
    parse,
    signals,
)
from engines.echo.server import Settings, make_app
from engines.runtime import EndpointKey
from proxy.core.control import Replica

MODEL = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'

VLLM_V1 = f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",{MODEL}}} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",{MODEL}}} 7.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{engine="0",{MODEL}}} 0.25
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",{MODEL}}} 0.4213
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",{MODEL}}} 12.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="0.3",{MODEL}}} 0.0
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="+Inf",{MODEL}}} 12.0
vllm:e2e_request_latency_seconds_count{{engine="0",{MODEL}}} 12.0
"""

VLLM_DATA_PARALLEL = f"""vllm:num_requests_running{{engine="0",{MODEL}}} 2.0
vllm:num_requests_running{{engine="1",{MODEL}}} 5.0
vllm:num_requests_waiting{{engine="0",{MODEL}}} 1.0
vllm:num_requests_waiting{{engine="1",{MODEL}}} 0.0
vllm:kv_cache_usage_perc{{engine="0",{MODEL}}} 0.3
vllm:kv_cache_usage_perc{{engine="1",{MODEL}}} 0.9
"""

VLLM_V0 = f"""# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{MODEL}}} 2.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{{{MODEL}}} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{MODEL}}} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{{MODEL}}} 0.05
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{{{MODEL}}} 0.0
"""

TGI = """# TYPE tgi_request_count counter
tgi_request_count 20
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 4
# TYPE tgi_queue_size gauge
tgi_queue_size 2
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 1234
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 3
tgi_request_duration_sum 40
tgi_request_duration_count 20
"""

TEI = """# TYPE te_request_count counter
te_request_count{method="single"} 12
# TYPE te_queue_size gauge
te_queue_size 5
# TYPE te_request_duration summary
te_request_duration{quantile="0.5"} 0.012
te_request_duration_sum 0.31
te_request_duration_count 12
"""

SGLANG = f"""# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 10.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 3.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 0.28
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{{engine_type="unified",{MODEL},pp_rank="0",tp_rank="0"}} 0.0075
"""

LLAMACPP = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 2.37151
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
"""

LLAMACPP_OLD = LLAMACPP + """# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.63
"""

ECHO = """# HELP echo_requests_total Inference requests answered.
# TYPE echo_requests_total counter
echo_requests_total 3
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="echo"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="echo"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="echo"} 0.00390625
"""

HOSTILE_LABELS = r"""vllm:num_requests_waiting{model_name="we}ird \"quoted\" name with spaces"} 4
vllm:num_requests_running{model_name="broken} 9
vllm:num_requests_running{model_name="ok"} NaN
vllm:num_requests_running{model_name="ok"} not-a-number
vllm:kv_cache_usage_perc 1.7 1700000000000
tgi_queue_size
"""

OPENMETRICS = """# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 6.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1.0
# EOF
"""


@pytest.mark.parametrize("body, expected", [
    (VLLM_V1, EngineSignals(queue=7.0, running=3.0, kv_cache=0.4213)),  # the new KV name wins over the old
    (VLLM_DATA_PARALLEL, EngineSignals(queue=1.0, running=7.0, kv_cache=0.9)),  # counts summed, the fullest cache
    (VLLM_V0, EngineSignals(queue=0.0, running=2.0, kv_cache=0.05)),  # before v0.10: gpu_cache_usage_perc
    (TGI, EngineSignals(queue=2.0, running=4.0, kv_cache=None)),
    (TEI, EngineSignals(queue=5.0, running=None, kv_cache=None)),
    (SGLANG, EngineSignals(queue=3.0, running=10.0, kv_cache=0.28)),
    (LLAMACPP, EngineSignals(queue=2.0, running=1.0, kv_cache=None)),
    (LLAMACPP_OLD, EngineSignals(queue=2.0, running=1.0, kv_cache=0.63)),
    (ECHO, EngineSignals(queue=2.0, running=1.0, kv_cache=0.00390625)),
    # quoted braces and escaped quotes skipped; unclosed labels, NaN, junk and bare names left
    # out; a timestamp ignored; the KV cache clamped to 1
    (HOSTILE_LABELS, EngineSignals(queue=4.0, running=None, kv_cache=1.0)),
    (OPENMETRICS, EngineSignals(queue=6.0, running=1.0, kv_cache=None)),
    ("# a custom image's own metrics\nhttp_requests_total 5\n", EngineSignals()),
    ("", EngineSignals()),
])
def test_each_engines_metrics_become_the_same_three_signals(body, expected):
    assert signals(parse(body)) == expected


# The token counters as each engine writes them (llama.cpp's from the endpointd/llama-cpp image's
# server after two identical chats of 38 prompt tokens: the second reused 37 from its cache).
VLLM_TOKENS = f"""# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",{MODEL}}} 1200.0
vllm:prompt_tokens_total{{engine="1",{MODEL}}} 300.0
vllm:prompt_tokens_created{{engine="0",{MODEL}}} 1.75e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",{MODEL}}} 640.0
"""
TGI_TOKENS = """# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="100"} 3
tgi_request_input_length_sum 210
tgi_request_input_length_count 4
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="100"} 4
tgi_request_generated_tokens_sum 77
tgi_request_generated_tokens_count 4
"""
SGLANG_TOKENS = f"""sglang:prompt_tokens_total{{{MODEL},tp_rank="0"}} 7.0
sglang:generation_tokens_total{{{MODEL},tp_rank="0"}} 8.0
sglang:cached_tokens_total{{{MODEL},tp_rank="0"}} 5.0
"""
LLAMACPP_TOKENS = """# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 39
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 37
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 10
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 0.097635
"""


@pytest.mark.parametrize("body, expected", [
    (VLLM_TOKENS, EngineCounters(tokens_in=1500.0, tokens_out=640.0)),  # summed over engines; _created is not a count
    (TGI_TOKENS, EngineCounters(tokens_in=210.0, tokens_out=77.0)),  # the histograms' sums
    (SGLANG_TOKENS, EngineCounters(tokens_in=7.0, tokens_out=8.0)),
    (LLAMACPP_TOKENS, EngineCounters(tokens_in=76.0, tokens_out=10.0)),  # 2 x 38: processed + reused
    (LLAMACPP, EngineCounters(tokens_in=6886.0, tokens_out=None)),  # an older build without the cached count
    (VLLM_V1, EngineCounters()),  # gauges only
    (TEI, EngineCounters()),  # embeddings: TEI counts no tokens
    ("llamacpp:prompt_tokens_cached_total 5\n", EngineCounters()),  # the addend alone is no count
    ("vllm:prompt_tokens_total -3\n", EngineCounters(tokens_in=0.0)),  # never negative
])
def test_token_counters_of_each_engine(body, expected):
    assert counters(parse(body)) == expected
    assert bool(counters(parse(body))) == (expected != EngineCounters())


def test_parse_keeps_only_the_wanted_names_with_every_sample():
    assert parse(VLLM_DATA_PARALLEL) == {
        "vllm:num_requests_running": [2.0, 5.0], "vllm:num_requests_waiting": [1.0, 0.0],
        "vllm:kv_cache_usage_perc": [0.3, 0.9],
    }
    assert "vllm:request_success_total" not in parse(VLLM_V1)


def test_empty_signals_are_falsy():
    assert not EngineSignals() and EngineSignals(queue=0.0)


# --- the scraper ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeEngines:
    """One in-process server standing for several engines: which one answers is told by the
    bearer key the scraper sends (each replica has its own), as real engines' keys are."""

    def __init__(self) -> None:
        self.bodies: dict[str | None, str] = {}
        self.status: dict[str | None, int] = {}
        self.stall: set[str | None] = set()
        self.asked: list[str | None] = []
        self.release = asyncio.Event()

    async def metrics(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        key = auth.removeprefix("Bearer ") if auth else None
        self.asked.append(key)
        if key in self.stall:
            await self.release.wait()
        if key in self.status:
            return web.Response(status=self.status[key])
        return web.Response(text=self.bodies.get(key, ""), content_type="text/plain")


@pytest.fixture
async def engines():
    fake = FakeEngines()
    app = web.Application()
    app.router.add_get("/metrics", fake.metrics)
    server = TestServer(app)
    await server.start_server()
    session = aiohttp.ClientSession()
    fake.address = f"{server.host}:{server.port}"
    fake.session = session
    yield fake
    fake.release.set()
    await session.close()
    await server.close()


KEY = EndpointKey("alice", "llm")


def scraper_for(engines, replicas, clock, timeout_s=2.0):
    return EngineScraper(lambda: [(KEY, r) for r in replicas], lambda: engines.session,
                         interval_s=5.0, timeout_s=timeout_s, clock=clock)


async def test_each_replica_is_scraped_with_its_own_key(engines):
    engines.bodies = {"key-a": VLLM_V1, "key-b": TGI}
    clock = Clock()
    replicas = [Replica("a", engines.address, api_key="key-a"), Replica("b", engines.address, api_key="key-b")]
    scraper = scraper_for(engines, replicas, clock)
    await scraper.poll()
    latest = scraper.latest()
    assert {rid: s.signals for rid, s in latest.items()} == {
        "a": EngineSignals(queue=7.0, running=3.0, kv_cache=0.4213),
        "b": EngineSignals(queue=2.0, running=4.0, kv_cache=None),
    }
    assert latest["a"].key == KEY
    assert sorted(engines.asked) == ["key-a", "key-b"]


async def test_an_engine_with_counters_and_no_gauges_is_kept_for_its_counters(engines):
    engines.bodies = {"k": TGI_TOKENS}
    scraper = scraper_for(engines, [Replica("t", engines.address, api_key="k")], Clock())
    await scraper.poll()
    [scraped] = scraper.latest().values()
    assert scraped.signals == EngineSignals() and scraped.counters == EngineCounters(210.0, 77.0)


async def test_an_engine_without_metrics_is_asked_again_only_after_a_while(engines):
    engines.status = {"none": 404, "disabled": 501}  # a custom image; llama.cpp without --metrics
    clock = Clock()
    scraper = scraper_for(engines, [Replica("c", engines.address, api_key="none"),
                                    Replica("d", engines.address, api_key="disabled")], clock)
    await scraper.poll()
    assert scraper.latest() == {} and len(engines.asked) == 2
    clock.t += 5.0
    await scraper.poll()
    assert len(engines.asked) == 2  # not asked again yet
    clock.t += NO_METRICS_RETRY_S
    await scraper.poll()
    assert len(engines.asked) == 4


async def test_a_failed_or_stuck_scrape_keeps_the_last_values_only_until_they_are_stale(engines):
    engines.bodies = {"k": SGLANG}
    clock = Clock()
    scraper = scraper_for(engines, [Replica("s", engines.address, api_key="k")], clock, timeout_s=0.05)
    await scraper.poll()
    assert scraper.latest()["s"].signals.running == 10.0
    engines.stall.add("k")  # now it hangs: the timeout ends the scrape
    clock.t += 5.0
    await scraper.poll()
    assert scraper.latest()["s"].signals.running == 10.0  # the last good values, still recent
    clock.t += STALE_AFTER * 5.0
    assert scraper.latest() == {}  # too old to be shown as current


async def test_a_replica_gone_from_the_routes_is_forgotten(engines):
    engines.bodies = {"k": TGI}
    clock = Clock()
    replicas = [Replica("t", engines.address, api_key="k")]
    scraper = scraper_for(engines, replicas, clock)
    await scraper.poll()
    assert set(scraper.latest()) == {"t"}
    replicas.clear()
    await scraper.poll()
    assert scraper.latest() == {}


async def test_an_unreachable_engine_is_a_failed_scrape_not_an_error():
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        scraper = EngineScraper(lambda: [(KEY, Replica("x", "127.0.0.1:1"))], lambda: session, clock=clock)
        await scraper.poll()
    assert scraper.latest() == {}


# --- the echo engine's gauges -----------------------------------------------------------------


async def until(condition, timeout_s=5.0):
    async with asyncio.timeout(timeout_s):
        while True:
            result = condition()
            if await result if inspect.isawaitable(result) else result:
                return result
            await asyncio.sleep(0.002)


async def test_echo_reports_running_waiting_and_cache_from_its_real_requests():
    client = TestClient(TestServer(make_app(Settings(token_delay_s=0.02, max_running=1), exit_process=lambda code: None)))
    await client.start_server()
    try:
        async def read():
            async with client.get("/metrics") as response:
                return signals(parse(await response.text()))

        assert await read() == EngineSignals(queue=0.0, running=0.0, kv_cache=0.0)
        streams = [asyncio.create_task(client.post("/generate_stream", json={"inputs": "w " * 30})) for _ in range(3)]
        # One runs, two wait for the engine's only slot; the "KV cache" is full.
        await until(lambda: read_is(read, EngineSignals(queue=2.0, running=1.0, kv_cache=1.0)))
        for response in await asyncio.gather(*streams):
            await response.read()
            response.release()
        assert await read() == EngineSignals(queue=0.0, running=0.0, kv_cache=0.0)
    finally:
        await client.close()


async def read_is(read, expected):
    return await read() == expected


def test_echo_max_running_is_validated():
    assert Settings.from_env({}).max_running == 256
    assert Settings.from_env({"ECHO_MAX_RUNNING": "4"}).max_running == 4
    with pytest.raises(ValueError, match="ECHO_MAX_RUNNING='0' is invalid"):
        Settings.from_env({"ECHO_MAX_RUNNING": "0"})
