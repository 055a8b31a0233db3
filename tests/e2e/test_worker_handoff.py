"""The hand-off of a management connection from a worker to the main process, against a real
`endpointd serve --workers 2`: whatever the TCP segmentation, every byte the client sent reaches
the management API in order, and no call is refused because the hand-off channel is busy.

The client here sends each request on a fresh connection (as curl, urllib and most scripts do),
cut into segments at every offset of the request (head and body split anywhere, sometimes in
three), sometimes with `Expect: 100-continue` (the body then leaves only after the main process,
which answers the 100, holds the connection: it arrives after the hand-off), in bursts of 200 at
once. Each request's answer proves that its body arrived whole: a create whose name is refused
names the name it read (it stands after a padding in the JSON), and an update of an endpoint that
does not exist is a 404 only for a body that is valid JSON. A corrupted call is any other answer
(the issue saw `400 the request is not valid HTTP/1.1 (Invalid method encountered)`), a refused
one a 503 (the issue saw `this server cannot serve this request now; retry`).

And a worker in its SIGTERM drain accepts no new connection: while the main process drains a
request in flight, the port refuses connections, whichever process the kernel would pick."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from itertools import pairwise

import pytest

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker

TOKEN = "test-admin-token"
CALLS = 10_000
BURST = 200  # calls at once
CALL_TIMEOUT_S = 120.0  # a call not answered by then is lost (counted, never waited on further)


@pytest.fixture
def serve(tmp_path, docker_engine):
    s = Serve(tmp_path / "data", admin_token=TOKEN, extra_env={"ENDPOINTD_WORKERS": "2"})
    s.add_user("alice")
    s.start()
    wait_for(lambda: "the data plane runs in 2 processes" in s.log.read_text(), 60, "the worker to listen")
    yield s
    s.close()


def request_for(i: int) -> tuple[bytes, bytes, int, bytes]:
    """Call `i`: its head, its body, and the status and a fragment its answer must have."""
    kind = i % 3
    expect = b"Expect: 100-continue\r\n" if i % 7 == 0 else b""
    if kind == 2:
        head = (f"GET /v2/endpoint/alice/e{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                "User-Agent: splitter\r\n\r\n").encode()
        return head, b"", 404, b"does not exist"
    pad = "x" * (40 + i % 400)
    if kind == 0:
        name = f"Bad Name {i}"
        body = json.dumps({"pad": pad, "name": name}).encode()
        line, status, must = "POST /v2/endpoint/alice", 400, json.dumps(name).encode()
    else:
        body = json.dumps({"pad": pad, "compute": {"scaling": {"minReplica": i % 5}}}).encode()
        line, status, must = f"PUT /v2/endpoint/alice/e{i}", 404, b"does not exist"
    head = (f"{line} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n").encode() + expect + b"\r\n"
    return head, body, status, must


def cuts_for(i: int, length: int) -> list[int]:
    """Where call `i` is cut: every offset in turn, and a second cut in every third call."""
    first = 1 + i % (length - 1)
    if i % 3 == 0 and first + 1 < length:
        return [first, first + 1 + (i // 3) % (length - first - 1)]
    return [first]


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, head + await reader.readexactly(length)


async def call(port: int, i: int) -> tuple[str, str]:
    """One call on its own connection: ("ok" | "refused" | "corrupted" | "lost", what came back)."""
    head, body, status, must = request_for(i)
    expect = b"Expect: 100-continue" in head
    data = head + body
    writer = None
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if expect:  # the head (in pieces), then the body once the server asks for it
                cut = cuts_for(i, len(head))[0]
                writer.write(head[:cut])
                await writer.drain()
                writer.write(head[cut:])
                continue_status, _ = await read_answer(reader)
                if continue_status != 100:
                    return "corrupted", f"{continue_status} instead of 100 Continue"
                pieces = [body[:len(body) // 2], body[len(body) // 2:]]
            else:
                bounds = [0, *cuts_for(i, len(data)), len(data)]
                pieces = [data[a:b] for a, b in pairwise(bounds)]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)  # each piece its own segment, as often as the loop allows
            got, answer = await read_answer(reader)
    except TimeoutError:
        return "lost", f"call {i}: no answer within {CALL_TIMEOUT_S} s"
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        return "lost", f"call {i}: {error!r}"
    finally:
        if writer is not None:
            writer.close()
    if got == 503:
        return "refused", answer.decode("utf-8", "replace")
    if got != status or must not in answer:
        return "corrupted", f"call {i} ({data[:40]!r}…): {answer.decode('utf-8', 'replace')}"
    return "ok", ""


async def calls(port: int, total: int, burst: int) -> dict[str, list[str]]:
    outcomes: dict[str, list[str]] = {"ok": [], "refused": [], "corrupted": [], "lost": []}
    for start in range(0, total, burst):
        for outcome, what in await asyncio.gather(*(call(port, i) for i in range(start, min(total, start + burst)))):
            outcomes[outcome].append(what)
    return outcomes


def test_split_management_calls_through_two_workers_are_all_answered_whole(serve):
    outcomes = asyncio.run(calls(serve.port, CALLS, BURST))
    summary = {k: len(v) for k, v in outcomes.items()}
    samples = {k: v[:3] for k, v in outcomes.items() if k != "ok" and v}
    assert summary["ok"] == CALLS, f"{summary}; for example {samples}"
    log = serve.log.read_text()
    assert "could not pass a connection" not in log
    assert "Traceback" not in log


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


def test_a_draining_server_accepts_no_new_connection_in_any_process(serve):
    # A request in flight keeps the main process draining: a management call whose body has not
    # all come (it is served by the main process, wherever it landed).
    # It asks `Expect: 100-continue` and waits for the 100: then the main process has it in hand
    # (were SIGTERM sent before the hand-off, nothing would be in flight to drain).
    busy = socket.create_connection(("127.0.0.1", serve.port), timeout=30)
    busy.sendall(f"POST /v2/endpoint/alice HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Length: 100\r\nExpect: 100-continue\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += busy.recv(1024) or b"(closed)\r\n\r\n"
    assert head.startswith(b"HTTP/1.1 100"), head
    busy.sendall(b"{")
    try:
        serve.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "in flight get up to" in serve.log.read_text(), 30, "the drain to start")
        # Every process stops listening at the start of the drain: twenty connections in a row
        # refused (were one process still listening, each would reach it with odds of 1/2).
        wait_for(lambda: all(refused(serve.port) for _ in range(20)), 20, "every process to stop accepting")
        assert serve.process.poll() is None  # still draining the request in flight
    finally:
        busy.close()
    assert serve.process.wait(timeout=60) == 0
    serve.process = None
    assert "Traceback" not in serve.log.read_text()
