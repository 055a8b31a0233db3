"""The inference toolkit's HTTP server, with huggingface-inference-toolkit's routes: `POST /` (and
`/predict`) with `{"inputs", "parameters"}` answers the task's JSON; for Sentence-Transformers
embedding models, OpenAI's `POST /v1/embeddings` too; `GET /health` (and `GET /`)
answers 200 once the model is loaded, 503 before. It listens at once and loads in a worker
thread; a load that fails ends the process with exit code 1 and the reason in its log, which
endpointd's readiness check shows.

Settings (environment, as the `huggingface` preset sets them):
    HF_MODEL_DIR              the repository (default /repository, mounted read-only)
    HF_TASK                   the task; derived from the repository when unset (tasks.derive_task)
    HF_FRAMEWORK              the endpoint's framework; this image runs PyTorch weights only
    HF_DEFAULT_PIPELINE_NAME  the custom handler's file (default handler.py)
    TOOLKIT_API_KEY           when set, every route but the health routes needs `Bearer <key>`
    PORT                      default 5000 (the reference's entrypoint binds 5000)
    TOOLKIT_MAX_BODY_BYTES    largest request body, default 32 MiB
    TOOLKIT_MAX_QUEUED        requests waiting for the model beyond which 503s are answered, default 64
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from . import handlers, openai_embeddings
from .tasks import HANDLER_FILE, BadRequest, ToolkitError, parse_request, plan

log = logging.getLogger("toolkit")

DEFAULT_PORT = 5000
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # a batch of texts or one image; bounded in 1 KiB .. 1 GiB
DEFAULT_MAX_QUEUED = 64
MAX_EMBEDDING_INPUTS = 256  # as POST / takes (handlers.MAX_BATCH)
FRAMEWORKS = ("pytorch", "custom", "")  # what this image runs; others are served as PyTorch, with a warning
HEALTH_ROUTES = ("/health", "/")
# Content types whose body is the input itself (an image, a recording), as the reference takes them.
BINARY_TYPES = ("image", "audio", "video")


def _bounded(env: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ToolkitError(f"{key}={raw!r} is not an integer; use {low} to {high}") from None
    if not low <= value <= high:
        raise ToolkitError(f"{key}={value} is out of range; use {low} to {high}")
    return value


@dataclass(frozen=True)
class Settings:
    repository: Path
    task: str | None
    framework: str
    handler_file: str
    api_key: str | None
    port: int
    max_body_bytes: int
    max_queued: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        handler_file = env.get("HF_DEFAULT_PIPELINE_NAME") or HANDLER_FILE
        if "/" in handler_file or not handler_file.endswith(".py"):
            raise ToolkitError(f"HF_DEFAULT_PIPELINE_NAME={handler_file!r} must be a file name ending in .py, e.g. handler.py")
        return cls(
            repository=Path(env.get("HF_MODEL_DIR") or "/repository"),
            task=env.get("HF_TASK") or None,
            framework=(env.get("HF_FRAMEWORK") or "").lower(),
            handler_file=handler_file,
            api_key=env.get("TOOLKIT_API_KEY") or None,
            port=_bounded(env, "PORT", DEFAULT_PORT, 1, 65535),
            max_body_bytes=_bounded(env, "TOOLKIT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 1024**3),
            max_queued=_bounded(env, "TOOLKIT_MAX_QUEUED", DEFAULT_MAX_QUEUED, 1, 100_000),
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Toolkit:
    """The loaded handler (None while loading) and the one worker thread that runs it."""

    def __init__(self, settings: Settings, loader: Any = None) -> None:
        self.settings = settings
        self.handler: Any = None
        self.task: str | None = None  # the plan's task, once loaded
        self.failed: str | None = None
        self.queued = 0
        # One at a time: a model call uses every core it is given; more threads only contend.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._loader = loader  # (repository, plan, handler_file) -> handler; handlers.load by default

    def load(self) -> Any:
        chosen = plan(self.settings.repository, self.settings.task, self.settings.handler_file)
        self.task = chosen.task
        if self.settings.framework not in FRAMEWORKS:
            log.warning("framework %r: this toolkit image runs PyTorch weights; serving %s with PyTorch",
                        self.settings.framework, self.settings.repository)
        loader = self._loader
        if loader is None:
            loader = handlers.load
        return loader(self.settings.repository, chosen, self.settings.handler_file)


TOOLKIT = web.AppKey("toolkit", Toolkit)
STOP = web.AppKey("stop", asyncio.Event)


@web.middleware
async def access_log(request: web.Request, handler: Any) -> web.StreamResponse:
    """One line per request, `METHOD PATH STATUS`, as the other engines log."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        print(f"{request.method} {request.path} {error.status}", flush=True)
        raise
    print(f"{request.method} {request.path} {response.status}", flush=True)
    return response


