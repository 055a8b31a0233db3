"""The framework-free forwarding rules (proxy/core/forwarding.py) and the pipeline's admission
without waiting (`Pipeline.admit_now`), which must reach the verdicts `admit` reaches, with the
same counts, or say that only `admit` can tell."""

import pytest

from proxy.core.config import ProxyConfig
from proxy.core.control import AuthType, Identity, InMemoryControlPlane, Replica, RouteEntry, RouteState
from proxy.core.forwarding import forwarded_block, may_retry, request_id, returned_block
from proxy.core.errors import BadRequest, EndpointPaused, Forbidden, NotFound, PayloadTooLarge, ProxyError, Unauthorized
from proxy.core.pipeline import Pipeline


KW = dict(remote="10.0.0.2", scheme="https", host="h:1", prior_forwarded_for="10.0.0.1", rid="rid-1")


def triples(pairs):
    return [(k.encode(), k.lower().encode(), v.encode("utf-8", "surrogateescape")) for k, v in pairs]


def test_forwarded_block_drops_hop_by_hop_and_what_connection_names():
    pairs = [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "5"), ("Authorization", "Bearer t"),
             ("X-Scale-Up-Timeout", "3"), ("X-Request-Id", "old"), ("X-Endpointd-Probe", "s"), ("Host", "h"),
             ("Expect", "100-continue"), ("X-Forwarded-Proto", "spoofed"), ("X-Custom", "keep"), ("x-custom", "twice"),
             ("Upgrade", "h2c"), ("X-Utf8", "é")]
    out = forwarded_block(triples(pairs), "keep-alive, X-Hop", **KW)
    assert out == ("X-Custom: keep\r\nx-custom: twice\r\nX-Utf8: é\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n"
                   "X-Forwarded-Proto: https\r\nX-Forwarded-Host: h:1\r\nX-Request-Id: rid-1\r\n").encode()


def test_a_value_that_was_not_utf8_is_refused():
    with pytest.raises(BadRequest, match="X-A"):
        forwarded_block([(b"X-A", b"x-a", b"a\xff")], None, **KW)
    with pytest.raises(BadRequest, match="Host"):
        forwarded_block([], None, **{**KW, "host": b"\xff".decode("utf-8", "surrogateescape")})
    with pytest.raises(BadRequest, match="X-Forwarded-For"):
        forwarded_block([], None, **{**KW, "prior_forwarded_for": b"\xff".decode("utf-8", "surrogateescape")})


def test_returned_block():
    response = [(b"Connection", b"x-secret"), (b"X-Secret", b"1"), (b"Content-Length", b"3"), (b"Keep-Alive", b"5"),
                (b"X-Ok", b"1")]
    assert returned_block(response) == (b"X-Ok: 1\r\n", b"3", False)
    chunked = [(b"Transfer-Encoding", b"chunked"), (b"X-Ok", b"1")]
    assert returned_block(chunked) == (b"X-Ok: 1\r\n", None, True)


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
