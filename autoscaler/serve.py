"""`endpointd serve`: the management API, the proxy and the controller on one uvloop event loop
and one listener, with SQLite as the store and the local Docker engine as the runtime."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from engines import artifacts, hardware, presets
from engines import downloads as hub_downloads
from engines.capacity import HostCapacity
from engines.model_roots import ModelRoots
from engines.gpu_images import gpu_images
from engines.presets import with_local_images
from engines.docker import DockerRuntime
from engines.gpus import GpuAllocator, GpuSampler, load_nvml, read_inventory
from engines.runtime import EndpointKey
from proxy.management.app import add_proxy
from proxy.core.config import ProxyConfig
from proxy.core.control import Identity
from proxy.core.pipeline import PROBE_HEADER, Pipeline

from autoscaler.store import datadir
from autoscaler.observe.analytics import Analytics, AnalyticsConfig
from autoscaler.api.app import Limits, ManagementApi, add_api
from autoscaler.api.dashboard import add_dashboard
from autoscaler.control.host_names import names_of_this_host, normal
from autoscaler.model.catalog import load_catalog
from autoscaler.config import EnginesConfig, ScalingConfig, ServeConfig
from autoscaler.control.controller import Controller
from autoscaler.model.intent import Intent, Signals
from autoscaler.control.journal import Journal
from autoscaler.control.launcher import EngineLauncher
from autoscaler.observe.logs import Collecting, LogsConfig, LogService
from autoscaler.control.owner import Failure
from autoscaler.scaling.policy import Scaling
from autoscaler.store.sealing import Sealer, needs_sealing
from autoscaler.scaling.scaler import Scaler
from autoscaler.control.plane import StoreControlPlane
from autoscaler.store import tokens
from autoscaler.model.state import Status
from autoscaler.store.store import Store

log = logging.getLogger("endpointd")

ADMIN_TOKEN_FILE = "admin-token"
INSTANCE_FILE = "instance-id"
DEFAULT_IDLE_MIN = 15  # the reference's EndpointScaling.scaleToZeroTimeout default
STORE_FILE = "endpointd.db"
# Time the controller's probe through the proxy may take; the replica already answered directly.
PROBE_TIMEOUT_S = 10.0


def instance_id(data_dir: Path) -> str:
    """A stable id of this endpointd (its data directory), made once and kept there."""
    path = data_dir / INSTANCE_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(8) + "\n")
    return path.read_text().strip()


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


async def seal_plain_secrets(store: Store, sealer: Sealer) -> None:
    """Migrate a store from before sealing: seal every secret still in plain text, then compact
    so that the plain text is gone from the WAL and free pages too."""
    migrated = 0
    for record in await store.list_endpoints():
        if needs_sealing(record.spec):
            await store.update_intent(record.namespace, record.name, record.generation, spec=sealer.seal(record.spec))
            migrated += 1
    if migrated:
        await store.compact()
        log.info("sealed the secrets of %d endpoint(s) that an older endpointd stored in plain text", migrated)


async def bootstrap_admin(store: Store, data_dir: Path) -> None:
    """The admin token: ENDPOINTD_ADMIN_TOKEN when set (a generated one is then revoked, and its
    file removed), else generated once into a 0600 file."""
    from_env = os.environ.get("ENDPOINTD_ADMIN_TOKEN") or None
    generated = await store.ensure_admin(from_env)
    path = data_dir / ADMIN_TOKEN_FILE
    if from_env is not None and path.exists():
        path.unlink()
        log.info("ENDPOINTD_ADMIN_TOKEN is set: the generated admin token is revoked and %s removed", path)
    elif generated:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generated + "\n")
        log.info("generated the admin token; it is in %s", path)
    elif path.exists():
        log.info("the admin token is in %s", path)


def scaling_of(intent: Intent | None) -> Scaling | None:
    """The policy's view of an endpoint's `compute.scaling`."""
    if intent is None or intent.spec is None:
        return None
    s = intent.spec.compute.scaling
    return Scaling(
        min_replicas=s.min_replica, max_replicas=s.max_replica, metric=str(s.measure.metric),
        threshold=s.measure.threshold,
        idle_timeout_min=(s.scale_to_zero_timeout_min or DEFAULT_IDLE_MIN) if s.min_replica == 0 else None,
    )


async def build_app(
    proxy_config: ProxyConfig, serve_config: ServeConfig, scaling_config: ScalingConfig = ScalingConfig(),
    logs_config: LogsConfig = LogsConfig(), analytics_config: AnalyticsConfig = AnalyticsConfig(),
    engines_config: EnginesConfig = EnginesConfig(),
) -> web.Application:
    """The whole of endpointd as one aiohttp app. What has a lifetime (the reconcile loop, the
    connections to Docker and SQLite) is closed by the app's cleanup context."""
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

    plane = StoreControlPlane(verify)
    probe_secret = secrets.token_urlsafe(32)  # marks the controller's probes: never counted as demand
    pipeline = Pipeline(proxy_config, plane, probe_secret=probe_secret)
    runtime = DockerRuntime(publish_host=serve_config.publish_host, instance=instance_id(data_dir))
    default_images = await with_local_images(engines_config.images, runtime.image_exists)
    for key, image in default_images.items():
        if key not in engines_config.images:
            logging.getLogger("endpointd").info("the %s preset runs %s, built on this host", key, image)
    inventory = read_inventory()
    default_images.update(await gpu_images(inventory, engines_config.images, runtime.image_exists))
    allocator = GpuAllocator(inventory)
    nvml = load_nvml() if inventory else None
    gpu_sampler = GpuSampler(nvml, inventory) if nvml is not None else None
    cpu_count, memory_bytes = hardware.host_cpu_count(), hardware.host_memory_bytes()
    capacity = HostCapacity(allocator, cpu_count, memory_bytes, serve_config.cpu_overcommit)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S))
    launcher = EngineLauncher(
        runtime, session, inventory=inventory, allocator=allocator, downloads=downloads,
        ready_deadline_s=serve_config.ready_deadline_s, cpu_count=cpu_count, memory_bytes=memory_bytes,
        gpu_sampler=gpu_sampler, default_images=default_images or None,
    )

    async def save_status(uid: str, status: Status) -> None:
        await store.save_status(uid, status.state, status.message)

    async def save_signals(uid: str, signals: Signals) -> None:
        await store.save_signals(uid, signals.woken_at, signals.idle_at)

    async def save_failure(uid: str, failure: Failure | None) -> None:
        await store.save_failure(uid, *((failure.revision, failure.error) if failure else (None,)))

    proxy_base = f"{scheme(proxy_config)}://{proxy_config.host}:{proxy_config.port}/endpoints"

    async def probe(intent: Intent) -> bool:
        """`running` only once the health route answers 200 through the proxy itself. A custom
        image that declares no health route is running once a replica accepts connections (the
        launcher waited for that), as the reference treats it ready at start."""
        if not presets.declares_health_route(intent.spec.model.image):
            return True
        url = f"{proxy_base}/{intent.key.namespace}/{intent.key.name}{intent.health_route}"
        headers = {"Authorization": f"Bearer {internal_token}", PROBE_HEADER: probe_secret}
        try:
            # ssl=False: the probe talks to this very process over loopback; its certificate is
            # for the names callers use, which the listen address need not be.
            async with session.get(url, headers=headers, ssl=False) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    controller: Controller | None = None

    def uid_of(key: EndpointKey) -> str | None:
        intent = controller.intent(key) if controller is not None else None
        return intent.uid if intent is not None else None

    def secrets_of(key: EndpointKey) -> list[str]:
        intent = controller.intent(key) if controller is not None else None
        if intent is None or intent.spec is None:
            return []
        return list(intent.spec.model.secrets.values())

    logs = LogService(runtime, data_dir, uid_of=uid_of, secrets_of=secrets_of, config=logs_config)

    async def forget(uid: str) -> None:
        await logs.forget(uid)
        await analytics.forget(uid)

    journal = Journal(store)  # events and replica timelines, kept across restarts
    controller = Controller(
        Collecting(runtime, logs), launcher, plane, on_forget=forget, capacity=capacity,
        events=journal.events, histories=journal.history,
        in_flight=pipeline.counter.replica_loads, probe=probe, save_status=save_status, save_signals=save_signals,
        save_failure=save_failure,
        drain_grace_s=serve_config.drain_grace_s, stop_grace_s=serve_config.stop_grace_s,
        interval_s=serve_config.reconcile_interval_s, liveness_interval_s=serve_config.liveness_interval_s,
        liveness_failures=serve_config.liveness_failures, sweep_interval_s=serve_config.sweep_interval_s,
    )
    plane.bind_waker(controller.wake)

    async def utilization(key: EndpointKey) -> float | None:
        return await launcher.utilization(controller.intent(key), controller.ready_ids(key))

    def engine_load(key: EndpointKey) -> float | None:
        """Running + waiting requests the ready replicas' engines report (None: none reported)."""
        ready = set(controller.ready_ids(key))
        found = [s.signals for rid, s in analytics.engines.latest().items() if rid in ready]
        if not found:
            return None
        return sum((f.queue or 0.0) + (f.running or 0.0) for f in found)

    scaler = Scaler(
        controller, pipeline.counter.snapshot, config=scaling_config.policy(),
        scaling_of=lambda key: scaling_of(controller.intent(key)),
        utilization=utilization, engine_load=engine_load, interval_s=scaling_config.scale_interval_s, registry=pipeline.metrics.registry,
    )
    analytics = Analytics(
        analytics_config, endpoints=controller, runtime=runtime, answers=pipeline.metrics,
        pending=pipeline.counter.snapshot, routes=plane, gpus=allocator, gpu_sampler=gpu_sampler,
        cpu_limit=lambda intent: launcher.needs(intent).cpus or None, data_dir=data_dir,
    )
    pipeline.metrics.registry.register(analytics.collector)
    url_base = base_url(proxy_config, serve_config)
    api = ManagementApi(
        store, controller,
        endpoint_url=lambda ns, name: f"{url_base}/endpoints/{ns}/{name}",
        check=launcher.check, sealer=sealer,
        limits=Limits(
            roots=roots, own_names=await asyncio.to_thread(own_names, proxy_config, serve_config),
            max_replicas=serve_config.max_replicas_per_endpoint,
            never_fits=lambda spec: capacity.never_fits(launcher.needs_of(spec), spec.compute.scaling.min_replica),
        ),
        inventory=inventory, allocator=allocator, cpu_count=cpu_count, memory_bytes=memory_bytes,
        # The launcher's cache: a revision pinned at create from a cached snapshot is the one it fetches.
        describe=lambda repository, revision, ns: artifacts.describe(
            repository, revision, hub_downloads.hub_cache(downloads, ns)),
        present=runtime.image_exists, in_registry=runtime.image_in_registry,
        default_images=default_images or None, catalog=catalog,
    )

    async def reconciling(app: web.Application) -> AsyncIterator[None]:
        await journal.load()
        failures = await store.failures()
        for record in await store.list_endpoints():
            failure = Failure(*failures[record.uid]) if record.uid in failures else None
            controller.apply(api.intent(record), api.signals(record), failure=failure)
        await logs.start()
        await analytics.start()
        adopted = await controller.adopt(await runtime.list())
        log.info("adopted %d running replica(s); serving on %s", len(adopted), url_base)
        tasks = [
            asyncio.create_task(controller.run(), name="reconcile"),
            asyncio.create_task(controller.watch_deaths(), name="watch deaths"),
            asyncio.create_task(controller.run_liveness(), name="liveness"),
            asyncio.create_task(controller.run_sweeps(), name="orphan sweep"),
            asyncio.create_task(scaler.run(), name="scale"),
            asyncio.create_task(journal.run(), name="journal"),
        ]
        try:
            yield
        finally:
            # Engine containers keep running: the next start adopts them.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await controller.close()
            await journal.flush()
            await analytics.close()
            await logs.close()
            await session.close()
            await runtime.close()
            await store.close()
            if gpu_sampler is not None:
                gpu_sampler.close()
            os.close(lock)  # the data directory is free for the next serve

    app = web.Application()
    add_dashboard(app)  # before the proxy's catch-all route
    add_proxy(app, pipeline)
    add_api(app, api, logs=logs, analytics=analytics)
    app.cleanup_ctx.append(reconciling)
    return app
