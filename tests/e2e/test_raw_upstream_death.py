"""A replica that dies at any phase of an exchange: every request in flight on the raw server
ends in an answer (a 502, the retry on another replica where nothing was sent, or a cut stream)
at once, never after `upstream_response_start_timeout_s` (set to 120 s here, while each client
gives up after CLIENT_TIMEOUT_S: a hang is a failure, not a slow test); and no callback of the
event loop fails (uvloop raises "the handler is closed" on a write to a connection it has
closed). On uvloop, as `endpointd serve` runs, with the main process alone and with a worker
process beside it. Real sockets; fake replicas from tests/dying_replica.py."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.dying_replica import PHASES, RESPONSE_PHASES, DyingReplica
from tests.proxy_harness import Harness, free_port, parse_response

CLIENT_TIMEOUT_S = 10.0
N = 8  # requests per case, each on its own connection (so that they spread over the processes)
UPLOAD_BYTES = 512 * 1024  # beyond the raw server's small body: streamed to the replica as it comes
TIMEOUTS = dict(upstream_response_start_timeout_s=120.0, upstream_idle_timeout_s=300.0)


def post(name: str, body_bytes: int = 100, *extra: bytes) -> bytes:
    head = (f"POST /endpoints/acme/{name}/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {body_bytes}\r\n").encode()
    return head + b"".join(e + b"\r\n" for e in extra) + b"\r\n" + b"x" * body_bytes


def outcome(data: bytes) -> str:
    """'502', '200', '200 cut' (the connection closed before the body's end) or 'closed unanswered'."""
    if not data:
        return "closed unanswered"
    response = parse_response(data)
    length = response.headers.get("content-length")
    if length is not None:
        complete = len(response.body) == int(length)
    else:
        complete = response.body.endswith(b"0\r\n\r\n")
    return f"{response.status}" + ("" if complete else " cut")


async def ask(port: int, raw: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)  # not drained: an upload goes on while the answer is read
    data = b""
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            try:
                while chunk := await reader.read(65536):
                    data += chunk
            except ConnectionResetError:
                pass
    except TimeoutError:
        return "no answer"
    finally:
        writer.close()
    return outcome(data)


async def ask_all(port: int, raw: bytes, n: int = N) -> list[str]:
    return sorted(await asyncio.gather(*(ask(port, raw) for _ in range(n))))


def run_on_uvloop(scenario) -> list:
    """Run `scenario()` on uvloop; what reached the loop's exception handler is returned."""
    errors: list = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        await scenario()

    uvloop.run(main())
    return errors


def expected(phase: str, reset: bool) -> set[str]:
    if phase not in RESPONSE_PHASES:
        return {"502"}
    # A reset may reach the proxy before the bytes sent ahead of it: then nothing had started.
    return {"200 cut", "502"} if reset else {"200 cut"}


@pytest.mark.parametrize("processes", [1, 2], ids=["main-only", "workers-2"])
def test_a_replica_dying_at_every_phase_answers_every_request_at_once(processes, capfd):
    outcomes: dict[str, list[str]] = {}

    async def scenario():
        h = Harness()
        replicas: list[DyingReplica] = []
        try:
            cases = [(phase, reset) for phase in PHASES for reset in (True, False)]
            for phase, reset in cases:
                replica = await DyingReplica(phase, reset).start()
                replicas.append(replica)
                h.endpoint(f"{phase}-{'reset' if reset else 'close'}", upstreams=(replica,))
            h.endpoint("refused", upstreams=(f"127.0.0.1:{free_port()}",))
            await h.start(processes=processes, **TIMEOUTS)
            port = h.proxy.port
            names = [f"{phase}-{'reset' if reset else 'close'}" for phase, reset in cases]
            bodies = {name: UPLOAD_BYTES if name.startswith("upload") else 100 for name in names}
            answers = await asyncio.gather(*(ask_all(port, post(name, bodies[name])) for name in names),
                                           ask_all(port, post("refused")))
            outcomes.update(zip([*names, "refused"], answers, strict=True))
        finally:
            await h.close()
            for replica in replicas:
                await replica.close()

    errors = run_on_uvloop(scenario)
    allowed = {f"{phase}-{'reset' if reset else 'close'}": expected(phase, reset)
               for phase in PHASES for reset in (True, False)}
    allowed["refused"] = {"502"}
    wrong = {name: got for name, got in outcomes.items() if not set(got) <= allowed[name]}
    assert outcomes.keys() == allowed.keys()
    assert wrong == {}
    assert errors == []
    assert "handler is closed" not in capfd.readouterr().err  # the worker's log


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
@pytest.mark.parametrize("processes", [1, 2], ids=["main-only", "workers-2"])
def test_a_crash_behind_kept_alive_connections_answers_every_request(processes, reset, capfd):
    """The engine crashes between requests: a pooled connection dies under the next request (it
    is sent again once on a new connection, as a closed keep-alive connection may be), and the
    new connection dies as it opens. Plain and held requests alike get their 502 at once."""
    got: dict[str, list[str]] = {}

    async def scenario():
        h = Harness()
        replica = await DyingReplica("crash", reset, serve=2 * N).start()
        try:
            h.endpoint("e1", upstreams=(replica,))
            await h.start(processes=processes, **TIMEOUTS)
            port = h.proxy.port
            # Kept-alive connections to the replica in every process's pool.
            got["before"] = await ask_all(port, post("e1"), 2 * N)
            assert replica.crashed.is_set()
            held = post("e1", 100, b"X-Scale-Up-Timeout: 30")
            plain, holding = await asyncio.gather(ask_all(port, post("e1")), ask_all(port, held))
            got["plain"], got["held"] = plain, holding
        finally:
            await h.close()
            await replica.close()

    errors = run_on_uvloop(scenario)
    assert got == {"before": ["200"] * 2 * N, "plain": ["502"] * N, "held": ["502"] * N}
    assert errors == []
    assert "handler is closed" not in capfd.readouterr().err


@pytest.mark.parametrize("processes", [1, 2], ids=["main-only", "workers-2"])
def test_a_replica_that_dies_before_anything_is_sent_is_retried_on_another(processes, capfd):
    """A refused connection, and one lost before the request was written on it, are tried on the
    other replica. One that dies as it opens may also die just after the request was written on
    it: the replica may have read it, so that one is a 502, never a retry."""
    got: dict[str, list[str]] = {}

    async def scenario():
        h = Harness()
        dying = [await DyingReplica("connect", reset).start() for reset in (True, False)]
        try:
            healthy = await h.upstream()
            h.endpoint("reset", upstreams=(dying[0], healthy))
            h.endpoint("close", upstreams=(dying[1], healthy))
            h.endpoint("refused", upstreams=(f"127.0.0.1:{free_port()}", healthy))
            await h.start(processes=processes, **TIMEOUTS)
            port = h.proxy.port
            names = ("reset", "close", "refused")
            got.update(zip(names, await asyncio.gather(*(ask_all(port, post(n), 2 * N) for n in names)), strict=True))
        finally:
            await h.close()
            for replica in dying:
                await replica.close()

    errors = run_on_uvloop(scenario)
    assert got["refused"] == ["200"] * 2 * N
    for name in ("reset", "close"):
        assert set(got[name]) <= {"200", "502"}, name
        assert "200" in got[name], name  # half at least went to the healthy one first
    assert errors == []
    assert "handler is closed" not in capfd.readouterr().err
