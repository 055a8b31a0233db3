"""The echo engine: a stand-in inference engine for tests, demos and load tests (no GPU, no weights).

It speaks TGI (`POST /`, `/generate`, `/generate_stream`) and OpenAI (`/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings`, `/v1/models`), streams SSE like they do, answers `/health`
(503 until ready) and `/metrics`. The "generated" text echoes the input's words back as tokens.

Self-contained (stdlib + aiohttp, 3.8 API) because it runs in a Debian image whose python3-aiohttp
is 3.8. Behaviour knobs, all environment variables:
    PORT                        port to listen on (default 80)
    ECHO_STARTUP_DELAY_S        seconds before /health answers 200 (default 0)
    ECHO_TOKEN_DELAY_S          seconds before each generated token (default 0)
    ECHO_CRASH_AFTER_REQUESTS   exit with code 3 after answering this many inference requests
    ECHO_NEVER_READY            1: /health never answers 200
"""

import asyncio
import hashlib
import json
import os
import sys
import time
import uuid

from aiohttp import web

CRASH_EXIT_CODE = 3
DEFAULT_MAX_TOKENS = 20
EMBEDDING_DIM = 8


class Settings:
    def __init__(self, port=80, startup_delay_s=0.0, token_delay_s=0.0, crash_after=None, never_ready=False):
        self.port = port
        self.startup_delay_s = startup_delay_s
        self.token_delay_s = token_delay_s
        self.crash_after = crash_after
        self.never_ready = never_ready

    @classmethod
    def from_env(cls, env):
        def number(name, default, kind, minimum):
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                value = None
            if value is None or value < minimum or value != value:
                kind_name = "an integer" if kind is int else "a number"
                raise ValueError(f"{name}={raw!r} is invalid: it must be {kind_name} >= {minimum}")
            return value

        never = env.get("ECHO_NEVER_READY", "").strip().lower()
        if never not in ("", "0", "1", "true", "false"):
            raise ValueError(f"ECHO_NEVER_READY={never!r} is invalid: it must be 1, true, 0 or false")
        return cls(
            port=number("PORT", 80, int, 1),
            startup_delay_s=number("ECHO_STARTUP_DELAY_S", 0.0, float, 0),
            token_delay_s=number("ECHO_TOKEN_DELAY_S", 0.0, float, 0),
            crash_after=number("ECHO_CRASH_AFTER_REQUESTS", None, int, 1),
            never_ready=never in ("1", "true"),
        )


class Engine:
    def __init__(self, settings):
        self.settings = settings
        self.ready = False
        self.requests = 0
        self.in_flight = 0
        self.tokens = 0

    def tokens_for(self, text, limit):
        words = str(text).split() or ["echo"]
        return [w + " " for w in words[: max(1, limit)]]

    async def each_token(self, tokens):
        for token in tokens:
            if self.settings.token_delay_s:
                await asyncio.sleep(self.settings.token_delay_s)
            self.tokens += 1
            yield token

    def answered(self):
        """Count an inference request; crash after the configured number, once it is answered."""
        self.requests += 1
        crash_after = self.settings.crash_after
        if crash_after is not None and self.requests >= crash_after:
            print(f"echo engine: crashing after {self.requests} requests (ECHO_CRASH_AFTER_REQUESTS)", flush=True)
            asyncio.get_event_loop().call_later(0.05, os._exit, CRASH_EXIT_CODE)


def sse(obj):
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


async def start_sse(request):
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


def engine_of(request):
    return request.app["engine"]


async def body_of(request):
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body is not JSON"}), content_type="application/json")
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body must be a JSON object"}), content_type="application/json")
    return body


@web.middleware
async def gate(request, handler):
    """Inference routes answer 503 until the engine is ready; every request is logged."""
    engine = engine_of(request)
    inference = request.method == "POST"
    if inference and not engine.ready:
        response = web.json_response({"error": "loading"}, status=503)
    elif inference:
        engine.in_flight += 1
        try:
            response = await handler(request)
        finally:
            engine.in_flight -= 1
        engine.answered()
    else:
        response = await handler(request)
    print(f"{request.method} {request.path} {response.status}", flush=True)
    return response


async def health(request):
    if engine_of(request).ready:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "loading"}, status=503)


async def info(request):
    return web.json_response({"model_id": "/repository", "version": "echo", "max_total_tokens": 4096})


async def metrics(request):
    engine = engine_of(request)
    text = (
        "# TYPE echo_requests_total counter\n"
        f"echo_requests_total {engine.requests}\n"
        "# TYPE echo_requests_in_flight gauge\n"
        f"echo_requests_in_flight {engine.in_flight}\n"
        "# TYPE echo_tokens_generated_total counter\n"
        f"echo_tokens_generated_total {engine.tokens}\n"
    )
    return web.Response(text=text, content_type="text/plain")


def tgi_details(tokens, finish):
    return {
        "finish_reason": finish,
        "generated_tokens": len(tokens),
        "seed": None,
        "prefill": [],
        "tokens": [{"id": i, "text": t, "logprob": -0.1, "special": False} for i, t in enumerate(tokens)],
    }


