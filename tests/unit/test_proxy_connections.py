"""Client connections over raw sockets: the head-read deadline (silent connections, slowloris),
the keep-alive timeout, the cap on open connections, and bodies that stall or break their
framing. Every wait is on a condition (the server closing a socket), never a fixed sleep."""

import asyncio
import logging
import resource

import aiohttp
import pytest
from aiohttp import web

from proxy.core import config as proxy_config
from proxy.core.cap import ConnectionCap
from proxy.core.config import ProxyConfig, connection_cap
from proxy.management.connections import ClientConnection, GuardedServer
from tests.proxy_harness import closed_by_server, exchange, parse_response, until

EP = "/endpoints/acme/e1"
REQUEST = b"GET " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"


async def connect(harness):
    return await asyncio.open_connection("127.0.0.1", harness.proxy.port)


def cap_of(harness) -> ConnectionCap:
    return harness.proxy.listening.listeners[0].cap


async def read_response(reader) -> bytes:
    """One response of known length on a keep-alive connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(parse_response(head).headers["content-length"])
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


async def test_a_connection_that_never_sends_is_closed(harness):
    harness.endpoint()
    await harness.start(header_read_timeout_s=0.2)  # keep-alive stays at its 75 s
    reader, writer = await connect(harness)
    assert await closed_by_server(reader) == b""
    writer.close()
    await until(lambda: not cap_of(harness).open)


async def test_a_slowloris_is_closed_before_its_head_is_complete(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(header_read_timeout_s=0.3)
    reader, writer = await connect(harness)
    head = b"GET " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 2000 + b"\r\n\r\n"
    closed = asyncio.create_task(closed_by_server(reader, timeout_s=30))
    sent = 0
    while not closed.done() and sent < len(head):
        try:
            writer.write(head[sent:sent + 1])  # one byte of the head at a time...
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.sleep(0.02)  # ...at an attacker's pace (not a wait for the server)
    assert await closed == b""  # closed with no answer
    assert sent < len(head)  # before the head was complete
    assert up.seen == []
    writer.close()


async def test_a_partial_head_after_a_keep_alive_response_is_closed(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(header_read_timeout_s=0.2, keepalive_timeout_s=60)
    reader, writer = await connect(harness)
    writer.write(REQUEST)
    assert parse_response(await read_response(reader)).status == 200
    writer.write(b"GET /endpoints/acme/e1 HTTP/1.1\r\nHo")  # the next request's head, never finished
    assert await closed_by_server(reader) == b""
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(keepalive_timeout_s=0.2)  # the head deadline stays at its 30 s
    reader, writer = await connect(harness)
    writer.write(REQUEST)
    assert parse_response(await read_response(reader)).status == 200
    assert await closed_by_server(reader) == b""
    writer.close()


async def test_a_request_outliving_the_head_deadline_is_not_cut(harness):
    release = asyncio.Event()

    async def slow(request):
        await request.read()
        await release.wait()
        return web.Response(text="done")

    up = await harness.upstream(slow)
    harness.endpoint(upstreams=(up,))
    await harness.start(header_read_timeout_s=0.2)
    reader, writer = await connect(harness)
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.wait_for(up.arrived.wait(), 10)
    # A second connection that sends nothing: once it is closed, the first one's deadline has
    # passed too — while its request is in progress.
    idle_reader, idle_writer = await connect(harness)
    assert await closed_by_server(idle_reader) == b""
    writer.write(b"3\r\ndef\r\n0\r\n\r\n")  # the rest of the body, after the deadline
    await writer.drain()
    release.set()
    response = parse_response(await read_response(reader))
    assert (response.status, response.body) == (200, b"done")
    writer.close()
    idle_writer.close()


async def test_the_connection_cap_refuses_at_once_and_frees_with_the_deadline(harness, caplog):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(max_client_connections=3, header_read_timeout_s=1.0)
    cap = cap_of(harness)
    idle = [await connect(harness) for _ in range(2)]
    await until(lambda: len(cap.open) == 2)
    r = await exchange(harness.proxy.port, REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert r.status == 200  # below the cap: served
    idle.append(await connect(harness))
    await until(lambda: len(cap.open) == 3)
    for _ in range(5):  # at the cap: each new one gets a 503 and is closed at once
        reader, writer = await connect(harness)
        refused = parse_response(await closed_by_server(reader))
        assert refused.status == 503
        assert refused.json()["error"] == "this server already has 3 open connections, its limit; retry later"
        assert refused.headers["x-error-message"] == refused.json()["error"]
        writer.close()
    lines = [rec for rec in caplog.records if "refusing new connections" in rec.getMessage()]
    assert len(lines) == 1  # rate-limited: one line for the five
    assert "max_client_connections" in lines[0].getMessage()
    for reader, _ in idle:  # the idle ones are closed by the head deadline...
        assert await closed_by_server(reader) == b""
    await until(lambda: not cap.open)
    async with harness.request("GET", EP) as response:  # ...and the server serves again
        assert response.status == 200
    for _, writer in idle:
        writer.close()


async def test_closing_cap_limited_sockets_frees_their_places(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(max_client_connections=2)
    cap = cap_of(harness)
    idle = [await connect(harness) for _ in range(2)]
    await until(lambda: len(cap.open) == 2)
    reader, writer = await connect(harness)
    assert parse_response(await closed_by_server(reader)).status == 503
    writer.close()
    for _, w in idle:
        w.close()
    await until(lambda: not cap.open)
    async with harness.request("GET", EP) as response:
        assert response.status == 200


def test_refusals_are_logged_at_most_once_per_interval(caplog):
    now = [0.0]
    cap = ConnectionCap(1, "http://127.0.0.1:1", clock=lambda: now[0])
    assert cap.admit(object())
    for t in (0.0, 1.0, 9.0, 10.5, 11.0):
        now[0] = t
        assert not cap.admit(object())
    lines = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(lines) == 2
    assert "1 refused" in lines[0]
    assert "3 refused in the last 10 s" in lines[1]  # the ones at 1.0 and 9.0, and this one
    assert cap.refused_total == 5


@pytest.mark.parametrize(
    "soft, expected",
    [
        (256, 96),  # (256 - 64) / 2: each proxied request holds a client and an upstream socket
        (1024, 480),
        (65, 1),
        (resource.RLIM_INFINITY, 1_000_000),
        (10**9, 1_000_000),
    ],
)
def test_the_automatic_cap_follows_the_open_files_limit(monkeypatch, soft, expected):
    monkeypatch.setattr(proxy_config.resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    assert connection_cap(ProxyConfig()) == expected
    assert connection_cap(ProxyConfig(max_client_connections=7)) == 7


async def test_a_small_body_that_stalls_is_a_408(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(header_read_timeout_s=0.2)
    reader, writer = await connect(harness)
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part")
    r = parse_response(await closed_by_server(reader))
    assert r.status == 408
    assert "did not arrive within 0.2 s" in r.json()["error"]
    assert up.seen == [] and harness.pending() == 0
    writer.close()


async def test_a_broken_chunk_in_the_middle_of_a_streamed_body_is_a_400_at_once(harness, caplog):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start()
    reader, writer = await connect(harness)
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.wait_for(up.arrived.wait(), 10)  # streaming to the replica
    writer.write(b"zz\r\nnot a chunk\r\n")
    r = parse_response(await closed_by_server(reader))  # not after the replica's 120 s
    assert r.status == 400
    assert "the request body is malformed" in r.json()["error"]
    await until(lambda: harness.pending() == 0)
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]
    writer.close()


async def test_the_aiohttp_internals_the_guards_read_are_there(harness):
    """ClientConnection reads RequestHandler attributes that are not public API: a release of
    aiohttp that renames them fails here, not silently in production."""
    server = GuardedServer(lambda request: None, cap=ConnectionCap(1, "x"), head_timeout_s=1, keepalive_timeout_s=1)
    connection = server()
    assert isinstance(connection, ClientConnection)
    for name in ("_request_count", "_request_in_progress", "_messages", "_current_request", "_lingering_time",
                 "_close", "_force_close", "_upgraded", "_keepalive_timeout"):
        assert hasattr(connection, name), name
    assert connection._keepalive_timeout == 1


async def test_connections_are_in_the_metrics(harness):
    await harness.start(max_client_connections=1)
    async with harness.request("GET", "/metrics", headers={"Authorization": "Bearer tok-root"}) as r:
        text = await r.text()
    name = harness.proxy.listening.listeners[0].name
    assert f'endpointd_proxy_client_connections{{listener="{name}"}} 1.0' in text  # this scrape's own
    reader, writer = await connect(harness)
    assert parse_response(await closed_by_server(reader)).status == 503  # the pooled one holds the only place
    writer.close()
    async with harness.request("GET", "/metrics", headers={"Authorization": "Bearer tok-root"}) as r:
        assert f'endpointd_proxy_client_connections_refused_total{{listener="{name}"}} 1.0' in await r.text()


async def test_the_drain_lets_a_stream_finish_and_closes_idle_connections_at_once(harness):
    release = asyncio.Event()

    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await release.wait()
        await response.write(b"data: last\n\n")
        await response.write_eof()
        return response

    up = await harness.upstream(stream)
    harness.endpoint(upstreams=(up,))
    await harness.start()
    idle_reader, idle_writer = await connect(harness)
    await until(lambda: len(cap_of(harness).open) == 1)
    r = await harness.request("POST", EP)
    assert await r.content.readuntil(b"\n\n") == b"data: first\n\n"
    shutdown = asyncio.create_task(harness.proxy.listening.shutdown(60))
    assert await closed_by_server(idle_reader) == b""  # idle: closed at once
    with pytest.raises(OSError):  # no new connections
        await connect(harness)
    assert not shutdown.done()
    release.set()
    assert await r.content.read() == b"data: last\n\n"  # the stream in flight finished whole
    r.close()
    await asyncio.wait_for(shutdown, 10)
    assert harness.pending() == 0
    idle_writer.close()


async def test_the_drain_cuts_what_outlives_it_and_releases_its_count(harness):
    harness.endpoint()  # no replica: the request is held
    await harness.start()
    held = asyncio.create_task(harness.session.post(harness.url(EP), headers={"X-Scale-Up-Timeout": "600"}))
    await until(lambda: harness.pending() == 1)
    await asyncio.wait_for(harness.proxy.listening.shutdown(0.1), 10)
    await until(lambda: harness.pending() == 0)
    with pytest.raises(aiohttp.ClientError):
        await held


async def test_a_management_request_after_an_early_answer_is_handed_off_not_refused(harness):
    """A request answered before its body was read (a cold start's 503), whose body's rest reaches
    the server in one read with the client's next request, a management one: that request goes to
    aiohttp like any other, not refused as pipelined — the client waited for the answer. (On a
    loaded host huggingface_hub's client met that refusal after a scale-to-zero.)"""
    harness.endpoint()  # no replica: answered 503 at once, at its head
    await harness.start()
    reader, writer = await connect(harness)
    body = b'{"inputs": "x"}'
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    assert parse_response(await read_response(reader)).status == 503
    writer.write(body + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    second = await read_response(reader)
    assert b"pipelined" not in second and parse_response(second).status in (200, 401)
    writer.close()
