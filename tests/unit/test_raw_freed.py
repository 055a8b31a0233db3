"""The raw server's connections are freed by reference counting when they close, not left in
reference cycles for Python's cyclic collector: a full collection walks every object in such
cycles at once, and with thousands of closed connections waiting it stalled the event loop for
~100 ms under 1,000 live streams (README, "The SSE delay's tail"). Real sockets, in-process
replica; the collector is asked which of the server's objects it found only in cycles."""

import asyncio
import gc

import httptools
from aiohttp import web

from proxy.raw.client import ClientProtocol
from proxy.raw.upstream import UpstreamConnection
from tests.proxy_harness import EP, Harness, connect, get, read_one, until

TRACKED = (ClientProtocol, UpstreamConnection, httptools.HttpRequestParser, httptools.HttpResponseParser)


async def test_closed_connections_leave_nothing_to_the_cyclic_collector():
    opened = asyncio.Event()

    async def stream(request):
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        opened.set()
        await asyncio.sleep(3600)  # until the proxy cuts it (a cancellation)
        return response

    h = Harness()
    up = await h.upstream()
    streaming = await h.upstream(stream)
    h.endpoint(upstreams=(up,))
    h.endpoint("e2", upstreams=(streaming,))
    await h.start()
    cap = h.proxy.listening.listeners[0].cap
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the next collection finds unreachable is kept, for inspection
    try:
        # a request answered, then the client closes
        reader, writer = await connect(h)
        writer.write(get(EP + "/a"))
        assert (await read_one(reader))[2] == 200
        writer.close()
        # a stream the client cuts: the proxy closes its connection to the replica too
        reader, writer = await connect(h)
        writer.write(get("/endpoints/acme/e2/s"))
        await asyncio.wait_for(opened.wait(), 10)
        await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 10)
        writer.transport.abort()
        await asyncio.wait_for(streaming.cancelled.wait(), 10)
        # a request the parser refuses, and one handed to aiohttp
        for request in (b"NOT HTTP\r\n\r\n", get("/metrics", b"Authorization: Bearer tok-root")):
            reader, writer = await connect(h)
            writer.write(request)
            assert (await read_one(reader))[2] in (400, 200)
            writer.close()
        await until(lambda: not cap.open)
        gc.collect()
        in_cycles = sorted({type(o).__name__ for o in gc.garbage if isinstance(o, TRACKED)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await h.close()
    assert in_cycles == []
