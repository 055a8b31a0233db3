"""The worker channel's messages (proxy/workers/messages.py) through the real codec and channel
framing, in memory: every kind comes out as it went in, on the side that takes it, and what no
peer of ours sends (not JSON, an unknown or misdirected kind, missing fields, a length over the
limit) is a broken peer."""

from __future__ import annotations

import asyncio

import pytest

from proxy.core.config import ProxyConfig
from proxy.core.control import AuthType, Identity, Replica, RouteEntry, RouteState
from proxy.core.limits import Override
from proxy.core.metrics import Answers
from proxy.core.pending import PendingSnapshot
from proxy.core.ratelimit import Refusal
from proxy.workers import channel, codec
from proxy.workers.messages import (
    Admit,
    Admitted,
    AskFamilies,
    Counts,
    Families,
    Hello,
    LimitsChanged,
    Ready,
    Release,
    RouteChanged,
    RouteRemoved,
    TappedAnswers,
    Verified,
    Verify,
    Wake,
    Welcome,
)

ENTRY = RouteEntry(
    namespace="alice", name="chat", auth=AuthType.PRIVATE, state=RouteState.SERVING,
    replicas=(Replica("r1", "127.0.0.1:9001", "key-1"), Replica("r2", "127.0.0.1:9002", None)),
    coming=1, domain="chat.example", message="", asleep_since=12.5, no_capacity="", wake_s=1.25, sleeping=2,
)

TO_MAIN = [
    Hello("3"),
    Ready(),
    Counts(PendingSnapshot({"alice/chat": 2}, {"alice/chat": {"r1": 2}}, {"alice/chat": 40})),
    Verify(7, "secret-token"),
    Admit(11, "acme", "0f" * 32),
    Admit(12, "acme", None),
    Release(11),
    Wake("alice", "chat"),
    TappedAnswers({"alice/chat": Answers([("r1", "200", 0.25), ("", "503", None)], {("r1", "200"): 4}, 120, 4096)}),
    Families(9, [("endpointd_proxy_requests", "Requests", "counter", "",
                  [("endpointd_proxy_requests_total", {"code": "200"}, 3.0)])]),
]
TO_WORKER = [
    Welcome(ProxyConfig(port=8443, workers=3, token_rpm=120, namespace_concurrent=4), 8443, "probe", (ENTRY,), True,
            "/tmp/x/handoff", (("acme", Override(rpm=600)), ("beta", Override(0, 2)))),
    RouteChanged(ENTRY),
    RouteRemoved("alice", "chat"),
    Verified(7, Identity("alice", frozenset({"acme"}), False, frozenset({"metrics"}))),
    Verified(8, None),
    Admitted(11, None, True),
    Admitted(12, None, False),
    Admitted(13, Refusal("acme", "namespace_rpm", 120, 3), False),
    LimitsChanged("acme", Override(concurrent=8)),
    LimitsChanged("acme", None),
    AskFamilies(9),
]


@pytest.mark.parametrize("message", TO_MAIN, ids=lambda m: type(m).__name__)
def test_what_a_worker_sends_the_main_process_reads(message):
    assert codec.to_main(codec.encode(message)) == message


@pytest.mark.parametrize("message", TO_WORKER, ids=lambda m: type(m).__name__)
def test_what_the_main_process_sends_a_worker_reads(message):
    assert codec.to_worker(codec.encode(message)) == message


@pytest.mark.parametrize("message", TO_MAIN, ids=lambda m: type(m).__name__)
def test_a_worker_does_not_take_what_only_workers_send(message):
    with pytest.raises(codec.Malformed):
        codec.to_worker(codec.encode(message))


@pytest.mark.parametrize("message", TO_WORKER, ids=lambda m: type(m).__name__)
def test_the_main_process_does_not_take_what_only_it_sends(message):
    with pytest.raises(codec.Malformed):
        codec.to_main(codec.encode(message))


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'{"op": "nothing"}', b'{"op": "verify", "id": 1}',
                                  b'{"no": "op"}', b'{"op": "counts", "endpoints": {}}',
                                  b'{"op": "admit", "id": 1, "namespace": "acme"}', b'{"op": "release"}'])
def test_what_does_not_decode_is_malformed(data):
    with pytest.raises(codec.Malformed):
        codec.to_main(data)


def framed(message_bytes: bytes, length: int | None = None) -> bytes:
    return (len(message_bytes) if length is None else length).to_bytes(4, "big") + message_bytes


async def test_the_channel_reads_messages_in_order_and_ends_at_eof():
    reader = asyncio.StreamReader()
    reader.feed_data(framed(codec.encode(Hello("1"))) + framed(codec.encode(Ready())))
    reader.feed_eof()
    assert await channel.receive(reader, codec.to_main) == Hello("1")
    assert await channel.receive(reader, codec.to_main) == Ready()
    with pytest.raises(channel.ChannelClosed) as closed:
        await channel.receive(reader, codec.to_main)
    assert not isinstance(closed.value, channel.BrokenPeer)


async def test_a_message_over_the_limit_is_a_broken_peer():
    reader = asyncio.StreamReader()
    reader.feed_data(framed(b"", channel.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(channel.BrokenPeer, match="over the limit"):
        await channel.receive(reader, codec.to_main)


async def test_a_message_that_does_not_decode_is_a_broken_peer():
    reader = asyncio.StreamReader()
    reader.feed_data(framed(b'{"op": "route"}'))
    with pytest.raises(channel.BrokenPeer, match="route"):
        await channel.receive(reader, codec.to_worker)
