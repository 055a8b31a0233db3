"""The forwarding rules, free of any HTTP framework: which headers cross the proxy, the request
id, the X-Forwarded-* fields, and when a failed upstream attempt may be retried on another
replica.

Headers are given as raw bytes, as the raw server (proxy/raw/) parsed them; the few values the
decisions read come as str, undecodable bytes as surrogates (surrogateescape).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable

from .errors import BadRequest, shown
from .pipeline import PROBE_HEADER

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the proxy consumes or rewrites itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Proxy-Connection",
    )
)
NOT_FORWARDED = HOP_BY_HOP | frozenset(
    # X-Request-Id is set again (the caller's when it is printable, else a generated one)
    {"host", "authorization", "expect", "x-scale-up-timeout", "x-request-id", PROBE_HEADER.lower()}
)
NOT_RETURNED = HOP_BY_HOP | frozenset({"content-length"})
_SET_AGAIN = NOT_FORWARDED | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
REQUEST_ID = "X-Request-Id"
MAX_REQUEST_ID_LEN = 200
# A connect failure (nothing sent) is retried once, on another replica: two attempts in all.
MAX_CONNECT_ATTEMPTS = 2

# Generated ids: a random per-process prefix and a counter — unique, and cheaper than uuid4 on
# every request (which showed up at 3 % of the proxy's CPU in a profile).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def request_id(incoming: str | None) -> str:
    """Keep the caller's id when it is printable and short; else make one."""
    if incoming and len(incoming) <= MAX_REQUEST_ID_LEN and incoming.isprintable() and incoming.isascii():
        return incoming
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def require_utf8(name: str, value: str) -> None:
    """A surrogate is a byte that was not UTF-8: such a value cannot be sent on as it came."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest(
            f"the value of the header {shown(name)} is not valid UTF-8; send header values as ASCII"
        ) from None


_SET_AGAIN_BYTES = frozenset(h.encode() for h in _SET_AGAIN)
_NOT_RETURNED_BYTES = frozenset(h.encode() for h in NOT_RETURNED)


def _named_by(connection: str | bytes) -> set[bytes]:
    if isinstance(connection, str):
        connection = connection.encode("utf-8", "surrogateescape")
    return {t.strip().lower() for t in connection.split(b",")}


def forwarded_block(
    triples: Iterable[tuple[bytes, bytes, bytes]], connection: str | None, *, remote: str, scheme: str,
    host: str | None, prior_forwarded_for: str | None, rid: str,
) -> bytes:
    """The headers the replica gets (without any replica's API key), in the caller's order, then
    X-Forwarded-For/-Proto/-Host and X-Request-Id, as one block of `Name: value` lines; `triples`:
    (name, lower-cased name, value). Raises BadRequest for a value that cannot be forwarded (not
    UTF-8); called before admission, so such a request is never held."""
    drop = _SET_AGAIN_BYTES | _named_by(connection) if connection else _SET_AGAIN_BYTES
    out: list[bytes] = []
    for name, lower, value in triples:
        if lower in drop:
            continue
        if not value.isascii():
            require_utf8(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        out += (name, b": ", value, b"\r\n")
    if prior_forwarded_for and not prior_forwarded_for.isascii():
        require_utf8("X-Forwarded-For", prior_forwarded_for)
    tail = f"X-Forwarded-For: {f'{prior_forwarded_for}, {remote}' if prior_forwarded_for else remote}\r\n" \
        f"X-Forwarded-Proto: {scheme}\r\n"
    if host:
        if not host.isascii():
            require_utf8("Host", host)
        tail += f"X-Forwarded-Host: {host}\r\n"
    out.append(f"{tail}{REQUEST_ID}: {rid}\r\n".encode())
    return b"".join(out)


def returned_block(pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes | None, bool]:
    """The replica's response headers the caller gets (framing is the server's own business):
    (the block of lines, the replica's Content-Length value or None, whether it sent
    Transfer-Encoding)."""
    connection = None
    length = None
    chunked = False
    for name, value in pairs:
        lower = name.lower()
        if lower == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif lower == b"content-length":
            length = value
        elif lower == b"transfer-encoding":
            chunked = True
    drop = _NOT_RETURNED_BYTES | _named_by(connection) if connection else _NOT_RETURNED_BYTES
    out: list[bytes] = []
    for name, value in pairs:
        if name.lower() not in drop:
            out += (name, b": ", value, b"\r\n")
    return b"".join(out), length, chunked


def may_retry(attempts: int, body_started: bool) -> bool:
    """After a failed connection (no byte of the request sent): whether to try another replica."""
    return attempts < MAX_CONNECT_ATTEMPTS and not body_started


def may_resend(*, reused: bool, got_bytes: bool, response_started: bool, resent: bool, body_sent: bool) -> bool:
    """After a connection lost under a request: whether to send the request again, once, on a new
    connection to the same replica. Only for a pooled connection the replica had closed as the
    request went out: nothing was read back, and no byte of a streamed body is gone (a body read
    whole is kept for this)."""
    return reused and not got_bytes and not response_started and not resent and not body_sent
