"""The usage meter against a real store, with fakes for the controller's replicas, the analytics'
traffic counters and the engines' readings, and injected clocks: replica-seconds by phase and
hardware, intervals written as they close, deltas of counters that restart, and a stop — clean or
kill -9 — followed by a start that neither loses nor double-counts replica-seconds."""

from __future__ import annotations

import pytest

from autoscaler.model.intent import Intent
from autoscaler.model.usage import Hardware, Metered, Rates
from autoscaler.observe.engine_metrics import EngineCounters, EngineSignals, Scraped
from autoscaler.observe.usage import FORGET_AFTER_S, UsageConfig, UsageMeter
from autoscaler.store.store import Store
from engines.runtime import EndpointKey
from proxy.core.control import AuthType

CHAT = EndpointKey("acme", "chat")
EMBED = EndpointKey("acme", "embed")
MINE = EndpointKey("bob", "mine")
L4 = Hardware("gpu", "nvidia-l4", "x1")
CPU = Hardware("cpu", "intel-icl", "x2")
MINUTE = 1_700_000_040.0  # the start of a minute (and of a 10-second interval)
T0 = MINUTE + 40  # 40 s into that minute
RATES = Rates({"nvidia-l4": 0.8})


def intent(key: EndpointKey, uid: str = "u1") -> Intent:
    return Intent(key=key, uid=uid, generation=1, revision=1, auth=AuthType.PRIVATE, health_route="/health",
                  min_replicas=0, max_replicas=3)


class World:
    """The meter's surroundings: what the controller holds, what the analytics counted, the clocks."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wall = T0
        self.mono = 500.0
        self.hardware = {CHAT: L4, EMBED: CPU, MINE: CPU}
        self.holders: dict[EndpointKey, tuple[Intent, list[str], list[str]]] = {}
        self.served: dict[str, tuple[EndpointKey, int, int, int]] = {}
        self.readings: dict[str, Scraped] = {}

    # the fakes' protocol
    def holding(self):
        return list(self.holders.values())

    def traffic(self):
        return dict(self.served)

    def engine_readings(self):
        return dict(self.readings)

    def meter(self, interval_s: float = 60.0) -> UsageMeter:
        return UsageMeter(UsageConfig(usage_interval_s=interval_s), self.store, holders=self, traffic=self,
                          hardware_of=lambda i: self.hardware[i.key], rates=RATES,
                          wall=lambda: self.wall, clock=lambda: self.mono)

    def hold(self, key: EndpointKey, holding=(), parked=(), uid="u1") -> None:
        self.holders[key] = (intent(key, uid), list(holding), list(parked))

    def tokens(self, rid: str, key: EndpointKey, tokens_in: float | None, tokens_out: float | None) -> None:
        self.readings[rid] = Scraped(key, EngineSignals(), self.mono, EngineCounters(tokens_in, tokens_out))

    async def advance(self, meter: UsageMeter, seconds: float, step: float = 1.0) -> None:
        """`seconds` of time, a sample every `step`."""
        steps = round(seconds / step)
        for _ in range(steps):
            self.wall += step
            self.mono += step
            await meter.tick()


@pytest.fixture
async def world(tmp_path):
    store = await Store.open(tmp_path / "endpointd.db")
    yield World(store)
    await store.close()


async def stored(world: World, namespace: str = "acme", start: float = MINUTE, end: float | None = None,
                 step: float | None = None) -> dict:
    """The store's answer alone (what survives a kill -9): a meter that never sampled has nothing open."""
    reader = world.meter()
    return await reader.report(namespace, start, end if end is not None else world.wall + 3600, step)


def seconds_of(answer: dict, name: str) -> float:
    found = [e["total"]["replicaSeconds"] for e in answer["endpoints"] if e["name"] == name]
    return found[0] if found else 0.0


