"""Runtime logs on the fake runtime and a temporary logs.db: collection from each container's start,
filters and order, masking, bounds (line, rate, age, size), live follow, resume without duplicates
after a restart, forget; and the routes, in process, with the API's own auth and errors."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.api.base import API, errors_middleware
from autoscaler.api.logs import OPENAPI_PATHS, add_routes, parse_query, parse_time
from autoscaler.model import settings
from autoscaler.observe.log_follow import MAX_QUEUED_PER_FOLLOWER, FollowersFull
from autoscaler.observe.log_line import LogLine, format_line, format_time
from autoscaler.observe.log_mask import MASK, clean
from autoscaler.observe.logs import LOGS_FILE, Collecting, LogsConfig, LogService
from engines.fake import FakeRuntime
from engines.runtime import ContainerSpec, EndpointKey
from proxy.core.config import ProxyConfig
from proxy.core.pipeline import Pipeline
from proxy.management.app import add_proxy
from tests.api_harness import ApiWorld

KEY = EndpointKey("acme", "e1")
OTHER = EndpointKey("acme", "e2")
SECRET = "hf_very_secret_value_4711"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\S+) (.*)$")
T0 = 1_750_000_000.0  # the injected wall clock's start (unix seconds)
DAY_S = 86_400.0


async def eventually(condition, timeout_s: float = 5.0, what: str = "the condition"):
    """Wait for an async condition (checked every loop turn); fail after timeout_s (a hang guard)."""
    try:
        async with asyncio.timeout(timeout_s):
            while not (value := await condition()):
                await asyncio.sleep(0.001)
            return value
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Logs:
    """A LogService on a fake runtime, with the endpoints' uids and secrets as plain dicts."""

    def __init__(self, tmp_path, runtime: FakeRuntime | None = None, **config):
        self.dir = tmp_path / "data"
        self.runtime = runtime or FakeRuntime()
        self.uids: dict[EndpointKey, str] = {KEY: "u1", OTHER: "u2"}
        self.secrets: dict[EndpointKey, list[str]] = {}
        self.now = T0
        self.config = LogsConfig(**{"log_poll_interval_s": 0.05, **config})
        self.svc = self.new_service()

    def new_service(self) -> LogService:
        return LogService(
            self.runtime, self.dir, uid_of=self.uids.get, secrets_of=lambda key: self.secrets.get(key, ()),
            config=self.config, wall=lambda: self.now,
        )

    async def start(self, replica: str, key: EndpointKey = KEY, **spec) -> None:
        await self.runtime.start(key, replica, "1", ContainerSpec(image="echo", **spec))

    async def lines(self, uid: str = "u1", **filters) -> list[LogLine]:
        return await self.svc.query(uid, **{"tail": 10_000, **filters})

    async def texts(self, uid: str = "u1", **filters) -> list[str]:
        return [line.text for line in await self.lines(uid, **filters)]

    async def collect(self, count: int, uid: str = "u1", **filters) -> list[str]:
        """Let the followers read and the writer write until `count` lines are stored."""
        async def enough():
            await self.svc.flush()
            texts = await self.texts(uid, **filters)
            return texts if len(texts) >= count else None

        return await eventually(enough, what=f"{count} stored lines")


@pytest.fixture
async def logs(tmp_path):
    world = Logs(tmp_path)
    await world.svc.open()
    yield world
    await world.svc.close()


# --- collection, order and filters -----------------------------------------------------------------


async def test_a_containers_lines_are_stored_oldest_first_from_its_start(logs):
    await logs.start("r1")
    logs.runtime.write_log("r1", "one", "two")
    assert await logs.svc.tick() == ["r1"]
    logs.runtime.write_log("r1", "three")
    assert await logs.collect(4) == ["echo started", "one", "two", "three"]
    assert await logs.svc.tick() == []  # followed already: not twice


async def test_each_line_reads_time_replica_text(logs):
    await logs.start("r1")
    await logs.svc.tick()
    await logs.collect(1)
    (line,) = await logs.lines()
    text = format_line(line)
    assert LINE.match(text).groups() == ("r1", "echo started")
    assert text.startswith(format_time(int(T0 * 1000)))
    assert format_time(1_750_000_000_123) == "2025-06-15T15:06:40.123Z"


