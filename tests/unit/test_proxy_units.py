"""Unit tables for the proxy's pure parts: routing, errors, balancing, counting, tokens, holds."""

import random

import pytest

from proxy.core import errors
from proxy.core.auth import TokenCache, bearer_token
from proxy.core.balancer import pick
from proxy.core.control import Identity, InMemoryControlPlane, Replica, strip_port
from proxy.core.hold import parse_scale_up_timeout
from proxy.core.pending import PendingCounter
from proxy.core.routing import split_path


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("/endpoints/acme/e1", ("acme", "e1", "/")),  # POST {url} reaches the replica's /
        ("/endpoints/acme/e1/", ("acme", "e1", "/")),
        ("/endpoints/acme/e1/v1/chat/completions", ("acme", "e1", "/v1/chat/completions")),
        ("/endpoints/acme/e1?x=1&y=%20", ("acme", "e1", "/?x=1&y=%20")),  # query kept, still encoded
        ("/endpoints/acme/e1/a%2Fb?q", ("acme", "e1", "/a%2Fb?q")),
        ("/endpoints/acme", None),  # no name
        ("/endpoints//e1", None),
        ("/endpoints/acme/?x", None),
        ("/v2/endpoint/acme", None),
    ],
)
def test_split_path(raw, expected):
    assert split_path(raw) == expected


@pytest.mark.parametrize(
    "host, expected",
    [("d.example", "d.example"), ("d.example:8080", "d.example"), ("[::1]:80", "[::1]"), ("[::1]", "[::1]")],
)
def test_strip_port(host, expected):
    assert strip_port(host) == expected


@pytest.mark.parametrize(
    "error, status, extra_header",
    [
        (errors.BadRequest("x"), 400, None),
        (errors.EndpointPaused("x"), 400, None),
        (errors.Unauthorized("x"), 401, ("WWW-Authenticate", 'Bearer realm="endpointd"')),
        (errors.Forbidden("x"), 403, None),
        (errors.NotFound("x"), 404, None),
        (errors.MalformedBody("x"), 400, None),
        (errors.RequestTimeout("x"), 408, None),
        (errors.PayloadTooLarge("x"), 413, None),
        (errors.HeadersTooLarge("x"), 431, None),
        (errors.UpstreamFailed("x"), 502, None),
        (errors.Unavailable("x", retry_after_s=5), 503, ("Retry-After", "5")),
        (errors.UpstreamTimeout("x"), 504, None),
    ],
)
def test_errors_map_to_http(error, status, extra_header):
    got_status, headers, body = errors.to_http(error)
    assert got_status == status
    assert body == b'{"error": "x"}'
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Error-Message"] == "x"  # the sentence, for clients that print headers
    if extra_header:
        assert headers[extra_header[0]] == extra_header[1]


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("5", 5.0),
        ("0.25", 0.25),
        ("9999", 600.0),  # capped by config (600 here)
    ],
)
def test_parse_scale_up_timeout(header, expected):
    assert parse_scale_up_timeout(header, 600.0) == expected


@pytest.mark.parametrize("header", ["", "abc", "0", "-1", "nan", "inf", "1e400"])
def test_parse_scale_up_timeout_rejects(header):
    with pytest.raises(errors.BadRequest, match="X-Scale-Up-Timeout must be a number of seconds"):
        parse_scale_up_timeout(header, 600.0)


@pytest.mark.parametrize(
    "authorization, token",
    [(None, None), ("", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None)],
)
def test_bearer_token(authorization, token):
    assert bearer_token(authorization) == token


R = [Replica("a", "127.0.0.1:1"), Replica("b", "127.0.0.1:2"), Replica("c", "127.0.0.1:3")]


@pytest.mark.parametrize(
    "pending, exclude, expected",
    [
        ({"a": 3, "b": 1, "c": 2}, (), "b"),  # fewest pending wins
        ({"a": 3, "b": 1, "c": 2}, ("b",), "c"),  # excluded replicas are skipped
        ({"a": 0}, ("a", "b", "c"), None),  # nothing left
        ({"a": 5, "b": 5}, (), "c"),  # absent from the map = 0 pending
    ],
)
def test_pick(pending, exclude, expected):
    chosen = pick(R, pending, exclude)
    assert (chosen.id if chosen else None) == expected


def test_pick_breaks_ties_evenly():
    rand = random.Random(7)
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(3000):
        counts[pick(R, {}, rand=rand).id] += 1
    assert all(900 < n < 1100 for n in counts.values()), counts


def test_tickets_count_and_uncount():
    counter = PendingCounter()
    with counter.track("e") as t1, counter.track("e") as t2:
        t1.bind("r1")
        t2.bind("r1")
        t2.bind("r2")  # a retry moves it
        snap = counter.snapshot()
        assert snap.endpoints == {"e": 2}
        assert snap.replicas == {"e": {"r1": 1, "r2": 1}}
    snap = counter.snapshot()
    assert snap.endpoints == {} and snap.replicas == {}
    assert snap.arrivals == {"e": 2}


def test_a_ticket_that_is_not_demand_counts_nothing():
    counter = PendingCounter()
    with counter.track("e", demand=False) as ticket:
        ticket.bind("r1")
        assert ticket.replica_id == "r1"  # still named in metrics
        snap = counter.snapshot()
        assert (snap.endpoints, snap.replicas, snap.arrivals) == ({}, {}, {})
        assert counter.replica_loads("e") == {}
    assert counter.snapshot().arrivals == {}


def test_ticket_uncounts_on_exception():
    counter = PendingCounter()
    with pytest.raises(RuntimeError):
        with counter.track("e") as ticket:
            ticket.bind("r")
            raise RuntimeError
    assert counter.snapshot().endpoints == {}


async def test_token_cache_forgets_revoked_tokens_after_ttl():
    now = [0.0]
    control = InMemoryControlPlane()
    control.add_token("t", Identity("alice"))
    cache = TokenCache(control, ttl_s=5.0, clock=lambda: now[0])
    assert (await cache.identity("t")).user == "alice"
    control.revoke_token("t")
    now[0] = 4.9
    assert (await cache.identity("t")) is not None  # still cached
    now[0] = 5.1
    assert (await cache.identity("t")) is None


@pytest.mark.parametrize("target", ["*", "http://evil.example/endpoints/acme/e1", "endpoints/acme/e1"])
def test_a_target_that_is_not_a_path_is_a_400(target):
    from proxy.core.routing import resolve

    with pytest.raises(errors.BadRequest, match="is not a path"):
        resolve(InMemoryControlPlane(), "d.example", target)


class _CountingControl(InMemoryControlPlane):
    def __init__(self):
        super().__init__()
        self.lookups = 0

    async def verify_token(self, token):
        self.lookups += 1
        return await super().verify_token(token)


@pytest.mark.parametrize(
    "token", ["\udcff\udcfe", "tok\x01en", "tok\u00e9n", "x" * 1025],
)
async def test_a_token_that_cannot_be_ours_is_the_unknown_token_401_without_a_lookup(token):
    from proxy.core.auth import INVALID_TOKEN, identify

    control = _CountingControl()
    with pytest.raises(errors.Unauthorized) as refused:
        identify(f"Bearer {token}", TokenCache(control, 5.0), "endpoint acme/e1")
    assert refused.value.message == INVALID_TOKEN
    assert control.lookups == 0
