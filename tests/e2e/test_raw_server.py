"""What only the raw server has to get right beside the shared suite (test_proxy_*.py): the
hand-off of non-data-plane requests to aiohttp on the same connection, pipelining, the upstream
keep-alive pool, framing both ways (chunked, close-delimited, HTTP/1.0, HEAD, 100-continue,
1xx), and flow control (a slow reader pauses the replica, a slow replica pauses the upload).
Real sockets, in-process fake replicas; every wait is on a condition."""

import asyncio

import pytest
from aiohttp import web

from proxy.core.control import AuthType
from tests.proxy_harness import EP, Harness, bearer, closed_by_server, connect, get, parse_response, read_one, until


@pytest.fixture
async def raw():
    h = Harness()
    yield h
    await h.close()


async def test_management_requests_are_handed_to_aiohttp_on_the_same_connection(raw):
    up = await raw.upstream()
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(get(EP + "/a"))
    headers, body, status = await read_one(reader)
    assert status == 200 and b'"/a"' in body
    writer.write(get("/metrics", b"Authorization: Bearer tok-root"))  # a later request: to aiohttp
    headers, body, status = await read_one(reader)
    assert status == 200 and b"endpointd_proxy_requests_total" in body
    writer.write(get(EP + "/b"))  # the connection's next request: back to the raw server
    headers, body, status = await read_one(reader)
    assert status == 200 and b'"/b"' in body
    writer.write(get("/nowhere"))  # to aiohttp again, and back
    headers, body, status = await read_one(reader)
    assert status == 404 and b"no endpoint at '/nowhere'" in body
    writer.write(get(EP + "/c"))
    headers, body, status = await read_one(reader)
    assert status == 200 and b'"/c"' in body
    assert [s["path"] for s in up.seen] == ["/a", "/b", "/c"]
    # Each data-plane request went through the raw server's admission: all three were counted.
    assert raw.pipeline.counter.snapshot().arrivals == {"acme/e1": 3}
    # The connection kept its place under the cap through the hand-off, and only one.
    assert len(raw.proxy.listening.listeners[0].cap.open) == 1
    writer.close()
    await until(lambda: not raw.proxy.listening.listeners[0].cap.open)


async def test_an_endpoint_request_pipelined_behind_a_management_one_is_refused(raw):
    """aiohttp holds the connection while it answers; the raw server takes it back only between
    requests, so what was pipelined behind is refused, as the converse is."""
    up = await raw.upstream()
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(get("/metrics", b"Authorization: Bearer tok-root") + get(EP + "/1"))
    _, body, status = await read_one(reader)
    assert status == 200 and b"endpointd_proxy" in body
    refused = parse_response(await closed_by_server(reader))
    assert refused.status == 400 and "a request for an endpoint cannot be pipelined" in refused.json()["error"]
    assert up.seen == []
    writer.close()


async def test_a_first_management_request_split_over_reads_is_handed_off_whole(raw):
    await raw.start()
    reader, writer = await connect(raw)
    for piece in (b"GET /met", b"rics HTTP/1.1\r\nHost: x\r\nAuthor", b"ization: Bearer tok-root\r\n\r\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.01)  # separate reads (the pace of a slow client, not a wait for the server)
    headers, body, status = await read_one(reader)
    assert status == 200 and b"endpointd_proxy" in body
    writer.close()


async def test_pipelined_requests_are_answered_in_order(raw):
    async def slow_first(request):
        if request.raw_path == "/1":
            await asyncio.sleep(0.05)  # the replica answers /1 after /2 would have been ready
        return web.Response(text=request.raw_path)

    up = await raw.upstream(slow_first)
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(get(EP + "/1") + get(EP + "/2") + get(EP + "/3"))
    bodies = [(await read_one(reader))[1] for _ in range(3)]
    assert bodies == [b"/1", b"/2", b"/3"]
    writer.close()


async def test_a_management_request_pipelined_behind_another_is_refused(raw):
    up = await raw.upstream()
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(get(EP + "/1") + get("/metrics"))
    _, body, status = await read_one(reader)
    assert (status, body) == (200, b'{"path": "/1", "body_len": 0}')
    refused = parse_response(await closed_by_server(reader))
    assert refused.status == 400 and "cannot be pipelined" in refused.json()["error"]
    writer.close()


async def test_upstream_connections_are_kept_alive_and_reused(raw):
    peers = set()

    async def note(request):
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text="ok")

    up = await raw.upstream(note)
    raw.endpoint(upstreams=(up,))
    await raw.start()
    for _ in range(20):
        async with raw.request("GET", EP) as r:
            assert r.status == 200
    assert len(peers) == 1  # one pooled connection served all twenty, one after the other


