"""The framework-free rules both servers share (proxy/core.py) and the pipeline's admission
without waiting (`Pipeline.admit_now`), which must reach the verdicts `admit` reaches, with the
same counts, or say that only `admit` can tell."""

import pytest

from proxy.config import ConfigError, ProxyConfig, check
from proxy.control import AuthType, Identity, InMemoryControlPlane, Replica, RouteEntry, RouteState
from proxy.core import forwarded_block, forwarded_pairs, may_retry, request_id, returned_block, returned_pairs
from proxy.errors import BadRequest, EndpointPaused, Forbidden, NotFound, PayloadTooLarge, ProxyError, Unauthorized
from proxy.pipeline import Pipeline


def test_forwarded_pairs_drop_hop_by_hop_and_what_connection_names():
    pairs = [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "5"), ("Authorization", "Bearer t"),
             ("X-Scale-Up-Timeout", "3"), ("X-Request-Id", "old"), ("X-Endpointd-Probe", "s"), ("Host", "h"),
             ("Expect", "100-continue"), ("X-Forwarded-Proto", "spoofed"), ("X-Custom", "keep"), ("x-custom", "twice")]
    out = forwarded_pairs(pairs, "keep-alive, X-Hop", remote="10.0.0.2", scheme="https", host="h:1",
                          prior_forwarded_for="10.0.0.1", rid="rid-1")
    assert out == [("X-Custom", "keep"), ("x-custom", "twice"), ("X-Forwarded-For", "10.0.0.1, 10.0.0.2"),
                   ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "h:1"), ("X-Request-Id", "rid-1")]


