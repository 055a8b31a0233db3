"""The endpoint lifecycle of the management API in the Inference Endpoints v2 wire format: list,
create, get, update, delete, pause, resume, scale-to-zero, and the provider's offer.

Handlers parse and check the request, change the intent in the store, post it to the controller,
record an audit entry, and render the endpoint as the client expects it. Writes to one endpoint
take turns in this process (one lock per endpoint), each applied to a fresh read; the store's
generation check still guards against a write from another process (re-read and re-applied).

On create (and on an update that changes the repository, its revision, the image or the
framework), the model is pinned (`pin`): an unpinned revision becomes the commit it names now
(a local directory: its content hash), and the download pattern is computed for the engine and
framework, so that every replica runs the same files and fetches only those it needs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import huggingface_hub.constants
from aiohttp import web

from autoscaler.api import access, quotas
from autoscaler.api.base import Conflict, Invalid, Limits, NotFound, read_json
from autoscaler.control.controller import Controller
from autoscaler.control.host_names import normal
from autoscaler.control.keyed_locks import KeyedLocks
from autoscaler.model import wire
from autoscaler.model.catalog import load_catalog
from autoscaler.model.intent import Intent, Signals
from autoscaler.model.state import State
from autoscaler.store import store as store_mod
from autoscaler.store.sealing import Sealer
from autoscaler.store.store import Store
from engines import artifacts, hardware, presets
from engines.availability import ImageInventory
from engines.capacity import Need
from engines.gpus import Gpu, GpuAllocator
from engines.runtime import EndpointKey
from proxy.core.forwarding import REQUEST_ID, request_id

# A write that another process's write (e.g. the CLI's) got ahead of is re-applied to a fresh read
# this many times before a 409; writes from this process take turns and never race each other.
MUTATE_ATTEMPTS = 10

# (repository, revision, namespace): the namespace's own Hub cache answers when the Hub does not.
Describe = Callable[[str, "str | None", str], Awaitable[artifacts.RepoFacts]]


def default_describe() -> Describe:
    """Local directories as they are; Hub ids from the Hub, else huggingface_hub's default cache."""
    cache = Path(huggingface_hub.constants.HF_HUB_CACHE)
    return lambda repository, revision, namespace: artifacts.describe(repository, revision, cache)


