"""The control plane's invariants, whatever the order of events: a hypothesis state machine drives
random interleavings of lifecycle calls, wakes, recommendations, launch outcomes, deaths and
restarts against the real controller on the fake runtime, and checks after every step:

- the containers of an endpoint never exceed max + surge, the surge only while a roll is under way
  (a lowered max is reached by draining; a deleted endpoint's draining replicas are its own, not
  those of a re-created one of the same name);
- no container is without a slot;
- no GPU is held by two replicas, and a container's GPUs are the ones assigned to it;
- a paused or deleted endpoint has no container once its drains have finished (before that, only
  draining and stopping ones);
- a user's scale-to-zero is never undone without a new request (a wake) or a resume;
- a wake is never lost: an endpoint that is not paused and got a request after its last return
  to zero (a user's scale-to-zero, an idle scale-down) which found no ready replica, wants at
  least one replica — once the process that got the request has nothing on its way to or from
  the main process (at once, in the main process);
- a restart takes no serving replica out of service, and keeps a failed revision failed;
- the idle ladder: a sleeping replica keeps its GPUs and is never in the route table, a parked
  one holds nothing and its container is not running; parked containers count toward no limit.

Requests arrive at the main process or at one of two worker processes, each with its own
readiness gate and its own copy of the routes; route changes out to the workers and wakes back
from them travel in queues that the machine delivers in any interleaving (tests/wake_processes.py).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from autoscaler.control.planner import SURGE, Phase
from engines.fake import FakeRuntime
from engines.runtime import ContainerStatus, EndpointKey, RuntimeFailure
from proxy.core.control import RouteState
from proxy.core.errors import ProxyError
from tests.control_world import World, intent
from tests.examples import examples
from tests.wake_processes import Processes

KEYS = [EndpointKey("acme", "a"), EndpointKey("team", "b")]
GPUS = 3
PARK_TTL_S = 120.0  # time_passes moves 30-90 s: parked containers expire now and then
WORKERS = 2
key_index = st.integers(0, len(KEYS) - 1)
process_index = st.integers(0, WORKERS)  # 0: the main process
worker_index = st.integers(1, WORKERS)


class BrokenRuntime:
    """What a killed endpointd's leftover tasks see: every call fails, so nothing is cleaned up."""

    def __getattr__(self, name):
        async def fail(*args, **kwargs):
            raise RuntimeFailure(name, "runtime", "the process is gone")

        return fail


class SlowDocker(FakeRuntime):
    """The fake runtime, whose removals can be made to take a second of the test's clock (a
    Docker engine under load): the window in which a stopping container still holds its GPUs."""

    slow = False

    async def stop(self, replica_id, grace_s):
        if self.slow:
            await self._sleep(1.0)
        await super().stop(replica_id, grace_s)