def test_the_bytes_forms_keep_the_same_rules():
    """The raw server's byte-level versions of the two header rules agree with the str ones."""
    raw = [(b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"), (b"Authorization", b"Bearer t"),
           (b"X-Custom", "é".encode()), (b"x-custom", b"twice"), (b"Upgrade", b"h2c"), (b"X-Request-Id", b"old")]
    text = [(k.decode(), v.decode()) for k, v in raw]
    kw = dict(remote="10.0.0.2", scheme="http", host="h", prior_forwarded_for="10.0.0.1", rid="r")
    expected = "".join(f"{k}: {v}\r\n" for k, v in forwarded_pairs(text, "keep-alive, X-Hop", **kw)).encode()
    assert forwarded_block([(k, k.lower(), v) for k, v in raw], "keep-alive, X-Hop", **kw) == expected
    response = [(b"Connection", b"x-secret"), (b"X-Secret", b"1"), (b"Content-Length", b"3"), (b"X-Ok", b"1")]
    block, length, chunked = returned_block(response)
    kept = returned_pairs([(k.decode(), v.decode()) for k, v in response], "x-secret")
    assert block == "".join(f"{k}: {v}\r\n" for k, v in kept).encode()
    assert (length, chunked) == (b"3", False)
    with pytest.raises(BadRequest, match="X-Custom"):
        forwarded_block([(b"X-Custom", b"X-Custom".lower(), b"a\xff")], None, **kw)


def test_a_value_that_was_not_utf8_is_refused():
    with pytest.raises(BadRequest, match="X-A"):
        forwarded_pairs([("X-A", b"a\xff".decode("utf-8", "surrogateescape"))], None, remote="", scheme="http",
                        host=None, prior_forwarded_for=None, rid="r")
    with pytest.raises(BadRequest, match="Host"):
        forwarded_pairs([], None, remote="", scheme="http", host=b"\xff".decode("utf-8", "surrogateescape"),
                        prior_forwarded_for=None, rid="r")


def test_returned_pairs():
    pairs = [("Connection", "x-secret"), ("X-Secret", "1"), ("Content-Length", "3"), ("Transfer-Encoding", "chunked"),
             ("X-Ok", "1")]
    assert returned_pairs(pairs, "x-secret") == [("X-Ok", "1")]


@pytest.mark.parametrize("attempts, body_started, retry", [
    (1, False, True),   # the first replica refused the connection: try another
    (2, False, False),  # two tried: answer 502
    (1, True, False),   # a streamed body has started: it cannot be sent again
])
def test_may_retry(attempts, body_started, retry):
    assert may_retry(attempts, body_started) is retry


def test_request_id():
    assert request_id("abc") == "abc"
    for bad in (None, "", "x" * 201, "é", "a\tb"):
        generated = request_id(bad)
        assert len(generated) == 32 and generated != bad


def test_http_setting_is_checked():
    check(ProxyConfig())
    check(ProxyConfig(http="aiohttp"))
    with pytest.raises(ConfigError, match=r"proxy.http = 'fast' is invalid: it must be one of raw, aiohttp"):
        check(ProxyConfig(http="fast"))


# -- admit_now against admit ------------------------------------------------------------------

R = (Replica("r0", "127.0.0.1:1"),)
CASES = [
    # name, entry kwargs, headers (authorization, scale_up_timeout, probe), content_length, now verdict
    ("public, ready", dict(auth=AuthType.PUBLIC, replicas=R), (None, None, None), None, "admitted"),
    ("cold: only admit can hold or refuse", dict(auth=AuthType.PUBLIC), (None, None, None), None, "wait"),
    ("token not cached", dict(auth=AuthType.AUTHENTICATED, replicas=R), ("Bearer tok", None, None), None, "wait"),
    ("no token: admit says 401", dict(auth=AuthType.AUTHENTICATED, replicas=R), (None, None, None), None, "wait"),
    ("bad hold header", dict(auth=AuthType.PUBLIC, replicas=R), (None, "soon", None), None, BadRequest),
    ("too large", dict(auth=AuthType.PUBLIC, replicas=R), (None, None, None), 10**9, PayloadTooLarge),
    ("paused with a replica", dict(auth=AuthType.PUBLIC, replicas=R, state=RouteState.PAUSED), (None, None, None),
     None, EndpointPaused),
]


async def admit_both(entry_kwargs, headers, length, warm_token=False):
    control = InMemoryControlPlane()
    control.add_token("tok", Identity("eve", frozenset({"other"})))
    control.put(RouteEntry("acme", "e1", **entry_kwargs))
    pipeline = Pipeline(ProxyConfig(max_body_bytes=1000), control)
    if warm_token:
        await pipeline.tokens.identity("tok")
    authorization, hold, probe = headers
    fields = dict(host=None, raw_path="/endpoints/acme/e1/x", authorization=authorization, scale_up_timeout=hold,
                  content_length=length, probe=probe)
    return pipeline, fields


@pytest.mark.parametrize("name, entry, headers, length, verdict", CASES, ids=[c[0] for c in CASES])
async def test_admit_now_agrees_with_admit(name, entry, headers, length, verdict):
    pipeline, fields = await admit_both(entry, headers, length)
    if verdict == "wait":
        assert pipeline.admit_now(**fields) is None
        assert pipeline.counter.snapshot().arrivals == {}  # nothing counted: admit will count it
        return
    if verdict == "admitted":
        admission = pipeline.admit_now(**fields)
        assert admission.upstream_path == "/x"
        assert pipeline.counter.snapshot().pending("acme/e1") == 1
        admission.finish(200)
        assert pipeline.counter.snapshot().pending("acme/e1") == 0
        slow = await pipeline.admit(**fields)
        slow.finish(200)
        assert pipeline.counter.snapshot().arrivals == {"acme/e1": 2}
        return
    with pytest.raises(verdict) as now:
        pipeline.admit_now(**fields)
    counted_now = pipeline.counter.snapshot().arrivals
    with pytest.raises(verdict) as later:
        await pipeline.admit(**fields)
    assert str(now.value) == str(later.value)
    assert pipeline.counter.snapshot().arrivals == {k: 2 * v for k, v in counted_now.items()}


@pytest.mark.parametrize("auth, error", [(AuthType.AUTHENTICATED, None), (AuthType.PRIVATE, Forbidden)])
async def test_a_cached_token_is_decided_at_once(auth, error):
    pipeline, fields = await admit_both(dict(auth=auth, replicas=R), ("Bearer tok", None, None), None, warm_token=True)
    if error is None:
        assert pipeline.admit_now(**fields) is not None
    else:
        with pytest.raises(error, match="is private"):
            pipeline.admit_now(**fields)


async def test_a_cached_unknown_token_is_a_401_at_once():
    pipeline, fields = await admit_both(dict(auth=AuthType.AUTHENTICATED, replicas=R), ("Bearer nope", None, None),
                                        None)
    await pipeline.tokens.identity("nope")  # the store said: unknown
    with pytest.raises(Unauthorized, match="invalid or revoked"):
        pipeline.admit_now(**fields)


async def test_an_unknown_endpoint_is_a_404_at_once():
    pipeline, fields = await admit_both(dict(auth=AuthType.PUBLIC, replicas=R), (None, None, None), None)
    fields["raw_path"] = "/endpoints/acme/nope"
    with pytest.raises(NotFound):
        pipeline.admit_now(**fields)
    assert issubclass(NotFound, ProxyError)