async def test_tail_gives_the_latest_lines_fifty_by_default(logs):
    await logs.start("r1")
    logs.runtime.write_log("r1", *(f"line {i}" for i in range(1, 121)))
    await logs.svc.tick()
    await logs.collect(121)
    latest = [line.text for line in await logs.svc.query("u1")]
    assert latest == [f"line {i}" for i in range(71, 121)]
    assert await logs.texts(tail=3) == ["line 118", "line 119", "line 120"]


async def test_replica_filter_and_endpoints_apart(logs):
    await logs.start("r1")
    await logs.start("r2")
    await logs.start("r3", OTHER)
    for rid in ("r1", "r2", "r3"):
        logs.runtime.write_log(rid, f"from {rid}")
    await logs.svc.tick()
    await logs.collect(4)
    await logs.collect(2, uid="u2")
    assert await logs.texts(replica="r2") == ["echo started", "from r2"]
    assert {line.replica for line in await logs.lines()} == {"r1", "r2"}
    assert await logs.texts("u2") == ["echo started", "from r3"]
    assert await logs.texts(replica="nosuch") == []


async def test_since_and_until_bound_the_collection_time(logs):
    await logs.start("r1")
    await logs.svc.tick()
    await logs.collect(1)
    logs.now = T0 + 100
    logs.runtime.write_log("r1", "later")
    await logs.collect(2)
    middle = int((T0 + 50) * 1000)
    assert await logs.texts(since_ms=middle) == ["later"]
    assert await logs.texts(until_ms=middle) == ["echo started"]
    assert await logs.texts(since_ms=int(T0 * 1000), until_ms=int(T0 * 1000)) == ["echo started"]


async def test_a_clock_step_back_never_reorders_lines(logs):
    await logs.start("r1")
    await logs.svc.tick()
    await logs.collect(1)
    logs.now = T0 - 3600
    logs.runtime.write_log("r1", "after the step")
    await logs.collect(2)
    first, second = await logs.lines()
    assert (first.text, second.text) == ("echo started", "after the step")
    assert second.at_ms >= first.at_ms


async def test_a_container_of_an_unknown_endpoint_is_not_read_until_it_is_known(logs):
    del logs.uids[KEY]
    await logs.start("r1")
    logs.runtime.write_log("r1", "before")
    assert await logs.svc.tick() == []
    await logs.svc.flush()
    assert await logs.texts() == []
    logs.uids[KEY] = "u1"
    assert await logs.svc.tick() == ["r1"]
    assert await logs.collect(2) == ["echo started", "before"]  # from its start


async def test_lines_outlive_their_container(logs):
    await logs.start("r1")
    await logs.svc.tick()
    logs.runtime.kill("r1", 1, "Traceback: boom")
    await logs.collect(2)
    await logs.runtime.stop("r1", 0)
    await logs.svc.tick()
    assert await logs.texts() == ["echo started", "Traceback: boom"]


async def test_a_container_that_fails_between_two_polls_is_read_before_its_removal(logs):
    logs.runtime.exit_next_start(2, "PORT='x' is invalid")
    await logs.start("r1")
    await Collecting(logs.runtime, logs.svc).stop("r1", 0)  # as the controller removes it
    assert not logs.runtime.containers
    assert await logs.collect(2) == ["echo started", "PORT='x' is invalid"]


async def test_a_new_container_is_found_within_a_poll_once_started(tmp_path):
    world = Logs(tmp_path)
    await world.svc.start()
    try:
        await world.start("r1")
        world.runtime.write_log("r1", "hello")
        assert await world.collect(2) == ["echo started", "hello"]
    finally:
        await world.svc.close()


# --- cleaning, masking, bounds ---------------------------------------------------------------------


def test_clean_keeps_what_a_terminal_shows_and_cuts_at_the_byte_bound():
    assert clean("10%\r50%\r100%\r", 1000) == "100%"
    assert clean("a\x00b", 1000) == "a\ufffdb"
    assert clean("\ud800x", 1000) == "?x"  # a lone surrogate cannot be stored
    cut = clean("é" * 1000, 256)
    assert len(cut.encode()) <= 256 and cut.endswith("…") and set(cut[:-1]) == {"é"}


async def test_long_lines_are_cut_when_stored(tmp_path):
    world = Logs(tmp_path, log_max_line_bytes=256)
    await world.svc.open()
    try:
        await world.start("r1")
        world.runtime.write_log("r1", "x" * 10_000)
        await world.svc.tick()
        _, long = await world.collect(2)
        assert len(long.encode()) <= 256 and long.endswith("…")
    finally:
        await world.svc.close()


