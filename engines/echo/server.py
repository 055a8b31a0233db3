"""The echo engine: a stand-in inference engine for tests, demos and load tests (no GPU, no weights).

It speaks the HTTP APIs of real engines, so that huggingface_hub's InferenceClient works against it:
TGI (`POST /` and `/generate` as JSON, `/generate_stream` and `POST /` with `"stream": true` as SSE,
`GET /info`), OpenAI (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `GET /v1/models`)
and, with ECHO_TASK=feature-extraction, TEI's `POST /`. The "generated" tokens are the input's words
echoed back. `GET /health` answers 503 until the engine is ready, `GET /metrics` in Prometheus text,
with vLLM's scheduler gauges (`vllm:num_requests_running`, `vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc`) computed from its real requests: at most ECHO_MAX_RUNNING run at once,
the rest wait, and the "KV cache" is the share of those slots in use. Each request is logged as
`METHOD PATH STATUS`, except the `GET /health` and `GET /metrics` probes.

Personalities: started as endpointd's vLLM or SGLang preset starts those engines (`python3 -m
vllm.entrypoints.openai.api_server ...`, `python3 -m sglang.launch_server ...`: the shims under
shims/ in the image), it reads that engine's command line (`main(personality, argv)`): its port
(--port; else 8000 or 30000), its API key (vLLM: --api-key, else VLLM_API_KEY; SGLang: --api-key;
ECHO_API_KEY and PORT are not read then), and the engine's sleep routes, served as the engine
serves them and nowhere else (404 otherwise); every other flag is ignored.
    vLLM    with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode: `POST /sleep?level=1|2`,
            `POST /wake_up`, `GET /is_sleeping` -> {"is_sleeping": bool}
    SGLang  with --enable-memory-saver: `POST /release_memory_occupation` and
            `POST /resume_memory_occupation`, each with a JSON object (`{}`) as its body
A sleep takes ECHO_SLEEP_S and cuts the inference requests in flight, as vLLM's default sleep
aborts them (counted: `echo_requests_cut_by_sleep_total`); a wake takes ECHO_WAKE_S. From the
sleep's start to the wake's end the engine sleeps: an inference request is answered 503 `{"error":
"the engine is asleep"}` and counted (`echo_requests_while_asleep_total`), so that a test can tell
that endpointd never sent one to a sleeping replica; /health still answers 200, as vLLM's does.
/metrics has these counters, `echo_sleeping` and `echo_sleeps_total`/`echo_wakes_total` only
where the sleep routes are served.

Self-contained (stdlib + aiohttp, 3.8 API: no web.AppKey) because its image has Debian bookworm's
python3-aiohttp 3.8. Behaviour knobs, environment variables validated at start:
    PORT                        port to listen on, 1-65535 (default 80)
    ECHO_STARTUP_DELAY_S        seconds >= 0 before /health and inference answer (default 0)
    ECHO_TOKEN_DELAY_S          seconds >= 0 before each generated token (default 0)
    ECHO_CRASH_AFTER_REQUESTS   integer >= 1: exit with code 3 after answering that many inference requests
    ECHO_NEVER_READY            1/true: /health never answers 200 (default 0/false)
    ECHO_TASK                   text-generation (default) or feature-extraction: what `POST /` does
    ECHO_MAX_RUNNING            integer >= 1: inference requests answered at once, the rest wait
                                (default 256, vLLM's max_num_seqs)
    ECHO_API_KEY                when set, every route but /health needs `Authorization: Bearer <key>`
                                (401 otherwise), as real engines' API keys do; endpointd gives each
                                replica its own. Never logged.
    ECHO_SLEEP_S                seconds >= 0 a sleep takes (default 0.1)
    ECHO_WAKE_S                 seconds >= 0 a wake takes (default 0.3)
The real figures are seconds on a GPU (weights copied to CPU memory and back, the KV cache
reallocated) and grow with the model; the defaults are short, so that tests stay fast, and not
zero, so that a request arriving mid-transition is a real case.
"""

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

