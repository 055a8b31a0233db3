"""The framework-free forwarding rules (proxy/core/forwarding.py) and the one admission
(`Pipeline.admit`): decided at once where it can be, else a wait, with the verdicts and the
counts of the rule it merged (`admit` and `admit_now`)."""

import asyncio
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.config import ProxyConfig
from proxy.core.control import (
    AuthType,
    Identity,
    InMemoryControlPlane,
    Replica,
    RouteEntry,
    RouteState,
)
from proxy.core.errors import (
    BadRequest,
    EndpointPaused,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    Unauthorized,
    Unavailable,
)
from proxy.core.forwarding import forwarded_block, may_retry, request_id, returned_block
from proxy.core.pipeline import Admission, Pipeline
from proxy.core.routing import route
from tests.examples import examples
from tests.proxy_harness import until

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


# -- the one admission: decided at once, or a wait -------------------------------------------

R = (Replica("r0", "127.0.0.1:1"),)
CASES = [
    # name, entry kwargs, headers (authorization, scale_up_timeout, probe), content_length, verdict at once
    ("public, ready", dict(auth=AuthType.PUBLIC, replicas=R), (None, None, None), None, "admitted"),
    ("cold with a hold header: held", dict(auth=AuthType.PUBLIC), (None, "30", None), None, "wait"),
    ("cold without one: the gate refuses it", dict(auth=AuthType.PUBLIC), (None, None, None), None, "wait"),
    ("token not cached", dict(auth=AuthType.AUTHENTICATED, replicas=R), ("Bearer tok", None, None), None, "wait"),
    ("no token: 401 at once", dict(auth=AuthType.AUTHENTICATED, replicas=R), (None, None, None), None, Unauthorized),
    ("bad hold header", dict(auth=AuthType.PUBLIC, replicas=R), (None, "soon", None), None, BadRequest),
    ("too large", dict(auth=AuthType.PUBLIC, replicas=R), (None, None, None), 10**9, PayloadTooLarge),
    ("paused with a replica", dict(auth=AuthType.PUBLIC, replicas=R, state=RouteState.PAUSED), (None, None, None),
     None, EndpointPaused),
]


def make_pipeline(entry_kwargs, probe_secret=None):
    control = InMemoryControlPlane()
    control.add_token("tok", Identity("eve", frozenset({"other"})))
    control.put(RouteEntry("acme", "e1", **entry_kwargs))
    return Pipeline(ProxyConfig(max_body_bytes=1000), control, probe_secret=probe_secret)


def admit(pipeline, headers, length, path="/endpoints/acme/e1/x"):
    authorization, hold, probe = headers
    return pipeline.admit(route(pipeline.control, None, path), authorization=authorization, scale_up_timeout=hold,
                          content_length=length, probe=probe)


