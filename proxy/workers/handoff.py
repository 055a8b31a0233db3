"""Passing a client connection from a worker to the main process, which serves everything that
is not the data plane: the worker sends the socket (SCM_RIGHTS) with the bytes it read of the
request over a unix datagram socket; the main process adopts it as a connection of its own
listener, which reads those bytes first. The client sees one connection, its address intact."""

from __future__ import annotations

import asyncio
import logging
import socket

from ..errors import Unavailable
from ..raw import wire
from ..raw.server import RawServer

log = logging.getLogger("endpointd.proxy")

# The head of a management request is small; the datagram must fit the socket's buffer.
MAX_HANDOFF_BYTES = 64 * 1024
RECEIVE_BYTES = MAX_HANDOFF_BYTES + 1024


class Sender:
    """A worker's side: `raw_server.hand_off = Sender(path)`."""

    def __init__(self, path: str):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.connect(path)
        self._sock.setblocking(False)

    def __call__(self, transport: asyncio.Transport, data: bytes) -> None:
        sock = transport.get_extra_info("socket")
        try:
            if len(data) > MAX_HANDOFF_BYTES:
                raise OSError(f"a request head of {len(data)} bytes, over {MAX_HANDOFF_BYTES}")
            socket.send_fds(self._sock, [data], [sock.fileno()])
        except OSError as error:
            log.warning("could not pass a connection to the main process: %s", error)
            refusal = Unavailable("this server cannot serve this request now; retry", cause="handoff")
            transport.write(wire.error_bytes(refusal, None, True))
            transport.close()
            return
        transport.abort()  # the main process holds the connection now: closing our descriptor ends nothing

    def close(self) -> None:
        self._sock.close()


class Receiver:
    """The main process's side: adopts what the workers pass, on `raw_server`'s listener."""

    def __init__(self, path: str, raw_server: RawServer):
        self._raw = raw_server
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, RECEIVE_BYTES, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("receiving a connection from a worker failed: %s", error)
                return
            for fd in fds[1:]:
                socket.close(fd)
            if not fds:
                continue
            task = self._loop.create_task(self._adopt(fds[0], data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adopt(self, fd: int, data: bytes) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        try:
            _, protocol = await self._loop.connect_accepted_socket(self._raw, sock)
        except OSError as error:
            log.debug("a connection passed by a worker closed before it was adopted: %s", error)
            sock.close()
            return
        protocol.data_received(data)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in self._tasks:
            task.cancel()