DEFAULT_PORT = 80  # what Inference Endpoints expects a custom image to listen on
MODEL_ID = "echo"  # the model name in answers; the `model` a client sends ("dummy", "tgi") is ignored
TASKS = ("text-generation", "feature-extraction")
# The default cap on generated tokens when a request sets none (TGI's is 100): long inputs stay short.
DEFAULT_MAX_NEW_TOKENS = 20
EMPTY_INPUT_WORD = "echo"  # an input without words still yields one token, as a real engine would
TOKEN_LOGPROB = -0.1  # every token's log-probability: TGI's stream events must carry one
EMBEDDING_DIM = 8  # small and fixed: enough to tell two texts apart
CRASH_EXIT_CODE = 3
CLIENT_CLOSED_STATUS = 499  # logged for a request whose client went away (nginx's convention)
DEFAULT_MAX_RUNNING = 256  # vLLM's default max_num_seqs: requests in one batch
# After SIGTERM, in-flight requests get this long to finish, then are cut (aiohttp >= 3.9 waits it
# twice: before and after cancelling): well inside Docker's 10 s stop grace.
SHUTDOWN_TIMEOUT_S = 1.0
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
BOOLEANS = {"1": True, "true": True, "0": False, "false": False}
# Routes that answer without the API key: readiness is probed directly, without one.
OPEN_ROUTES = frozenset({"/health"})
# Probed every few seconds by endpointd (health, engine metrics): not logged, or they would fill
# the log tail and hide the requests.
PROBE_ROUTES = frozenset({("GET", "/health"), ("GET", "/metrics")})
UNAUTHORIZED = {"error": "a valid `Authorization: Bearer <key>` header is required", "error_type": "authentication"}
ASLEEP = {"error": "the engine is asleep"}
DEFAULT_SLEEP_S = 0.1
DEFAULT_WAKE_S = 0.3

# Personalities: which engine's command line the echo engine was started with (see the docstring).
ECHO, VLLM, SGLANG = "echo", "vllm", "sglang"
ENGINE_PORTS = {VLLM: 8000, SGLANG: 30000}  # each engine's default --port
# The flag that turns each engine's sleep routes on; vLLM also needs VLLM_SERVER_DEV_MODE=1.
SLEEP_FLAGS = {VLLM: "--enable-sleep-mode", SGLANG: "--enable-memory-saver"}
VLLM_KEY_ENV = "VLLM_API_KEY"
VLLM_DEV_MODE_ENV = "VLLM_SERVER_DEV_MODE"
# The sleep states; inference is served only AWAKE.
AWAKE, FALLING_ASLEEP, SLEEPING, WAKING = "awake", "falling asleep", "sleeping", "waking"


def log(line):
    """One line to stdout, flushed at once so that container logs show it."""
    print(line, flush=True)


def _env_number(environ, name, kind, default, low, high=math.inf):
    return _number(name, environ.get(name, ""), kind, default, low, high)