def refusals(pipeline) -> float:
    return sum(s.value for m in pipeline.metrics.refused.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.mark.parametrize("name, entry, headers, length, verdict", CASES, ids=[c[0] for c in CASES])
async def test_admit_decides_at_once_or_waits(name, entry, headers, length, verdict):
    pipeline = make_pipeline(entry)
    if verdict == "wait":
        waiting = admit(pipeline, headers, length)
        assert not isinstance(waiting, Admission)
        waiting.close()  # never run: nothing was counted
        assert pipeline.counter.snapshot().arrivals == {}
        return
    if verdict == "admitted":
        admission = admit(pipeline, headers, length)
        assert admission.upstream_path == "/x"
        assert pipeline.counter.snapshot().pending("acme/e1") == 1
        admission.finish(200)
        assert pipeline.counter.snapshot().pending("acme/e1") == 0
        return
    with pytest.raises(verdict):
        admit(pipeline, headers, length)
    assert refusals(pipeline) == 1


@pytest.mark.parametrize("auth, error", [(AuthType.AUTHENTICATED, None), (AuthType.PRIVATE, Forbidden)])
async def test_a_cached_token_is_decided_at_once(auth, error):
    pipeline = make_pipeline(dict(auth=auth, replicas=R))
    await pipeline.tokens.identity("tok")
    if error is None:
        assert isinstance(admit(pipeline, ("Bearer tok", None, None), None), Admission)
    else:
        with pytest.raises(error, match="is private"):
            admit(pipeline, ("Bearer tok", None, None), None)


async def test_a_cached_unknown_token_is_a_401_at_once():
    pipeline = make_pipeline(dict(auth=AuthType.AUTHENTICATED, replicas=R))
    await pipeline.tokens.identity("nope")  # the store said: unknown
    with pytest.raises(Unauthorized, match="invalid or revoked"):
        admit(pipeline, ("Bearer nope", None, None), None)


async def test_an_unknown_endpoint_is_a_404_at_once():
    pipeline = make_pipeline(dict(auth=AuthType.PUBLIC, replicas=R))
    with pytest.raises(NotFound):
        admit(pipeline, (None, None, None), None, path="/endpoints/acme/nope")
    assert route(pipeline.control, None, "/v2/whatever") is None  # not the data plane at all


# The rule `admit` and `admit_now` both followed (admit_now deciding only where it could), written
# out as a table: the merged admission must reach the same verdict for every request, count it
# once, and wait only where the old fast path could not decide (a token lookup, a hold).
SECRET = "probe-secret"
TOKENS = {"member": Identity("acme", frozenset()), "outsider": Identity("eve", frozenset({"other"}))}


def expected(exists, auth, token, cached, state, ready, no_capacity, hold, length, probe):
    """(the verdict: "admitted" or an error class and its cause, whether it waits first, counted)"""
    if not exists:
        return NotFound, False, False
    lookup = auth is not AuthType.PUBLIC and token in ("unknown", "member", "outsider") and not cached
    if auth is not AuthType.PUBLIC:
        if token is None or token in ("bad\x01", "unknown"):
            return Unauthorized, lookup, False
        if auth is AuthType.PRIVATE and token == "outsider":
            return Forbidden, lookup, False
    if hold == "soon":
        return BadRequest, lookup, False
    if length is not None and length > 1000:
        return PayloadTooLarge, lookup, False
    demand = probe != SECRET
    waits = lookup or not ready  # no replica ready: the readiness gate decides (proxy/core/hold.py)
    if state is RouteState.PAUSED:
        return EndpointPaused, waits, demand
    if state is RouteState.FAILED:
        return ("endpoint_failed", Unavailable), waits, demand
    if ready:
        return "admitted", waits, demand
    if not demand:
        return ("not_ready", Unavailable), waits, demand
    if no_capacity:
        return ("no_capacity", Unavailable), waits, demand
    if hold is None:
        return ("cold_start", Unavailable), waits, demand
    return "admitted", waits, demand  # held until a replica is ready


async def admitted_or_refused(exists, auth, token, cached, state, ready, no_capacity, hold, length, probe):
    control = InMemoryControlPlane()
    for name, identity in TOKENS.items():
        control.add_token(name, identity)
    entry = RouteEntry("acme", "e1", auth, state=state, replicas=R if ready else (),
                       no_capacity="no GPU free" if no_capacity else "")
    if exists:
        control.put(entry)
    pipeline = Pipeline(ProxyConfig(max_body_bytes=1000), control, probe_secret=SECRET)
    if cached and token is not None:
        await pipeline.tokens.identity(token)
    authorization = None if token is None else f"Bearer {token}"
    waited = False
    try:
        admitted = pipeline.admit(route(control, None, "/endpoints/acme/e1/x"), authorization=authorization,
                                  scale_up_timeout=hold, content_length=length, probe=probe)
        if not isinstance(admitted, Admission):
            waited = True
            task = asyncio.ensure_future(admitted)
            if exists and state is RouteState.SERVING and not ready:  # a hold: a replica comes up
                await until(lambda: pipeline.gate.held or task.done())
                control.put(replace(entry, replicas=R))
            admitted = await task
    except ProxyError as error:
        arrivals = pipeline.counter.snapshot().arrivals.get("acme/e1", 0)
        assert pipeline.counter.snapshot().pending("acme/e1") == 0  # a refusal leaves nothing counted
        assert refusals(pipeline) == 1
        return (error.cause, type(error)) if isinstance(error, Unavailable) else type(error), waited, arrivals == 1
    assert refusals(pipeline) == 0
    assert admitted.upstream_path == "/x"
    arrivals = pipeline.counter.snapshot().arrivals.get("acme/e1", 0)
    admitted.finish(200)
    assert pipeline.counter.snapshot().pending("acme/e1") == 0
    return "admitted", waited, arrivals == 1


@settings(max_examples=examples(300), deadline=None)
@given(
    exists=st.booleans(), auth=st.sampled_from(AuthType), token=st.sampled_from([None, "bad\x01", "unknown", "member",
                                                                                  "outsider"]),
    cached=st.booleans(), state=st.sampled_from([RouteState.SERVING, RouteState.PAUSED, RouteState.FAILED]),
    ready=st.booleans(), no_capacity=st.booleans(), hold=st.sampled_from([None, "soon", "30"]),
    length=st.sampled_from([None, 10, 10**9]), probe=st.sampled_from([None, SECRET, "wrong"]),
)
def test_the_one_admission_keeps_the_rule_of_both_paths(exists, auth, token, cached, state, ready, no_capacity, hold,
                                                        length, probe):
    case = (exists, auth, token, cached, state, ready, no_capacity, hold, length, probe)
    assert asyncio.run(admitted_or_refused(*case)) == expected(*case)
