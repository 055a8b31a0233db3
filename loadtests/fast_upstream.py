"""A stand-in replica for benchmarks, fast enough not to be what is measured: a raw uvloop protocol."""

# Why not aiohttp: the upstream shares a core with the proxy under test, so every cycle it spends
# is taken from the proxy. A raw protocol answers in a fraction of the time an aiohttp handler
# takes (the "direct" row of the benchmark shows its rate).
#
#   POST (any path)         -> 200, a small JSON body with Content-Length
#   GET /sse?n=N&ms=M       -> N Server-Sent Events, one every M ms (a number; 0: as fast as the
#                              connection takes them: the stream waits while its send buffer is
#                              full); each reads `data: INDEX EMITTED_NS` with EMITTED_NS =
#                              time.monotonic_ns() at emission (one clock for every process)
#
# Usage: python fast_upstream.py PORT

import asyncio
import sys
import time
from urllib.parse import parse_qs, urlsplit

import uvloop

BODY = b'{"generated_text": "ok"}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_UNSUPPORTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def parse_head(head: bytes) -> tuple[str, int, bool]:
    """The request target, the body's Content-Length, and whether the body is chunked."""
    lines = head.decode("latin-1").split("\r\n")
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
    return lines[0].split(" ", 2)[1], length, chunked


class Http(asyncio.Protocol):
    def __init__(self, streams: set[asyncio.Task]):
        self.streams = streams  # strong references: the loop keeps only weak ones to tasks
        self.buffer = b""
        self.writable: asyncio.Event | None = None  # set while the send buffer has room

    def connection_made(self, transport):
        self.transport = transport
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    def connection_lost(self, exc):
        self.writable.set()  # a stream waiting for room sees the close

    def data_received(self, data):
        self.buffer += data
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            target, length, chunked = parse_head(self.buffer[:head_end])
            if chunked:  # refused loudly: a misparsed body would pass as a garbled next request
                self.transport.write(CHUNKED_UNSUPPORTED)
                self.transport.close()
                return
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            if target.startswith("/sse"):
                task = asyncio.ensure_future(self.stream(target))
                self.streams.add(task)
                task.add_done_callback(self.streams.discard)
            else:
                self.transport.write(OK)

    async def stream(self, target: str) -> None:
        query = parse_qs(urlsplit(target).query)
        count, gap_s = int(query.get("n", ["20"])[0]), float(query.get("ms", ["10"])[0]) / 1000
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.transport.write(SSE_HEAD)
        for i in range(count):
            await asyncio.sleep(start + (i + 1) * gap_s - loop.time())  # a schedule: no drift
            if not self.writable.is_set():
                await self.writable.wait()
            if self.transport.is_closing():
                return
            event = b"data: %d %d\n\n" % (i, time.monotonic_ns())
            self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.transport.write(b"0\r\n\r\n")


async def serve(port: int) -> None:
    streams: set[asyncio.Task] = set()
    server = await asyncio.get_running_loop().create_server(lambda: Http(streams), "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