def _number(name, raw, kind, default, low, high=math.inf):
    raw = (raw or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not low <= value <= high:  # NaN fails the range
        what = "an integer" if kind is int else "a number"
        bounds = f">= {low}" if high == math.inf else f"from {low} to {high}"
        raise ValueError(f"{name}={raw!r} is invalid: it must be {what} {bounds}")
    return value


def _env_choice(environ, name, choices, default):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() not in choices:
        raise ValueError(f"{name}={raw!r} is invalid: it must be one of {', '.join(choices)}")
    return raw.lower()


@dataclass(frozen=True)
class Settings:
    port: int = DEFAULT_PORT
    startup_delay_s: float = 0.0
    token_delay_s: float = 0.0
    crash_after_requests: int | None = None
    never_ready: bool = False
    task: str = "text-generation"
    api_key: str | None = field(default=None, repr=False)
    max_running: int = DEFAULT_MAX_RUNNING
    personality: str = ECHO
    sleep_routes: bool = False  # the personality's sleep routes are served
    sleep_s: float = DEFAULT_SLEEP_S
    wake_s: float = DEFAULT_WAKE_S

    @classmethod
    def from_env(cls, environ):
        """Read the knobs; ValueError naming the variable, its value and the valid range when one is wrong."""
        return cls(
            port=_env_number(environ, "PORT", int, DEFAULT_PORT, 1, 65535),
            startup_delay_s=_env_number(environ, "ECHO_STARTUP_DELAY_S", float, 0.0, 0),
            token_delay_s=_env_number(environ, "ECHO_TOKEN_DELAY_S", float, 0.0, 0),
            crash_after_requests=_env_number(environ, "ECHO_CRASH_AFTER_REQUESTS", int, None, 1),
            never_ready=BOOLEANS[_env_choice(environ, "ECHO_NEVER_READY", tuple(BOOLEANS), "0")],
            task=_env_choice(environ, "ECHO_TASK", TASKS, TASKS[0]),
            api_key=environ.get("ECHO_API_KEY") or None,
            max_running=_env_number(environ, "ECHO_MAX_RUNNING", int, DEFAULT_MAX_RUNNING, 1),
            sleep_s=_env_number(environ, "ECHO_SLEEP_S", float, DEFAULT_SLEEP_S, 0),
            wake_s=_env_number(environ, "ECHO_WAKE_S", float, DEFAULT_WAKE_S, 0),
        )

    @classmethod
    def for_engine(cls, personality, argv, environ):
        """The knobs, then what the engine's own command line and variables say (see the docstring)."""
        settings = cls.from_env(environ)
        if personality == ECHO:
            return settings
        parser = argparse.ArgumentParser(prog=personality, add_help=False, allow_abbrev=False)
        parser.add_argument("--port")
        parser.add_argument("--api-key")
        parser.add_argument(SLEEP_FLAGS[personality], action="store_true", dest="sleep")
        known, _ignored = parser.parse_known_args(list(argv))
        key = known.api_key or (environ.get(VLLM_KEY_ENV) if personality == VLLM else None)
        sleep = known.sleep and (personality != VLLM or environ.get(VLLM_DEV_MODE_ENV, "").strip() == "1")
        return dataclasses.replace(
            settings, personality=personality, port=_number("--port", known.port, int, ENGINE_PORTS[personality], 1, 65535),
            api_key=key or None, sleep_routes=sleep,
        )


class Invalid(Exception):
    """A request the engine refuses: answered 422 in TGI's error shape, `error_type` "validation"."""


async def _json_object(request):
    try:
        body = json.loads(await request.read())
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        raise Invalid("the body is not JSON") from None
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    return body


def _positive_int(value, name):
    if value is None:
        return DEFAULT_MAX_NEW_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(f"`{name}` must be a positive integer, got {value!r}")
    return value


def _strings(value, name):
    """A string or a non-empty list of strings, as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise Invalid(f"`{name}` must be a string or a non-empty list of strings")


def _last_user_text(messages):
    if not isinstance(messages, list) or not messages:
        raise Invalid("`messages` must be a non-empty list")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts: keep the text ones
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def _tokens(text, cap):
    """The words of `text` as tokens (each with its trailing space), at most `cap`; and whether the cap cut them."""
    words = text.split() or [EMPTY_INPUT_WORD]
    return [word + " " for word in words[:cap]], len(words) > cap


def _embedding(text):
    """EMBEDDING_DIM floats in [0, 1]: the first bytes of the text's SHA-256, so a pure function of it."""
    return [byte / 255 for byte in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIM]]


def _sse(payload):
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


async def _start_sse(request):
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    return response


