"""Quota arithmetic (autoscaler/model/quotas.py): tables for the refusal at the API, the replicas a
scale-up may start and the limits' parsing; hypothesis properties for the rest: replicas_fitting
is exact, and no sequence of creates, updates, scale-ups, wakes, failures, pauses and scale-downs
applied through these functions leaves a namespace above its quota."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from autoscaler.model.quotas import (
    EPSILON,
    Quota,
    QuotaError,
    Use,
    holding,
    memory_bytes,
    parse,
    per_replica,
    refusal,
    replicas_fitting,
    to_json,
)
from engines.capacity import GIB, Need
from tests.examples import examples

GPU = Use(gpus=1, cpus=0, memory_bytes=0, replicas=1)  # one replica of a 1-GPU instance
X1 = Use(cpus=1, memory_bytes=2 * GIB, replicas=1)  # one replica of a CPU x1 instance


@pytest.mark.parametrize("quota, use, asked, why", [
    # nothing limited: anything fits
    (Quota(), Use(gpus=99), GPU.times(4) + Use(endpoints=1), None),
    # 2 GPUs: 1 in use + minReplica 1 x 1 GPU = 2 fits; minReplica 2 does not (1 + 2 > 2)
    (Quota(gpus=2), Use(gpus=1), GPU, None),
    (Quota(gpus=2), Use(gpus=1), GPU.times(2),
     "namespace acme's quota of 2 GPUs cannot fit it: 1 GPU in use and it asks for 2 GPUs more"),
    # minReplica x need above the quota on an idle namespace: 3 x 1 > 2
    (Quota(gpus=2), Use(), GPU.times(3),
     "namespace acme's quota of 2 GPUs cannot fit it: 0 GPUs in use and it asks for 3 GPUs more"),
    # endpoints: 10 exist, a create asks one more
    (Quota(endpoints=10), Use(endpoints=10), Use(endpoints=1),
     "namespace acme's quota of 10 endpoints cannot fit it: 10 endpoints in use and it asks for 1 endpoint more"),
    # an update asks no endpoint: 10 of a lowered quota of 5 refuse nothing
    (Quota(endpoints=5), Use(endpoints=10), X1, None),
    # endpoints are checked before resources
    (Quota(endpoints=1, cpus=1), Use(endpoints=1, cpus=1), X1 + Use(endpoints=1),
     "namespace acme's quota of 1 endpoint cannot fit it: 1 endpoint in use and it asks for 1 endpoint more"),
    # replicas: 6 allowed, 5 in use, minReplica 2
    (Quota(replicas=6), Use(replicas=5), X1.times(2),
     "namespace acme's quota of 6 replicas cannot fit it: 5 replicas in use and it asks for 2 replicas more"),
    # fractional CPUs add up without a rounding refusal: 0.1 x 3 = 0.30000000000000004 <= 0.3
    (Quota(cpus=0.3), Use(cpus=0.1 + 0.1), Use(cpus=0.1), None),
    (Quota(cpus=1.5), Use(cpus=1), X1,
     "namespace acme's quota of 1.5 CPUs cannot fit it: 1 CPU in use and it asks for 1 CPU more"),
    # memory in its unit: 32 GiB, 30 in use, 2 x 2 GiB asked
    (Quota(memory_bytes=32 * GIB), Use(memory_bytes=30 * GIB), X1.times(2),
     "namespace acme's quota of 32 GiB cannot fit it: 30 GiB in use and it asks for 4 GiB more"),
    # a quota of 0 GPUs refuses a GPU endpoint, not a CPU one
    (Quota(gpus=0), Use(), GPU, "namespace acme's quota of 0 GPUs cannot fit it: 0 GPUs in use and it asks for 1 GPU more"),
    (Quota(gpus=0), Use(), X1, None),
    # minReplica 0 asks no replica: it fits, and waits at its scale-up
    (Quota(cpus=1), Use(cpus=1), Use(), None),
])
def test_refusal(quota, use, asked, why):
    assert refusal(quota, use, asked, "acme") == why


@pytest.mark.parametrize("quota, use, need, fitting", [
    (Quota(), Use(gpus=5), GPU, None),  # nothing bounds it
    (Quota(gpus=4), Use(gpus=1), GPU, 3),  # 4 - 1 = 3
    (Quota(gpus=4), Use(gpus=1), GPU.times(2), 1),  # an x2 instance: (4 - 1) // 2 = 1
    (Quota(gpus=4), Use(gpus=5), GPU, 0),  # above a lowered quota: none, never negative
    (Quota(gpus=4), Use(), X1, None),  # a CPU replica needs no GPU
    (Quota(cpus=8, replicas=3), Use(cpus=1, replicas=1), X1, 2),  # replicas bind first: 3 - 1
    (Quota(cpus=2.5, replicas=9), Use(cpus=0.5), X1, 2),  # (2.5 - 0.5) // 1
    (Quota(cpus=0.3), Use(cpus=0.1 + 0.1), Use(cpus=0.1, replicas=1), 1),  # 0.1 left, within EPSILON
    (Quota(memory_bytes=5 * GIB), Use(), X1, 2),  # 5 GiB // 2 GiB
    (Quota(endpoints=0), Use(endpoints=3), X1, None),  # endpoints never bound a scale-up
    (Quota(replicas=0), Use(), Use(replicas=1), 0),  # an instance that needs nothing still is a replica
])
def test_replicas_fitting(quota, use, need, fitting):
    assert replicas_fitting(quota, use, need) == fitting


@pytest.mark.parametrize("quota, use, need, said", [
    (Quota(gpus=2), Use(gpus=2, replicas=2), GPU,
     "namespace acme's quota of 2 GPUs is reached (2 GPUs in use by 2 replicas; a replica needs 1 GPU)"),
    (Quota(cpus=8, replicas=2), Use(cpus=2, replicas=2), X1, "namespace acme's quota of 2 replicas is reached (2 replicas in use)"),
    (Quota(memory_bytes=3 * GIB), Use(memory_bytes=2 * GIB, replicas=1), X1,
     "namespace acme's quota of 3 GiB is reached (2 GiB in use by 1 replica; a replica needs 2 GiB)"),
    (Quota(gpus=2, cpus=9), Use(gpus=1, replicas=1), GPU,  # the one that bounds most: GPUs, not CPUs
     "namespace acme's quota of 2 GPUs leaves room for 1 replica (1 GPU in use by 1 replica; a replica needs 1 GPU)"),
    (Quota(gpus=2, endpoints=0), Use(replicas=3, endpoints=3), X1, ""),  # nothing bounds a CPU replica
])
def test_holding_names_the_quota_that_bounds_the_next_replicas(quota, use, need, said):
    assert holding(quota, use, need, "acme") == said


def test_one_replica_holds_what_the_launcher_says_it_needs():
    need = Need(gpus=2, gpu_type="nvidia-l4", cpus=8, memory_bytes=30 * GIB, label="x2")
    assert per_replica(need) == Use(gpus=2, cpus=8, memory_bytes=30 * GIB, replicas=1, endpoints=0)
    assert per_replica(Need()) == Use(replicas=1)


# --- parsing: the API's body and the CLI's flags ------------------------------------------------


@pytest.mark.parametrize("body, quota", [
    ({}, Quota()),
    ({"gpus": 2, "cpus": 8, "memory": "32GiB", "replicas": 6, "endpoints": 10},
     Quota(gpus=2, cpus=8.0, memory_bytes=32 * GIB, replicas=6, endpoints=10)),
    ({"cpus": 0.5, "memory": 1024}, Quota(cpus=0.5, memory_bytes=1024)),
    ({"gpus": None, "memory": "1.5 GiB"}, Quota(memory_bytes=3 * GIB // 2)),
    ({"gpus": 0, "endpoints": 0}, Quota(gpus=0, endpoints=0)),
    ({"gpus": 2.0}, Quota(gpus=2)),  # JSON has one number type: 2.0 is 2
])
def test_parse(body, quota):
    assert parse(body) == quota


@pytest.mark.parametrize("body, error", [
    ([], "a quota is a JSON object with any of the keys endpoints, replicas, gpus, cpus, memory"),
    ({"gpu": 1}, "'gpu' is not a quota limit; the limits are: endpoints, replicas, gpus, cpus, memory"),
    ({"gpus": -1}, "quota gpus must be from 0 to 1024; got -1"),
    ({"gpus": 1.5}, "quota gpus must be a whole number; got 1.5"),
    ({"gpus": True}, "quota gpus must be a whole number from 0 to 1024 or null (unlimited); got 'True'"),
    ({"gpus": "2"}, "quota gpus must be a whole number from 0 to 1024 or null (unlimited); got '2'"),
    ({"cpus": 1e300}, "quota cpus must be from 0 to 65536; got 1e+300"),
    ({"cpus": float("nan")}, "quota cpus must be a number from 0 to 65536 or null (unlimited); got 'nan'"),
    ({"replicas": 100_001}, "quota replicas must be from 0 to 100000; got 100001"),
    ({"endpoints": 2**70}, "quota endpoints must be from 0 to 100000; got 1.18059e+21"),
    ({"memory": "2PiB"}, "quota memory '2PiB' is not a size: a number of bytes, or a number with one of the units "
                         "KiB, MiB, GiB, TiB (e.g. 32GiB)"),
    ({"memory": "32GB"}, "quota memory '32GB' is not a size: a number of bytes, or a number with one of the units "
                         "KiB, MiB, GiB, TiB (e.g. 32GiB)"),
    ({"memory": "-1GiB"}, "quota memory '-1GiB' is not a size"),
    ({"memory": "0.1KiB"}, "quota memory '0.1KiB' is not a whole number of bytes"),
    ({"memory": "2048TiB"}, "quota memory must be from 0 to 1024 TiB; got 2.2518e+15"),
    ({"memory": "1" * 40}, "is not a size"),
    ({"memory": [1]}, "quota memory must be a whole number from 0 to 1125899906842624 (or a size such as 32GiB)"),
])
def test_parse_refuses_with_a_sentence(body, error):
    with pytest.raises(QuotaError) as refused:
        parse(body)
    assert error in str(refused.value)
    assert refused.value.status == 400


@pytest.mark.parametrize("text, n", [
    ("32GiB", 32 * GIB), ("32 GiB", 32 * GIB), ("32gib", 32 * GIB), ("512MiB", 512 << 20), ("1TiB", 1 << 40),
    ("4KiB", 4096), ("4096", 4096), ("4096B", 4096), (" 1.5GiB ", 3 * GIB // 2),
])
def test_memory_sizes(text, n):
    assert memory_bytes(text) == n


def test_the_wire_form_names_every_limit_and_null_for_none():
    assert to_json(Quota(cpus=8.0, memory_bytes=GIB)) == {
        "endpoints": None, "replicas": None, "gpus": None, "cpus": 8, "memory": GIB}
    assert to_json(Quota(cpus=0.5))["cpus"] == 0.5


# --- properties ----------------------------------------------------------------------------------

limits = st.one_of(st.none(), st.integers(0, 8))
cpu_limits = st.one_of(st.none(), st.integers(0, 16).map(lambda n: n / 2))
quotas = st.builds(Quota, gpus=limits, cpus=cpu_limits, memory_bytes=st.one_of(st.none(), st.integers(0, 8 * GIB)),
                   replicas=limits, endpoints=limits)
needs = st.builds(Need, gpus=st.integers(0, 2), cpus=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
                  memory_bytes=st.sampled_from([0, GIB // 2, 2 * GIB]))
FIELDS = ("gpus", "cpus", "memory_bytes", "replicas")


def within(quota: Quota, use: Use) -> bool:
    return all(getattr(quota, f) is None or getattr(use, f) <= getattr(quota, f) + EPSILON for f in FIELDS)


@settings(max_examples=examples(500))
@given(quota=quotas, need=needs, started=st.integers(0, 6))
def test_replicas_fitting_is_exact(quota, need, started):
    """From a use within the quota, as many replicas as it says stay within it, and one more
    would not (when something bounds them)."""
    each = per_replica(need)
    use = Use()
    for _ in range(started):  # replicas already started through the same rule
        if replicas_fitting(quota, use, each) != 0:
            use = use + each
    fitting = replicas_fitting(quota, use, each)
    if fitting is None:
        assert all(getattr(quota, f) is None or getattr(each, f) == 0 for f in FIELDS)
        return
    assert within(quota, use + each.times(fitting))
    assert not within(quota, use + each.times(fitting + 1))


class Namespaces(RuleBasedStateMachine):
    """Two namespaces under quotas; endpoints created, updated (min, instance), scaled up and woken,
    scaled down, paused, and their replicas failing, every write through `refusal` and every start
    through `replicas_fitting`, as the API and the controller do. No namespace ever holds more than
    its quota, and none has more endpoints than it allows."""

    def __init__(self):
        super().__init__()
        self.quotas: dict[str, Quota] = {}
        self.endpoints: dict[tuple[str, int], dict] = {}  # (ns, n) -> need, min, active
        self.replicas: list[tuple[str, int, Use]] = []  # (ns, n, what it holds)
        self.serial = 0

    @initialize(q_a=quotas, q_b=quotas)  # first: a quota lowered below the use is not a step here
    def set_quotas(self, q_a, q_b):
        self.quotas = {"a": q_a, "b": q_b}

    def held(self, ns: str) -> Use:
        total = Use()
        for owner, _, use in self.replicas:
            if owner == ns:
                total = total + use
        return total

    def committed(self, ns: str, leaving_out: tuple[str, int] | None = None) -> Use:
        """What the API counts as in use: every endpoint, and the minReplica of the active ones."""
        total = Use()
        for key, e in self.endpoints.items():
            if key[0] == ns and key != leaving_out:
                total = total + Use(endpoints=1)
                if e["active"]:
                    total = total + per_replica(e["need"]).times(e["min"])
        return total

    def quota(self, ns: str) -> Quota:
        return self.quotas.get(ns, Quota())

    @rule(ns=st.sampled_from("ab"), need=needs, low=st.integers(0, 3))
    def create(self, ns, need, low):
        asked = per_replica(need).times(low) + Use(endpoints=1)
        if refusal(self.quota(ns), self.committed(ns), asked) is None:
            self.serial += 1
            self.endpoints[(ns, self.serial)] = {"need": need, "min": low, "active": True}
            self.start((ns, self.serial), max(low, 1))

    @rule(data=st.data(), need=needs, low=st.integers(0, 3))
    @precondition(lambda self: self.endpoints)
    def update(self, data, need, low):
        key = data.draw(st.sampled_from(sorted(self.endpoints)))
        if refusal(self.quota(key[0]), self.committed(key[0], key), per_replica(need).times(low)) is None:
            self.endpoints[key].update(need=need, min=low)
            # a roll: a new replica starts beside each old one (within the quota), then the old one goes
            for old in [r for r in self.replicas if r[:2] == key]:
                self.start(key, 1)
                self.replicas.remove(old)

    @rule(data=st.data(), n=st.integers(1, 4))
    @precondition(lambda self: self.endpoints)
    def scale_up_or_wake(self, data, n):
        key = data.draw(st.sampled_from(sorted(self.endpoints)))
        self.endpoints[key]["active"] = True
        self.start(key, n)

    @rule(data=st.data())
    @precondition(lambda self: self.replicas)
    def a_replica_fails(self, data):
        self.replicas.pop(data.draw(st.integers(0, len(self.replicas) - 1)))

    @rule(data=st.data())
    @precondition(lambda self: self.endpoints)
    def pause_or_scale_to_zero(self, data):
        key = data.draw(st.sampled_from(sorted(self.endpoints)))
        self.endpoints[key]["active"] = False
        self.replicas = [r for r in self.replicas if r[:2] != key]

    @rule(data=st.data())
    @precondition(lambda self: self.endpoints)
    def delete(self, data):
        key = data.draw(st.sampled_from(sorted(self.endpoints)))
        del self.endpoints[key]
        self.replicas = [r for r in self.replicas if r[:2] != key]

    def start(self, key: tuple[str, int], wanted: int) -> None:
        """Start `wanted` more replicas, as many as the quota lets fit."""
        ns = key[0]
        each = per_replica(self.endpoints[key]["need"])
        fitting = replicas_fitting(self.quota(ns), self.held(ns), each)
        for _ in range(wanted if fitting is None else min(wanted, fitting)):
            self.replicas.append((*key, each))

    @invariant()
    def no_namespace_above_its_quota(self):
        for ns in "ab":
            assert within(self.quota(ns), self.held(ns)), (ns, self.quota(ns), self.held(ns))
            limit = self.quota(ns).endpoints
            assert limit is None or sum(1 for k in self.endpoints if k[0] == ns) <= limit


Namespaces.TestCase.settings = settings(max_examples=examples(200), stateful_step_count=30, deadline=None)
test_no_sequence_ends_above_a_quota = Namespaces.TestCase
