"""Messages between the main process and its workers: a 4-byte big-endian length, then a JSON
object, over a unix stream socket. Bounded: a message over MAX_MESSAGE_BYTES is a broken peer."""

from __future__ import annotations

import asyncio
import json
import struct

MAX_MESSAGE_BYTES = 64 << 20  # a metrics family set or a second of tapped answers fits many times
_LENGTH = struct.Struct(">I")


class ChannelClosed(Exception):
    pass


def send(writer: asyncio.StreamWriter, message: dict) -> None:
    """Queue a message; dropped when the channel is already closed (its peer is gone)."""
    if writer.is_closing():
        return
    data = json.dumps(message, separators=(",", ":")).encode()
    writer.write(_LENGTH.pack(len(data)) + data)


async def receive(reader: asyncio.StreamReader) -> dict:
    try:
        head = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(head)
        if length > MAX_MESSAGE_BYTES:
            raise ChannelClosed(f"a message of {length} bytes, over the limit of {MAX_MESSAGE_BYTES}")
        return json.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError) as error:
        raise ChannelClosed(str(error) or "closed") from None