async def test_a_pooled_connection_the_replica_closed_is_replaced_without_an_error(raw):
    async def close_after(request):
        response = web.Response(text="ok")
        response.force_close()  # Connection: close... then the proxy must not reuse it
        return response

    up = await raw.upstream(close_after)
    raw.endpoint(upstreams=(up,))
    await raw.start()
    for _ in range(5):
        async with raw.request("POST", EP, data=b"abc") as r:
            assert r.status == 200
    assert len(up.seen) == 5


async def test_a_pooled_connection_closed_while_idle_is_retried_once(raw):
    up = await raw.upstream()
    raw.endpoint(upstreams=(up,))
    await raw.start(upstream_idle_timeout_s=5)
    async with raw.request("POST", EP, data=b"abc") as r:
        assert r.status == 200
    pool = raw.proxy.listening.listeners[0].raw.pool
    await until(lambda: pool.idle_count() == 1)
    (connection,) = [c for idle in pool._idle.values() for c in idle]
    # The replica's side of the pooled connection goes away, as a keep-alive timeout would; the
    # proxy has not noticed yet when the next request takes it.
    connection.transport.get_extra_info("socket").shutdown(2)
    async with raw.request("POST", EP, data=b"again") as r:
        assert r.status == 200
        assert (await r.json())["body_len"] == 5
    assert len(up.seen) == 2


async def test_expect_100_continue(raw):
    up = await raw.upstream()
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    headers, body, status = await read_one(reader)
    assert status == 200 and b'"body_len": 5' in body
    assert "expect" not in {k.lower() for k in up.seen[-1]["headers"]}
    writer.close()


async def test_a_refusal_never_invites_the_body(raw):
    raw.endpoint(auth=AuthType.PRIVATE)
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    r = parse_response(await closed_by_server(reader))
    assert r.status == 401  # no 100 Continue before it
    writer.close()


async def test_a_chunked_upload_and_a_chunked_response(raw):
    async def echo(request):
        data = await request.read()
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(data), 3):
            await response.write(data[i:i + 3])
        await response.write_eof()
        return response

    up = await raw.upstream(echo)
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n")
    headers, body, status = await read_one(reader)
    assert (status, body, headers["transfer-encoding"]) == (200, b"abcdefghij", "chunked")
    writer.close()


