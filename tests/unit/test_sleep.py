"""engines/sleep.py: which engines sleep, and the calls that sleep, wake and ask them, against the
echo engine's vLLM and SGLang personalities in-process and small servers that answer as llama.cpp
does or fail."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engines import sleep
from engines.echo.server import SGLANG, VLLM, Settings, make_app
from engines.runtime import ContainerStatus, EndpointKey, ReplicaInfo, RuntimeFailure
from engines.sleep import SleepFailed, SleepKind
from engines.spec_rules import VARIANTS

KEY = "k3y-of-the-replica"
TIMEOUT_S = 10.0


def replica(address: str | None, api_key: str | None = KEY) -> ReplicaInfo:
    return ReplicaInfo("r1", EndpointKey("ns", "e1"), "1", "c1", "endpointd-ns-e1-r1", ContainerStatus.RUNNING,
                       address, "/health", api_key=api_key)


@pytest.fixture
async def serve():
    """Start an aiohttp app on a local port; its replica (address, key)."""
    servers = []

    async def serve(app: web.Application, api_key: str | None = KEY) -> ReplicaInfo:
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return replica(f"127.0.0.1:{server.port}", api_key)

    yield serve
    for server in servers:
        await server.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


def echo(personality: str, argv: list[str], environ: dict[str, str] | None = None) -> web.Application:
    return make_app(Settings.for_engine(personality, argv, environ or {}), exit_process=lambda code: None)


def vllm_echo(**environ: str) -> web.Application:
    return echo(VLLM, ["--enable-sleep-mode"], {"VLLM_SERVER_DEV_MODE": "1", "VLLM_API_KEY": KEY, **environ})


async def chat_status(session: aiohttp.ClientSession, info: ReplicaInfo) -> int:
    async with session.post(f"http://{info.address}/v1/completions", json={"prompt": "a"},
                            headers={"Authorization": f"Bearer {KEY}"}) as response:
        return response.status


# --- which engines sleep ---


@pytest.mark.parametrize("variant, kind, driven", [
    ("vLLM", SleepKind.VLLM, True),
    ("sGLang", SleepKind.SGLANG, True),
    ("llamacpp", SleepKind.LLAMACPP, False),  # it sleeps and wakes by itself
    ("tgi", None, None), ("tei", None, None), ("huggingface", None, None), ("hfServe", None, None),
    ("custom", None, None),
])
def test_the_engines_that_sleep_and_who_drives_them(variant, kind, driven):
    assert sleep.sleep_kind({variant: {}}) is kind
    if kind is not None:
        assert sleep.driven(kind) is driven


def test_every_variant_of_the_wire_is_known():
    assert set(sleep.KINDS) < set(VARIANTS)


def test_a_custom_image_cannot_sleep_even_the_echo_engine():
    assert sleep.sleep_kind({"custom": {"url": "endpointd/echo:latest"}}) is None


def test_an_image_names_exactly_one_variant():
    with pytest.raises(ValueError, match="exactly one variant key"):
        sleep.sleep_kind({"vLLM": {}, "tgi": {}})


# --- vLLM and SGLang, driven ---


async def test_vllm_sleeps_says_so_and_wakes(serve, session):
    info = await serve(vllm_echo())
    assert await sleep.is_sleeping(session, info, SleepKind.VLLM, TIMEOUT_S) is False
    await sleep.put_to_sleep(session, info, SleepKind.VLLM, TIMEOUT_S)
    assert await sleep.is_sleeping(session, info, SleepKind.VLLM, TIMEOUT_S) is True
    assert await chat_status(session, info) == 503
    await sleep.wake_up(session, info, SleepKind.VLLM, TIMEOUT_S)
    assert await sleep.is_sleeping(session, info, SleepKind.VLLM, TIMEOUT_S) is False
    assert await chat_status(session, info) == 200


async def test_sglang_releases_and_resumes_and_cannot_say_whether_it_sleeps(serve, session):
    info = await serve(echo(SGLANG, ["--enable-memory-saver", "--api-key", KEY]))
    await sleep.put_to_sleep(session, info, SleepKind.SGLANG, TIMEOUT_S)
    assert await chat_status(session, info) == 503
    assert await sleep.is_sleeping(session, info, SleepKind.SGLANG, TIMEOUT_S) is None
    await sleep.wake_up(session, info, SleepKind.SGLANG, TIMEOUT_S)
    assert await chat_status(session, info) == 200


@pytest.mark.parametrize("call, operation", [
    (sleep.put_to_sleep, "sleep"), (sleep.wake_up, "wake"), (sleep.is_sleeping, "is_sleeping"),
])
async def test_the_replicas_key_is_sent(serve, session, call, operation):
    info = await serve(vllm_echo(), api_key="not-the-key")
    with pytest.raises(SleepFailed) as raised:
        await call(session, info, SleepKind.VLLM, TIMEOUT_S)
    assert (raised.value.operation, raised.value.target) == (operation, "replica r1")
    assert " answered 401: " in raised.value.detail


@pytest.mark.parametrize("kind, app, detail", [
    (SleepKind.VLLM, echo(VLLM, ["--enable-sleep-mode"], {"VLLM_API_KEY": KEY}),  # no dev mode
     "POST /sleep?level=1 answered 404 (vLLM serves it only with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode): "),
    (SleepKind.SGLANG, echo(SGLANG, ["--api-key", KEY]),
     "POST /release_memory_occupation answered 404 (SGLang serves it only with --enable-memory-saver): "),
])
async def test_an_engine_started_without_its_sleep_flags_is_named(serve, session, kind, app, detail):
    info = await serve(app)
    with pytest.raises(SleepFailed) as raised:
        await sleep.put_to_sleep(session, info, kind, TIMEOUT_S)
    assert raised.value.detail.startswith(detail)


# --- llama.cpp, by itself ---


def llamacpp(props: object, seen: list[str]) -> web.Application:
    """A server answering GET /props as llama-server does, which notes every request it gets."""

    @web.middleware
    async def note(request: web.Request, handler):
        seen.append(f"{request.method} {request.path} {request.headers.get('Authorization')}")
        return await handler(request)

    async def props_route(request: web.Request) -> web.Response:
        return web.json_response(props)

    app = web.Application(middlewares=[note])
    app.router.add_get("/props", props_route)
    return app


@pytest.mark.parametrize("asleep", [True, False])
async def test_llamacpp_says_whether_it_sleeps_in_its_props(serve, session, asleep):
    seen: list[str] = []
    info = await serve(llamacpp({"n_ctx": 2048, "is_sleeping": asleep}, seen))
    assert await sleep.is_sleeping(session, info, SleepKind.LLAMACPP, TIMEOUT_S) is asleep
    assert seen == [f"GET /props Bearer {KEY}"]


async def test_llamacpp_is_neither_sent_to_sleep_nor_woken(serve, session):
    seen: list[str] = []
    info = await serve(llamacpp({"is_sleeping": True}, seen))
    with pytest.raises(ValueError, match="sleeps by itself"):
        await sleep.put_to_sleep(session, info, SleepKind.LLAMACPP, TIMEOUT_S)
    await sleep.wake_up(session, info, SleepKind.LLAMACPP, TIMEOUT_S)  # the forwarded request wakes it
    assert seen == []


@pytest.mark.parametrize("props", [{"n_ctx": 2048}, {"is_sleeping": "yes"}, ["is_sleeping"]])
async def test_props_without_a_boolean_is_sleeping_is_a_failure(serve, session, props):
    info = await serve(llamacpp(props, []))
    with pytest.raises(SleepFailed, match="GET /props answered no boolean is_sleeping"):
        await sleep.is_sleeping(session, info, SleepKind.LLAMACPP, TIMEOUT_S)


# --- failures ---


async def test_a_failure_quotes_the_status_and_the_first_200_characters(serve, session):
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, text="x" * 199 + "yz")

    app = web.Application()
    app.router.add_post("/sleep", failing)
    info = await serve(app)
    with pytest.raises(SleepFailed) as raised:
        await sleep.put_to_sleep(session, info, SleepKind.VLLM, TIMEOUT_S)
    assert isinstance(raised.value, RuntimeFailure)
    assert str(raised.value) == f"sleep replica r1: POST /sleep?level=1 answered 500: {'x' * 199 + 'y'!r}"


async def test_an_unreachable_replica_is_a_failure(session):
    server = TestServer(web.Application())
    await server.start_server()
    address = f"127.0.0.1:{server.port}"
    await server.close()  # nothing listens there now
    with pytest.raises(SleepFailed, match=r"^wake replica r1: POST /wake_up failed: "):
        await sleep.wake_up(session, replica(address), SleepKind.VLLM, TIMEOUT_S)


async def test_a_replica_that_does_not_answer_in_time_is_a_failure(serve, session):
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/resume_memory_occupation", hang)
    info = await serve(app)
    with pytest.raises(SleepFailed) as raised:
        await sleep.wake_up(session, info, SleepKind.SGLANG, 0.05)
    assert raised.value.detail == "POST /resume_memory_occupation did not answer within 0.05 s"
    never.set()


async def test_a_replica_without_an_address_is_a_failure(session):
    with pytest.raises(SleepFailed, match="the replica has no address"):
        await sleep.put_to_sleep(session, replica(None), SleepKind.VLLM, TIMEOUT_S)
