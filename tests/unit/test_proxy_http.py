"""Black-box HTTP tests of the proxy against in-process fake replicas (milliseconds each).

These are the safety net for replacing the HTTP machinery under the pipeline: they speak only
HTTP to the proxy and to the fake replicas.
"""

import asyncio
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from proxy.core.control import AuthType, Replica, RouteState
from tests.proxy_harness import TOKENS, bearer, free_port, until

EP = "/endpoints/acme/e1"


async def test_prefix_is_stripped_and_query_kept(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start()
    for path, upstream_path in [
        (EP, "/"),
        (EP + "/", "/"),
        (EP + "/v1/chat/completions", "/v1/chat/completions"),
        (EP + "/generate?a=1&b=%20x", "/generate?a=1&b=%20x"),
    ]:
        async with harness.request("POST", path, data=b"hi") as r:
            assert r.status == 200
            assert (await r.json()) == {"path": upstream_path, "body_len": 2}


async def test_host_routing_sends_any_path_to_the_endpoint(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,), domain="e1.example")
    await harness.start()
    async with harness.request("GET", "/metrics?x=1", headers={"Host": "e1.example:8080"}) as r:
        assert r.status == 200
        assert (await r.json())["path"] == "/metrics?x=1"


async def test_unknown_endpoint_is_404(harness):
    await harness.start()
    async with harness.request("GET", "/endpoints/acme/nope/x") as r:
        assert r.status == 404
        assert "acme/nope does not exist" in (await r.json())["error"]
    async with harness.request("GET", "/elsewhere") as r:
        assert r.status == 404


AUTH_MATRIX = [
    # endpoint type,      caller,     status
    (AuthType.PUBLIC, None, 200),
    (AuthType.PUBLIC, "invalid", 200),  # public endpoints never look at tokens
    (AuthType.PUBLIC, "outsider", 200),
    (AuthType.AUTHENTICATED, None, 401),
    (AuthType.AUTHENTICATED, "invalid", 401),
    (AuthType.AUTHENTICATED, "owner", 200),
    (AuthType.AUTHENTICATED, "member", 200),
    (AuthType.AUTHENTICATED, "outsider", 200),  # any valid token
    (AuthType.PRIVATE, None, 401),
    (AuthType.PRIVATE, "invalid", 401),
    (AuthType.PRIVATE, "owner", 200),  # the namespace is the user alice... see below
    (AuthType.PRIVATE, "member", 200),  # bob is a member of org acme
    (AuthType.PRIVATE, "outsider", 403),
]


@pytest.mark.parametrize("auth, caller, status", AUTH_MATRIX)
async def test_auth_matrix(harness, auth, caller, status):
    up = await harness.upstream()
    # "owner" calls the endpoint in its own user namespace; others call the org endpoint.
    namespace = "alice" if caller == "owner" else "acme"
    harness.endpoint(namespace=namespace, auth=auth, upstreams=(up,))
    await harness.start()
    headers = {}
    if caller == "invalid":
        headers["Authorization"] = "Bearer not-a-token"
    elif caller is not None:
        headers["Authorization"] = f"Bearer {TOKENS[caller][0]}"
    async with harness.request("POST", f"/endpoints/{namespace}/e1", headers=headers, data=b"x") as r:
        assert r.status == status, await r.text()
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        if status >= 400:
            assert "error" in await r.json()
    if status == 200 and up.seen:
        assert "Authorization" not in up.seen[-1]["headers"]
    else:
        assert up.seen == []
    assert harness.pending(f"{namespace}/e1") == 0


async def test_unauthenticated_request_never_wakes(harness):
    harness.endpoint(auth=AuthType.PRIVATE)  # no replicas: at zero
    await harness.start()
    async with harness.request("POST", EP, headers={"X-Scale-Up-Timeout": "5"}) as r:
        assert r.status == 401
    async with harness.request("POST", EP, headers={"Authorization": "Bearer tok-eve"}) as r:
        assert r.status == 403
    assert harness.control.wakes == []


async def test_cold_start_without_header_is_503_with_retry_after_and_one_wake(harness):
    harness.endpoint()
    await harness.start()
    for _ in range(3):
        async with harness.request("POST", EP) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "5"
            assert "starting up" in (await r.json())["error"]
    assert harness.control.wakes == ["acme/e1"]
    assert harness.pending() == 0


