"""Passing a client connection from a worker to the main process, which serves everything that
is not the data plane. The client sees one connection, its address intact, and every byte it
sent reaches the main process once and in order, however TCP cut the request:

- The worker stops reading the connection (`pause_reading`) when it decides to pass it: what it
  read so far (the head, perhaps some body) goes with the socket; what it has not read stays in
  the kernel, for the main process to read.
- The channel is a unix SEQPACKET connection per worker (ordered, message boundaries kept, no
  datagram queue limit): the socket travels (SCM_RIGHTS) on the first message with the length
  of the bytes read, those bytes follow in messages of at most PIECE_BYTES. A full channel is
  back-pressure, not a refusal: the worker queues what it passes and sends when the channel
  is writable again; the connections wait, paused, in order. Only a queue of MAX_WAITING
  connections or MAX_WAITING_BYTES (the main process has stopped taking them) or a channel that
  broke (the main process is gone) answers 503.
- The main process adopts the socket on its own listener's raw server and gives the new
  protocol the bytes the worker read before anything read from the socket since: bytes that
  arrive while the transport is being set up are held behind them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import Protocol, cast

from ..core.cap import Connection
from ..core.errors import Unavailable
from ..raw import wire
from ..raw.server import RawServer

log = logging.getLogger("endpointd.proxy")

PIECE_BYTES = 32 * 1024  # the bytes of one message: well within a unix socket's send buffer
# What a worker can have read of a request when it passes it: a head of at most ~1 MiB (the raw
# server's limit) and the rest of the last read (256 KiB at most); what claims more is a broken peer.
MAX_PASSED_BYTES = 4 << 20
MAX_WAITING = 4096  # connections a worker holds for a channel that does not drain; beyond it, 503
MAX_WAITING_BYTES = 64 << 20  # and the bytes read of them
READS_PER_WAKE = 64  # messages the main process reads before it lets the loop run something else
_LENGTH = struct.Struct(">I")
_MESSAGE_BYTES = _LENGTH.size + PIECE_BYTES


def _messages(data: bytes) -> deque[bytes]:
    """The first carries the length (and, when sent, the socket); pieces of the bytes follow."""
    pieces = deque([_LENGTH.pack(len(data)) + data[:PIECE_BYTES]])
    for start in range(PIECE_BYTES, len(data), PIECE_BYTES):
        pieces.append(data[start:start + PIECE_BYTES])
    return pieces


class _Passing:
    __slots__ = ("transport", "messages", "sent_socket", "size")

    def __init__(self, transport: asyncio.Transport, data: bytes):
        self.transport = transport
        self.size = len(data)
        self.messages = _messages(data)
        self.sent_socket = False


class Sender:
    """A worker's side: `raw_server.hand_off = Sender(path)`."""

    def __init__(self, path: str):
        self._loop = asyncio.get_running_loop()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.connect(path)
        self._sock.setblocking(False)
        self._queue: deque[_Passing] = deque()
        self._waiting_writable = False
        self._broken: str | None = None
        self._waiting_bytes = 0
        self._empty = asyncio.Event()
        self._empty.set()

    def __call__(self, transport: asyncio.Transport, data: bytes) -> None:
        if self._broken is not None:
            self._refuse(transport, self._broken)
            return
        if len(data) > MAX_PASSED_BYTES:  # not possible under the raw server's head limit; never sent
            self._refuse(transport, f"{len(data)} bytes read of one request, over {MAX_PASSED_BYTES}")
            return
        if len(self._queue) >= MAX_WAITING or self._waiting_bytes + len(data) > MAX_WAITING_BYTES:
            self._refuse(transport, f"{len(self._queue)} connections ({self._waiting_bytes} bytes) are waiting "
                                    "for the main process to take them")
            return
        transport.pause_reading()  # the rest stays in the kernel: the main process reads it
        self._queue.append(_Passing(transport, data))
        self._waiting_bytes += len(data)
        self._empty.clear()
        if not self._waiting_writable:
            self._send()

    def _send(self) -> None:
        while self._queue:
            passing = self._queue[0]
            if not passing.sent_socket and passing.transport.is_closing():  # closed while it waited
                self._left(passing)
                continue
            while passing.messages:
                try:
                    if passing.sent_socket:
                        self._sock.send(passing.messages[0])
                    else:
                        fd = passing.transport.get_extra_info("socket").fileno()
                        socket.send_fds(self._sock, [passing.messages[0]], [fd])
                except (BlockingIOError, InterruptedError):
                    if not self._waiting_writable:
                        self._waiting_writable = True
                        self._loop.add_writer(self._sock.fileno(), self._send)
                    return
                except OSError as error:
                    log.warning("the hand-off channel to the main process broke: %s", error)
                    self._break(f"the hand-off channel to the main process broke: {error}")
                    return
                passing.sent_socket = True
                passing.messages.popleft()
            self._left(passing)
            passing.transport.abort()  # the main process holds the socket now: closing ours ends nothing
        if self._waiting_writable:
            self._waiting_writable = False
            self._loop.remove_writer(self._sock.fileno())
        self._empty.set()

    def _left(self, passing: _Passing) -> None:
        self._queue.popleft()
        self._waiting_bytes -= passing.size

    def _break(self, reason: str) -> None:
        self._broken = reason
        if self._waiting_writable:
            self._waiting_writable = False
            self._loop.remove_writer(self._sock.fileno())
        while self._queue:
            passing = self._queue[0]
            self._left(passing)
            if passing.sent_socket:
                passing.transport.abort()  # half passed: the main process drops what it cannot complete
            else:
                self._refuse(passing.transport, reason)
        self._empty.set()

    @staticmethod
    def _refuse(transport: asyncio.Transport, reason: str) -> None:
        log.warning("could not pass a connection to the main process: %s", reason)
        refusal = Unavailable("this server cannot serve this request now; retry", cause="handoff")
        transport.write(wire.error_bytes(refusal, None, True))
        transport.close()

    @property
    def waiting(self) -> int:
        """Connections passed but not all sent yet (a full channel makes them wait)."""
        return len(self._queue)

    async def flushed(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until every connection passed so far has left."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._empty.wait()
        except TimeoutError:
            log.warning("%d connection(s) still waiting for the main process after %g s", len(self._queue), timeout_s)

    def close(self) -> None:
        if self._broken is None:
            self._break("this worker is stopping")
        self._sock.close()


class _Channel:
    """One worker's messages, in the main process: each passed connection whole, then adopted."""

    def __init__(self, sock: socket.socket, receiver: Receiver):
        self.sock = sock
        self._receiver = receiver
        self._fd: int | None = None  # the socket being passed, until its bytes have all come
        self._length = 0
        self._parts: list[bytes] = []
        self._have = 0

    def readable(self) -> None:
        for _ in range(READS_PER_WAKE):
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, _MESSAGE_BYTES + 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.close(f"reading it failed: {error}")
                return
            if not data and not fds:
                self.close(None)  # the worker closed its side
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) > 1 or len(data) > _MESSAGE_BYTES:
                for fd in fds:
                    socket.close(fd)
                self.close("a message over the limits")
                return
            if fds:
                if self._fd is not None or len(data) < _LENGTH.size:
                    socket.close(fds[0])
                    self.close("a socket passed before the last one's bytes had all come")
                    return
                (self._length,) = _LENGTH.unpack_from(data)
                self._fd = fds[0]
                data = data[_LENGTH.size:]
                if self._length > MAX_PASSED_BYTES:
                    self.close(f"a connection passed with {self._length} bytes, over {MAX_PASSED_BYTES}")
                    return
            elif self._fd is None:
                self.close("bytes with no socket passed before them")
                return
            self._parts.append(data)
            self._have += len(data)
            if self._have > self._length:
                self.close("more bytes than the passed connection announced")
                return
            if self._have == self._length:
                fd, passed = self._fd, b"".join(self._parts)
                self._fd, self._parts, self._have = None, [], 0
                self._receiver.adopt(fd, passed)

    def close(self, problem: str | None) -> None:
        if problem is not None:
            log.warning("the hand-off channel of a worker closed: %s", problem)
        if self._fd is not None:
            socket.close(self._fd)
            self._fd = None
        self._receiver.closed(self)