async def test_secret_values_never_reach_the_store(logs):
    special = 'pa"ss/wo+rd'
    logs.secrets[KEY] = [SECRET, special, "abc"]  # "abc": too short to mask (it would wreck the log)
    await logs.start("r1", api_key="engine-key-123456")  # the replica's engine API key, from the runtime
    logs.runtime.write_log(
        "r1", f"GET /leak/{SECRET} 404", f"token={SECRET}&x=1", "key engine-key-123456 used", "abc stays",
        "GET /q?k=pa%22ss%2Fwo%2Brd 200", "raw pa\"ss/wo+rd here", '{"k": "pa\\"ss/wo+rd"}',
        f"{SECRET[:10]}|{SECRET[10:]}",  # split: not the value
    )
    await logs.svc.tick()
    texts = await logs.collect(9)
    assert texts[1:] == [
        f"GET /leak/{MASK} 404", f"token={MASK}&x=1", f"key {MASK} used", "abc stays",
        f"GET /q?k={MASK} 200", f"raw {MASK} here", '{"k": "' + MASK + '"}', f"{SECRET[:10]}|{SECRET[10:]}",
    ]
    with sqlite3.connect(logs.dir / LOGS_FILE) as db:
        assert db.execute("SELECT count(*) FROM lines WHERE text LIKE ?", (f"%{SECRET}%",)).fetchone() == (0,)


async def test_a_secret_changed_by_an_update_stays_masked_in_old_replicas(logs):
    logs.secrets[KEY] = ["old-secret-value"]
    await logs.start("r1")
    await logs.svc.tick()
    logs.secrets[KEY] = ["new-secret-value"]
    await logs.svc.tick()
    logs.runtime.write_log("r1", "old-secret-value new-secret-value")
    assert (await logs.collect(2))[1] == f"{MASK} {MASK}"


async def test_a_flood_is_cut_to_the_rate_bound_with_a_note(tmp_path):
    world = Logs(tmp_path, log_max_lines_per_s=1.0)
    world.svc.collector.clock = lambda: 0.0  # no time passes: no token comes back
    await world.svc.open()
    try:
        await world.start("r1")
        world.runtime.write_log("r1", *(f"spam {i}" for i in range(200)))
        await world.svc.tick()  # credit: 2 s of burst plus the poll interval it was unread

        async def all_read():
            await world.svc.flush()
            return len(await world.texts()) + world.svc.collector.dropped_lines == 201

        await eventually(all_read, what="the flood to be read")
        kept = await world.texts()
        assert kept == ["echo started", *(f"spam {i}" for i in range(len(kept) - 1))]  # the first ones pass
        assert world.svc.collector.dropped_lines > 150
        await world.svc.tick()  # a poll notes what was dropped
        texts = await world.collect(len(kept) + 1)
        assert texts[-1] == (f"[endpointd] dropped {world.svc.collector.dropped_lines} line(s) of this replica's log: "
                             "it wrote more than 1 lines/s")
    finally:
        await world.svc.close()


async def _async(value):
    return value


async def test_an_endpoint_keeps_its_size_bound_dropping_the_oldest(tmp_path):
    world = Logs(tmp_path, log_max_bytes_per_endpoint=4096)
    await world.svc.open()
    try:
        await world.start("r1")
        await world.start("r2", OTHER)
        await world.svc.tick()
        for i in range(200):
            world.runtime.write_log("r1", f"line {i:04d} " + "x" * 90)
        world.runtime.write_log("r2", "the other endpoint")
        await world.collect(2, uid="u2")

        async def last_line_in():
            await world.svc.flush()
            texts = await world.texts()
            return texts and texts[-1].startswith("line 0199")

        await eventually(last_line_in, what="the last line")
        texts = await world.texts()
        assert 0 < len(texts) < 200 and "echo started" not in texts  # the oldest went first
        numbers = [int(t.split()[1]) for t in texts]
        assert numbers == list(range(numbers[0], 200))  # a contiguous newest run
        assert await world.svc.store.size("u1") <= 4096
        assert await world.texts("u2") == ["echo started", "the other endpoint"]  # untouched
    finally:
        await world.svc.close()


