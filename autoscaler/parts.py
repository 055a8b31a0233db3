"""What `endpointd serve` builds, as one object. `build_parts` opens the data directory and the
store, connects to Docker, and wires the proxy's pipeline, the controller, the scaler, the
journal, the logs, the analytics, the usage meter and the management API. `Parts.start()` hands
the store's endpoints to the controller, adopts the replicas still running and starts every background loop
under `Parts.loops` (which restarts a loop that fails and counts it in /metrics);
`Parts.close()` stops and closes it all again, the loops first and the data directory's lock
last. serve.py makes the aiohttp app of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from autoscaler.api.base import Limits
from autoscaler.api.endpoints import ManagementApi
from autoscaler.config import EnginesConfig, ScalingConfig, ServeConfig
from autoscaler.control.controller import Collaborators, Controller, Records, Timings
from autoscaler.control.host_names import names_of_this_host, normal
from autoscaler.control.journal import Journal
from autoscaler.control.launcher import EngineLauncher
from autoscaler.control.messages import Failure
from autoscaler.control.plane import ServeControlPlane
from autoscaler.model.catalog import load_catalog
from autoscaler.model.intent import Intent
from autoscaler.model.usage import Hardware, Rates
from autoscaler.observe.analytics import Analytics, AnalyticsConfig
from autoscaler.observe.logs import Collecting, LogsConfig, LogService
from autoscaler.observe.loops import Loops
from autoscaler.observe.usage import UsageConfig, UsageMeter
from autoscaler.scaling.policy import PolicyScaling
from autoscaler.scaling.scaler import Scaler
from autoscaler.startup import (
    STORE_FILE,
    bootstrap_admin,
    instance_id,
    seal_plain_secrets,
)
from autoscaler.store import datadir, tokens
from autoscaler.store.sealing import Sealer
from autoscaler.store.store import Store
from engines import artifacts, hardware, presets
from engines import downloads as hub_downloads
from engines.capacity import HostCapacity
from engines.docker import DockerRuntime
from engines.gpu_images import gpu_images
from engines.gpus import Gpu, GpuAllocator, GpuSampler, load_nvml, read_inventory
from engines.model_roots import ModelRoots
from engines.presets import with_local_images
from engines.runtime import EndpointKey
from proxy.core.config import ProxyConfig
from proxy.core.control import Identity
from proxy.core.pipeline import PROBE_HEADER, Pipeline

log = logging.getLogger("endpointd")

DEFAULT_IDLE_MIN = 15  # the reference's EndpointScaling.scaleToZeroTimeout default
# Time the controller's probe through the proxy may take; the replica already answered directly.
PROBE_TIMEOUT_S = 10.0


def scheme(proxy: ProxyConfig) -> str:
    return "https" if proxy.tls_cert else "http"


def base_url(proxy: ProxyConfig, serve: ServeConfig) -> str:
    return (serve.external_url or f"{scheme(proxy)}://{proxy.host}:{proxy.port}").rstrip("/")


def own_names(proxy: ProxyConfig, serve: ServeConfig) -> frozenset[str]:
    """Host names by which callers reach this server itself (its API, /metrics): no endpoint may
    take one as its route.domain. IP literals are refused by the wire format already. Blocks for
    up to host_names.RESOLVE_DEADLINE_S (the resolver): call it off the event loop."""
    names = {proxy.host, "localhost", *names_of_this_host()}
    external = urllib.parse.urlsplit(base_url(proxy, serve)).hostname
    if external:
        names.add(external)
    return frozenset(normal(name) for name in names)


def scaling_of(intent: Intent | None) -> PolicyScaling | None:
    """The policy's view of an endpoint's `compute.scaling`."""
    if intent is None or intent.spec is None:
        return None
    s = intent.spec.compute.scaling
    return PolicyScaling(
        min_replicas=s.min_replica, max_replicas=s.max_replica, metric=s.measure.metric,
        threshold=s.measure.threshold,
        idle_timeout_min=(s.scale_to_zero_timeout_min or DEFAULT_IDLE_MIN) if s.min_replica == 0 else None,
        sleep_after_s=s.sleep_after_s,
    )


@dataclass(frozen=True)
class Parts:
    """Everything serve runs, built once; `start()` and `close()` in that order, once each."""

    lock: int  # the data directory's: held until close() ends
    store: Store
    runtime: DockerRuntime
    session: aiohttp.ClientSession  # the controller's probes through the proxy
    gpu_sampler: GpuSampler | None
    pipeline: Pipeline
    journal: Journal
    logs: LogService
    analytics: Analytics
    usage: UsageMeter
    controller: Controller
    scaler: Scaler
    api: ManagementApi
    loops: Loops
    url_base: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # serve's own loops, while started

    async def start(self) -> None:
        await self.journal.load()
        for namespace, quota in (await self.store.list_quotas()).items():  # before any replica is placed
            self.controller.set_quota(namespace, quota)
        failures = await self.store.failures()
        for record in await self.store.list_endpoints():
            failure = Failure(*failures[record.uid]) if record.uid in failures else None
            self.controller.apply(self.api.intent(record), self.api.signals(record), failure=failure)
        await self.logs.start(self.loops)
        await self.analytics.start(self.loops)
        adopted = await self.controller.adopt(await self.runtime.list())
        log.info("adopted %d running replica(s); serving on %s", len(adopted), self.url_base)
        await self.usage.start(self.loops)  # after adoption: its first sample credits what ran meanwhile
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("reconcile", self.controller.run),
            ("watch deaths", self.controller.watch_deaths),
            ("liveness", self.controller.run_liveness),
            ("orphan sweep", self.controller.run_sweeps),
            ("scale", self.scaler.run),
            ("journal", self.journal.run),
        ]
        self.tasks[:] = [self.loops.start(name, run) for name, run in loops]

    async def close(self) -> None:
        """Engine containers keep running: the next start adopts them."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await self.controller.close()
        await self.usage.close()
        await self.journal.flush()
        await self.analytics.close()
        await self.logs.close()
        await self.session.close()
        await self.runtime.close()
        await self.store.close()
        if self.gpu_sampler is not None:
            self.gpu_sampler.close()
        os.close(self.lock)  # the data directory is free for the next serve

    async def lifetime(self, app: Any) -> AsyncIterator[None]:
        """For aiohttp's cleanup_ctx: started with the app, closed with it."""
        await self.start()
        try:
            yield
        finally:
            await self.close()


