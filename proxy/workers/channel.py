"""Messages between the main process and its workers (messages.py): a 4-byte big-endian length,
then the message as codec.py writes it, over a unix stream socket. Bounded: a message over
MAX_MESSAGE_BYTES, like one that does not decode, is a broken peer."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TypeVar

from . import codec
from .messages import Message

MAX_MESSAGE_BYTES = 64 << 20  # a metrics family set or a second of tapped answers fits many times
_LENGTH = struct.Struct(">I")

M = TypeVar("M", bound=Message)


class ChannelClosed(Exception):
    pass


class BrokenPeer(ChannelClosed):
    """The peer sent what no peer of ours sends: the channel is given up."""


def send(writer: asyncio.StreamWriter, message: Message) -> None:
    """Queue a message; dropped when the channel is already closed (its peer is gone)."""
    if writer.is_closing():
        return
    data = codec.encode(message)
    writer.write(_LENGTH.pack(len(data)) + data)


async def receive(reader: asyncio.StreamReader, decode: Callable[[bytes], M]) -> M:
    """The next message, decoded by `decode` (codec.to_main or codec.to_worker: each side takes
    the other side's messages only)."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(head)
        if length > MAX_MESSAGE_BYTES:
            raise BrokenPeer(f"a message of {length} bytes, over the limit of {MAX_MESSAGE_BYTES}")
        data = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError) as error:
        raise ChannelClosed(str(error) or "closed") from None
    try:
        return decode(data)
    except codec.Malformed as error:
        raise BrokenPeer(str(error)) from None