class ControlPlane(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        # Stop graces pass on the test's clock: a container that ignores SIGTERM stays "stopping"
        # until time_passes says so.
        self.world = self.new_world(SlowDocker(sleep=self.fake_sleep))
        self.declared: dict[EndpointKey, object] = {}  # what the store holds
        self.zeroed: set[EndpointKey] = set()  # a user's scale-to-zero not yet followed by a wake
        # The processes where a request found no ready replica after the endpoint's last return
        # to zero (0: the main process; 1…: the workers).
        self.demand: dict[EndpointKey, set[int]] = {}
        self.held: list[asyncio.Task] = []  # requests held at a gate
        self.allowance: dict[EndpointKey, int] = {}
        self.uids = itertools.count(1)
        self.closing = False
        self.run(self.world.settle())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def new_world(self, runtime, old: World | None = None) -> World:
        """A controller with the proxy's processes in front of it (all new after a restart)."""
        self.procs = Processes(WORKERS, clock=lambda: self.world.now, wall=lambda: self.world.wall_now)
        # Each world names its replicas apart: a restarted one must not reuse an adopted replica's id.
        self.worlds = getattr(self, "worlds", 0) + 1
        world = World(gpus=GPUS, runtime=runtime, routes=self.procs.main, park_ttl_s=PARK_TTL_S,
                      id_prefix=f"w{self.worlds}r")
        world.launcher.gpus_per_replica = 1
        if old is not None:
            world.now, world.wall_now = old.now, old.wall_now
            # What the store keeps outlives any number of restarts, as it does in `serve`.
            world.saved, world.failures = dict(old.saved), dict(old.failures)

        def wake(key):
            self.zeroed.discard(key)  # a wake reached the controller: it may undo a scale-to-zero
            world.controller.wake(key)

        self.procs.bind(wake)
        return world

    def drop_held(self):
        """Held requests end with their processes (a restart, the end of the test)."""
        held, self.held = self.held, []
        for task in held:
            task.cancel()

        async def ended():
            await asyncio.gather(*held, return_exceptions=True)

        self.run(ended())

    async def fake_sleep(self, seconds):
        deadline = self.world.now + seconds
        while self.world.now < deadline and not self.closing:
            await asyncio.sleep(0)

    def close(self, world):
        """A controller's close() awaits its tasks' clean-ups: time passes for them meanwhile."""
        self.closing = True
        try:
            self.run(world.close())
        finally:
            self.closing = False

    def teardown(self):
        self.drop_held()
        self.close(self.world)
        self.loop.close()

    # --- helpers -----------------------------------------------------------------------------

    @property
    def controller(self):
        return self.world.controller

    def settle(self):
        self.run(self.world.settle())
        self.check()

    def limit(self, key, containers) -> int:
        """max, plus the surge while containers of another revision exist (a roll)."""
        declared = self.declared.get(key)
        if declared is None:
            return 0
        current = {slot_id for owner in self.controller._owners.values() for slot_id in owner.slots}
        rolling = any(
            c.endpoint == key and c.replica_id in current and c.revision != str(declared.revision) for c in containers
        )
        return declared.max_replicas + (SURGE if rolling else 0)

    def declare(self, key, new):
        self.declared[key] = new
        self.allowance[key] = max(self.limit(key, self.containers()), self.allowance.get(key, 0))

    def write(self, key, resumed=False, **changes):
        """An API write to an existing endpoint: the next generation."""
        current = self.declared[key]
        new = replace(current, generation=current.generation + 1, **changes)
        self.declare(key, new)
        self.controller.apply(new, resumed=resumed)

    def containers(self):
        return self.run(self.world.runtime.list())

    # --- rules ---------------------------------------------------------------------------------

    @rule(k=key_index, low=st.integers(0, 2), extra=st.integers(0, 2))
    def create(self, k, low, extra):
        key = KEYS[k]
        if key in self.declared:
            return
        new = intent(key=key, uid=f"u{next(self.uids)}", min_replicas=low, max_replicas=max(1, low + extra))
        self.declare(key, new)
        self.controller.apply(new)
        self.settle()

    @precondition(lambda self: self.declared)
    @rule(k=key_index, low=st.integers(0, 2), extra=st.integers(0, 2))
    def update_scaling(self, k, low, extra):
        if KEYS[k] in self.declared:
            self.write(KEYS[k], min_replicas=low, max_replicas=max(1, low + extra))
            self.settle()

    @precondition(lambda self: self.declared)
    @rule(k=key_index)
    def roll(self, k):
        if KEYS[k] in self.declared:
            self.write(KEYS[k], revision=self.declared[KEYS[k]].revision + 1)
            self.settle()

    @precondition(lambda self: self.declared)
    @rule(k=key_index)
    def pause(self, k):
        if KEYS[k] in self.declared:
            self.write(KEYS[k], paused=True)
            self.settle()

    @precondition(lambda self: self.declared)
    @rule(k=key_index)
    def resume(self, k):
        if KEYS[k] in self.declared:
            self.write(KEYS[k], resumed=True, paused=False, zeroed_at=None)
            self.zeroed.discard(KEYS[k])
            self.settle()

    @precondition(lambda self: self.declared)
    @rule(k=key_index)
    def scale_to_zero(self, k):
        if KEYS[k] in self.declared:
            self.world.wall_now += 1
            self.write(KEYS[k], zeroed_at=self.world.wall_now)
            self.zeroed.add(KEYS[k])
            self.demand.pop(KEYS[k], None)
            self.settle()

    @precondition(lambda self: self.declared)
    @rule(k=key_index, recreate=st.booleans())
    def delete(self, k, recreate):
        key = KEYS[k]
        if key not in self.declared:
            return
        del self.declared[key]
        self.zeroed.discard(key)
        self.demand.pop(key, None)
        self.controller.delete(key)
        if recreate:  # at once, with the same name, as the client's delete-then-create does
            new = intent(key=key, uid=f"u{next(self.uids)}", min_replicas=0, max_replicas=1)
            self.declare(key, new)
            self.controller.apply(new)
        self.settle()

    @rule(k=key_index)
    def wake(self, k):
        self.controller.wake(KEYS[k])
        self.zeroed.discard(KEYS[k])
        self.settle()

    @rule(k=key_index, p=process_index, held=st.booleans())
    def request(self, k, p, held):
        """A client request arrives at a process, a moment after the last event; without a ready
        replica there, it wakes the endpoint and is held (X-Scale-Up-Timeout) or refused (503)."""
        key = KEYS[k]
        control, gate = self.procs.process(p)
        entry = control.lookup(key.namespace, key.name)
        if entry is None or entry.replicas or entry.state is not RouteState.SERVING:
            return  # 404, forwarded to a replica, or refused: no wake
        self.world.wall_now += 0.01
        self.demand.setdefault(key, set()).add(p)
        if held:
            task = self.loop.create_task(gate.ready_entry(entry, 1e6))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a refusal is an answer
            self.held.append(task)
        else:
            try:
                self.run(gate.ready_entry(entry, None))
            except ProxyError as error:
                assert error.status == 503, error
        self.settle()

    @precondition(lambda self: self.declared)
    @rule(k=key_index, p=process_index, q=process_index, held=st.booleans(), early=st.booleans())
    def zero_during_a_wake(self, k, p, q, held, early):
        """Issue 17's sequence: requests wake the endpoint, a user's scale-to-zero cancels the
        start they asked for, and a later request arrives (at the same process or another;
        `early`: after the API call, before the owner has processed it)."""
        key = KEYS[k]
        if key not in self.declared:
            return
        self.request(k, p, held=False)
        if early:
            self.world.wall_now += 1
            self.write(key, zeroed_at=self.world.wall_now)
            self.zeroed.add(key)
            self.demand.pop(key, None)
        else:
            self.scale_to_zero(k)
        self.request(k, q, held)

    @rule(w=worker_index, n=st.integers(1, 3))
    def routes_reach_worker(self, w, n):
        self.procs.deliver_routes(w, n)
        self.settle()

    @rule(w=worker_index, n=st.integers(1, 3))
    def wakes_reach_main(self, w, n):
        self.procs.deliver_wakes(w, n)
        self.settle()

    @rule()
    def channels_drain(self):
        """Everything on its way between the processes arrives (and what that causes, too)."""
        for _ in range(10):
            if self.procs.quiet():
                break
            for w in range(1, WORKERS + 1):
                self.procs.deliver_routes(w)
                self.procs.deliver_wakes(w)
            self.settle()
        assert self.procs.quiet(), "the processes keep sending each other messages"

    @rule(k=key_index, replicas=st.integers(0, 4))
    def recommend(self, k, replicas):
        key = KEYS[k]
        owner = self.controller._owners.get(key)
        idle_before = owner.signals.idle_at if owner else None
        self.world.wall_now += 0.001
        self.controller.recommend(key, replicas, "test")
        self.run(self.world.settle())
        if owner is not None and owner.signals.idle_at != idle_before:
            self.demand.pop(key, None)  # an idle scale-down: a return to zero
        self.check()

    @precondition(lambda self: self.world.launcher.gates)
    @rule(data=st.data(), ok=st.booleans())
    def launch_finishes(self, data, ok):
        rid = data.draw(st.sampled_from(sorted(self.world.launcher.gates)))
        if ok:
            self.world.launcher.ready(rid)
        else:
            self.world.launcher.fail(rid, RuntimeError("engine exited with code 1"))
        self.settle()

    @rule(data=st.data())
    def replica_dies(self, data):
        running = [c for c in self.containers() if c.status is ContainerStatus.RUNNING]
        if running:
            victim = data.draw(st.sampled_from(sorted(running, key=lambda c: c.replica_id)))
            self.world.runtime.kill(victim.replica_id, 137)
            self.controller.replica_died(victim.replica_id, 137)
            self.settle()

    @rule(k=key_index, n=st.integers(1, 3))
    def busy(self, k, n):
        """Requests in flight on every ready replica of the endpoint: its drains wait for them."""
        owner = self.controller._owners.get(KEYS[k])
        if owner is not None:
            self.world.in_flight[str(KEYS[k])] = {s.id: n for s in owner.slots_in(Phase.READY)}
            self.settle()

    @rule(data=st.data())
    def stubborn(self, data):
        """A replica's engine ignores SIGTERM: its stop takes the whole grace period."""
        running = [c for c in self.containers() if c.status is ContainerStatus.RUNNING]
        if running:
            victim = data.draw(st.sampled_from(sorted(c.replica_id for c in running)))
            self.world.runtime.ignore_sigterm(victim)

    @rule(k=key_index)
    def idle(self, k):
        """sleepAfter passed: the scaler says the endpoint's engines may sleep."""
        key = KEYS[k]
        owner = self.controller._owners.get(key)
        if owner is not None:
            self.controller.recommend(key, max(owner.wanted(), 1), "idle", sleep=True)
            self.settle()

    @rule(refuses=st.booleans(), wakes=st.booleans(), by_itself=st.booleans(), slow=st.booleans())
    def engines_sleep(self, refuses, wakes, by_itself, slow):
        """How the engines sleep from now on: refused, waking or not, by themselves (llama.cpp),
        or slowly (a sleep the machine ends with sleep_finishes)."""
        launcher = self.world.launcher
        launcher.sleep_error = RuntimeError("404 /sleep") if refuses else None
        launcher.wake_error = None if wakes else RuntimeError("500 /wake_up")
        launcher.self_sleeping = by_itself
        launcher.hold_sleeps = slow

    @precondition(lambda self: self.world.launcher.sleep_gates)
    @rule(data=st.data())
    def sleep_finishes(self, data):
        rid = data.draw(st.sampled_from(sorted(self.world.launcher.sleep_gates)))
        self.world.launcher.sleep_gates[rid].set_result(None)
        self.settle()

    @rule(slow=st.booleans())
    def docker_speed(self, slow):
        self.world.runtime.slow = slow

    @rule(n=st.integers(1, 3))
    def time_passes(self, n):
        self.world.now += 30.0 * n  # past backoffs, drain graces and stop graces
        self.settle()

    @rule()
    def drains_finish(self):
        """Every request completes and every grace passes: nothing of a quiet endpoint is left."""
        self.world.in_flight.clear()
        for _ in range(3):  # a grace that began during the last one passes too
            self.world.now += 600.0
            self.settle()
        containers = self.containers()
        for key in KEYS:
            declared = self.declared.get(key)
            if declared is None or declared.paused or key in self.zeroed:
                kept = key in self.zeroed and declared is not None and not declared.paused
                left = [c.replica_id for c in containers
                        if c.endpoint == key and not (kept and c.status is ContainerStatus.EXITED)]
                assert not left, f"{key}: {left} still there once every drain has finished"

    @rule(crash=st.booleans())
    def restart(self, crash):
        """endpointd stops (SIGTERM, or killed: then its tasks clean nothing up) and starts again
        from what the store holds, adopting what it finds."""
        old = self.world
        running = {c.replica_id for c in self.containers() if c.status is ContainerStatus.RUNNING}
        # A user's scale-to-zero that is stored but not yet carried out is carried out by the
        # restart: those endpoints are not counted as serving.
        serving = {key: {s.id for s in old.controller._owners[key].slots_in(Phase.READY)} & running
                   if key not in self.zeroed else set() for key in self.declared}
        # A roll under way whose new replica was still starting loses that replica (only healthy
        # containers are adopted); when another endpoint takes the GPU it held, the roll goes on
        # by recreate, which takes the old replica out first. Known and documented (README).
        rolling = {key for key in self.declared
                   if any(s.revision < self.declared[key].revision for s in old.controller._owners[key].slots.values())}
        failed = {key: old.controller._owners[key].failed_revision for key in self.declared}
        if crash:
            old.controller.runtime = BrokenRuntime()
        self.drop_held()
        self.demand.clear()  # requests (and wakes on their way) end with the processes
        self.close(old)
        new = self.new_world(old.runtime, old)
        for declared in self.declared.values():
            new.controller.apply(declared, old.saved.get(declared.uid), failure=old.failures.get(declared.uid))
        self.world = new
        new.runtime.slow = False  # adopt() awaits its stops, and no time passes during a rule
        self.run(new.controller.adopt(self.containers()))
        self.settle()
        # A restart takes nothing out of service: as many replicas serve as did (those that did,
        # or new-revision ones that became ready meanwhile), a roll under way and a failed
        # update's old revision alike; a failed revision stays failed (it is not retried).
        for key in self.declared:
            owner = self.controller._owners[key]
            still = {s.id for s in owner.slots_in(Phase.READY)}
            recreate = key in rolling and new.allocator.free("nvidia-l4") == 0
            assert recreate or len(still) >= len(serving[key]), f"{key}: {sorted(serving[key])} served, {sorted(still)} do now"
            assert owner.failed_revision == failed[key], f"{key}: failure {failed[key]} became {owner.failed_revision}"

    @rule()
    def converge(self):
        """Every start succeeds, every request completes, time passes: each endpoint that should
        serve reaches what it wants on its current revision (as far as the GPUs allow), and no
        old revision is left running. Liveness beside the safety checks: no roll, drain or
        reclaim may get stuck."""
        launcher = self.world.launcher
        launcher.auto = True
        self.world.runtime.slow = False
        try:
            for _ in range(4):
                for rid in list(launcher.gates):
                    launcher.ready(rid)
                for gate in list(launcher.sleep_gates.values()):
                    gate.set_result(None)
                launcher.wake_error = None  # every wake succeeds too
                self.world.in_flight.clear()
                self.world.now += 600.0
                self.settle()
            for key, declared in self.declared.items():
                owner = self.controller._owners[key]
                wanted = owner.wanted()
                ready = [s for s in owner.slots_in(Phase.READY, Phase.SLEEPING) if s.revision == declared.revision]
                old = [s.id for s in owner.slots.values() if s.revision != declared.revision]
                if owner.failed_revision == declared.revision:
                    continue  # three failed starts: it waits for a resume, and keeps what serves
                assert not old, f"{key}: the old revision is still running after the roll: {old}"
                free = self.world.allocator.free("nvidia-l4")
                assert len(ready) == wanted or (len(ready) < wanted and free == 0), (
                    f"{key}: {len(ready)} ready of {wanted} wanted, {free} GPUs free: {owner.slots}")
        finally:
            launcher.auto = False

    # --- invariants ----------------------------------------------------------------------------

    def check(self):
        containers = self.containers()
        by_endpoint: dict[EndpointKey, list] = {}
        for c in containers:
            by_endpoint.setdefault(c.endpoint, []).append(c)
        current = {slot_id for owner in self.controller._owners.values() for slot_id in owner.slots}
        parked = {slot.id for owner in self.controller._all() for slot in owner.slots_in(Phase.PARKED)}
        for key in KEYS:
            # Per incarnation: a deleted endpoint's replicas finish draining beside a re-created
            # one of the same name (and hold their GPUs until they are gone).
            n = len([c for c in by_endpoint.get(key, []) if c.replica_id in current and c.replica_id not in parked])
            allowed = self.allowance.get(key, 0)
            assert n <= allowed, f"{key}: {n} containers, at most {allowed} allowed"
            # What a lowered max leaves running drains away; the allowance only ever tightens.
            self.allowance[key] = max(self.limit(key, containers), min(allowed, n))
        owned = self.controller.owned_ids()
        stray = [c.replica_id for c in containers if c.replica_id not in owned]
        assert not stray, f"containers without a slot: {stray}"
        gpus_seen: dict[str, str] = {}
        holders = self.world.allocator.holders
        for c in containers:
            if c.replica_id in parked:  # stopped: it holds none (it asks for them back at its wake)
                assert c.status is ContainerStatus.EXITED, f"parked {c.replica_id} is {c.status}"
                assert not self.world.allocator.held_by(c.replica_id), f"parked {c.replica_id} holds GPUs"
                continue
            if c.status is ContainerStatus.EXITED and not self.world.allocator.held_by(c.replica_id):
                continue  # a parked one on its way out (expired, replaced): stopped, it uses no GPU
            for gpu in self.world.runtime.containers[c.replica_id].spec.gpu_device_ids:
                assert gpu not in gpus_seen, f"GPU {gpu} in {gpus_seen[gpu]} and {c.replica_id}"
                gpus_seen[gpu] = c.replica_id
                assert holders.get(gpu) == c.replica_id, f"{c.replica_id} uses {gpu}, assigned to {holders.get(gpu)}"
        phases = {slot.id: slot.phase for owner in self.controller._all() for slot in owner.slots.values()}
        for key, owner in self.controller._owners.items():
            sleeping = owner.slots_in(Phase.SLEEPING)
            for slot in sleeping:  # it must be able to wake: its GPUs stay its own
                assert set(self.world.allocator.held_by(slot.id)) == set(slot.gpus), f"sleeping {slot.id} lost its GPUs"
            entry = self.procs.main.lookup(key.namespace, key.name)
            if entry is not None and not owner.deleting:
                ready = {s.id for s in owner.slots_in(Phase.READY)}
                assert {r.id for r in entry.replicas} <= ready, f"{key}: routed to {entry.replicas}, ready {ready}"
                assert entry.sleeping == len(sleeping)
        for key in KEYS:
            declared = self.declared.get(key)
            quiet = declared is None or declared.paused or key in self.zeroed
            if quiet:
                leaving = (Phase.DRAINING, Phase.STOPPING, Phase.PARKING, Phase.PARKED)
                serving = [c.replica_id for c in by_endpoint.get(key, []) if phases.get(c.replica_id) not in leaving]
                assert not serving, (
                    f"{key} ({'deleted' if declared is None else 'paused' if declared.paused else 'zeroed by a user'})"
                    f" still has containers that are neither draining nor stopping: {serving}"
                )
            if declared is not None and key in self.zeroed:
                assert self.controller.wanted(key) == 0, f"{key}: a user's scale-to-zero was undone"
            heard = any(self.procs.heard(p) for p in self.demand.get(key, ()))
            if declared is not None and not declared.paused and heard:
                assert self.controller.wanted(key) >= 1, (
                    f"{key}: a request arrived after its last return to zero, yet it wants no replica")


ControlPlane.TestCase.settings = settings(
    max_examples=examples(400), stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestControlPlane = ControlPlane.TestCase