@dataclass(frozen=True)
class Machine:
    """This host as the engines see it: its GPUs, CPUs and memory, and the images each preset runs."""

    inventory: list[Gpu]
    allocator: GpuAllocator
    gpu_sampler: GpuSampler | None
    cpu_count: int
    memory_bytes: int
    capacity: HostCapacity
    default_images: dict[str, str]


async def read_machine(runtime: DockerRuntime, engines: EnginesConfig, serve: ServeConfig) -> Machine:
    default_images = await with_local_images(engines.images, runtime.image_exists)
    for key, image in default_images.items():
        if key not in engines.images:
            log.info("the %s preset runs %s, built on this host", key, image)
    inventory = read_inventory()
    default_images.update(await gpu_images(inventory, engines.images, runtime.image_exists))
    allocator = GpuAllocator(inventory)
    nvml = load_nvml() if inventory else None
    cpu_count, memory_bytes = hardware.host_cpu_count(), hardware.host_memory_bytes()
    return Machine(
        inventory, allocator, GpuSampler(nvml, inventory) if nvml is not None else None, cpu_count, memory_bytes,
        HostCapacity(allocator, cpu_count, memory_bytes, serve.cpu_overcommit), default_images,
    )


@dataclass(frozen=True)
class Prober:
    """The controller's readiness probe: `running` only once the health route answers 200
    through the proxy itself, with the controller's own token and the mark that keeps probes out
    of the demand. A custom image that declares no health route is running once a replica accepts
    connections (the launcher waited for that), as the reference treats it ready at start."""

    session: aiohttp.ClientSession
    proxy_base: str
    token: str
    secret: str

    async def __call__(self, intent: Intent) -> bool:
        if not presets.declares_health_route(intent.spec.model.image):
            return True
        url = f"{self.proxy_base}/{intent.key.namespace}/{intent.key.name}{intent.health_route}"
        headers = {"Authorization": f"Bearer {self.token}", PROBE_HEADER: self.secret}
        try:
            # ssl=False: the probe talks to this very process over loopback; its certificate is
            # for the names callers use, which the listen address need not be.
            async with self.session.get(url, headers=headers, ssl=False) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def hardware_of(intent: Intent) -> Hardware:
    """What an endpoint's replicas run on, as usage meters it."""
    compute = intent.spec.compute
    return Hardware(compute.accelerator, compute.instance_type, compute.instance_size)