async def test_lines_older_than_the_retention_are_gone(tmp_path):
    world = Logs(tmp_path, log_retention_days=1.0)
    await world.svc.open()
    try:
        await world.start("r1")
        await world.svc.tick()
        await world.collect(1)
        world.now = T0 + 0.5 * DAY_S
        world.runtime.write_log("r1", "recent")
        await world.collect(2)
        size = await world.svc.store.size("u1")
        world.now = T0 + 1.2 * DAY_S
        assert await world.texts() == ["recent"]  # reads apply the bound at once
        assert await world.svc.prune() == 1  # and the prune drops the line
        assert await world.svc.store.size("u1") < size
        world.now = T0 + 3 * DAY_S
        assert await world.svc.prune() == 1
        assert await world.texts() == [] and await world.svc.store.size("u1") == 0
    finally:
        await world.svc.close()


# --- following live ----------------------------------------------------------------------------


async def next_line(follow, timeout_s: float = 5.0):
    async with asyncio.timeout(timeout_s):  # a hang guard, not a timed assertion
        while (line := await anext(follow)) is None:
            pass
        return line


@pytest.fixture
async def live(tmp_path):
    world = Logs(tmp_path, log_keepalive_s=0.05)
    await world.svc.start()
    yield world
    await world.svc.close()


async def test_a_follower_gets_the_backlog_then_each_new_line(live):
    await live.start("r1")
    live.runtime.write_log("r1", "a", "b", "c")
    await live.collect(4)
    async with live.svc.follow("u1", tail=2) as follow:
        assert [(await next_line(follow)).text for _ in range(2)] == ["b", "c"]
        live.runtime.write_log("r1", "d")
        assert (await next_line(follow)).text == "d"
        live.runtime.write_log("r1", "e", "f")
        assert [(await next_line(follow)).text for _ in range(2)] == ["e", "f"]
    assert live.svc.followers("u1") == 0


async def test_a_follower_of_one_replica_sees_only_its_lines(live):
    await live.start("r1")
    await live.start("r2")
    await live.collect(2)
    async with live.svc.follow("u1", replica="r2", tail=1) as follow:
        assert (await next_line(follow)).replica == "r2"
        live.runtime.write_log("r1", "not for you")
        live.runtime.write_log("r2", "for you")
        line = await next_line(follow)
        assert (line.replica, line.text) == ("r2", "for you")


async def test_an_idle_follower_gets_keep_alives(live):
    await live.start("r1")
    await live.collect(1)
    async with live.svc.follow("u1", tail=1) as follow:
        assert (await anext(follow)).text == "echo started"
        assert await anext(follow) is None


async def test_followers_are_bounded_per_endpoint(tmp_path):
    world = Logs(tmp_path, log_max_followers_per_endpoint=2)
    await world.svc.open()
    try:
        first, second = world.svc.follow("u1"), world.svc.follow("u1")
        with pytest.raises(FollowersFull, match="2 live followers"):
            world.svc.follow("u1")
        world.svc.follow("u2").close()  # another endpoint has its own bound
        first.close()
        world.svc.follow("u1").close()
        second.close()
        assert world.svc.followers("u1") == 0
    finally:
        await world.svc.close()


async def test_a_slow_follower_misses_nothing(tmp_path):
    live = Logs(tmp_path, log_keepalive_s=0.05, log_max_lines_per_s=1_000_000.0)
    await live.svc.start()
    try:
        await _slow_follower(live)
    finally:
        await live.svc.close()


async def _slow_follower(live):
    await live.start("r1")
    await live.collect(1)
    total = MAX_QUEUED_PER_FOLLOWER * 3
    async with live.svc.follow("u1", tail=1) as follow:
        assert (await next_line(follow)).text == "echo started"
        live.runtime.write_log("r1", *(f"n {i}" for i in range(total)))
        await live.collect(total + 1)  # all stored before the follower reads on: its queue overflowed
        seen = [await next_line(follow) for _ in range(total)]
    assert [line.text for line in seen] == [f"n {i}" for i in range(total)]
    assert [line.id for line in seen] == sorted({line.id for line in seen})


async def test_a_follower_ends_when_its_until_has_passed(live):
    await live.start("r1")
    await live.collect(1)
    follow = live.svc.follow("u1", until_ms=int(T0 * 1000))
    assert [line.text async for line in follow if line is not None] == ["echo started"]
    follow.close()


