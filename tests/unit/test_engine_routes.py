"""The engines' control routes are never reachable through the proxy (proxy/core/engine_routes.py):
the table, every spelling an engine would route the same, and the refusal through the real
listener, which reaches no replica, wakes nothing and tells a caller without access nothing."""

import pytest

from autoscaler.model.spec import ENGINES
from proxy.core.control import AuthType, RouteEntry
from proxy.core.engine_routes import CLOSED, EngineKind, closed_route, engine_path
from proxy.static_routes import RoutesError, parse
from proxy.workers.codec import _entry_in, _entry_out
from tests.proxy_harness import bearer, exchange

VLLM, SGLANG, LLAMACPP, OTHER = EngineKind.VLLM, EngineKind.SGLANG, EngineKind.LLAMACPP, EngineKind.OTHER


@pytest.mark.parametrize("engine, path", [
    (VLLM, "/sleep"), (VLLM, "/sleep?level=1"), (VLLM, "/wake_up?tags=weights"), (VLLM, "/is_sleeping"),
    (VLLM, "/collective_rpc"), (VLLM, "/reset_prefix_cache"), (VLLM, "/start_profile"), (VLLM, "/pause"),
    (VLLM, "/scale_elastic_ep"), (VLLM, "/update_weights"), (VLLM, "/v1/load_lora_adapter"),
    (SGLANG, "/release_memory_occupation"), (SGLANG, "/resume_memory_occupation"), (SGLANG, "/flush_cache"),
    (SGLANG, "/abort_request"), (SGLANG, "/update_weights_from_disk"), (SGLANG, "/update_weights_from_tensor"),
    (SGLANG, "/update_weights_from_distributed"), (SGLANG, "/init_weights_update_group"),
    (SGLANG, "/configure_logging"), (SGLANG, "/set_internal_state"), (SGLANG, "/stop_profile"),
    (LLAMACPP, "/slots"), (LLAMACPP, "/slots/0?action=save"), (LLAMACPP, "/slots/1?action=restore"),
    (LLAMACPP, "/slots/0?action=erase"), (LLAMACPP, "/lora-adapters"),
])
def test_each_engines_control_routes_are_closed(engine, path):
    assert closed_route(engine, path)


@pytest.mark.parametrize("spelling", [
    "/%73leep", "/%73%6C%65%65%70", "/%2573leep", "//sleep", "///sleep", "/sleep/", "/sleep//", "/./sleep",
    "/x/../sleep", "/../sleep", "/%2e/sleep", "/v1/%2e%2e/sleep", "/%2Fsleep", "/SLEEP", "/Sleep?level=2",
    "/sleep#frag", "/sleep?", "/wake_up/?tags=kv_cache",
])
def test_a_control_route_is_closed_however_it_is_spelled(spelling):
    assert closed_route(VLLM, spelling), engine_path(spelling)


@pytest.mark.parametrize("engine, path", [
    (VLLM, "/v1/chat/completions"), (VLLM, "/health"), (VLLM, "/v1/models"), (VLLM, "/metrics"),
    (VLLM, "/sleeping"), (VLLM, "/v1/sleep"), (VLLM, "/tokenize"), (VLLM, "/"),
    (SGLANG, "/generate"), (SGLANG, "/get_model_info"), (SGLANG, "/v1/chat/completions"),
    (LLAMACPP, "/completion"), (LLAMACPP, "/props"), (LLAMACPP, "/slotsx"), (LLAMACPP, "/v1/slots"),
    (LLAMACPP, "/health"),
    # Each engine's own: vLLM has no /flush_cache, SGLang no /sleep; other engines and custom images
    # keep every route.
    (VLLM, "/flush_cache"), (SGLANG, "/sleep"), (OTHER, "/sleep"), (OTHER, "/flush_cache"), (OTHER, "/slots"),
])
def test_every_other_route_stays_open(engine, path):
    assert not closed_route(engine, path)


def test_the_table_is_in_the_normalised_form_it_is_compared_in():
    for closed in CLOSED.values():
        for path in (*closed.exact, *(prefix + "x" for prefix in closed.prefixes)):
            assert engine_path(path) == path


