"""Usage on the real Docker engine with the echo engine, across a kill -9 of `endpointd serve`: the
replica-seconds after the restart differ from the truth — how long the replica has held its
place, from its creation (its timeline's first entry: a starting replica counts) to now — by at
most one usage interval, and are no less than Docker's own count of its container's running time,
less an interval; the requests and bytes written before the kill are all there; the echo engine
keeps no token counts, so tokens are unknown; cost follows [rates]; and `endpointd usage --csv`
says the same."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
INTERVAL_S = 1.0
RUN_S = 5.0  # how long the replica runs before the kill, at least
# How long endpointd stays down, at least: several intervals, so that a restart that counted
# nothing of the downtime would be off by more than one (the replica runs on meanwhile).
DOWN_S = 4 * INTERVAL_S
RATE = 0.12  # per hour of intel-icl x1
REQUESTS = 5
BODY = b'{"inputs": "usage is counted"}'


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token",
              extra_env={"ENDPOINTD_USAGE_INTERVAL_S": str(INTERVAL_S), "ENDPOINTD_RATES": f"intel-icl={RATE}"})
    s.alice = s.add_user("alice")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    yield s
    s.close()


def get(serve: Serve, path: str) -> dict:
    request = urllib.request.Request(f"{serve.url}{path}", headers={"Authorization": f"Bearer {serve.alice}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def usage(serve: Serve, **query) -> dict:
    return get(serve, f"/v2/usage/alice?{urllib.parse.urlencode(query)}")


def unix(text: str) -> float:
    """An RFC 3339 time with up to nanoseconds (Docker's) as unix seconds."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


def started_at(container: str) -> float:
    """When Docker started the container's process."""
    return unix(subprocess.run(["/usr/bin/docker", "inspect", "--format", "{{.State.StartedAt}}", container],
                               capture_output=True, text=True, check=True).stdout.strip())


def stored(serve: Serve) -> tuple[int, float]:
    """Requests and replica-seconds in the store (what a kill -9 cannot take back), read as another
    process reads it."""
    with sqlite3.connect(f"file:{serve.data_dir / 'endpointd.db'}?mode=ro", uri=True) as db:
        (n,) = db.execute("SELECT COALESCE(SUM(requests), 0) FROM usage_traffic WHERE namespace = 'alice'").fetchone()
        (s,) = db.execute("SELECT COALESCE(SUM(seconds), 0) FROM usage_replicas WHERE namespace = 'alice'").fetchone()
    return n, s


def test_usage_after_a_kill_differs_from_the_truth_by_at_most_one_interval(serve):
    created = time.time()
    endpoint = HfApi(endpoint=serve.url, token=serve.alice).create_inference_endpoint(
        "metered", repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", type="private", custom_image=ECHO,
        min_replica=1, max_replica=1,
    )
    # Not endpoint.wait(): it sends a request of its own to the endpoint's URL.
    wait_for(lambda: endpoint.fetch().status == "running", 120, "the endpoint to run")
    (container,) = serve.containers("label=endpointd.name=metered")
    (replica,) = get(serve, "/v2/endpoint/alice/metered/replica")["items"]
    placed = unix(replica["createdAt"])  # the replica's slot was made: it held its place from then
    answers = []
    for _ in range(REQUESTS):
        request = urllib.request.Request(f"{serve.url}/endpoints/alice/metered/generate", data=BODY,
                                         headers={"Authorization": f"Bearer {serve.alice}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            answers.append(r.read())
    def written() -> bool:
        requests, seconds = stored(serve)
        return requests == REQUESTS and seconds >= RUN_S

    wait_for(written, 60, "the requests and a few seconds of the replica to be written")

    serve.stop(signal.SIGKILL)
    killed = time.time()
    wait_for(lambda: time.time() - killed >= DOWN_S, DOWN_S + 5, "endpointd to have been down a while")
    serve.start()  # the replica ran on meanwhile; the new serve adopts it
    assert serve.containers("label=endpointd.name=metered") == [container]
    wait_for(lambda: usage(serve, **{"from": str(int(created) - 60)})["total"]["replicaSeconds"] > killed - placed,
             30, "the usage to cover the time before the kill")

    answer = usage(serve, **{"from": str(int(created) - 60)})
    now = time.time()
    truth = now - placed
    [metered] = answer["endpoints"]
    total = metered["total"]
    assert abs(total["replicaSeconds"] - truth) <= INTERVAL_S, (total["replicaSeconds"], truth)
    assert total["replicaSeconds"] >= now - started_at(container) - INTERVAL_S  # Docker's count, less an interval
    assert total["replicas"][0]["instanceType"] == "intel-icl" and total["replicas"][0]["ratePerHour"] == RATE
    assert total["cost"] == pytest.approx(total["replicaSeconds"] / 3600 * RATE, abs=2e-6)
    assert total["requests"] == REQUESTS  # written before the kill: none lost
    assert (total["bytesIn"], total["bytesOut"]) == (REQUESTS * len(BODY), sum(len(a) for a in answers))
    assert total["tokensIn"] is None and total["tokensOut"] is None  # the echo engine counts no tokens
    assert answer["unpriced"] == []

    rows = list(csv.DictReader(io.StringIO(serve.cli("usage", "alice", "--from", str(int(created) - 60),
                                                     "--token", serve.alice, "--csv"))))
    assert {row["endpoint"] for row in rows} == {"metered"}
    assert sum(float(row["replica_seconds"]) for row in rows) >= total["replicaSeconds"]  # read a moment later
    assert sum(int(row["requests"]) for row in rows) == REQUESTS