# --- restarts and deletion ------------------------------------------------------------------------


async def test_a_restarted_service_resumes_without_duplicates(tmp_path):
    world = Logs(tmp_path)
    await world.svc.open()
    await world.start("r1")
    world.runtime.write_log("r1", *(f"first {i}" for i in range(10)))
    await world.svc.tick()
    await world.collect(11)
    await world.svc.close()
    world.runtime.write_log("r1", *(f"while down {i}" for i in range(5)))  # nobody reads these now

    world.svc = world.new_service()
    await world.svc.open()
    try:
        assert await world.svc.tick() == ["r1"]  # adopted: followed again, after its cursor
        world.runtime.write_log("r1", "after")
        texts = await world.collect(17)
        assert texts == ["echo started", *(f"first {i}" for i in range(10)), *(f"while down {i}" for i in range(5)),
                         "after"]
    finally:
        await world.svc.close()


async def test_a_crash_loses_no_line_and_duplicates_none(tmp_path):
    world = Logs(tmp_path)
    await world.svc.open()
    await world.start("r1")
    await world.svc.tick()
    await world.collect(1)
    world.runtime.write_log("r1", "read but never written")
    await eventually(lambda: _async(bool(world.svc.collector.buffered())), what="the line to be read")
    # A crash: the tasks die and nothing more is written.
    for tail in list(world.svc.collector._tails.values()):
        tail.task.cancel()
    await asyncio.sleep(0)
    world.svc.collector._buffer.clear()
    await world.svc.store.close()
    world.svc.store = None

    world.svc = world.new_service()
    await world.svc.open()
    try:
        await world.svc.tick()
        assert await world.collect(2) == ["echo started", "read but never written"]
    finally:
        await world.svc.close()


async def test_forget_deletes_the_lines_ends_followers_and_stops_reading(logs):
    await logs.start("r1")
    await logs.start("r2", OTHER)
    await logs.svc.tick()
    await logs.collect(1)
    await logs.collect(1, uid="u2")
    follow = logs.svc.follow("u1")
    await logs.svc.forget("u1")
    assert [line async for line in follow] == []
    logs.runtime.write_log("r1", "still draining")
    logs.uids[KEY] = "u3"  # re-created under the same name: its own incarnation
    assert await logs.svc.tick() == []  # r1 belongs to the deleted one
    await logs.svc.flush()
    assert await logs.texts() == [] and await logs.texts("u3") == []
    assert await logs.texts("u2") == ["echo started"]
    with sqlite3.connect(logs.dir / LOGS_FILE) as db:
        assert db.execute("SELECT count(*) FROM lines WHERE text = 'still draining'").fetchone() == (0,)

    await logs.svc.close()  # a restart does not read the deleted incarnation's container either
    logs.svc = logs.new_service()
    await logs.svc.open()
    assert await logs.svc.tick() == ["r2"]  # only the other endpoint's replica is read again


async def test_logs_db_is_private_and_in_wal_mode(logs):
    path = logs.dir / LOGS_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_logs_section_loads_and_names_a_bad_key():
    config = settings.load(LogsConfig, "logs", file_values={"log_retention_days": 7, "log_max_bytes_per_endpoint": 2048})
    assert (config.log_retention_days, config.log_max_bytes_per_endpoint) == (7.0, 2048)
    assert LogsConfig().log_retention_days == 30.0 and LogsConfig().log_max_bytes_per_endpoint == 100_000_000
    with pytest.raises(settings.SettingsError, match=r"logs\.log_max_line_bytes = 1 .*between 256 and"):
        settings.load(LogsConfig, "logs", file_values={"log_max_line_bytes": 1})


# --- parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "ms"), [
    ("1750000000", 1_750_000_000_000),
    ("1750000000.5", 1_750_000_000_500),
    ("2025-06-15T15:06:40Z", 1_750_000_000_000),
    ("2025-06-15T15:06:40.123Z", 1_750_000_000_123),
    ("2025-06-15T17:06:40+02:00", 1_750_000_000_000),
])
def test_times_are_rfc3339_or_unix_seconds(raw, ms):
    assert parse_time("since", raw) == ms


