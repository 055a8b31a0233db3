"""Running `endpointd serve` as a real process for end-to-end tests, and stopping what it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ENDPOINTD = [sys.executable, "-m", "autoscaler.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Serve:
    def __init__(self, data_dir: Path, admin_token: str, extra_env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.admin_token = admin_token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The model directory below is the operator's model root; 2-core test machines run more
        # x1 replicas than they have CPUs, so CPU limits may add up to 8 times the host's.
        self.env = {**os.environ, "ENDPOINTD_ADMIN_TOKEN": admin_token, "ENDPOINTD_DATA_DIR": str(data_dir),
                    "ENDPOINTD_PORT": str(self.port), "ENDPOINTD_MODEL_ROOTS": str(data_dir.parent / "models"),
                    "ENDPOINTD_CPU_OVERCOMMIT": "8", **(extra_env or {})}
        self.log = data_dir / "serve.log"
        self.process: subprocess.Popen | None = None
        self._users: set[str] = set()
        # A local model repository (mounted read-only at /repository; the echo engine ignores it).
        model = data_dir.parent / "models" / "model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text("{}")
        self.model = str(model)

    def cli(self, *args: str) -> str:
        done = subprocess.run([*ENDPOINTD, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"endpointd {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def add_user(self, name: str, org: str | None = None, *scope: str) -> str:
        """`endpointd users add` (once per name) and a token of that user (with `--scope`s), returned."""
        if name not in self._users:
            self.cli("users", "add", name, *(("--org", org) if org else ()))
            self._users.add(name)
        args = [a for s in scope for a in ("--scope", s)]
        return self.cli("tokens", "create", name, *args).strip().splitlines()[-1]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")
        self.process = subprocess.Popen([*ENDPOINTD, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT)

        def up():
            if self.process.poll() is not None:
                raise AssertionError(f"endpointd serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            request = urllib.request.Request(
                f"{self.url}/api/whoami-v2", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(up, 30, "endpointd serve to answer")

    @property
    def instance(self) -> str:
        """The instance id this endpointd labels its containers with (made at its first start)."""
        return (self.data_dir / "instance-id").read_text().strip()

    def containers(self, *filters: str, all_states: bool = False) -> list[str]:
        """Names of this endpointd's containers (running only, unless `all_states`)."""
        cmd = ["/usr/bin/docker", "ps", "--format", "{{.Names}}", "--filter", f"label=endpointd.instance={self.instance}"]
        for f in filters:
            cmd += ["--filter", f]
        if all_states:
            cmd.append("-a")
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()

    def remove_containers(self) -> None:
        """Engine containers outlive endpointd by design; a test removes its own at the end."""
        names = self.containers(all_states=True)
        if names:
            subprocess.run(["/usr/bin/docker", "rm", "-f", *names], capture_output=True, check=True)
        networks = subprocess.run(
            ["/usr/bin/docker", "network", "ls", "-q", "--no-trunc", "--filter", f"label=endpointd.instance={self.instance}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        if networks:
            subprocess.run(["/usr/bin/docker", "network", "rm", *networks], capture_output=True)

    def close(self) -> None:
        """Test teardown: stop endpointd if it runs, then remove the containers it left."""
        if self.process is not None:
            self.stop()
        self.remove_containers()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        self.process = None
        return code
