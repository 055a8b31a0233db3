"""The hand-off channel (proxy/workers/handoff.py) alone, fast: real TCP connections and a real
unix channel between two uvloop loops (the "worker" in the test's thread, the "main process" in
another), with a recording protocol in place of the main process's raw server.

A connection is passed after its first read, as the raw server passes one after the read that
completes a head; the rest of what the client sends comes after that read, at once or later.
Every byte must reach the main process's protocol once and in order, whatever the cut and the
size (a first read far larger than one channel message included), and a channel that is full
(the main process busy) makes connections wait, never refused."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading

import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.workers.handoff import PIECE_BYTES, Receiver, Sender


class Recorder(asyncio.Protocol):
    """Stands for the main process's client protocol: a message is `LENGTH\\n` then LENGTH bytes;
    once all have come, it answers them back and closes."""

    def __init__(self):
        self.got = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.got += data
        length, newline, rest = bytes(self.got).partition(b"\n")
        if newline and len(rest) >= int(length):
            self.transport.write(rest)
            self.transport.close()


class MainProcess:
    """A uvloop loop in a thread with a Receiver on `path`; `stall()` blocks it until released."""

    def __init__(self, path: str):
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def receiver():
            return Receiver(path, Recorder)

        self.receiver = asyncio.run_coroutine_threadsafe(receiver(), self.loop).result(10)

    def stall(self) -> threading.Event:
        release = threading.Event()
        self.loop.call_soon_threadsafe(release.wait, 60)
        return release

    def close(self):
        self.loop.call_soon_threadsafe(self.receiver.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Worker(asyncio.Protocol):
    """Stands for a worker's raw server: passes each connection after its first read."""

    passed = 0
    late: list[bytes]  # what a connection delivered here after it was passed (must stay empty)

    def __init__(self, sender: Sender):
        self.sender = sender
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.transport is None:
            Worker.late.append(data)
            return
        transport, self.transport = self.transport, None
        Worker.passed += 1
        self.sender(transport, data)


def message(size: int, seed: int) -> bytes:
    payload = bytes((seed + i * 7) % 251 for i in range(size))
    return f"{size}\n".encode() + payload


async def client(port: int, data: bytes, cut: int, later: asyncio.Event | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data[:cut])
        await writer.drain()
        if later is not None:
            await later.wait()
        writer.write(data[cut:])
        await writer.drain()
        async with asyncio.timeout(60):
            return await reader.read()  # until the recorder closes
    finally:
        writer.close()


async def worker_side(path: str):
    sender = Sender(path)
    Worker.passed, Worker.late = 0, []
    server = await asyncio.get_running_loop().create_server(lambda: Worker(sender), "127.0.0.1", 0)
    return sender, server, server.sockets[0].getsockname()[1]


def test_a_full_channel_makes_connections_wait_and_none_is_refused_or_reordered():
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "handoff")
        main = MainProcess(path)
        n = 300
        sizes = [100 + (i * 37) % 2000 if i % 10 else 3 * PIECE_BYTES + i for i in range(n)]

        async def run():
            sender, server, port = await worker_side(path)
            release = main.stall()  # the main process is busy: the channel fills
            later = asyncio.Event()
            calls = [asyncio.ensure_future(client(port, message(size, i), 5, later)) for i, size in enumerate(sizes)]
            try:
                deadline = asyncio.get_running_loop().time() + 60
                while Worker.passed < n and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)  # polling the condition: every connection passed
                assert Worker.passed == n
                assert sender.waiting > 0  # the channel was full: connections wait in the worker
                release.set()
                later.set()  # the rest of each request: after its connection was passed
                answers = await asyncio.gather(*calls)
            finally:
                release.set()
                server.close()
                sender.close()
            wrong = [i for i, (a, size) in enumerate(zip(answers, sizes)) if a != message(size, i)[len(str(size)) + 1:]]
            assert wrong == [], f"{len(wrong)} of {n} connections answered other bytes than they sent"
            assert Worker.late == []

        try:
            uvloop.run(run())
        finally:
            main.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 3 * PIECE_BYTES), cut=st.floats(0, 1), later=st.booleans())
def test_every_byte_arrives_in_order_whatever_the_cut(size, cut, later):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "handoff")
        main = MainProcess(path)
        data = message(size, size)
        at = max(1, int(cut * len(data)))

        async def run():
            sender, server, port = await worker_side(path)
            rest = asyncio.Event()
            call = asyncio.ensure_future(client(port, data, at, rest if later else None))
            try:
                while Worker.passed < 1 and not call.done():
                    await asyncio.sleep(0.001)  # polling the condition: the connection passed
                rest.set()
                answer = await call
            finally:
                server.close()
                sender.close()
            assert answer == data[len(str(size)) + 1:]
            assert Worker.late == []

        try:
            uvloop.run(run())
        finally:
            main.close()