def test_the_presets_with_control_routes_name_their_engine():
    assert ENGINES == {"vLLM": VLLM, "sGLang": SGLANG, "llamacpp": LLAMACPP}


def test_a_routes_file_names_the_engine_and_refuses_an_unknown_one():
    control = parse({"endpoints": [{"namespace": "acme", "name": "e1", "engine": "sglang"},
                                   {"namespace": "acme", "name": "e2"}]})
    assert control.lookup("acme", "e1").engine is SGLANG
    assert control.lookup("acme", "e2").engine is OTHER
    with pytest.raises(RoutesError, match="engine must be one of vllm, sglang, llamacpp, other"):
        parse({"endpoints": [{"namespace": "acme", "name": "e1", "engine": "vLLM"}]})


def test_the_engine_crosses_to_the_workers():
    entry = RouteEntry("acme", "e1", AuthType.PUBLIC, engine=LLAMACPP)
    assert _entry_in(_entry_out(entry)) == entry


def _raw(method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test", "Connection: close", "Content-Length: 0", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def proxy(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,), engine=VLLM)
    harness.endpoint("private", auth=AuthType.PRIVATE, upstreams=(up,), engine=VLLM)
    harness.endpoint("routed", upstreams=(up,), engine=LLAMACPP, domain="routed.test")
    harness.endpoint("asleep", engine=VLLM)  # no replica: a request for it would wake it
    harness.endpoint("custom", upstreams=(up,))
    await harness.start()
    harness.up = up
    yield harness


@pytest.mark.parametrize("method, tail", [
    ("POST", "/sleep?level=1"), ("POST", "/%73leep"), ("POST", "//sleep"), ("GET", "/is_sleeping/"),
    ("PUT", "/./wake_up"), ("DELETE", "/collective_rpc"), ("POST", "/update_weights_from_disk"),
])
async def test_the_proxy_answers_a_control_route_404_and_never_forwards_it(proxy, method, tail):
    r = await exchange(proxy.proxy.port, _raw(method, "/endpoints/acme/e1" + tail))
    assert r.status == 404, r.body
    assert "control routes" in r.json()["error"]
    assert r.headers["x-error-message"] == r.json()["error"]
    assert proxy.up.seen == []


async def test_ordinary_routes_still_reach_the_engine(proxy):
    for tail in ("/v1/chat/completions", "/health", "/sleeping"):
        r = await exchange(proxy.proxy.port, _raw("POST", "/endpoints/acme/e1" + tail))
        assert r.status == 200, r.body
    assert [seen["path"] for seen in proxy.up.seen] == ["/v1/chat/completions", "/health", "/sleeping"]


async def test_a_route_domain_and_a_custom_image_follow_their_engine(proxy):
    r = await exchange(proxy.proxy.port, _raw("GET", "/slots").replace(b"proxy.test", b"routed.test"))
    assert r.status == 404
    r = await exchange(proxy.proxy.port, _raw("POST", "/slots/0?action=erase").replace(b"proxy.test", b"routed.test"))
    assert r.status == 404
    r = await exchange(proxy.proxy.port, _raw("POST", "/endpoints/acme/custom/sleep"))
    assert r.status == 200
    assert [seen["path"] for seen in proxy.up.seen] == ["/sleep"]


async def test_a_control_route_wakes_nothing(proxy):
    r = await exchange(proxy.proxy.port, _raw("POST", "/endpoints/acme/asleep/wake_up", "X-Scale-Up-Timeout: 5"))
    assert r.status == 404
    assert proxy.control.wakes == []
    assert proxy.pending("acme/asleep") == 0


async def test_a_caller_without_access_learns_nothing_of_the_engine(proxy):
    anonymous = await exchange(proxy.proxy.port, _raw("POST", "/endpoints/acme/private/sleep"))
    assert anonymous.status == 401
    outsider = await exchange(
        proxy.proxy.port, _raw("POST", "/endpoints/acme/private/sleep", f"Authorization: {bearer('outsider')['Authorization']}"))
    assert outsider.status == 403
    member = await exchange(
        proxy.proxy.port, _raw("POST", "/endpoints/acme/private/sleep", f"Authorization: {bearer('member')['Authorization']}"))
    assert member.status == 404
    assert proxy.up.seen == []