async def test_held_request_is_released_when_a_replica_becomes_ready(harness):
    up = await harness.upstream()
    harness.endpoint()
    await harness.start()
    held = asyncio.create_task(_post(harness, EP, headers={"X-Scale-Up-Timeout": "30"}))
    await until(lambda: harness.pipeline.gate.held.get("acme/e1") == 1)
    assert harness.pending() == 1  # held requests are demand
    harness.control.set_replicas("acme", "e1", [Replica("r0", up.address)])
    status, _ = await held
    assert status == 200
    assert harness.control.wakes == ["acme/e1"]
    assert harness.pending() == 0


async def test_hold_expires_with_503(harness):
    harness.endpoint()
    await harness.start()
    async with harness.request("POST", EP, headers={"X-Scale-Up-Timeout": "0.05"}) as r:
        assert r.status == 503
        assert "did not become ready within 0.05 s" in (await r.json())["error"]
    assert harness.pending() == 0
    assert harness.pipeline.gate.held == {}


async def test_malformed_scale_up_timeout_is_400(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start()
    async with harness.request("POST", EP, headers={"X-Scale-Up-Timeout": "soon"}) as r:
        assert r.status == 400
        assert "X-Scale-Up-Timeout" in (await r.json())["error"]
    assert up.seen == []


async def test_held_requests_are_bounded(harness):
    harness.endpoint()
    await harness.start(max_held_per_endpoint=2)
    held = [asyncio.create_task(_post(harness, EP, headers={"X-Scale-Up-Timeout": "30"})) for _ in range(2)]
    await until(lambda: harness.pipeline.gate.held.get("acme/e1") == 2)
    async with harness.request("POST", EP, headers={"X-Scale-Up-Timeout": "30"}) as r:
        assert r.status == 503
        assert "already holds 2 requests" in (await r.json())["error"]
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    await until(lambda: harness.pending() == 0)


async def test_held_request_whose_client_leaves_stops_counting(harness):
    harness.endpoint()
    await harness.start()
    task = asyncio.create_task(_post(harness, EP, headers={"X-Scale-Up-Timeout": "30"}))
    await until(lambda: harness.pending() == 1)
    task.cancel()  # closes the client's connection
    await until(lambda: harness.pending() == 0 and harness.pipeline.gate.held == {})


async def test_paused_endpoint_refuses_without_waking(harness):
    harness.endpoint(state=RouteState.PAUSED)
    await harness.start()
    async with harness.request("POST", EP, headers={"X-Scale-Up-Timeout": "5"}) as r:
        assert r.status == 400
        assert "is paused" in (await r.json())["error"]
    assert harness.control.wakes == []


async def test_pending_back_to_zero_after_upstream_error(harness):
    async def boom(request):
        return web.json_response({"error": "engine exploded"}, status=500)

    up = await harness.upstream(boom)
    harness.endpoint(upstreams=(up,))
    await harness.start()
    async with harness.request("POST", EP) as r:
        assert r.status == 500  # the engine's own answer passes through
    assert harness.pending() == 0


async def test_upstream_silence_is_504_and_uncounted(harness):
    async def stall(request):
        await asyncio.Event().wait()

    up = await harness.upstream(stall)
    harness.endpoint(upstreams=(up,))
    await harness.start(upstream_idle_timeout_s=0.1)
    async with harness.request("POST", EP) as r:
        assert r.status == 504
        assert "sent nothing for 0.1 s" in (await r.json())["error"]
    assert harness.pending() == 0


async def test_only_replica_refusing_connections_is_502(harness):
    harness.endpoint(upstreams=(f"127.0.0.1:{free_port()}",))
    await harness.start()
    async with harness.request("POST", EP) as r:
        assert r.status == 502
        assert "could not connect to replica r0" in (await r.json())["error"]
    assert harness.pending() == 0


async def test_refused_connection_is_retried_on_another_replica(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(f"127.0.0.1:{free_port()}", up))
    await harness.start()
    for _ in range(20):  # ties are random: the dead replica is picked first about half the time
        async with harness.request("POST", EP, data=b"abc") as r:
            assert r.status == 200
            assert (await r.json())["body_len"] == 3
    assert len(up.seen) == 20
    assert harness.pending() == 0


async def test_least_pending_spreads_load(harness):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.Response(text="ok")

    ups = [await harness.upstream(slow) for _ in range(3)]
    harness.endpoint(upstreams=tuple(ups))
    await harness.start()
    tasks = [asyncio.create_task(_post(harness, EP)) for _ in range(30)]
    await until(lambda: sum(len(u.seen) for u in ups) == 30)
    assert sorted(len(u.seen) for u in ups) == [10, 10, 10]
    release.set()
    assert [s for s, _ in await asyncio.gather(*tasks)] == [200] * 30


async def test_sse_events_arrive_one_by_one(harness):
    step = asyncio.Event()

    async def sse(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(f"data: {i}\n\n".encode())
            await step.wait()  # the next event only once the client has seen this one
            step.clear()
        await response.write_eof()
        return response

    up = await harness.upstream(sse)
    harness.endpoint(upstreams=(up,))
    await harness.start()
    async with harness.request("POST", EP + "/generate_stream") as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        for i in range(3):
            line = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
            assert line == f"data: {i}\n\n".encode()
            step.set()
        assert await r.content.read() == b""
    await until(lambda: harness.pending() == 0)


async def test_client_abort_mid_stream_cancels_upstream_and_uncounts(harness):
    async def endless(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.Event().wait()

    up = await harness.upstream(endless)
    harness.endpoint(upstreams=(up,))
    await harness.start()
    r = await harness.request("POST", EP)
    assert await r.content.readuntil(b"\n\n") == b"data: first\n\n"
    assert harness.pending() == 1
    r.close()  # the client goes away mid-stream
    await asyncio.wait_for(up.cancelled.wait(), 5)
    await until(lambda: harness.pending() == 0)
    metrics = harness.pipeline.metrics.requests.labels("acme/e1", "r0", "499")
    assert metrics._value.get() == 1


async def test_client_abort_mid_body_uncounts(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.proxy.port)
    writer.write(
        b"POST /endpoints/acme/e1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000
    )
    await writer.drain()
    await asyncio.wait_for(up.arrived.wait(), 5)  # the upload is being streamed to the replica
    assert harness.pending() == 1
    writer.close()
    await until(lambda: harness.pending() == 0)


async def test_upload_is_streamed_not_buffered(harness):
    got_first = asyncio.Event()

    async def sink(request):
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            got_first.set()
        return web.json_response({"total": total})

    up = await harness.upstream(sink)
    harness.endpoint(upstreams=(up,))
    await harness.start()
    chunk = b"x" * 65536

    async def body():
        yield chunk
        # If the proxy buffered the whole body, the replica would never see this first chunk
        # before the rest is sent, and this wait would time out.
        await asyncio.wait_for(got_first.wait(), 5)
        for _ in range(159):
            yield chunk

    async with harness.request("POST", EP, data=body()) as r:
        assert r.status == 200
        assert (await r.json())["total"] == 160 * 65536


async def test_body_over_limit_is_413(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(max_body_bytes=1000)
    async with harness.request("POST", EP, data=b"x" * 1001) as r:  # declared length
        assert r.status == 413
    assert up.seen == []

    async def chunked():
        for _ in range(10):
            yield b"x" * 500

    async with harness.request("POST", EP, data=chunked()) as r:  # discovered while streaming
        assert r.status == 413
        assert "larger than 1000 bytes" in (await r.json())["error"]
    assert harness.pending() == 0


async def test_headers_forwarded_dropped_and_request_id(harness):
    async def headers(request):
        return web.json_response(dict(request.headers), headers={"Connection": "x-secret", "X-Secret": "1", "X-Ok": "1"})

    up = await harness.upstream(headers)
    harness.endpoint(upstreams=(up,))
    await harness.start()
    sent = {
        "Authorization": "Bearer whatever",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "drop me",
        "X-Scale-Up-Timeout": "3",
        "X-Forwarded-For": "10.0.0.1",
        "X-Request-Id": "abc-123",
        "X-Custom": "keep me",
    }
    async with harness.request("POST", EP, headers=sent) as r:
        seen = {k.lower(): v for k, v in (await r.json()).items()}  # header names are case-insensitive
        assert r.headers["X-Request-Id"] == "abc-123"
        assert r.headers["X-Ok"] == "1" and "X-Secret" not in r.headers
    assert seen["x-custom"] == "keep me"
    assert seen["x-request-id"] == "abc-123"
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"].startswith("127.0.0.1:")
    for dropped in ("authorization", "x-hop", "x-scale-up-timeout"):
        assert dropped not in seen
    async with harness.request("POST", EP) as r:
        generated = r.headers["X-Request-Id"]
        assert len(generated) == 32
    async with harness.request("POST", "/endpoints/acme/nope") as r:
        assert r.headers["X-Request-Id"]  # errors carry one too


async def test_metrics_are_exposed(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    harness.endpoint("cold")
    await harness.start()
    async with harness.request("POST", EP):
        pass
    async with harness.request("POST", "/endpoints/acme/cold"):
        pass
    async with harness.request("GET", "/metrics", headers=bearer("admin")) as r:
        text = await r.text()
    assert 'endpointd_proxy_requests_total{code="200",endpoint="acme/e1",replica="r0"} 1.0' in text
    assert 'endpointd_proxy_refused_total{cause="cold_start",code="503",endpoint="acme/cold"} 1.0' in text
    assert "endpointd_proxy_request_duration_seconds_bucket" in text
    assert "endpointd_proxy_cold_start_wait_seconds" in text


async def _post(harness, path, **kw):
    async with harness.request("POST", path, data=b"x", **kw) as r:
        return r.status, await r.read()


async def test_held_request_for_a_deleted_endpoint_is_404(harness):
    harness.endpoint()
    await harness.start()
    held = asyncio.create_task(_post(harness, EP, headers={"X-Scale-Up-Timeout": "30"}))
    await until(lambda: harness.pending() == 1)
    harness.control.remove("acme", "e1")
    status, body = await held
    assert status == 404
    assert b"was deleted" in body


async def test_a_held_burst_spreads_over_replicas_as_they_become_ready(harness):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.Response(text="ok")

    first, second = await harness.upstream(slow), await harness.upstream(slow)
    harness.endpoint()
    await harness.start(held_release_per_replica=10)
    burst = [asyncio.create_task(_post(harness, EP, headers={"X-Scale-Up-Timeout": "30"})) for _ in range(50)]
    await until(lambda: harness.pipeline.gate.held.get("acme/e1") == 50)
    r0, r1 = Replica("r0", first.address), Replica("r1", second.address)
    entry = harness.control.lookup("acme", "e1")
    harness.control.put(replace(entry, replicas=(r0,), coming=1))  # r1 is still starting
    await until(lambda: len(first.seen) == 10)  # one replica: a share of the backlog, not all of it
    assert harness.pipeline.gate.held["acme/e1"] == 40
    harness.control.put(replace(entry, replicas=(r0, r1), coming=1))  # a third one is on its way
    await until(lambda: len(second.seen) == 10)  # the newcomer's share, all to it: it had the fewest
    assert len(first.seen) == 10 and harness.pipeline.gate.held["acme/e1"] == 30
    release.set()  # completions release the rest, one for each
    assert [status for status, _ in await asyncio.gather(*burst)] == [200] * 50
    assert len(first.seen) + len(second.seen) == 50 and len(second.seen) >= 10
    assert harness.pending() == 0


async def test_a_held_burst_is_all_released_when_no_more_replicas_are_coming(harness):
    # Reproduced: 100 held streams, maxReplica 1. Released 32 then one per completion, 66 of
    # them timed out in the queue with 503 while the replica was ready and serving.
    release = asyncio.Event()

    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await release.wait()
        await response.write(b"data: done\n\n")
        await response.write_eof()
        return response

    up = await harness.upstream(stream)
    harness.endpoint()
    await harness.start()
    n = 100
    burst = [asyncio.create_task(_post(harness, EP, headers={"X-Scale-Up-Timeout": "20"})) for _ in range(n)]
    await until(lambda: harness.pipeline.gate.held.get("acme/e1") == n)
    harness.control.set_replicas("acme", "e1", [Replica("r0", up.address)])  # coming=0: the only one
    await until(lambda: len(up.seen) == n)  # all in flight at once, none waiting for a completion
    assert harness.pipeline.gate.held == {}
    release.set()
    assert [status for status, _ in await asyncio.gather(*burst)] == [200] * n
    assert harness.pending() == 0


SECRET = "probe-secret"
PROBE = {"X-Endpointd-Probe": SECRET}


async def test_probe_is_served_but_never_counted(harness):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.json_response(dict(request.headers))

    up = await harness.upstream(slow)
    harness.endpoint(upstreams=(up,))
    await harness.start(probe_secret=SECRET)
    probe = asyncio.create_task(_post(harness, EP + "/health", headers=PROBE))
    await until(lambda: len(up.seen) == 1)  # at the replica...
    snap = harness.pipeline.counter.snapshot()
    assert (snap.endpoints, snap.replicas, snap.arrivals) == ({}, {}, {})  # ...and in no count
    release.set()
    status, body = await probe
    assert status == 200
    assert "x-endpointd-probe" not in body.decode().lower()
    assert harness.pipeline.counter.snapshot().arrivals == {}


async def test_probe_of_a_cold_endpoint_is_503_at_once_and_never_wakes(harness):
    harness.endpoint()
    await harness.start(probe_secret=SECRET)
    async with harness.request("GET", EP + "/health", headers={**PROBE, "X-Scale-Up-Timeout": "30"}) as r:
        assert r.status == 503
        assert "no ready replica" in (await r.json())["error"]
    assert harness.control.wakes == []
    assert harness.pipeline.gate.held == {}
    assert harness.pipeline.counter.snapshot().arrivals == {}


@pytest.mark.parametrize("value", ["wrong", "", SECRET + "x"])
async def test_a_wrong_probe_secret_is_an_ordinary_request(harness, value):
    up = await harness.upstream()
    harness.endpoint()
    harness.endpoint("warm", upstreams=(up,))
    await harness.start(probe_secret=SECRET)
    async with harness.request("GET", EP + "/health", headers={"X-Endpointd-Probe": value}) as r:
        assert r.status == 503
        assert "starting up" in (await r.json())["error"]
    assert harness.control.wakes == ["acme/e1"]  # demand: it wakes
    async with harness.request("GET", "/endpoints/acme/warm/health", headers={"X-Endpointd-Probe": value}) as r:
        assert r.status == 200
    assert "X-Endpointd-Probe" not in up.seen[-1]["headers"]  # never forwarded, whatever its value
    assert harness.pipeline.counter.snapshot().arrivals == {"acme/e1": 1, "acme/warm": 1}


async def test_probe_header_means_nothing_without_a_configured_secret(harness):
    harness.endpoint()
    await harness.start()
    async with harness.request("GET", EP, headers=PROBE) as r:
        assert r.status == 503
    assert harness.control.wakes == ["acme/e1"]


async def test_probe_still_needs_a_token(harness):
    up = await harness.upstream()
    harness.endpoint(auth=AuthType.PRIVATE, upstreams=(up,))
    await harness.start(probe_secret=SECRET)
    async with harness.request("GET", EP + "/health", headers=PROBE) as r:
        assert r.status == 401
    assert up.seen == []


async def test_replica_that_sends_no_headers_is_504_after_the_response_start_timeout(harness):
    async def hang(request):
        await asyncio.Event().wait()

    up = await harness.upstream(hang)
    harness.endpoint(upstreams=(up,))
    await harness.start(upstream_response_start_timeout_s=0.1)  # the idle timeout stays at 300 s
    async with harness.request("POST", EP, timeout=aiohttp.ClientTimeout(total=10)) as r:  # not 300 s if it regresses
        assert r.status == 504
        assert (await r.json())["error"] == "replica r0 of endpoint acme/e1 sent no response headers within 0.1 s"
    assert harness.pending() == 0
    await asyncio.wait_for(up.cancelled.wait(), 5)  # the upstream call was given up, not left hanging


async def test_the_tap_keeps_the_body_bytes_of_each_endpoint(harness):
    """What the usage meter counts as bytes in and out: request and response bodies, per endpoint,
    whether the body came whole, chunked or streamed; requests refused before admission carry none."""
    async def big(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(3):
            await response.write(b"y" * 1000)
        await response.write_eof()
        return response

    up = await harness.upstream(big)
    harness.endpoint(upstreams=(up,), auth=AuthType.AUTHENTICATED)
    await harness.start(tap=True)

    async def chunks():
        yield b"a" * 10
        yield b"b" * 20

    async with harness.request("POST", EP, data=b"x" * 100, headers=bearer("owner")) as r:
        assert r.status == 200 and len(await r.read()) == 3000
    async with harness.request("POST", EP, data=chunks(), headers=bearer("owner")) as r:
        assert r.status == 200 and len(await r.read()) == 3000
    async with harness.request("POST", EP, data=b"z" * 50) as r:  # no token: refused before admission
        assert r.status == 401
    [answers] = harness.pipeline.metrics.take_answers().values()
    assert (answers.bytes_in, answers.bytes_out) == (130, 6000)
    assert harness.pipeline.metrics.take_answers() == {}
