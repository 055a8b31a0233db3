"""Hostile input at the proxy, over raw sockets: undecodable headers, paths that must reach the
replica byte for byte, request smuggling and malformed framing, unsafe text in error headers.
Every refusal is a JSON 4xx (or a closed connection), never a 500, and never a traceback in
the log."""

import logging

import pytest
from aiohttp import web

from proxy.core.control import AuthType
from proxy.core.errors import MAX_HEADER_MESSAGE, header_safe, quoted
from tests.proxy_harness import TOKENS, exchange

EP = "/endpoints/acme/e1"


def head(target: str | bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    if isinstance(target, str):
        target = target.encode()
    return method + b" " + target + b" HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n" + b"".join(
        h + b"\r\n" for h in headers
    ) + b"\r\n"


@pytest.fixture
async def proxy(harness, caplog):
    """A proxy with a public and a private endpoint in front of a replica that echoes what it got."""
    caplog.set_level(logging.DEBUG)

    async def echo(request):
        return web.json_response({"path": request.raw_path, "headers": dict(request.headers)})

    up = await harness.upstream(echo)
    harness.endpoint(upstreams=(up,))
    harness.endpoint("private", auth=AuthType.PRIVATE, upstreams=(up,))
    harness.endpoint("routed", upstreams=(up,), domain="routed.test")
    await harness.start()
    harness.up = up
    yield harness
    assert_clean_log(caplog)


def assert_clean_log(caplog) -> None:
    for record in caplog.records:
        assert record.exc_info is None and record.levelno < logging.ERROR, (
            f"hostile input must leave no error or traceback in the log: {record.name}: {record.getMessage()}"
        )


def assert_json_error(r, status: int) -> str:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    assert message and isinstance(message, str)
    assert r.headers["x-error-message"] == header_safe(message)
    return message


# -- 1. undecodable header values ------------------------------------------------------------


async def test_undecodable_authorization_is_the_401_of_an_unknown_token(proxy):
    unknown = await exchange(proxy.proxy.port, head("/endpoints/acme/private/x", b"Authorization: Bearer not-a-token"))
    for value in (b"Bearer \xff\xfe", b"Bearer tok-alice\xff", b"bearer \xc3\x28", b"Bearer " + b"a" * 5000):
        r = await exchange(proxy.proxy.port, head("/endpoints/acme/private/x", b"Authorization: " + value))
        assert_json_error(r, 401)
        assert r.json() == unknown.json()
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = await exchange(proxy.proxy.port, head("/endpoints/acme/private/x", b"Authorization: \xff\xfe"))
    assert "needs a token" in assert_json_error(r, 401)  # not a bearer token at all: as if none was sent
    assert proxy.up.seen == []


async def test_undecodable_scale_up_timeout_is_a_400(proxy):
    for value in (b"\xff", "５".encode(), b"1\xff"):
        r = await exchange(proxy.proxy.port, head(EP, b"X-Scale-Up-Timeout: " + value))
        assert "X-Scale-Up-Timeout must be a number of seconds" in assert_json_error(r, 400)
    assert proxy.up.seen == []


async def test_undecodable_request_id_is_replaced_by_a_generated_one(proxy):
    r = await exchange(proxy.proxy.port, head(EP, b"X-Request-Id: \xff\xfeid"))
    assert r.status == 200
    generated = r.headers["x-request-id"]
    assert len(generated) == 32 and generated.isascii()
    seen = {k.lower(): v for k, v in proxy.up.seen[-1]["headers"].items()}
    assert seen["x-request-id"] == generated


async def test_undecodable_host_is_a_400(proxy):
    r = await exchange(proxy.proxy.port, b"GET " + EP.encode() + b" HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n")
    assert "Host" in assert_json_error(r, 400)
    assert proxy.up.seen == []


async def test_undecodable_probe_header_is_an_ordinary_request(proxy):
    r = await exchange(proxy.proxy.port, head(EP, b"X-Endpointd-Probe: \xff"))
    assert r.status == 200
    assert proxy.pipeline.counter.snapshot().arrivals == {"acme/e1": 1}  # demand, not a probe
    assert "X-Endpointd-Probe" not in proxy.up.seen[-1]["headers"]


async def test_a_forwarded_header_that_is_not_utf8_is_refused_not_sent_empty(proxy):
    r = await exchange(proxy.proxy.port, head(EP, b"X-Custom: a\xffb"))
    assert "X-Custom" in assert_json_error(r, 400)
    assert proxy.up.seen == []
    r = await exchange(proxy.proxy.port, head(EP, "X-Custom: é".encode()))  # valid UTF-8 passes as it is
    assert r.status == 200 and proxy.up.seen[-1]["headers"]["X-Custom"] == "é"


# -- 2. the path reaches the replica byte for byte --------------------------------------------

PATHS = [
    # sent after /endpoints/acme/e1            the replica sees
    ("/a/%2e%2e/%2e%2e/x", "/a/%2e%2e/%2e%2e/x"),  # encoded dot segments: not resolved
    ("/a/../../v2/x", "/a/../../v2/x"),  # literal ones neither: the replica's business
    ("/a/./b/.", "/a/./b/."),
    ("/a%2fb%2Fc", "/a%2fb%2Fc"),  # encoded slashes: not decoded
    ("//x//y/", "//x//y/"),
    ("/a;b=c/d;e", "/a;b=c/d;e"),
    ("/%41%42%ff%00%25", "/%41%42%ff%00%25"),  # any percent-encoding, even of bytes no text has
    ("/x?q=%2F&r=%20+s&t=%e9", "/x?q=%2F&r=%20+s&t=%e9"),
    ("?q=1", "/?q=1"),
    ("/x?a=1&a=2&&", "/x?a=1&a=2&&"),
    ("/x%23y", "/x%23y"),
    # a fragment (which no client should send) is dropped
    ("/x#fragment", "/x"),
    ("/x?", "/x?"),  # an empty query, as it came
]


@pytest.mark.parametrize("tail, seen", PATHS)
async def test_the_path_reaches_the_replica_byte_for_byte(proxy, tail, seen):
    r = await exchange(proxy.proxy.port, head(EP + tail))
    assert r.status == 200, r.body
    assert r.json()["path"] == seen


@pytest.mark.parametrize("path", ["//evil.example/x", "/a/%2e%2e/b", "/%2F%2f"])
async def test_a_host_routed_path_reaches_the_replica_byte_for_byte(proxy, path):
    raw = f"GET {path} HTTP/1.1\r\nHost: routed.test\r\nConnection: close\r\n\r\n".encode()
    r = await exchange(proxy.proxy.port, raw)
    assert (r.status, r.json()["path"]) == (200, path)


# -- 8. error sentences in a header are made safe ---------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain sentence", "plain sentence"),
        ("tab\there", "tab?here"),
        ("line\r\nX-Injected: 1", "line??X-Injected: 1"),
        ("café", "caf?"),
        ("bytes \udcff\udcfe", "bytes ??"),
        ("\x00\x7f", "??"),
    ],
)
def test_header_safe(text, expected):
    assert header_safe(text) == expected