class ManagementApi:
    def __init__(
        self,
        store: Store,
        controller: Controller,
        *,
        endpoint_url: Callable[[str, str], str],
        check: Callable[[wire.EndpointSpec], None],
        limits: Limits,
        sealer: Sealer,
        inventory: list[Gpu],
        allocator: GpuAllocator,
        cpu_count: int,
        memory_bytes: int,
        describe: Describe | None = None,
        present: Callable[[str], Awaitable[bool]] | None = None,
        in_registry: Callable[[str], Awaitable[str | None]] | None = None,
        default_images: Mapping[str, str] | None = None,
        catalog: Any = None,
    ) -> None:
        """`describe(repository, revision, namespace)`: what a repository is at a revision (artifacts.describe);
        `present(image)`: whether an image is on this host; `in_registry(image)`: None when its
        registry has it, else why not (together: what this host can run); `default_images`: the
        operator's pinned engine images; `catalog`: the recipes (default: the shipped ones)."""
        self.describe = describe or default_describe()
        self.images = ImageInventory(present, in_registry) if present is not None else None
        self.default_images = default_images
        self.catalog = load_catalog(()) if catalog is None else catalog
        self.store = store
        self.controller = controller
        self.endpoint_url = endpoint_url
        self.check = check
        self.limits = limits
        self.sealer = sealer
        self.inventory = inventory
        self.allocator = allocator
        self.cpu_count = cpu_count
        self.memory_bytes = memory_bytes
        self._writing = KeyedLocks()  # one writer per endpoint at a time: each reads what the last wrote
        # One quota check and its write per namespace at a time: two creates cannot both take the last room.
        self.namespaces = KeyedLocks()

    # --- helpers -----------------------------------------------------------------------------

    async def audit(self, request: web.Request, actor: str, action: str, ns: str, name: str, details: dict) -> None:
        await self.store.record_audit(
            actor, action, ns, name, details, request.remote or "", request_id(request.headers.get(REQUEST_ID)),
        )

    async def record(self, ns: str, name: str):
        try:
            return await self.store.get_endpoint(ns, name)
        except store_mod.NotFound:
            raise NotFound(f"endpoint {ns}/{name} does not exist") from None

    def spec(self, rec) -> wire.EndpointSpec:
        return wire.spec_from_json(self.sealer.unseal(rec.spec))

    def stored(self, spec: wire.EndpointSpec) -> dict[str, Any]:
        return self.sealer.seal(wire.spec_to_json(spec))

    async def vet(self, spec: wire.EndpointSpec, identity, ns: str) -> None:
        """Refuse what the body may not ask of this host (400), beyond the wire format's checks."""
        self.check(spec)
        scaling = spec.compute.scaling
        if scaling.max_replica > self.limits.max_replicas:
            raise Invalid(
                f"compute.scaling.maxReplica must be at most {self.limits.max_replicas} on this host "
                f"(the operator's max_replicas_per_endpoint); got {scaling.max_replica}"
            )
        why = self.limits.never_fits(spec)
        if why is not None:
            raise Invalid(f"compute.scaling.minReplica {scaling.min_replica} could never run here: {why}")
        domain = spec.route.domain
        if domain is not None and normal(domain) in self.limits.own_names:
            # The names are not listed: a host's reverse names are not every tenant's business.
            raise Invalid(
                f"route.domain {domain} is one of this server's own names (its listen or external_url host, "
                "or a name this host answers to: its host name, FQDN or a local address's reverse name), which "
                "must keep reaching endpointd itself; choose a host name of your own"
            )
        if artifacts.is_local(spec.model.repository):
            await asyncio.to_thread(self.limits.roots.check, spec.model.repository)

    async def pin(self, spec: wire.EndpointSpec, ns: str, old: wire.EndpointSpec | None = None,
                  model_body: Any = None) -> wire.EndpointSpec:
        """`spec` with its revision resolved and its download pattern computed, as far as the change
        from `old` (None: a create) asks: the revision when the repository or `model.revision` is
        sent, the pattern then and when the image or framework changes (unless it is sent)."""
        model = spec.model
        sent = model_body if isinstance(model_body, dict) else {}
        if old is None:
            moved = repin = True
            repattern = model.download_pattern is None
        else:
            moved = model.repository != old.model.repository
            repin = moved or "revision" in sent
            repattern = sent.get("downloadPattern") is None and (
                repin or model.image != old.model.image or model.framework != old.model.framework)
        if not (repin or repattern):
            return spec
        if not artifacts.is_local(model.repository) and not presets.reads_model(model.image):
            return replace(spec, model=replace(model, download_pattern=None))  # a name only: nothing to pin
        # An update to another repository without a revision means its latest, not the old commit.
        asked = model.revision if (old is None or "revision" in sent) else (None if moved else old.model.revision)
        facts = await self.describe(model.repository, asked, ns)
        revision = facts.revision if repin else model.revision
        pattern = artifacts.download_pattern(model.image, model.framework, facts) if repattern else model.download_pattern
        return replace(spec, model=replace(model, revision=revision, download_pattern=pattern))

    def intent(self, rec) -> Intent:
        spec = self.spec(rec)
        scaling = spec.compute.scaling
        return Intent(
            key=EndpointKey(rec.namespace, rec.name),
            uid=rec.uid,
            generation=rec.generation,
            revision=rec.revision,
            auth=spec.type,
            health_route=spec.health_route,
            min_replicas=scaling.min_replica,
            max_replicas=scaling.max_replica,
            paused=rec.paused,
            zeroed_at=rec.zeroed_at,
            domain=spec.route.domain,
            engine=spec.model.engine,
            spec=spec,
        )

    @staticmethod
    def signals(rec) -> Signals:
        return Signals(woken_at=rec.woken_at, idle_at=rec.idle_at)

    async def mutate(self, ns: str, name: str, change: Callable[[Any], dict[str, Any]]):
        """Apply `change(record) -> store.update_intent keywords` to a fresh read, after this
        process's earlier writes to the endpoint, under the generation check (re-reading and
        re-applying when another process's write moved the generation on)."""
        async with self._writing.hold((ns, name)):
            for _ in range(MUTATE_ATTEMPTS):
                rec = await self.record(ns, name)
                try:
                    return await self.store.update_intent(ns, name, rec.generation, **change(rec))
                except store_mod.Stale:
                    continue
        raise Conflict(f"endpoint {ns}/{name} is being changed by others at the same time; retry")

    def render(self, rec) -> dict[str, Any]:
        spec = self.spec(rec)
        status = self.controller.status(EndpointKey(rec.namespace, rec.name))
        state = status.state if status else State(rec.state)
        message = status.message if status else rec.message
        serving = state in (State.RUNNING, State.SCALED_TO_ZERO, State.UPDATING, State.UPDATE_FAILED)
        body = wire.render_endpoint(
            spec,
            wire.StatusView(
                state=state,
                message=message,
                created_at=rec.created_at,
                updated_at=rec.updated_at,
                url=self.endpoint_url(rec.namespace, rec.name) if serving else None,
                ready_replica=status.ready if status else 0,
                target_replica=status.target if status else 0,
                tier=status.tier if status else None,
            ),
        )
        body["namespace"] = rec.namespace  # beyond the reference's shape: listings of * need it
        return body

    # --- routes ------------------------------------------------------------------------------

    async def list_endpoints(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        if ns == "*":  # every namespace: admins only (the client's own "*" lists the user's and orgs')
            await access.admin(request, self.store, "list the endpoints of every namespace ('*')")
            records = await self.store.list_endpoints()
        else:
            await access.member(request, self.store, ns)
            records = await self.store.list_endpoints(ns)
        return web.json_response(wire.render_list([self.render(r) for r in records]))

    async def create(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        identity = await access.member(request, self.store, ns)
        await self.namespace_exists(ns)
        spec = wire.parse_create(await read_json(request))
        return web.json_response(self.render(await self.create_spec(request, identity, ns, spec)))

    async def namespace_exists(self, ns: str) -> None:
        if await self.store.namespace_kind(ns) is None:
            raise NotFound(f"namespace {ns} does not exist; create the user or org first (`endpointd users add`)")

    async def create_spec(self, request: web.Request, identity, ns: str, spec: wire.EndpointSpec,
                          audit_extra: Mapping[str, Any] | None = None):
        """Vet, pin, store, post to the controller and audit a new endpoint (the API's create and
        the catalog's deploy); returns its record."""
        await self.vet(spec, identity, ns)
        spec = await self.pin(spec, ns)
        async with self.namespaces.hold(ns):
            await quotas.admit(self, ns, spec.name, spec)
            try:
                rec = await self.store.create_endpoint(
                    ns, spec.name, self.stored(spec), state=State.PENDING, domain=spec.route.domain
                )
            except store_mod.DomainTaken as error:
                raise access.domain_taken(error, identity) from None
        self.controller.apply(self.intent(rec), self.signals(rec))
        await self.audit(request, identity.user, "create", ns, spec.name,
                         {**wire.audit_details(spec), **(audit_extra or {})})
        return rec

    async def get(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        await access.member(request, self.store, ns)
        return web.json_response(self.render(await self.record(ns, name)))

    async def update(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        identity = await access.member(request, self.store, ns)
        body = await read_json(request)
        kinds: list[wire.ChangeKind] = []
        old = self.spec(await self.record(ns, name))
        first, _ = wire.apply_update(old, body)
        await self.vet(first, identity, ns)  # the slow checks (a local tree's walk) once, outside the retries
        model_body = body.get("model") if isinstance(body, dict) else None
        pinned = await self.pin(first, ns, old, model_body)  # the Hub once, outside the retries too

        def change(rec):
            fresh = self.spec(rec)
            spec, _ = wire.apply_update(fresh, body)
            if pinned is not first:  # pinned anew: those values, for what they were pinned for
                spec = self.repinned(spec, pinned, ns, name)
            kind = wire.change_kind(fresh, spec)
            self.check(spec)
            kinds[:] = [kind]
            return {"spec": self.stored(spec), "bump_revision": kind is wire.ChangeKind.ROLL,
                    "domain": spec.route.domain}

        try:
            async with self.namespaces.hold(ns):
                await quotas.admit(self, ns, name, pinned, old)
                rec = await self.mutate(ns, name, change)
        except store_mod.DomainTaken as error:
            raise access.domain_taken(error, identity) from None
        self.controller.apply(self.intent(rec))
        await self.audit(request, identity.user, "update", ns, name, {"change": str(kinds[0]), "keys": sorted(body)})
        return web.json_response(self.render(rec))

    @staticmethod
    def repinned(spec: wire.EndpointSpec, pinned: wire.EndpointSpec, ns: str, name: str) -> wire.EndpointSpec:
        """`spec` (an update applied to a fresh read) with the revision and pattern pinned for it
        before the retries; refused when a concurrent write changed what they were pinned for."""
        basis = ("repository", "image", "framework")
        if any(getattr(spec.model, key) != getattr(pinned.model, key) for key in basis):
            raise Conflict(f"endpoint {ns}/{name}'s model was changed by another request meanwhile; retry")
        return replace(spec, model=replace(
            spec.model, revision=pinned.model.revision, download_pattern=pinned.model.download_pattern))

    async def delete(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        identity = await access.member(request, self.store, ns)
        await self.record(ns, name)
        await self.store.delete_endpoint(ns, name)
        self.controller.delete(EndpointKey(ns, name))
        await self.audit(request, identity.user, "delete", ns, name, {})
        return web.json_response({})

    async def pause(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "pause", paused=True)

    async def resume(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        await access.member(request, self.store, ns)
        rec = await self.record(ns, name)
        status = self.controller.status(EndpointKey(ns, name))
        if not rec.paused and status is not None and status.state == State.RUNNING:
            raise Invalid(f"endpoint {ns}/{name} is already running")
        # Resume clears a pause, a user's scale-to-zero and a failure, and wakes the endpoint.
        return await self._lifecycle(request, "resume", paused=False, zeroed_at=None)

    async def scale_to_zero(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "scale-to-zero", zeroed_at=self.controller.wall())

    async def _lifecycle(self, request: web.Request, action: str, **intent: Any) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        identity = await access.member(request, self.store, ns)
        rec = await self.mutate(ns, name, lambda rec: intent)
        self.controller.apply(self.intent(rec), resumed=action == "resume")
        await self.audit(request, identity.user, action, ns, name, {})
        return web.json_response(self.render(rec))

    async def provider(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        await access.member(request, self.store, ns)
        capacity = self.controller.capacity

        def cpu_fits(n: int) -> bool:
            free, _ = capacity.free(Need(cpus=n, memory_bytes=n * hardware.MEMORY_PER_CPU_BYTES))
            return free is None or free > 0

        offers = hardware.describe_offer(
            self.cpu_count, self.memory_bytes, self.inventory, self.allocator.holders,
            cpus_max=int(capacity.cpus + 1e-9), cpus_used=math.ceil(capacity.cpus_used() - 1e-9), cpu_fits=cpu_fits,
        )
        return web.json_response(wire.render_provider(offers))


def add_routes(router: web.UrlDispatcher, api: ManagementApi) -> None:
    """The lifecycle routes, on the `/v2` sub-app's router."""
    router.add_get("/endpoint/{ns}", api.list_endpoints)
    router.add_post("/endpoint/{ns}", api.create)
    router.add_get("/endpoint/{ns}/{name}", api.get)
    router.add_put("/endpoint/{ns}/{name}", api.update)
    router.add_delete("/endpoint/{ns}/{name}", api.delete)
    router.add_post("/endpoint/{ns}/{name}/pause", api.pause)
    router.add_post("/endpoint/{ns}/{name}/resume", api.resume)
    router.add_post("/endpoint/{ns}/{name}/scale-to-zero", api.scale_to_zero)
    router.add_get("/provider/{ns}", api.provider)