@web.middleware
async def require_key(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.app[TOOLKIT].settings.api_key
    if key and not (request.method == "GET" and request.path in HEALTH_ROUTES):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return _error(401, "missing or wrong API key: send Authorization: Bearer <the replica's key>")
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    toolkit = request.app[TOOLKIT]
    if toolkit.handler is None:
        return _error(503, toolkit.failed or "the model is loading")
    return web.json_response({"status": "ok"})


async def _body(request: web.Request) -> Mapping[str, Any]:
    """The request's data: a JSON body, or any other content type's bytes as `inputs` (images,
    audio), as the reference takes them."""
    raw = await request.read()
    kind = request.content_type if "Content-Type" in request.headers else "application/json"
    if not (kind.split("/", 1)[0] in BINARY_TYPES or kind == "application/octet-stream"):
        try:
            decoded = json.loads(raw or b"null")
        except ValueError as error:
            raise BadRequest(f"the body is not valid JSON ({error}); send {{\"inputs\": ..., \"parameters\": {{}}}}") from None
        inputs, parameters = parse_request(decoded)
        return {**decoded, "inputs": inputs, "parameters": parameters}
    if not raw:
        raise BadRequest(f"the body is empty; send JSON or the {kind} bytes to run the model on")
    return {"inputs": raw, "parameters": {}}


def _not_ready(toolkit: Toolkit) -> web.Response | None:
    """503 while the model loads (or after it failed to)."""
    if toolkit.handler is None:
        return _error(503, toolkit.failed or "the model is loading; retry once GET /health answers 200")
    return None


def _full(toolkit: Toolkit) -> web.Response | None:
    """503 when max_queued requests already wait for the model."""
    if toolkit.queued >= toolkit.settings.max_queued:
        return _error(503, f"{toolkit.queued} requests are waiting for the model already; retry later")
    return None


async def _on_model_thread(toolkit: Toolkit, call: Any, *args: Any) -> Any:
    """`call(*args)` on the model's one thread, counted in `queued` while it waits and runs."""
    toolkit.queued += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(toolkit.pool, call, *args)
    finally:
        toolkit.queued -= 1


async def predict(request: web.Request) -> web.Response:
    toolkit = request.app[TOOLKIT]
    if (refused := _not_ready(toolkit)) is not None:
        return refused
    try:
        data = await _body(request)
    except BadRequest as error:
        return _error(400, str(error))
    if (refused := _full(toolkit)) is not None:
        return refused
    try:
        result = await _on_model_thread(toolkit, toolkit.handler, data)
    except BadRequest as error:
        return _error(400, str(error))
    except (ValueError, TypeError, KeyError) as error:
        # What the handler refused is the request's fault, as the reference answers it (400).
        return _error(400, f"{type(error).__name__}: {error}")
    except Exception as error:
        log.error("prediction failed:\n%s", traceback.format_exc())
        return _error(500, f"the model failed on this request: {type(error).__name__}: {error}")
    try:
        body = json.dumps(result, allow_nan=False, default=str)
    except ValueError as error:  # NaN or infinity: not JSON
        return _error(500, f"the model's output cannot be sent as JSON: {error}")
    return web.Response(text=body, content_type="application/json")


async def embeddings(request: web.Request) -> web.Response:
    """OpenAI's embeddings route, for models the toolkit serves with Sentence-Transformers."""
    toolkit = request.app[TOOLKIT]
    if (refused := _not_ready(toolkit)) is not None:
        return refused
    compute = getattr(toolkit.handler, "vectors_and_tokens", None)
    if compute is None:
        return _error(404, f"this endpoint serves the task {toolkit.task!r} on POST /; /v1/embeddings is served for "
                           f"Sentence-Transformers models with the task {' or '.join(openai_embeddings.EMBEDDING_TASKS)}")
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError as error:
        return _error(400, f'the body is not valid JSON ({error}); send {{"input": ["text", ...], "model": "..."}}')
    try:
        asked = openai_embeddings.parse(body, MAX_EMBEDDING_INPUTS)
    except BadRequest as error:
        return _error(400, str(error))
    if (refused := _full(toolkit)) is not None:
        return refused
    try:
        vectors, tokens = await _on_model_thread(toolkit, compute, asked.texts, asked.dimensions)
    except BadRequest as error:
        return _error(400, str(error))
    except Exception as error:
        log.error("embedding failed:\n%s", traceback.format_exc())
        return _error(500, f"the model failed on this request: {type(error).__name__}: {error}")
    return web.json_response(openai_embeddings.render(asked, vectors, tokens, toolkit.settings.repository.name))


async def _load_in_background(app: web.Application) -> Any:
    toolkit = app[TOOLKIT]

    async def load() -> None:
        try:
            toolkit.handler = await asyncio.get_running_loop().run_in_executor(toolkit.pool, toolkit.load)
            log.info("ready: %s", toolkit.settings.repository)
        except Exception as error:
            toolkit.failed = f"loading the model failed: {type(error).__name__}: {error}"
            log.error("%s\n%s", toolkit.failed, traceback.format_exc())
            app[STOP].set()

    task = asyncio.create_task(load())
    yield
    task.cancel()
    toolkit.pool.shutdown(wait=False, cancel_futures=True)


def make_app(settings: Settings, loader: Any = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[access_log, require_key])
    app[TOOLKIT] = Toolkit(settings, loader)
    app[STOP] = asyncio.Event()
    app.cleanup_ctx.append(_load_in_background)
    for path in HEALTH_ROUTES:
        app.router.add_get(path, health)
    app.router.add_post("/", predict)
    app.router.add_post("/predict", predict)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


async def serve(settings: Settings, host: str = "0.0.0.0") -> int:
    """Serve until SIGTERM/SIGINT (0) or a failed load (1)."""
    app = make_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, settings.port).start()
    log.info("listening on %s:%d", host, settings.port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app[STOP].set)
    await app[STOP].wait()
    failed = app[TOOLKIT].failed is not None
    await runner.cleanup()
    return 1 if failed else 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        settings = Settings.from_env(os.environ)
    except ToolkitError as error:
        log.error("%s", error)
        return 2
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
