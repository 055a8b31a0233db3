"""Bytes on the wire for the raw server: the proxy's own answers, response heads, request heads
for replicas, chunk framing. Each answer is built whole so it goes out in one write."""

from __future__ import annotations

from http import HTTPStatus

from ..core.errors import ProxyError, to_http
from ..core.forwarding import REQUEST_ID

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def error_bytes(error: ProxyError, rid: str | None, close: bool, path: str | None = None) -> bytes:
    """A refusal of a request for `path` as one whole response: JSON body, X-Error-Message, X-Request-Id."""
    status, headers, body = to_http(error, path)
    lines = [f"HTTP/1.1 {status} {reason(status)}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in headers.items()]
    if rid is not None:
        lines.append(f"{REQUEST_ID}: {rid}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