def test_header_safe_is_bounded():
    long = header_safe("x" * 10_000)
    assert len(long) == MAX_HEADER_MESSAGE and long.endswith("...")
    assert quoted("é" * 1000) == "'" + "?" * 100 + "...'"


async def test_an_error_quoting_unsafe_input_keeps_a_safe_header(proxy):
    for value in ("１\t2".encode(), b"\xff\xfe" * 10, b"9" * 4000):
        r = await exchange(proxy.proxy.port, head(EP, b"X-Scale-Up-Timeout: " + value))
        message = assert_json_error(r, 400)
        header = r.headers["x-error-message"]
        assert header.isascii() and header.isprintable() and len(header) <= MAX_HEADER_MESSAGE
        assert len(message) < 300  # the quoted value is bounded in the body too


async def test_a_long_unknown_path_gives_a_bounded_404(proxy):
    r = await exchange(proxy.proxy.port, head("/nope/" + "%41" * 2000))
    message = assert_json_error(r, 404)
    assert len(message) < 300


# -- the hostile table ------------------------------------------------------------------------

P = EP.encode()
SMUGGLING = [
    # name, raw request, expected status (None: the connection may also just be closed)
    ("CL and TE", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE and CL", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("duplicate CL, different", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("duplicate CL, same", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("CL list", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nabcde", 400),
    ("CL negative", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL huge", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    ("TE obfuscated", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE not last", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("TE space before colon", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST " + P + b" HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bad chunk size", b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", None),
    ("obs-fold", b"GET " + P + b" HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("bare CR in a value", b"GET " + P + b" HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("NUL in a value", b"GET " + P + b" HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("space in a name", b"GET " + P + b" HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n", 400),
    ("huge header", b"GET " + P + b" HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    ("huge header name", b"GET " + P + b" HTTP/1.1\r\nHost: x\r\n" + b"X" * 20_000 + b": a\r\n\r\n", 431),
    ("many headers", b"GET " + P + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(300)) + b"\r\n", 431),
    ("huge request line", b"GET " + P + b"/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    ("invalid UTF-8 in the path", b"GET " + P + b"/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("UTF-8 in the path", b"GET " + P + "/é".encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("control character in the path", b"GET " + P + b"/\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("space in the path", b"GET " + P + b"/a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("asterisk target", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute target", b"GET http://evil.example" + P + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("bad version", b"GET " + P + b" HTTP/9.9\r\nHost: x\r\n\r\n", None),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
    ("TLS on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, None),
    ("binary garbage", b"\x00\x01\x02\x03\r\n\r\n", None),
    ("huge method", b"G" * 20_000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n", None),
]


@pytest.mark.parametrize("name, raw, status", SMUGGLING, ids=[row[0] for row in SMUGGLING])
async def test_hostile_requests_get_a_clean_4xx(proxy, name, raw, status):
    r = await exchange(proxy.proxy.port, raw)
    if status is None and r.status is None:
        pass  # closed without an answer: allowed for these
    elif status is None:
        assert 400 <= r.status < 500, (r.status, r.body[:300])
        assert_json_error(r, r.status)
    else:
        assert_json_error(r, status)
    # The server is fine afterwards.
    after = await exchange(proxy.proxy.port, head(EP + "/after"))
    assert after.status == 200
    assert proxy.pending() == 0


async def test_a_smuggled_second_request_never_reaches_the_replica(proxy):
    smuggled = b"GET /endpoints/acme/e1/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (
        b"POST " + P + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(smuggled) + 5).encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    )
    r = await exchange(proxy.proxy.port, raw)
    assert_json_error(r, 400)
    assert [s["path"] for s in proxy.up.seen] == []


async def test_an_unknown_authorization_scheme_with_garbage_is_a_401(proxy):
    r = await exchange(proxy.proxy.port, head("/endpoints/acme/private", b"Authorization: \x7f\x7f"))
    assert r.status in (400, 401)
    if r.status == 401:
        assert_json_error(r, 401)
    assert TOKENS  # the table of tokens is untouched