async def test_replicas_holding_resources_are_counted_by_hardware_and_written_as_intervals_close(world):
    meter = world.meter()
    world.hold(CHAT, holding=["r1", "r2"])  # starting, ready, sleeping, draining: all hold resources
    world.hold(EMBED, holding=["e1"], parked=["e2"])  # the parked one holds nothing
    await meter.tick()
    await world.advance(meter, 10)
    assert seconds_of(await stored(world), "chat") == 0  # nothing written: the interval is open
    open_answer = await meter.report("acme", MINUTE, world.wall + 1, None)
    assert seconds_of(open_answer, "chat") == 20 and seconds_of(open_answer, "embed") == 10
    await world.advance(meter, 15)  # past the minute: [T0 - 40, T0 + 20) closed and written
    answer = await stored(world)
    assert seconds_of(answer, "chat") == 40 and seconds_of(answer, "embed") == 20
    [chat] = [e for e in answer["endpoints"] if e["name"] == "chat"]
    assert chat["total"]["replicas"] == [{"accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x1",
                                          "replicaSeconds": 40, "ratePerHour": 0.8, "cost": round(40 / 3600 * 0.8, 6)}]
    assert answer["unpriced"] == ["intel-icl"]
    assert seconds_of(await meter.report("acme", MINUTE, world.wall + 1, None), "chat") == 50  # written + open


async def test_requests_bytes_and_tokens_are_counted_as_deltas(world):
    meter = world.meter()
    world.hold(CHAT, holding=["r1"])
    world.served = {"u1": (CHAT, 5, 500, 5000)}
    world.tokens("r1", CHAT, 100, 20)
    await meter.tick()
    world.served = {"u1": (CHAT, 8, 800, 8000)}
    world.tokens("r1", CHAT, 40, 30)  # r1's engine restarted: 40 are new (the drop shows it)
    await world.advance(meter, 30)
    world.served = {"u2": (CHAT, 1, 10, 100)}  # deleted and created again: its counters start anew
    await world.advance(meter, 1)
    total = (await meter.report("acme", MINUTE, world.wall + 1, None))["endpoints"][0]["total"]
    assert (total["requests"], total["bytesIn"], total["bytesOut"]) == (9, 810, 8100)
    assert (total["tokensIn"], total["tokensOut"]) == (140, 30)


async def test_tokens_stay_unknown_for_an_engine_that_counts_none(world):
    meter = world.meter()
    world.hold(EMBED, holding=["e1"])
    world.served = {"u1": (EMBED, 3, 30, 300)}
    world.readings["e1"] = Scraped(EMBED, EngineSignals(queue=0.0), world.mono)  # signals, no counters
    await meter.tick()
    await world.advance(meter, 30)
    total = (await stored(world))["endpoints"][0]["total"]
    assert total["requests"] == 3 and total["tokensIn"] is None and total["tokensOut"] is None


async def test_a_parked_replica_counts_tokens_from_zero_when_started_again(world):
    meter = world.meter()
    world.hold(CHAT, holding=["r1"])
    world.tokens("r1", CHAT, 100, 10)
    await meter.tick()
    world.hold(CHAT, parked=["r1"])  # its container stopped and kept
    del world.readings["r1"]
    await world.advance(meter, 5)
    world.hold(CHAT, holding=["r1"])  # started again: its engine counted 150 since
    world.tokens("r1", CHAT, 150, 12)
    await world.advance(meter, 20)
    total = (await meter.report("acme", MINUTE, world.wall + 1, None))["endpoints"][0]["total"]
    assert (total["tokensIn"], total["tokensOut"]) == (250, 22)
    assert total["replicaSeconds"] == 20  # not while parked


async def test_after_a_kill_the_replica_seconds_of_the_downtime_are_counted_and_nothing_twice(world):
    meter = world.meter(interval_s=10)
    world.hold(CHAT, holding=["r1"])
    world.hold(EMBED, holding=["e1"])
    world.served = {"u1": (CHAT, 4, 40, 400)}
    world.tokens("r1", CHAT, 100, 10)
    await meter.tick()  # T0: 40 s into a minute, an interval boundary
    await world.advance(meter, 14)  # [T0, T0+10) written; [T0+10, ...) open with 4 s
    world.tokens("r1", CHAT, 160, 16)
    await world.advance(meter, 1)  # counted in the open interval, never written: lost with the kill
    # kill -9: the meter is gone without a word. 30 s later endpointd starts again; r1 was adopted,
    # e1 did not survive the stop, and r1's engine counted on meanwhile.
    world.wall += 30
    world.mono += 1000  # another process: its monotonic clock is another
    world.hold(EMBED)
    world.served = {}
    world.tokens("r1", CHAT, 200, 20)
    again = world.meter(interval_s=10)
    await again.load()
    await again.tick()
    answer = await again.report("acme", T0, world.wall + 1, None)
    assert seconds_of(answer, "chat") == pytest.approx(45)  # the truth: 15 s before the kill, 30 s down
    assert seconds_of(answer, "embed") == pytest.approx(10)  # only what was written: it did not survive
    chat = [e for e in answer["endpoints"] if e["name"] == "chat"][0]["total"]
    assert chat["requests"] == 4  # written with the first interval
    assert (chat["tokensIn"], chat["tokensOut"]) == (200, 20)  # every token once: the baseline was kept
    await world.advance(again, 10)  # [T0+40, T0+50) closed: the kill's interval, downtime and all, is in the store
    assert seconds_of(await stored(world, start=T0), "chat") == pytest.approx(50)
    assert seconds_of(await again.report("acme", T0, world.wall + 1, None), "chat") == pytest.approx(55)
    assert [m.replica for m in await world.store.metered()] == ["e1", "r1"]


