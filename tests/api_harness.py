"""The management API in process, on a real store, over real HTTP: the controller is the
in-memory control world (fake runtime, hand-driven launcher), so no Docker is needed."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.api.app import add_api
from autoscaler.api.base import Limits
from autoscaler.api.endpoints import ManagementApi
from autoscaler.control.plane import ServeControlPlane
from autoscaler.store.sealing import Sealer
from autoscaler.store.store import Store
from engines.gpus import GpuAllocator
from engines.model_roots import ModelRoots
from proxy.core.config import ProxyConfig
from proxy.core.pipeline import Pipeline
from proxy.management.app import add_proxy

from .control_world import World

OWN_NAMES = frozenset({"127.0.0.1", "localhost", "endpointd.example.org"})


class ApiWorld:
    async def start(self, tmp_path, *, max_replicas: int = 32, own_names: frozenset[str] = OWN_NAMES,
                    usage_meter=None) -> ApiWorld:
        """`usage_meter`: what serves the usage route (built over `self.store` by the caller's
        `usage_meter(store)`), else none."""
        self.data = tmp_path / "data"
        self.models = tmp_path / "models"
        self.models.mkdir(parents=True)
        (self.models / "tiny").mkdir()
        (self.models / "tiny" / "config.json").write_text("{}")
        self.store = await Store.open(self.data / "endpointd.db")
        await self.store.add_user("alice", ["acme"])
        await self.store.add_user("bob")
        self.tokens = {
            "alice": (await self.store.create_token("alice"))[0],
            "bob": (await self.store.create_token("bob"))[0],
            "admin": await self.store.ensure_admin(None),
        }
        plane = ServeControlPlane(self.store.verify_token)
        self.world = World(routes=plane)
        self.world.launcher.auto = True
        self.api = ManagementApi(
            self.store, self.world.controller,
            endpoint_url=lambda ns, name: f"http://endpointd.example.org/endpoints/{ns}/{name}",
            check=lambda spec: None,
            limits=Limits(
                roots=ModelRoots.configure([str(self.models)], self.data), own_names=own_names,
                max_replicas=max_replicas, never_fits=lambda spec: None,
                needs=lambda spec: self.world.launcher.needs(None),  # what the controller counts too
            ),
            sealer=Sealer.open(self.data),
            inventory=[], allocator=GpuAllocator([]), cpu_count=2, memory_bytes=8 << 30,
        )
        app = web.Application()
        self.pipeline = Pipeline(ProxyConfig(), plane)
        add_proxy(app, self.pipeline)
        # The logs and metrics routes have tests of their own.
        add_api(app, self.api, logs=None, analytics=None, limits=self.pipeline.limits,
                usage_meter=usage_meter(self.store) if usage_meter is not None else None)
        self.client = TestClient(TestServer(app, host="127.0.0.1"))
        await self.client.start_server()
        return self

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def body(self, name: str = "e1", **model) -> dict:
        return {
            "name": name, "type": "private",
            "provider": {"vendor": "local", "region": "local"},
            "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x1",
                        "scaling": {"minReplica": 1, "maxReplica": 1}},
            "model": {"repository": str(self.models / "tiny"), "framework": "custom",
                      "image": {"custom": {"url": "endpointd/echo:latest"}}, **model},
        }

    async def close(self) -> None:
        await self.client.close()
        await self.world.close()
        await self.store.close()