async def tgi(request, stream=None, as_list=False):
    engine = engine_of(request)
    body = await body_of(request)
    params = body.get("parameters") or {}
    limit = int(params.get("max_new_tokens") or DEFAULT_MAX_TOKENS)
    words = str(body.get("inputs", "")).split() or ["echo"]
    tokens = engine.tokens_for(body.get("inputs", ""), limit)
    finish = "length" if len(words) > len(tokens) else "eos_token"
    if stream if stream is not None else body.get("stream"):
        response = await start_sse(request)
        text = ""
        i = 0
        async for token in engine.each_token(tokens):
            text += token
            last = i == len(tokens) - 1
            await response.write(sse({
                "index": i,
                "token": {"id": i, "text": token, "logprob": -0.1, "special": False},
                "generated_text": text if last else None,
                "details": {"finish_reason": finish, "generated_tokens": len(tokens), "seed": None} if last else None,
            }))
            i += 1
        await response.write_eof()
        return response
    text = "".join([t async for t in engine.each_token(tokens)])
    result = {"generated_text": text}
    if params.get("details"):
        result["details"] = tgi_details(tokens, finish)
    return web.json_response([result] if as_list else result)


async def tgi_root(request):
    return await tgi(request, as_list=True)


async def tgi_generate(request):
    return await tgi(request, stream=False)


async def tgi_generate_stream(request):
    return await tgi(request, stream=True)


def prompt_of_messages(messages):
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # multimodal parts: keep the text ones
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


async def openai(request, chat):
    engine = engine_of(request)
    body = await body_of(request)
    prompt = prompt_of_messages(body.get("messages")) if chat else body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = " ".join(map(str, prompt))
    limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS)
    tokens = engine.tokens_for(prompt, limit)
    finish = "length" if len(str(prompt).split()) > len(tokens) else "stop"
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    model = str(body.get("model") or "echo")
    kind = "chat.completion" if chat else "text_completion"

    def choice(text, final):
        if chat:
            delta = {"role": "assistant", "content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish if final else None}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish if final else None}

    if body.get("stream"):
        response = await start_sse(request)
        async for token in engine.each_token(tokens):
            await response.write(sse({
                "id": rid, "object": kind + (".chunk" if chat else ""), "created": created, "model": model,
                "system_fingerprint": "echo", "choices": [choice(token, False)],
            }))
        final = choice("", True)
        if chat:
            final["delta"] = {}
        await response.write(sse({
            "id": rid, "object": kind + (".chunk" if chat else ""), "created": created, "model": model,
            "system_fingerprint": "echo", "choices": [final],
        }))
        await response.write(sse(b"[DONE]"))
        await response.write_eof()
        return response
    text = "".join([t async for t in engine.each_token(tokens)])
    if chat:
        first = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    else:
        first = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return web.json_response({
        "id": rid, "object": kind, "created": created, "model": model, "system_fingerprint": "echo",
        "choices": [first],
        "usage": {"prompt_tokens": len(str(prompt).split()), "completion_tokens": len(tokens),
                  "total_tokens": len(str(prompt).split()) + len(tokens)},
    })


async def chat_completions(request):
    return await openai(request, chat=True)


async def completions(request):
    return await openai(request, chat=False)


def embedding(text):
    digest = hashlib.sha256(str(text).encode()).digest()
    return [round(b / 255.0, 6) for b in digest[:EMBEDDING_DIM]]


async def embeddings(request):
    body = await body_of(request)
    inputs = body.get("input", "")
    items = inputs if isinstance(inputs, list) else [inputs]
    return web.json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": embedding(t)} for i, t in enumerate(items)],
        "model": str(body.get("model") or "echo"),
        "usage": {"prompt_tokens": sum(len(str(t).split()) for t in items), "total_tokens": sum(len(str(t).split()) for t in items)},
    })


async def models(request):
    return web.json_response({"object": "list", "data": [{"id": "echo", "object": "model", "owned_by": "endpointd"}]})


def make_app(settings):
    app = web.Application(middlewares=[gate])
    engine = app["engine"] = Engine(settings)

    async def become_ready(app):
        async def later():
            await asyncio.sleep(settings.startup_delay_s)
            engine.ready = True
            print("echo engine ready", flush=True)

        if not settings.never_ready:
            app["ready_task"] = asyncio.get_event_loop().create_task(later())

    async def stop(app):
        task = app.get("ready_task")
        if task is not None:
            task.cancel()

    app.on_startup.append(become_ready)
    app.on_cleanup.append(stop)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/", tgi_root)
    app.router.add_post("/generate", tgi_generate)
    app.router.add_post("/generate_stream", tgi_generate_stream)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


def main():
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as error:
        print(f"echo engine: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"echo engine listening on :{settings.port}", flush=True)
    # As PID 1 in a container SIGTERM has no default action; run_app installs a handler for it.
    web.run_app(make_app(settings), port=settings.port, print=None, shutdown_timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
