"""A worker's side of the rate limits (proxy/workers/remote.py `RemoteLimiter`) and the main
process's (proxy/workers/hub.py), joined in memory by the real codec: an admission given up —
its client gone, or no answer in time — is followed by a Release, so the main process never
keeps a count for a request that is not running."""

from __future__ import annotations

import asyncio

import pytest

from proxy.core.config import ProxyConfig
from proxy.core.control import InMemoryControlPlane
from proxy.core.errors import RateLimited, Unavailable
from proxy.core.pipeline import Pipeline
from proxy.workers import codec, remote
from proxy.workers.hub import WorkerHub
from proxy.workers.messages import Admit, Admitted, Release


class Writer:
    """One end of a channel: what is written to it, decoded as the other end reads it."""

    def __init__(self, decode=codec.to_main) -> None:
        self.decode = decode
        self.sent: list = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.sent.append(self.decode(data[4:]))  # past the length prefix


class Hub:
    """The main process's side: a real WorkerHub's dispatch over a real limiter, answering a worker."""

    def __init__(self, **limits) -> None:
        self.pipeline = Pipeline(ProxyConfig(**limits), InMemoryControlPlane())
        self.hub = WorkerHub(self.pipeline, self.pipeline.config, "/nowhere", None, 0, None)
        self.leases: dict = {}  # what the hub holds for this worker's channel
        self.to_worker = Writer(codec.to_worker)
        self.answers: list[Admitted] = self.to_worker.sent

    def take(self, message) -> None:
        self.hub._dispatch("w", self.to_worker, message, self.leases)

    def in_flight(self) -> int:
        return self.pipeline.limiter.in_flight("n:acme")


async def test_admitted_held_and_released_through_the_main_process():
    main = Hub(namespace_concurrent=1)
    writer = Writer()
    limiter = remote.RemoteLimiter(writer)
    asking = asyncio.create_task(limiter.admit("acme", None))
    await asyncio.sleep(0)
    (admit,) = writer.sent
    main.take(admit)
    (answer,) = main.answers
    assert answer == Admitted(admit.id, None, True) and main.in_flight() == 1
    limiter.admitted(answer.id, answer.refusal, answer.held)
    held = await asking
    second = asyncio.create_task(limiter.admit("acme", None))
    await asyncio.sleep(0)
    main.take(writer.sent[-1])
    limiter.admitted(main.answers[-1].id, main.answers[-1].refusal, main.answers[-1].held)
    with pytest.raises(RateLimited, match="namespace acme's limit of 1 concurrent requests"):
        await second
    held.release()
    held.release()  # once only
    assert writer.sent[-1] == Release(admit.id) and writer.sent.count(Release(admit.id)) == 1
    main.take(writer.sent[-1])
    assert main.in_flight() == 0


async def test_an_admission_whose_client_left_is_released_after_it():
    main = Hub(namespace_concurrent=5)
    writer = Writer()
    limiter = remote.RemoteLimiter(writer)
    asking = asyncio.create_task(limiter.admit("acme", None))
    await asyncio.sleep(0)
    asking.cancel()  # the client is gone before the main process answered
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert writer.sent == [Admit(1, "acme", None), Release(1)]
    for message in writer.sent:  # in order, as the channel delivers them
        main.take(message)
    assert main.in_flight() == 0


async def test_an_admission_not_answered_in_time_is_a_503_and_released(monkeypatch):
    monkeypatch.setattr(remote, "ADMIT_TIMEOUT_S", 0.01)
    writer = Writer()
    limiter = remote.RemoteLimiter(writer)
    with pytest.raises(Unavailable, match="the rate limits could not be checked"):
        await limiter.admit("acme", None)
    assert writer.sent == [Admit(1, "acme", None), Release(1)]
    limiter.admitted(1, None, True)  # a late answer is for nobody


async def test_a_release_the_main_process_holds_nothing_for_is_ignored():
    main = Hub(namespace_rpm=60)
    main.take(Admit(1, "acme", None))
    assert main.answers == [Admitted(1, None, False)]  # only a per-minute limit: nothing held
    main.take(Release(1))
    main.take(Release(99))
    assert main.leases == {}
