"""Progress of long waits, as the status message says it: a download's bytes done of the total and
an image pull's layers and bytes, each ending in "(N %)" for the dashboard's bar. The pull's
progress is read from Docker's pull stream; no registry can be reached here, so the stream is a
recording of the documented format (`POST /images/create`), replayed through the real runtime."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.progress import PullProgress, download_key, download_message, percent, size
from tests.docker_fixtures import docker_key, docker_runtime  # noqa: F401 - fixtures

MIB = 1 << 20


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (int(1.5 * MIB), "1.5 MiB"), (3 << 30, "3.0 GiB"), (-5, "0 B"),
])
def test_sizes_read_as_people_read_them(n, text):
    assert size(n) == text


@pytest.mark.parametrize("done, total, expected", [
    (0, 100, 0), (41, 100, 41), (999, 1000, 99),  # 99.9 % is not done: never 100 before the end
    (1000, 1000, 100), (5, 0, 0), (150, 100, 100),
])
def test_percent_is_whole_and_says_100_only_when_done(done, total, expected):
    assert percent(done, total) == expected


@pytest.mark.parametrize("done, total, text", [
    (10 * MIB, 24 * MIB, "fetching model artifacts of org/m: 10.0 MiB of 24.0 MiB (41 %)"),
    (24 * MIB, 24 * MIB, "fetching model artifacts of org/m: 24.0 MiB of 24.0 MiB (100 %)"),
    (3 * MIB, None, "fetching model artifacts of org/m: 3.0 MiB so far"),
    # a file that starts later adds to the total: never more done than the total shown
    (30 * MIB, 24 * MIB, "fetching model artifacts of org/m: 30.0 MiB of 30.0 MiB (100 %)"),
])
def test_a_download_says_its_bytes_done_of_the_total(done, total, text):
    assert download_message("org/m", done, total) == text


def test_a_download_is_reported_once_per_percent_not_per_chunk():
    keys = {download_key(done, 1000 * MIB) for done in range(0, 1000 * MIB + 1, MIB // 4)}
    assert len(keys) == 101


def line(status, layer=None, current=None, total=None):
    out = {"status": status}
    if layer:
        out["id"] = layer
    if current is not None:
        out["progressDetail"] = {"current": current, "total": total}
        out["progress"] = f"[=>   ] {current}B/{total}B"
    elif layer:
        out["progressDetail"] = {}
    return out


# `docker pull` of a two-layer image, one layer already on the host; as the engine streams it.
RECORDED = [
    line("Pulling from library/engine", "v1"),
    line("Already exists", "5b1f3f0a1c2d"),
    line("Pulling fs layer", "8a9e2b7c6d5f"),
    line("Pulling fs layer", "c3d4e5f6a7b8"),
    line("Waiting", "c3d4e5f6a7b8"),
    *[line("Downloading", "8a9e2b7c6d5f", c * MIB, 20 * MIB) for c in (1, 2, 5, 10, 15, 20)],
    line("Verifying Checksum", "8a9e2b7c6d5f"),
    line("Download complete", "8a9e2b7c6d5f"),
    *[line("Downloading", "c3d4e5f6a7b8", c * MIB // 2, 4 * MIB) for c in (1, 1, 2, 8)],  # the same value twice
    line("Download complete", "c3d4e5f6a7b8"),
    *[line("Extracting", "8a9e2b7c6d5f", c * MIB, 20 * MIB) for c in (4, 12, 20)],
    line("Pull complete", "8a9e2b7c6d5f"),
    line("Extracting", "c3d4e5f6a7b8", 4 * MIB, 4 * MIB),
    line("Pull complete", "c3d4e5f6a7b8"),
    line("Digest: sha256:" + "ab" * 32),
    line("Status: Downloaded newer image for example.org/engine:v1"),
]
PULL = re.compile(r"pulling image example\.org/engine:v1: (\d) of 3 layers done(?:, ([\d.]+) MiB of ([\d.]+) MiB "
                  r"downloaded)? \((\d+) %\)")


def test_a_pull_says_its_layers_and_bytes_and_its_percent_only_grows():
    pulled, messages = PullProgress("example.org/engine:v1"), []
    for item in RECORDED:
        pulled.feed(item)
        messages.append(pulled.message())
    assert messages[:5] == ["pulling image example.org/engine:v1",
                            "pulling image example.org/engine:v1: 1 layers, 1 already on this host",
                            "pulling image example.org/engine:v1: 2 layers, 1 already on this host",
                            "pulling image example.org/engine:v1: 3 layers, 1 already on this host",
                            "pulling image example.org/engine:v1: 3 layers, 1 already on this host"]
    found = [PULL.fullmatch(m) for m in messages[5:]]  # once a layer is being pulled, every layer is known
    assert all(found), messages
    percents = [int(m[4]) for m in found]
    assert percents == sorted(percents) and percents[0] == 34 and percents[-1] == 100  # the layer present counts
    assert [int(m[1]) for m in found][-1] == 3 and (found[-1][2], found[-1][3]) == ("24.0", "24.0")
    assert 0 < percents[len(percents) // 2] < 100


async def test_the_runtime_reports_a_pull_once_per_change_from_dockers_stream(docker_runtime, monkeypatch):  # noqa: F811
    async def replay(path, method="GET", *, params, data=None, headers=None):
        assert (path, method, params) == ("images/create", "POST", {"fromImage": "example.org/engine:v1"})
        for item in RECORDED:
            yield json.loads(json.dumps(item))

    async def absent(image):
        return False

    monkeypatch.setattr(docker_runtime, "_json_lines", replay)
    monkeypatch.setattr(docker_runtime, "image_exists", absent)
    reported: list[str] = []
    await docker_runtime.ensure_image("example.org/engine:v1", progress=reported.append)
    assert reported[0] == "pulling image example.org/engine:v1"
    assert PULL.fullmatch(reported[-1])[4] == "100"
    assert len(reported) == len(set(reported)) < len(RECORDED)  # no report repeats, none per unchanged chunk
    assert [int(PULL.fullmatch(m)[4]) for m in reported[1:] if PULL.fullmatch(m)] == sorted(
        int(PULL.fullmatch(m)[4]) for m in reported[1:] if PULL.fullmatch(m))


@st.composite
def pull_streams(draw):
    """Docker's stream for 1-5 layers: every layer named first, then each missing layer's own lines
    in their order (download chunks, checksum, extraction chunks, done), interleaved at random."""
    count = draw(st.integers(1, 5))
    present = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    named = [line("Already exists" if here else "Pulling fs layer", f"l{i}") for i, here in enumerate(present)]
    queues = []
    for i, here in enumerate(present):
        if here:
            continue
        total = draw(st.integers(1, 1 << 30))
        chunks = sorted(draw(st.lists(st.integers(0, total), max_size=5)))
        queues.append([*[line("Downloading", f"l{i}", c, total) for c in chunks], line("Download complete", f"l{i}"),
                       *[line("Extracting", f"l{i}", c, total) for c in chunks], line("Pull complete", f"l{i}")])
    stream = list(named)
    while queues:
        queue = queues[draw(st.integers(0, len(queues) - 1))]
        stream.append(queue.pop(0))
        queues = [q for q in queues if q]
    return stream


@given(pull_streams())
def test_a_pulls_percent_never_goes_back_whatever_the_interleaving(stream):
    pulled, percents = PullProgress("img"), []
    for item in stream:
        pulled.feed(item)
        percents.append(pulled.percent())
    assert percents == sorted(percents)
    assert pulled.key()[0] == pulled.key()[1]  # every layer done
    assert percents[-1] == (100 if pulled.pulling else 0)
