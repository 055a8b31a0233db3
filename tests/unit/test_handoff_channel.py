"""The hand-off channel (proxy/workers/handoff.py) alone, fast: real TCP connections and a real
unix channel between two uvloop loops, each in a thread of its own (the "worker" and the "main
process"), with a recording protocol in place of the main process's raw server.

A connection is passed after its first read, as the raw server passes one after the read that
completes a head; the rest of what the client sends comes after that read, at once or later.
Every byte must reach the main process's protocol once and in order, whatever the cut and the
size (a first read far larger than one channel message included), and a channel that is full
(the main process busy) makes connections wait, never refused: an example with 300 connections
against a stalled main process, and a state machine that interleaves connections, cuts, the rest
of each request and the main process being busy or free in any order."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading

import uvloop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from proxy.workers.handoff import PIECE_BYTES, Receiver, Sender
from tests.examples import examples
from tests.serve_process import wait_for


class Recorder(asyncio.Protocol):
    """Stands for the main process's client protocol: a message is `LENGTH\\n` then LENGTH bytes;
    once all have come, it answers them back and closes (what does not start with a length is
    answered as it came: a reordering shows as a wrong answer)."""

    def __init__(self):
        self.got = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.got += data
        length, newline, rest = bytes(self.got).partition(b"\n")
        if not length.isdigit():
            self.transport.write(bytes(self.got))
            self.transport.close()
        elif newline and len(rest) >= int(length):
            self.transport.write(rest)
            self.transport.close()


class Worker(asyncio.Protocol):
    """Stands for a worker's raw server: passes each connection after its first read."""

    def __init__(self, sender: Sender, passed: list[bytes], late: list[bytes]):
        self.sender = sender
        self.passed = passed  # the first read of each connection passed
        self.late = late  # what a connection delivered here after it was passed (must stay empty)
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.transport is None:
            self.late.append(data)
            return
        transport, self.transport = self.transport, None
        self.passed.append(data)
        self.sender(transport, data)


def message(size: int, seed: int) -> bytes:
    payload = bytes((seed + i * 7) % 251 for i in range(size))
    return f"{size}\n".encode() + payload


def payload(data: bytes) -> bytes:
    return data.partition(b"\n")[2]


class Side:
    """A uvloop loop in a thread of its own (a process of the real server)."""

    def __init__(self):
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, function):
        async def run():
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stall(self) -> threading.Event:
        release = threading.Event()
        self.loop.call_soon_threadsafe(release.wait, 60)
        return release

    def close(self, then) -> None:
        self.loop.call_soon_threadsafe(then)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Pair:
    """A main process (a Receiver with recorders) and a worker (a Sender behind a TCP listener)."""

    def __init__(self):
        self.directory = tempfile.TemporaryDirectory()
        path = os.path.join(self.directory.name, "handoff")
        self.main = Side()
        self.receiver = self.main.call(lambda: Receiver(path, Recorder))
        self.worker = Side()
        self.sender = self.worker.call(lambda: Sender(path))
        self.passed: list[bytes] = []
        self.late: list[bytes] = []

        async def listen():
            return await asyncio.get_running_loop().create_server(
                lambda: Worker(self.sender, self.passed, self.late), "127.0.0.1", 0
            )

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.worker.loop).result(30)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        self.worker.close(lambda: (self.server.close(), self.sender.close()))
        self.main.close(self.receiver.close)
        self.directory.cleanup()


class Connection:
    def __init__(self, port: int, data: bytes, at: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.data, self.at, self.rest_sent = data, at, False
        self.sock.sendall(data[:at])

    def send_rest(self) -> None:
        self.sock.sendall(self.data[self.at:])
        self.rest_sent = True

    def answer(self) -> bytes:
        chunks = []
        while chunk := self.sock.recv(1 << 16):  # until the recorder closes
            chunks.append(chunk)
        self.sock.close()
        return b"".join(chunks)


def test_a_full_channel_makes_connections_wait_and_none_is_refused_or_reordered():
    pair = Pair()
    n = 300
    messages = [message(100 + (i * 37) % 2000 if i % 10 else 3 * PIECE_BYTES + i, i) for i in range(n)]
    release = pair.main.stall()  # the main process is busy: the channel fills
    try:
        connections = [Connection(pair.port, data, 5) for data in messages]
        wait_for(lambda: len(pair.passed) == n, 60, "the worker to pass every connection")
        assert pair.worker.call(lambda: pair.sender.waiting) > 0  # the channel is full: they wait in the worker
        release.set()
        for connection in connections:
            connection.send_rest()  # the rest of each request: after its connection was passed
        wrong = [i for i, c in enumerate(connections) if c.answer() != payload(c.data)]
        assert wrong == [], f"{len(wrong)} of {n} connections answered other bytes than they sent"
        assert pair.late == []
    finally:
        release.set()
        pair.close()


class HandOffMachine(RuleBasedStateMachine):
    """Connections opened and cut anywhere, the main process busy or free, the rest of each
    request sent at any moment: every connection is answered with exactly what it sent."""

    def __init__(self):
        super().__init__()
        self.pair = Pair()
        self.release: threading.Event | None = None
        self.open: list[Connection] = []
        self.count = 0

    @precondition(lambda self: len(self.open) < 6)
    @rule(size=st.integers(0, 3 * PIECE_BYTES), cut=st.floats(0, 1))
    def connect(self, size, cut):
        data = message(size, self.count)
        self.count += 1
        self.open.append(Connection(self.pair.port, data, max(1, int(cut * len(data)))))

    @precondition(lambda self: self.release is None)
    @rule()
    def main_busy(self):
        self.release = self.pair.main.stall()

    @precondition(lambda self: self.release is not None)
    @rule()
    def main_free(self):
        self.release.set()
        self.release = None

    @precondition(lambda self: any(not c.rest_sent for c in self.open))
    @rule(data=st.data())
    def send_rest(self, data):
        data.draw(st.sampled_from([c for c in self.open if not c.rest_sent])).send_rest()

    @precondition(lambda self: self.release is None and any(c.rest_sent for c in self.open))
    @rule(data=st.data())
    def answered(self, data):
        connection = data.draw(st.sampled_from([c for c in self.open if c.rest_sent]))
        self.open.remove(connection)
        self.check(connection)

    def check(self, connection: Connection) -> None:
        assert connection.answer() == payload(connection.data)

    def teardown(self):
        try:
            if self.release is not None:
                self.release.set()
            for connection in self.open:
                if not connection.rest_sent:
                    connection.send_rest()
                self.check(connection)
            assert self.pair.late == []  # nothing read by the worker after it passed a connection
        finally:
            for connection in self.open:
                connection.sock.close()
            self.pair.close()


HandOffMachine.TestCase.settings = settings(max_examples=examples(30), stateful_step_count=15, deadline=None)
TestHandOff = HandOffMachine.TestCase