@pytest.mark.parametrize(("query", "message"), [
    ({"tail": "0"}, "tail must be an integer from 1 to 10000"),
    ({"tail": "10001"}, "tail must be an integer from 1 to 10000"),
    ({"tail": "x"}, "tail must be an integer"),
    ({"line_max_length": "0"}, "line_max_length must be an integer from 1 to 65536"),
    ({"line_max_length": "65537"}, "line_max_length must be an integer from 1 to 65536"),
    ({"since": "yesterday"}, "since must be an RFC 3339 time"),
    ({"until": "2025-06-15T15:06:40"}, "until must be an RFC 3339 time with a time zone"),
    ({"since": "-1"}, "since must be"),
    ({"since": "nan"}, "since must be"),
    ({"since": "1e300"}, "since must be"),
    ({"since": "200", "until": "100"}, "since must not be after until"),
    ({"replica": "a b"}, "replica must be a replica id"),
    ({"follow": "1"}, "unknown query parameter 'follow'"),
])
def test_bad_parameters_name_themselves_and_their_range(query, message):
    from autoscaler.api.base import Invalid

    with pytest.raises(Invalid, match=re.escape(message)):
        parse_query(query)


# --- the routes, in process ------------------------------------------------------------------------


class Routes:
    """The API (real store and auth, the in-memory controller) and the logs routes on its `/v2`
    sub-app, with a LogService on the controller's fake runtime."""

    async def start(self, tmp_path, **config) -> Routes:
        self.api_world = await ApiWorld().start(tmp_path)
        controller = self.api_world.world.controller
        self.runtime = self.api_world.world.runtime
        self.logs = LogService(
            self.runtime, tmp_path / "data",
            uid_of=lambda key: (i.uid if (i := controller.intent(key)) else None),
            secrets_of=lambda key: (i.spec.model.secrets.values() if (i := controller.intent(key)) and i.spec else ()),
            config=LogsConfig(**{"log_poll_interval_s": 0.05, "log_keepalive_s": 0.05, **config}),
        )
        await self.logs.start()
        app = web.Application()
        add_proxy(app, Pipeline(ProxyConfig(), self.api_world.world.routes))
        v2 = web.Application(middlewares=[errors_middleware])
        v2[API] = self.api_world.api
        add_routes(v2.router, self.api_world.api, self.logs)
        app.add_subapp("/v2", v2)
        self.client = TestClient(TestServer(app, host="127.0.0.1"))
        await self.client.start_server()
        return self

    async def create(self, ns: str, name: str, who: str, **model) -> None:
        r = await self.api_world.client.post(f"/v2/endpoint/{ns}", json=self.api_world.body(name, **model),
                                             headers=self.api_world.auth(who))
        assert r.status == 200, await r.text()
        await self.runtime.start(EndpointKey(ns, name), f"{name}-r1", "1", ContainerSpec(image="echo"))

    async def get(self, path: str, who: str | None = "alice", **params):
        headers = self.api_world.auth(who) if who else {}
        return await self.client.get(path, params=params, headers=headers)

    async def text(self, path: str, count: int, **params) -> list[str]:
        async def enough():
            r = await self.get(path, **params)
            assert r.status == 200, await r.text()
            lines = (await r.text()).splitlines()
            return lines if len(lines) >= count else None

        return await eventually(enough, what=f"{count} lines at {path}")

    async def close(self) -> None:
        await self.client.close()
        await self.logs.close()
        await self.api_world.close()


@pytest.fixture
async def routes(tmp_path):
    r = await Routes().start(tmp_path)
    yield r
    await r.close()


async def test_the_logs_route_answers_text_lines(routes):
    await routes.create("alice", "e1", "alice", secrets={"HF_TOKEN": SECRET})
    routes.runtime.write_log("e1-r1", "one", f"GET /{SECRET} 404", "x" * 100)
    lines = await routes.text("/v2/endpoint/alice/e1/logs", 4)
    assert [LINE.match(line).groups() for line in lines] == [
        ("e1-r1", "echo started"), ("e1-r1", "one"), ("e1-r1", f"GET /{MASK} 404"), ("e1-r1", "x" * 100),
    ]
    r = await routes.get("/v2/endpoint/alice/e1/logs", tail="2", line_max_length="10")
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert [LINE.match(line).group(2) for line in (await r.text()).splitlines()] == [f"GET /{MASK} 4", "x" * 10]
    r = await routes.get("/v2/endpoint/alice/e1/logs", replica="nosuch")
    assert (r.status, await r.text()) == (200, "")