def store_records(store: Store, journal: Journal, on_forget: Callable[[str], Awaitable[None]]) -> Records:
    """The controller's records in the store (status, signals, failures) and the journal (events,
    replica histories, kept across restarts)."""

    async def save_status(uid, status):
        await store.save_status(uid, status.state, status.message)

    async def save_signals(uid, signals):
        await store.save_signals(uid, signals.woken_at, signals.idle_at)

    async def save_failure(uid, failure):
        await store.save_failure(uid, *((failure.revision, failure.error) if failure else (None,)))

    return Records(save_status, save_signals, save_failure, events=journal.events, histories=journal.history,
                   on_forget=on_forget)


async def build_parts(
    proxy_config: ProxyConfig, serve_config: ServeConfig, scaling_config: ScalingConfig,
    logs_config: LogsConfig, analytics_config: AnalyticsConfig, engines_config: EnginesConfig,
    usage_config: UsageConfig, rates: Rates,
) -> Parts:
    catalog = load_catalog(serve_config.catalog_files)  # every recipe checked first: a bad one stops the start
    data_dir = Path(serve_config.data_dir).resolve()
    datadir.make_private(data_dir)
    lock = datadir.lock(data_dir)  # before anything is touched: a second serve stops here
    roots = ModelRoots.configure(serve_config.model_roots, data_dir)
    downloads = hub_downloads.downloads_dir(data_dir)  # one Hub cache per namespace, under no model root
    downloads.mkdir(mode=0o700, exist_ok=True)
    hub_downloads.move_old_downloads(data_dir / hub_downloads.OLD_DOWNLOADS, downloads)
    sealer = Sealer.open(data_dir)
    store = await Store.open(data_dir / STORE_FILE)
    await bootstrap_admin(store, data_dir)
    await seal_plain_secrets(store, sealer)

    internal_token = secrets.token_urlsafe(32)  # the controller's own, for probes through the proxy
    internal = Identity("endpointd", frozenset(), is_admin=True)

    async def verify(token: str) -> Identity | None:
        if tokens.same(token, internal_token):
            return internal
        return await store.verify_token(token)

    plane = ServeControlPlane(verify)
    probe_secret = secrets.token_urlsafe(32)  # marks the controller's probes: never counted as demand
    pipeline = Pipeline(proxy_config, plane, probe_secret=probe_secret)
    for namespace, override in (await store.rate_limits()).items():  # an admin's, over the config's defaults
        pipeline.limits.set(namespace, override)
    loops = Loops(pipeline.metrics.registry)
    runtime = DockerRuntime(publish_host=serve_config.publish_host, instance=instance_id(data_dir))
    machine = await read_machine(runtime, engines_config, serve_config)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S))
    launcher = EngineLauncher(
        runtime, session, inventory=machine.inventory, allocator=machine.allocator, downloads=downloads,
        ready_deadline_s=serve_config.ready_deadline_s, cpu_count=machine.cpu_count,
        memory_bytes=machine.memory_bytes, gpu_sampler=machine.gpu_sampler,
        default_images=machine.default_images or None,
    )
    proxy_base = f"{scheme(proxy_config)}://{proxy_config.host}:{proxy_config.port}/endpoints"

    # The logs read the controller's intents, and the controller tells them when an endpoint is
    # gone: they see no intent until the controller exists.
    controller: Controller | None = None

    def intent_of(key: EndpointKey) -> Intent | None:
        return controller.intent(key) if controller is not None else None

    def uid_of(key: EndpointKey) -> str | None:
        intent = intent_of(key)
        return intent.uid if intent is not None else None

    def secrets_of(key: EndpointKey) -> list[str]:
        intent = intent_of(key)
        if intent is None or intent.spec is None:
            return []
        return list(intent.spec.model.secrets.values())

    logs = LogService(runtime, data_dir, uid_of=uid_of, secrets_of=secrets_of, config=logs_config)

    async def forget(uid: str) -> None:
        await logs.forget(uid)
        await analytics.forget(uid)

    journal = Journal(store)  # events and replica timelines, kept across restarts
    controller = Controller(
        Collaborators(
            Collecting(runtime, logs), launcher, plane, machine.capacity, in_flight=pipeline.counter.replica_loads,
            probe=Prober(session, proxy_base, internal_token, probe_secret),
        ),
        store_records(store, journal, forget),
        Timings(
            drain_grace_s=serve_config.drain_grace_s, stop_grace_s=serve_config.stop_grace_s,
            interval_s=serve_config.reconcile_interval_s, liveness_interval_s=serve_config.liveness_interval_s,
            liveness_failures=serve_config.liveness_failures, sweep_interval_s=serve_config.sweep_interval_s,
            park_ttl_s=serve_config.park_ttl_s,
        ),
    )
    plane.bind_waker(controller.wake)
    analytics = Analytics(
        analytics_config, endpoints=controller, runtime=runtime, answers=pipeline.metrics,
        pending=pipeline.counter.snapshot, routes=plane, gpus=machine.allocator, gpu_sampler=machine.gpu_sampler,
        cpu_limit=lambda intent: launcher.needs(intent).cpus or None, data_dir=data_dir,
    )
    pipeline.metrics.registry.register(analytics.collector)
    usage = UsageMeter(usage_config, store, holders=controller, traffic=analytics, hardware_of=hardware_of, rates=rates)
    scaler = _scaler(controller, launcher, analytics, pipeline, scaling_config)
    url_base = base_url(proxy_config, serve_config)
    api = ManagementApi(
        store, controller,
        endpoint_url=lambda ns, name: f"{url_base}/endpoints/{ns}/{name}",
        check=launcher.check, sealer=sealer,
        limits=Limits(
            roots=roots, own_names=await asyncio.to_thread(own_names, proxy_config, serve_config),
            max_replicas=serve_config.max_replicas_per_endpoint,
            never_fits=lambda spec: machine.capacity.never_fits(
                launcher.needs_of(spec), spec.compute.scaling.min_replica),
            needs=launcher.needs_of,
        ),
        inventory=machine.inventory, allocator=machine.allocator, cpu_count=machine.cpu_count,
        memory_bytes=machine.memory_bytes,
        # The launcher's cache: a revision pinned at create from a cached snapshot is the one it fetches.
        describe=lambda repository, revision, ns: artifacts.describe(
            repository, revision, hub_downloads.hub_cache(downloads, ns)),
        present=runtime.image_exists, in_registry=runtime.image_in_registry,
        default_images=machine.default_images or None, catalog=catalog,
    )
    return Parts(
        lock=lock, store=store, runtime=runtime, session=session, gpu_sampler=machine.gpu_sampler,
        pipeline=pipeline, journal=journal, logs=logs, analytics=analytics, usage=usage, controller=controller,
        scaler=scaler,
        api=api, loops=loops, url_base=url_base,
    )


def _scaler(
    controller: Controller, launcher: EngineLauncher, analytics: Analytics, pipeline: Pipeline, config: ScalingConfig,
) -> Scaler:
    async def utilization(key: EndpointKey) -> float | None:
        intent = controller.intent(key)  # the scaler asks only of endpoints that exist
        return None if intent is None else await launcher.utilization(intent, controller.ready_ids(key))

    def engine_load(key: EndpointKey) -> float | None:
        """Running + waiting requests the ready replicas' engines report (None: none reported)."""
        ready = set(controller.ready_ids(key))
        found = [s.signals for rid, s in analytics.engines.latest().items() if rid in ready]
        if not found:
            return None
        return sum((f.queue or 0.0) + (f.running or 0.0) for f in found)

    return Scaler(
        controller, pipeline.counter.snapshot, config=config.policy(),
        scaling_of=lambda key: scaling_of(controller.intent(key)),
        utilization=utilization, engine_load=engine_load, interval_s=config.scale_interval_s,
        registry=pipeline.metrics.registry,
    )