@web.middleware
async def log_requests(request, handler):
    """One line per request: method, path, status; probes (PROBE_ROUTES) are not logged."""
    if (request.method, request.path) in PROBE_ROUTES:
        return await handler(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:  # the router's 404 and 405
        status = error.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = CLIENT_CLOSED_STATUS
        raise
    finally:
        log(f"{request.method} {request.path} {status}")


def require_key(key):
    """A middleware: with a key, every route but OPEN_ROUTES answers 401 to a request without
    `Authorization: Bearer <key>` (the scheme in any case), compared in constant time."""
    expected = key.encode()

    @web.middleware
    async def middleware(request, handler):
        if request.path not in OPEN_ROUTES:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
                return web.json_response(UNAUTHORIZED, status=401)
        return await handler(request)

    return middleware


class Engine:
    """The engine's state (readiness, sleep, counters, the crash countdown) and its handlers."""

    def __init__(self, settings, exit_process):
        self.settings = settings
        self.exit_process = exit_process
        self.ready = False
        self.requests_total = 0
        self.in_flight = 0  # inference requests between arrival and answer: waiting + running
        self.waiting = 0
        self.running = 0
        self._slots = asyncio.Semaphore(settings.max_running)
        self.tokens_total = 0
        self.created = int(time.time())
        self.sleep_state = AWAKE
        self._sleep_lock = asyncio.Lock()  # one sleep or wake at a time
        self._serving = set()  # the tasks of the inference requests in flight: a sleep cuts them
        self.sleeps_total = 0
        self.wakes_total = 0
        self.requests_while_asleep = 0
        self.requests_cut_by_sleep = 0

    async def readiness(self, app):
        """cleanup_ctx: ready ECHO_STARTUP_DELAY_S after the app starts (it listens at once)."""
        timer = None
        if not self.settings.never_ready and self.settings.startup_delay_s == 0:
            self._become_ready()  # at once, so that no request can find it loading
        elif not self.settings.never_ready:
            timer = asyncio.get_running_loop().call_later(self.settings.startup_delay_s, self._become_ready)
        yield
        if timer is not None:
            timer.cancel()

    def _become_ready(self):
        self.ready = True
        log("echo engine ready")

    def inference(self, handler):
        """An inference route: 503 while loading, 422 for a bad request, counted, and the crash countdown."""

        async def gated(request):
            if not self.ready:
                return web.json_response({"error": "loading"}, status=503)
            if self.sleep_state != AWAKE:
                self.requests_while_asleep += 1
                return web.json_response(ASLEEP, status=503)
            # Every count is decremented in `finally`: errors and client disconnects never leak one.
            task = asyncio.current_task()
            self._serving.add(task)
            self.in_flight += 1
            try:
                self.waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self.waiting -= 1
                self.running += 1
                try:
                    response = await handler(request, await _json_object(request))
                except Invalid as error:
                    response = web.json_response({"error": str(error), "error_type": "validation"}, status=422)
                finally:
                    self.running -= 1
                    self._slots.release()
            finally:
                self.in_flight -= 1
                self._serving.discard(task)
            self.requests_total += 1
            if self.requests_total == self.settings.crash_after_requests:
                # Send this answer in full first; the exit comes on the next turn of the loop.
                await response.prepare(request)
                await response.write_eof()
                log(f"echo engine: exiting with code {CRASH_EXIT_CODE} after {self.requests_total} "
                    f"inference requests (ECHO_CRASH_AFTER_REQUESTS)")
                asyncio.get_running_loop().call_soon(self.exit_process, CRASH_EXIT_CODE)
            return response

        return gated

    async def _produce_token(self):
        await asyncio.sleep(self.settings.token_delay_s)
        self.tokens_total += 1

    # --- TGI ---

    async def tgi_root(self, request, body):
        """TGI's compat route: a list when not streaming, SSE with `"stream": true`; TEI's embeddings
        when the task is feature-extraction."""
        if self.settings.task == "feature-extraction":
            return web.json_response([_embedding(text) for text in _strings(body.get("inputs"), "inputs")])
        return await self._tgi(request, body, stream=body.get("stream") is True, as_list=True)

    async def tgi_generate(self, request, body):
        return await self._tgi(request, body, stream=False, as_list=False)

    async def tgi_generate_stream(self, request, body):
        return await self._tgi(request, body, stream=True, as_list=False)

    async def _tgi(self, request, body, stream, as_list):
        inputs, params = body.get("inputs"), body.get("parameters") or {}
        if not isinstance(inputs, str):
            raise Invalid("`inputs` must be a string")
        if not isinstance(params, dict):
            raise Invalid("`parameters` must be an object")
        tokens, cut = _tokens(inputs, _positive_int(params.get("max_new_tokens"), "max_new_tokens"))
        summary = {"finish_reason": "length" if cut else "eos_token", "generated_tokens": len(tokens),
                   "seed": params.get("seed")}
        if stream:
            response = await _start_sse(request)
            for i, token in enumerate(tokens):
                await self._produce_token()
                last = i == len(tokens) - 1
                await response.write(_sse({
                    "index": i,
                    "token": {"id": i, "text": token, "logprob": TOKEN_LOGPROB, "special": False},
                    "generated_text": "".join(tokens) if last else None,
                    "details": summary if last else None,
                }))
            await response.write_eof()
            return response
        for _ in tokens:
            await self._produce_token()
        result = {"generated_text": "".join(tokens)}
        if params.get("details"):
            result["details"] = {**summary, "prefill": [], "tokens": [
                {"id": i, "text": token, "logprob": TOKEN_LOGPROB, "special": False} for i, token in enumerate(tokens)
            ]}
        return web.json_response([result] if as_list else result)

    # --- OpenAI ---

    async def chat_completions(self, request, body):
        return await self._openai(request, body, _last_user_text(body.get("messages")), chat=True)

    async def completions(self, request, body):
        return await self._openai(request, body, " ".join(_strings(body.get("prompt"), "prompt")), chat=False)

    async def _openai(self, request, body, prompt, chat):
        tokens, cut = _tokens(prompt, _positive_int(body.get("max_tokens"), "max_tokens"))
        finish = "length" if cut else "stop"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(tokens),
                 "total_tokens": len(prompt.split()) + len(tokens)}
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
                "model": MODEL_ID, "system_fingerprint": MODEL_ID}

        def choice(text, finish_reason, whole=False):
            if not chat:
                part = {"text": text}
            elif whole:
                part = {"message": {"role": "assistant", "content": text}}
            else:
                part = {"delta": {"role": "assistant", "content": text}}
            return {"index": 0, **part, "logprobs": None, "finish_reason": finish_reason}

        if not body.get("stream"):
            for _ in tokens:
                await self._produce_token()
            return web.json_response({**head, "object": kind, "choices": [choice("".join(tokens), finish, whole=True)],
                                      "usage": usage})
        chunk = {**head, "object": (kind + ".chunk") if chat else kind}
        response = await _start_sse(request)
        for token in tokens:
            await self._produce_token()
            await response.write(_sse({**chunk, "choices": [choice(token, None)]}))
        await response.write(_sse({**chunk, "choices": [choice("", finish)]}))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await response.write(_sse({**chunk, "choices": [], "usage": usage}))
        await response.write(_sse(b"[DONE]"))
        await response.write_eof()
        return response

    async def embeddings(self, request, body):
        texts = _strings(body.get("input"), "input")
        words = sum(len(text.split()) for text in texts)
        return web.json_response({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _embedding(text)} for i, text in enumerate(texts)],
            "model": MODEL_ID,
            "usage": {"prompt_tokens": words, "total_tokens": words},
        })

    async def models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": self.created, "owned_by": "endpointd"}
        ]})

    # --- sleep and wake ---

    async def _fall_asleep(self):
        """Sleep: inference refused from now on, the requests in flight cut, ECHO_SLEEP_S spent."""
        async with self._sleep_lock:
            if self.sleep_state == SLEEPING:
                return
            self.sleep_state = FALLING_ASLEEP
            cut = list(self._serving)
            for task in cut:
                task.cancel()
            self.requests_cut_by_sleep += len(cut)
            log(f"echo engine: falling asleep ({len(cut)} requests in flight cut)")
            try:
                await asyncio.sleep(self.settings.sleep_s)
            finally:  # a sleep whose caller went away still happens, as in the engine
                self.sleep_state = SLEEPING
                self.sleeps_total += 1
            log("echo engine: asleep")

    async def _wake(self):
        async with self._sleep_lock:
            if self.sleep_state == AWAKE:
                return
            self.sleep_state = WAKING
            log("echo engine: waking up")
            try:
                await asyncio.sleep(self.settings.wake_s)
            finally:
                self.sleep_state = AWAKE
                self.wakes_total += 1
            log("echo engine: awake")

    async def vllm_sleep(self, request):
        if request.query.get("level", "1") not in ("1", "2"):
            return web.json_response({"error": "level must be 1 or 2"}, status=400)
        await self._fall_asleep()
        return web.Response(status=200)

    async def vllm_wake_up(self, request):
        await self._wake()  # every part of the engine, whatever `tags` asks
        return web.Response(status=200)

    async def vllm_is_sleeping(self, request):
        return web.json_response({"is_sleeping": self.sleep_state != AWAKE})

    async def sglang_release(self, request):
        return await self._sglang(request, self._fall_asleep)

    async def sglang_resume(self, request):
        return await self._sglang(request, self._wake)

    async def _sglang(self, request, transition):
        """SGLang's memory routes take a JSON object (its optional `tags`) and answer JSON null."""
        try:
            await _json_object(request)
        except Invalid as error:
            return web.json_response({"error": str(error), "error_type": "validation"}, status=422)
        await transition()
        return web.json_response(None)

    # --- operations ---

    async def health(self, request):
        if self.ready:
            return web.Response(status=200)
        return web.json_response({"error": "loading"}, status=503)

    async def info(self, request):
        return web.json_response({"model_id": MODEL_ID, "model_pipeline_tag": self.settings.task,
                                  "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "router": "echo-engine"})

    async def metrics(self, request):
        model = f'{{model_name="{MODEL_ID}"}}'  # vLLM labels its gauges with the served model
        # Only where the sleep routes are served: an engine that cannot sleep says nothing of it.
        sleep = (
            ("echo_sleeping", "", "gauge", "1 from a sleep's start to its wake's end.", int(self.sleep_state != AWAKE)),
            ("echo_sleeps_total", "", "counter", "Sleeps done.", self.sleeps_total),
            ("echo_wakes_total", "", "counter", "Wakes done.", self.wakes_total),
            ("echo_requests_while_asleep_total", "", "counter",
             "Inference requests refused because the engine was asleep.", self.requests_while_asleep),
            ("echo_requests_cut_by_sleep_total", "", "counter",
             "Inference requests in flight cut by a sleep.", self.requests_cut_by_sleep),
        ) if self.settings.sleep_routes else ()
        text = "".join(
            f"# HELP {name} {about}\n# TYPE {name} {kind}\n{name}{labels} {value}\n"
            for name, labels, kind, about, value in (
                ("echo_requests_total", "", "counter", "Inference requests answered.", self.requests_total),
                ("echo_requests_in_flight", "", "gauge", "Inference requests being answered.", self.in_flight),
                ("echo_tokens_generated_total", "", "counter", "Tokens generated.", self.tokens_total),
                *sleep,
                ("vllm:num_requests_running", model, "gauge", "Number of requests in model execution batches.",
                 float(self.running)),
                ("vllm:num_requests_waiting", model, "gauge", "Number of requests waiting to be processed.",
                 float(self.waiting)),
                ("vllm:kv_cache_usage_perc", model, "gauge",
                 "KV-cache usage. 1 means 100 percent usage (here: the share of ECHO_MAX_RUNNING in use).",
                 self.running / self.settings.max_running),
            )
        )
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def make_app(settings, exit_process=os._exit):
    """The engine as an aiohttp app; `exit_process(code)` ends the process when it crashes on purpose."""
    engine = Engine(settings, exit_process)
    # Logged first, so that a refused request is logged too (method, path, status: never a header).
    middlewares = [log_requests] + ([require_key(settings.api_key)] if settings.api_key else [])
    app = web.Application(middlewares=middlewares)
    app.cleanup_ctx.append(engine.readiness)
    app.router.add_get("/health", engine.health)
    app.router.add_get("/info", engine.info)
    app.router.add_get("/metrics", engine.metrics)
    app.router.add_get("/v1/models", engine.models)
    if settings.sleep_routes and settings.personality == VLLM:
        app.router.add_post("/sleep", engine.vllm_sleep)
        app.router.add_post("/wake_up", engine.vllm_wake_up)
        app.router.add_get("/is_sleeping", engine.vllm_is_sleeping)
    if settings.sleep_routes and settings.personality == SGLANG:
        app.router.add_post("/release_memory_occupation", engine.sglang_release)
        app.router.add_post("/resume_memory_occupation", engine.sglang_resume)
    for path, handler in (
        ("/", engine.tgi_root),
        ("/generate", engine.tgi_generate),
        ("/generate_stream", engine.tgi_generate_stream),
        ("/v1/chat/completions", engine.chat_completions),
        ("/v1/completions", engine.completions),
        ("/v1/embeddings", engine.embeddings),
    ):
        app.router.add_post(path, engine.inference(handler))
    return app


def main(personality=ECHO, argv=()):
    """Run the engine: as itself, or with the command line `argv` of a vLLM or SGLang personality."""
    try:
        settings = Settings.for_engine(personality, argv, os.environ)
    except ValueError as error:
        print(f"echo engine: {error}", file=sys.stderr, flush=True)
        return 2
    as_engine = "" if settings.personality == ECHO else f" (as {settings.personality})"
    # run_app stops gracefully on SIGTERM and SIGINT through loop signal handlers. As PID 1 in a
    # container that handler is what makes SIGTERM stop the process: the kernel drops signals
    # that PID 1 has no handler for. `print` is called once the port is listening.
    web.run_app(
        make_app(settings),
        host="0.0.0.0",
        port=settings.port,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=lambda _banner: log(f"echo engine{as_engine} listening on :{settings.port}"),
    )
    log("echo engine stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