async def test_a_clean_stop_writes_the_open_interval_and_a_start_in_it_adds_to_it(world):
    meter = world.meter()
    world.hold(CHAT, holding=["r1"])
    world.served = {"u1": (CHAT, 2, 20, 200)}
    await meter.tick()
    await world.advance(meter, 5)
    await meter.close()
    assert seconds_of(await stored(world), "chat") == 5
    world.wall += 3
    world.served = {}
    again = world.meter()
    await again.load()
    await again.tick()  # the 3 s between the stop and this start: r1 ran on
    await world.advance(again, 4)
    await again.close()
    answer = await stored(world)
    assert seconds_of(answer, "chat") == 12
    assert [len(e["buckets"]) for e in answer["endpoints"]] == [1]
    assert answer["endpoints"][0]["total"]["requests"] == 2


class FailingOnce:
    """The store, whose first usage write fails (a disk that was full for a moment)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failed = False

    async def write_usage(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise OSError("disk full")
        return await self.store.write_usage(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.store, name)


async def test_an_interval_that_failed_to_be_written_is_written_with_the_next(world):
    meter = UsageMeter(UsageConfig(usage_interval_s=10), FailingOnce(world.store), holders=world, traffic=world,
                       hardware_of=lambda i: world.hardware[i.key], rates=RATES,
                       wall=lambda: world.wall, clock=lambda: world.mono)
    world.hold(CHAT, holding=["r1"])
    await meter.tick()
    with pytest.raises(OSError):
        await world.advance(meter, 10)  # the write at the boundary fails (the loop is restarted)
    assert seconds_of(await meter.report("acme", T0, world.wall + 1, None), "chat") == 10  # still shown
    await world.advance(meter, 10)
    assert seconds_of(await stored(world, start=T0), "chat") == 20


async def test_a_replica_gone_for_long_is_forgotten(world):
    meter = world.meter()
    world.hold(CHAT, holding=["r1"])
    world.tokens("r1", CHAT, 5, 5)
    await meter.tick()
    await world.advance(meter, 60)
    assert [m.replica for m in await world.store.metered()] == ["r1"]
    world.hold(CHAT)  # stopped and removed
    del world.readings["r1"]
    await world.advance(meter, 60)
    assert await world.store.metered() == [Metered("r1", "acme", "chat", L4, None, 5, 5)]  # no longer holding
    world.wall += FORGET_AFTER_S
    world.mono += FORGET_AFTER_S
    await world.advance(meter, 60)
    assert await world.store.metered() == []


async def test_a_namespace_sees_its_own_usage_and_an_admins_star_sees_all(world):
    meter = world.meter()
    world.hold(CHAT, holding=["r1"])
    world.hold(MINE, holding=["m1"])
    await meter.tick()
    await world.advance(meter, 30)
    assert [e["name"] for e in (await meter.report("bob", MINUTE, world.wall + 1, None))["endpoints"]] == ["mine"]
    everyone = await meter.report("*", MINUTE, world.wall + 1, None)
    assert [(e["namespace"], e["name"]) for e in everyone["endpoints"]] == [("acme", "chat"), ("bob", "mine")]
    assert everyone["total"]["replicaSeconds"] == 60


def test_the_sample_period_is_a_second_or_a_quarter_of_a_short_interval():
    assert UsageConfig().sample_s == 1.0
    assert UsageConfig(usage_interval_s=2).sample_s == 0.5
