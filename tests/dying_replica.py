"""A fake replica that dies at a chosen phase of each exchange, for the crash tests of the raw
data plane (tests/e2e/test_raw_upstream_death.py). Raw TCP, so that it can die where an HTTP server
never would: with a reset (SO_LINGER 0) or a plain close, as a crashed engine's kernel does. It
runs on its own event loop in its own thread, as an engine runs beside the proxy: its deaths come
while the proxy's loop is busy, not between two of its turns.

Phases, where each connection dies:
    connect     as soon as it is accepted (a dying engine behind a port that still accepts)
    sent        once the whole request (head and body) is read, before any answer
    headers     after part of the response head
    body        after part of a body of known length
    stream      after one chunk of a chunked (streamed) response
    upload      after part of a request body that is still coming
    crash       answers `serve` requests in full on keep-alive connections, then crashes: a
                later request on a kept-alive connection kills it unanswered, and every new
                connection dies as it is accepted (the proxy's retry on a fresh connection meets
                a dead engine behind a port that still accepts)
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

PHASES = ("connect", "sent", "headers", "body", "stream", "upload")
RESPONSE_PHASES = ("body", "stream")  # the response had started: the client sees it cut


class DyingReplica:
    def __init__(self, phase: str, reset: bool, serve: int = 0):
        self.phase = phase
        self.reset = reset
        self.serve = serve  # `crash`: requests answered in full before it crashes
        self.crashed = threading.Event()
        self._open: set[asyncio.StreamWriter] = set()
        self._served = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"replica-{phase}", daemon=True)
        self.port = 0

    async def start(self) -> DyingReplica:
        self._thread.start()

        async def listen() -> int:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
            return self._server.sockets[0].getsockname()[1]

        self.port = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(listen(), self._loop))
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        async def stop() -> None:
            for writer in list(self._open):
                self._die(writer)
            self._server.close()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(stop(), self._loop))
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        self._loop.close()

    def _die(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        if self.reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # closed with SO_LINGER 0: the peer gets a reset
        else:
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            if self.phase == "connect" or self.crashed.is_set():
                self._die(writer)
                return
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.crashed.is_set():
                    self._die(writer)
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if self.phase == "upload":
                    await reader.readexactly(min(length, 1024))
                    self._die(writer)
                    return
                await reader.readexactly(length)
                if self.phase == "crash":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    self._served += 1
                    if self._served >= self.serve:
                        self.crashed.set()
                    continue
                if self.phase == "headers":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
                elif self.phase == "body":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
                elif self.phase == "stream":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                 b"Content-Type: text/event-stream\r\n\r\n11\r\ndata: one token\n\n\r\n")
                if self.phase != "sent":
                    await writer.drain()
                self._die(writer)
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            self._die(writer)