async def test_a_response_ended_by_the_close_reaches_http11_chunked_and_http10_as_it_came(raw):
    payload = b"x" * 100_000

    async def raw_http10(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw_http10, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    raw.endpoint(upstreams=(address,))
    await raw.start()
    try:
        reader, writer = await connect(raw)
        writer.write(get(EP))
        headers, body, status = await read_one(reader)
        assert (status, headers.get("transfer-encoding"), body) == (200, "chunked", payload)
        writer.close()
        reader, writer = await connect(raw)
        writer.write(b"GET " + EP.encode() + b" HTTP/1.0\r\n\r\n")
        r = parse_response(await closed_by_server(reader))
        assert (r.status, r.body) == (200, payload)
        assert "transfer-encoding" not in r.headers
        writer.close()
    finally:
        server.close()
    await until(lambda: raw.pending() == 0)


async def test_http10_keep_alive_and_head(raw):
    up = await raw.upstream()
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(b"GET " + EP.encode() + b" HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    headers, body, status = await read_one(reader)
    assert status == 200 and headers["connection"] == "keep-alive"
    writer.write(b"HEAD " + EP.encode() + b" HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = parse_response(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
    assert head.status == 200 and int(head.headers["content-length"]) > 0  # and no body follows:
    writer.write(b"GET " + EP.encode() + b"/after HTTP/1.0\r\n\r\n")
    r = parse_response(await closed_by_server(reader))
    assert r.status == 200 and r.json()["path"] == "/after"
    writer.close()


async def test_informational_answers_of_the_replica_are_skipped(raw):
    async def early_hints(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = await asyncio.start_server(early_hints, "127.0.0.1", 0)
    raw.endpoint(upstreams=(f"127.0.0.1:{server.sockets[0].getsockname()[1]}",))
    await raw.start()
    try:
        async with raw.request("GET", EP) as r:
            assert (r.status, await r.read()) == (200, b"ok")
    finally:
        server.close()


async def test_a_client_that_does_not_read_pauses_the_replica(raw):
    sent = [0]
    chunk = b"y" * 65536

    async def firehose(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(800):  # 50 MiB, far beyond every buffer on the way
            await response.write(chunk)  # waits while the proxy has paused reading this connection
            sent[0] += len(chunk)
        await response.write_eof()
        return response

    up = await raw.upstream(firehose)
    raw.endpoint(upstreams=(up,))
    await raw.start()
    reader, writer = await connect(raw)
    writer.write(get(EP))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    before = -1
    while sent[0] != before:  # until the replica has stopped making progress
        before = sent[0]
        await asyncio.sleep(0.2)
    assert sent[0] < 800 * len(chunk) // 4  # stopped by the proxy's flow control, well short of all
    total = 0
    while data := await asyncio.wait_for(reader.read(1 << 20), 10):  # reading lets it go on, to the end
        total += len(data)
        if data.endswith(b"0\r\n\r\n") and sent[0] == 800 * len(chunk):
            break
    assert sent[0] == 800 * len(chunk)
    writer.close()
    await until(lambda: raw.pending() == 0)


async def test_a_replica_that_does_not_read_pauses_the_upload(raw):
    started = asyncio.Event()
    go = asyncio.Event()

    async def lazy(request):
        started.set()
        await go.wait()
        n = 0
        async for data in request.content.iter_any():
            n += len(data)
        return web.json_response({"n": n})

    up = await raw.upstream(lazy)
    raw.endpoint(upstreams=(up,))
    await raw.start()
    total = 40 * 1024 * 1024
    reader, writer = await connect(raw)
    writer.write(b"POST " + EP.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
    await asyncio.wait_for(started.wait(), 10)
    block = b"z" * 65536
    written = 0

    async def upload():
        nonlocal written
        while written < total:
            writer.write(block)
            await writer.drain()  # blocks while the proxy has paused reading us
            written += len(block)

    task = asyncio.create_task(upload())
    before = -1
    while written != before:
        before = written
        await asyncio.sleep(0.2)
    assert written < total // 2  # the proxy stopped reading: nothing piles up in its memory
    go.set()
    await asyncio.wait_for(task, 30)
    headers, body, status = await read_one(reader)
    assert status == 200 and body == b'{"n": %d}' % total
    writer.close()


async def test_metrics_on_the_main_https_listener_go_through_the_hand_off(raw, tmp_path):
    import ssl
    import subprocess

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    up = await raw.upstream()
    raw.endpoint(upstreams=(up,))
    await raw.start(tls_cert=str(cert), tls_key=str(key), ssl=ssl.create_default_context(cafile=str(cert)))
    async with raw.request("POST", EP, data=b"hi") as r:
        assert r.status == 200 and (await r.json())["body_len"] == 2
        assert {k.lower(): v for k, v in up.seen[-1]["headers"].items()}["x-forwarded-proto"] == "https"
    async with raw.request("GET", "/metrics", headers=bearer("admin")) as r:  # the same pooled connection
        assert r.status == 200 and "endpointd_proxy_requests_total" in await r.text()