class _Served(Connection, Protocol):
    """A protocol of the listener: the raw server's (proxy/raw/client.py) or the app's aiohttp one
    it passed the connection on to (proxy/management/connections.py)."""

    def eof_received(self) -> bool | None: ...


class _Adopted(asyncio.Protocol):
    """The first protocol of an adopted connection. uvloop starts reading a transport as soon as
    its protocol is connected, before `connect_accepted_socket` returns: bytes that arrive
    meanwhile are held here, behind those the worker read, until `start` gives them all, in
    order, to a client protocol of the listener (whose pauses are then honoured)."""

    def __init__(self, raw_server: RawServer, passed: bytes):
        self._raw = raw_server
        self._held = [passed]
        self._held_bytes = 0
        self._transport: asyncio.Transport | None = None
        self._eof = False
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > PIECE_BYTES and self._transport is not None:
            self._transport.pause_reading()  # resumed by `start`

    def eof_received(self) -> bool:
        self._eof = True
        return True  # kept open: the client protocol decides at `start`

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True

    def start(self, draining: bool) -> None:
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            return
        protocol = self._raw()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        transport.resume_reading()
        protocol.data_received(b"".join(self._held))
        self._held = []
        # the app's aiohttp protocol, once the raw one passed it on
        current = cast(_Served, transport.get_protocol())
        if self._eof and not transport.is_closing() and not current.eof_received():
            transport.close()
        if draining and not transport.is_closing():
            current.close_when_idle()


class Receiver:
    """The main process's side: adopts what the workers pass, on `raw_server`'s listener."""

    def __init__(self, path: str, raw_server: RawServer):
        self._raw = raw_server
        self._loop = asyncio.get_running_loop()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(path)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._channels: set[_Channel] = set()
        self._tasks: set[asyncio.Task] = set()
        self._draining = False
        self._loop.add_reader(self._listener.fileno(), self._accept)

    def draining(self) -> None:
        """From now on an adopted connection serves the request it carries, then closes."""
        self._draining = True

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("accepting a worker's hand-off channel failed: %s", error)
                return
            sock.setblocking(False)
            channel = _Channel(sock, self)
            self._channels.add(channel)
            self._loop.add_reader(sock.fileno(), channel.readable)

    def closed(self, channel: _Channel) -> None:
        if channel in self._channels:
            self._channels.discard(channel)
            self._loop.remove_reader(channel.sock.fileno())
            channel.sock.close()

    def adopt(self, fd: int, passed: bytes) -> None:
        task = self._loop.create_task(self._adopt(fd, passed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adopt(self, fd: int, passed: bytes) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        adopted = _Adopted(self._raw, passed)
        try:
            await self._loop.connect_accepted_socket(lambda: adopted, sock)
        except OSError as error:
            log.debug("a connection passed by a worker closed before it was adopted: %s", error)
            sock.close()
            return
        adopted.start(self._draining)

    def close(self) -> None:
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        for channel in list(self._channels):
            channel.close(None)
        for task in self._tasks:
            task.cancel()
