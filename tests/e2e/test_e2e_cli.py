"""The `endpointd` command line as a new user meets it, against a real `endpointd serve` on the real
Docker engine: run from elsewhere than the data dir, piped into `head`, and stopped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi

from tests.serve_process import ENDPOINTD, Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve(tmp_path, docker_engine):
    s = Serve(tmp_path / "data", admin_token="test-admin-token")
    s.start()
    yield s
    s.close()


def create(serve: Serve, name: str, **kw):
    api = HfApi(endpoint=serve.url, token=serve.admin_token)
    old, hub_constants.INFERENCE_ENDPOINTS_ENDPOINT = hub_constants.INFERENCE_ENDPOINTS_ENDPOINT, f"{serve.url}/v2"
    try:
        return api.create_inference_endpoint(
            name, repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
            instance_type="intel-icl", region="local", vendor="local", custom_image=ECHO, **kw,
        )
    finally:
        hub_constants.INFERENCE_ENDPOINTS_ENDPOINT = old


def user_env(**extra: str) -> dict[str, str]:
    """A new user's shell: none of endpointd's variables set, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENDPOINTD_")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def test_outside_the_data_dir_the_cli_says_it_found_no_token_rather_than_401(serve, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([*ENDPOINTD, "endpoints", "ls", "--url", serve.url], cwd=elsewhere, env=user_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "401" not in done.stderr
    assert "--data-dir" in done.stderr and "--token" in done.stderr
    assert str(elsewhere / "endpointd-data") in done.stderr  # where it looked
    # Given the data dir, the same call works.
    done = subprocess.run([*ENDPOINTD, "endpoints", "ls", "admin", "--url", serve.url, "--data-dir", str(serve.data_dir)],
                          cwd=elsewhere, env=user_env(ENDPOINTD_ADMIN_TOKEN=serve.admin_token),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_describe_into_a_pipe_closed_early_ends_without_a_traceback(serve):
    create(serve, "piped", min_replica=0, max_replica=1)
    process = subprocess.Popen([*ENDPOINTD, "endpoints", "describe", "admin/piped"], env=serve.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # `| head` that has read what it wanted
    _, err = process.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert process.returncode == 0


def _docker(*args: str) -> list[str]:
    return subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=True, check=True).stdout.split()


def test_stop_ends_this_serve_by_its_pid_says_what_stays_and_remove_takes_it_all(serve):
    create(serve, "kept", min_replica=1, max_replica=1)
    wait_for(lambda: serve.containers(), 120, "a replica container")
    [container] = serve.containers()
    pid = serve.process.pid

    done = subprocess.run([*ENDPOINTD, "stop", "--data-dir", str(serve.data_dir)], env=user_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert serve.process.wait(timeout=30) is not None  # the process is gone
    serve.process = None
    out = done.stdout
    assert f"pid {pid}" in out
    assert container in out and "admin/kept" in out  # what is left running, by name
    assert "--remove" in out  # and how to remove it
    assert serve.containers() == [container]  # left for the next serve to adopt

    again = subprocess.run([*ENDPOINTD, "stop", "--data-dir", str(serve.data_dir)], env=user_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "no endpointd serve" in again.stdout

    removed = subprocess.run([*ENDPOINTD, "stop", "--remove", "--data-dir", str(serve.data_dir)], env=user_env(),
                             capture_output=True, text=True, timeout=120)
    assert removed.returncode == 0, removed.stderr
    assert container in removed.stdout
    assert serve.containers(all_states=True) == []
    assert _docker("network", "ls", "-q", "--filter", f"label=endpointd.instance={serve.instance}") == []


def test_stop_without_a_data_dir_says_where_it_looked(tmp_path):
    done = subprocess.run([*ENDPOINTD, "stop"], cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert f"no endpointd serve runs on {tmp_path / 'endpointd-data'}" in done.stdout
    assert "--data-dir" in done.stdout