@pytest.mark.parametrize(("who", "path", "status"), [
    (None, "/v2/endpoint/alice/e1/logs", 401),
    ("bob", "/v2/endpoint/alice/e1/logs", 403),
    ("bob", "/v2/endpoint/alice/e1/logs/sse", 403),
    ("alice", "/v2/endpoint/alice/nosuch/logs", 404),
    ("alice", "/v2/endpoint/alice/nosuch/logs/sse", 404),
    ("admin", "/v2/endpoint/alice/nosuch/logs", 404),
])
async def test_the_logs_routes_refuse_as_the_api_does(routes, who, path, status):
    await routes.create("alice", "e1", "alice")
    r = await routes.get(path, who)
    assert r.status == status
    assert "error" in await r.json()


async def test_an_admin_reads_any_namespace(routes):
    await routes.create("alice", "e1", "alice")
    r = await routes.get("/v2/endpoint/alice/e1/logs", "admin")
    assert r.status == 200


async def test_a_bad_parameter_is_a_400_naming_it(routes):
    await routes.create("alice", "e1", "alice")
    for params, word in (({"tail": "0"}, "tail"), ({"line_max_length": "99999"}, "line_max_length"),
                         ({"since": "soon"}, "since")):
        for path in ("/v2/endpoint/alice/e1/logs", "/v2/endpoint/alice/e1/logs/sse"):
            r = await routes.get(path, **params)
            assert r.status == 400 and word in (await r.json())["error"]


async def read_events(response, count: int) -> list[str]:
    """The next `count` data lines of an SSE response (keep-alive comments skipped)."""
    events = []
    async with asyncio.timeout(10):  # a hang guard
        while len(events) < count:
            raw = await response.content.readline()
            assert raw, "the stream ended"
            if raw.startswith(b"data: "):
                events.append(raw[len(b"data: "):].decode().rstrip("\n"))
    return events


async def test_the_sse_route_sends_the_backlog_then_new_lines(routes):
    await routes.create("alice", "e1", "alice")
    await routes.text("/v2/endpoint/alice/e1/logs", 1)
    r = await routes.get("/v2/endpoint/alice/e1/logs/sse", tail="1")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert [LINE.match(e).group(2) for e in await read_events(r, 1)] == ["echo started"]
    routes.runtime.write_log("e1-r1", "live one")
    assert [LINE.match(e).group(2) for e in await read_events(r, 1)] == ["live one"]
    r.close()
    await eventually(lambda: _async(routes.logs.followers(_uid(routes, "alice", "e1")) == 0),
                     what="the follower to be gone with its client")


async def test_the_sse_route_sends_keep_alives(routes):
    await routes.create("alice", "e1", "alice")
    r = await routes.get("/v2/endpoint/alice/e1/logs/sse", tail="1")
    async with asyncio.timeout(10):
        while (raw := await r.content.readline()) != b": keep-alive\n":
            assert raw
    r.close()


async def test_followers_beyond_the_bound_get_a_429(tmp_path):
    routes = await Routes().start(tmp_path, log_max_followers_per_endpoint=1)
    try:
        await routes.create("alice", "e1", "alice")
        first = await routes.get("/v2/endpoint/alice/e1/logs/sse")
        assert first.status == 200
        r = await routes.get("/v2/endpoint/alice/e1/logs/sse")
        assert r.status == 429 and "1 live followers" in (await r.json())["error"]
        first.close()
        uid = _uid(routes, "alice", "e1")
        await eventually(lambda: _async(routes.logs.followers(uid) == 0), what="the first follower to go")
        again = await routes.get("/v2/endpoint/alice/e1/logs/sse")
        assert again.status == 200
        again.close()
    finally:
        await routes.close()


def _uid(routes: Routes, ns: str, name: str) -> str:
    return routes.api_world.world.controller.intent(EndpointKey(ns, name)).uid


def test_openapi_paths_describe_the_routes():
    app = web.Application()
    add_routes(app.router, None, None)  # only the route table is read
    served = {("/v2" + r.resource.canonical, r.method.lower()) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(path, method) for path, ops in OPENAPI_PATHS.items() for method in ops}
    assert served == documented
    for ops in OPENAPI_PATHS.values():
        for op in ops.values():
            for code in ("400", "401", "403", "404"):
                assert op["responses"][code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            assert {p["name"] for p in op["parameters"]} == {"ns", "name", "replica", "tail", "since", "until", "line_max_length"}
