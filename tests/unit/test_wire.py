"""The wire format: the reference's own example bodies parse, the real huggingface_hub client reads what we render.

A section cited as §N is that of docs/wire-format.md."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone

import httpx2
import pytest
from huggingface_hub import HfApi, InferenceEndpoint, InferenceEndpointStatus, set_client_factory
from huggingface_hub.errors import BadRequestError, InferenceEndpointError
from huggingface_hub.utils._http import default_client_factory

from autoscaler.model.spec import Compute, EndpointSpec, Measure, Model, Provider, Route, Scaling, ScalingMetric
from autoscaler.model.state import State
from autoscaler.model.wire import (
    ChangeKind,
    StatusView,
    WireError,
    apply_update,
    parse_create,
    render_endpoint,
    render_list,
    spec_from_json,
    spec_to_json,
)
from proxy.core.control import AuthType

# What the client always sends, verbatim.
MINIMAL = {"compute": {"accelerator": "cpu", "instanceSize": "x2", "instanceType": "intel-icl",
                       "scaling": {"maxReplica": 1, "minReplica": 1, "scaleToZeroTimeout": None}},
           "model": {"framework": "pytorch", "repository": "gpt2", "revision": None, "image": {"huggingface": {}}},
           "name": "e1",
           "provider": {"region": "us-east-1", "vendor": "aws"},
           "type": "authenticated"}
# A body with everything set, verbatim.
FULL = {"compute": {"accelerator": "gpu", "instanceSize": "x1", "instanceType": "nvidia-l4",
                    "scaling": {"maxReplica": 2, "minReplica": 0, "scaleToZeroTimeout": 15,
                                "measure": {"pendingRequests": 1.5}}},
        "model": {"framework": "pytorch", "repository": "gpt2", "revision": "abc",
                  "image": {"custom": {"url": "ghcr.io/x/tgi:1", "healthRoute": "/health", "port": 80,
                                       "credentials": {"username": "u", "password": "p"}}},
                  "task": "text-generation", "command": ["python"], "args": ["-m", "x"],
                  "env": {"A": "1"}, "secrets": {"S": "2"}},
        "name": "e2", "provider": {"region": "us-east-1", "vendor": "aws"}, "type": "private",
        "privateService": {"accountId": "123", "region": "us-east-1"},
        "route": {"domain": "d.example", "path": "/p"}, "cacheHttpResponses": True, "tags": ["t"]}

SECRET = "s3cr3t-value-never-shown"
T0 = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
DELETE = object()  # for with_(): remove the key


def status(state: State = State.RUNNING, url: str | None = "http://h/endpoints/acme/e", **kw) -> StatusView:
    fields = dict(state=state, message="Endpoint is ready", created_at=T0, updated_at=T0 + timedelta(minutes=1),
                  url=url, ready_replica=1, target_replica=1)
    return StatusView(**(fields | kw))


def with_(body: dict, path: str, value) -> dict:
    """A deep copy of `body` with the key at dotted `path` set to `value`, or removed when value is DELETE."""
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


# --- the documented bodies ----------------------------------------------------------------------


def test_the_minimal_create_body_parses_with_every_default():
    assert parse_create(MINIMAL) == EndpointSpec(
        name="e1", type=AuthType.AUTHENTICATED, provider=Provider(vendor="aws", region="us-east-1"),
        compute=Compute("cpu", "intel-icl", "x2", Scaling(1, 1, None, Measure(ScalingMetric.PENDING_REQUESTS, 1.5))),
        model=Model(repository="gpt2", framework="pytorch", revision=None, task=None, image={"huggingface": {}},
                    command=None, args=None, env={}, secrets={}),
        route=Route(), private_service=None, cache_http_responses=None, tags=(),
    )
    assert parse_create(MINIMAL).health_route == "/health"


def test_the_full_create_body_parses():
    spec = parse_create(FULL)
    assert (spec.name, spec.type) == ("e2", AuthType.PRIVATE)
    assert spec.compute == Compute(
        "gpu", "nvidia-l4", "x1", Scaling(0, 2, 15, Measure(ScalingMetric.PENDING_REQUESTS, 1.5)))
    assert spec.model == Model(
        repository="gpt2", framework="pytorch", revision="abc", task="text-generation", image=FULL["model"]["image"],
        command=("python",), args=("-m", "x"), env={"A": "1"}, secrets={"S": "2"},
    )
    assert spec.route == Route("d.example", "/p")
    assert spec.private_service == {"accountId": "123", "region": "us-east-1"}
    assert (spec.cache_http_responses, spec.tags, spec.health_route) == (True, ("t",), "/health")


def test_parsing_copies_the_body():
    body = copy.deepcopy(FULL)
    spec = parse_create(body)
    body["model"]["image"]["custom"]["url"] = "changed"
    body["model"]["env"]["A"] = "changed"
    assert spec == parse_create(FULL)


# §13 item 3, and the forms the reference and its UI also use.
@pytest.mark.parametrize("path, value, attr, expected", [
    ("type", "protected", "type", AuthType.AUTHENTICATED),
    ("type", "public", "type", AuthType.PUBLIC),
    ("model.task", None, "model.task", None),  # absent: MINIMAL
    ("model.revision", DELETE, "model.revision", None),
    ("compute.scaling.scaleToZeroTimeout", DELETE, "compute.scaling.scale_to_zero_timeout_min", None),
    ("compute.scaling.measure", {"hardwareUsage": None}, "compute.scaling.measure",
     Measure(ScalingMetric.HARDWARE_USAGE, 80.0)),
    ("compute.scaling.measure", {"pendingRequests": None}, "compute.scaling.measure",
     Measure(ScalingMetric.PENDING_REQUESTS, 1.5)),
    ("compute.scaling.measure", {"hardwareUsage": 65}, "compute.scaling.measure",
     Measure(ScalingMetric.HARDWARE_USAGE, 65.0)),
    ("compute.scaling.measure", {"engineQueue": None}, "compute.scaling.measure",
     Measure(ScalingMetric.ENGINE_QUEUE, 2.0)),
    ("compute.scaling.measure", {"engineQueue": 4}, "compute.scaling.measure",
     Measure(ScalingMetric.ENGINE_QUEUE, 4.0)),
    ("compute.scaling.measure", None, "compute.scaling.measure", Measure(ScalingMetric.PENDING_REQUESTS, 1.5)),
    ("compute.scaling.metric", "hardwareUsage", "compute.scaling.measure", Measure(ScalingMetric.HARDWARE_USAGE, 80.0)),
    ("compute.scaling.threshold", 3, "compute.scaling.measure", Measure(ScalingMetric.PENDING_REQUESTS, 1.5)),
    ("model.env", None, "model.env", {}),
    ("model.secrets", {}, "model.secrets", {}),
    ("tags", None, "tags", ()),
    ("route", {"domain": "Echo.Example"}, "route", Route("echo.example", None)),
    ("cacheHttpResponses", False, "cache_http_responses", False),
    ("privateService", {"accountId": "1"}, "private_service", {"accountId": "1"}),
    ("model.image", {"tei": {"healthRoute": "/ready", "maxBatchTokens": 16384}}, "health_route", "/ready"),
    ("model.image", {"custom": {"url": "img", "health_route": "/up"}}, "health_route", "/up"),  # [spec-2023] spelling
    ("model.image", {"vLLM": {}}, "health_route", "/health"),
    ("model.fromCatalog", True, "model.task", None),  # unknown keys are ignored, at any level
    ("experimentalFeatures", {"x": 1}, "name", "e1"),
])
def test_tolerated_forms(path, value, attr, expected):
    spec = parse_create(with_(MINIMAL, path, value))
    got = spec
    for part in attr.split("."):
        got = getattr(got, part)
    assert got == expected


@pytest.mark.parametrize("min_replica, timeout, expected_min", [
    (0, None, 15),  # scale to zero with no idle time given: the reference's 15 minutes
    (0, 1, 1),  # shorter than the reference's 15: allowed on one's own host
    (0, 2880, 2880),
    (1, None, None),  # never scales to zero
])
def test_scale_to_zero_timeout(min_replica, timeout, expected_min):
    body = with_(MINIMAL, "compute.scaling.minReplica", min_replica)
    body = with_(body, "compute.scaling.scaleToZeroTimeout", timeout)
    assert parse_create(body).compute.scaling.scale_to_zero_timeout_min == expected_min


# --- invalid bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("path, value, phrase", [
    ("name", "My-Endpoint",
     'name must be 1 to 32 lowercase letters, digits or \'-\', not starting or ending with \'-\'; got "My-Endpoint"'),
    ("name", "-e", 'got "-e"'),
    ("name", "e-", 'got "e-"'),
    ("name", "e" * 33, "1 to 32"),
    ("name", "", 'got ""'),
    ("name", 7, "got 7"),
    ("name", DELETE, "name must be 1 to 32 lowercase letters, digits or '-', not starting or ending with '-'; got no"),
    ("type", "secret",
     'type must be one of "public", "authenticated", "private" ("protected" is read as "authenticated"); got "secret"'),
    ("type", ["public"], 'got ["public"]'),
    ("type", DELETE, "type must be one of"),
    ("provider", DELETE, "provider must be a JSON object; got nothing (the key is missing)"),
    ("provider.vendor", 3, "provider.vendor must be a non-empty string; got 3"),
    ("provider.region", DELETE, "provider.region must be a non-empty string; got nothing"),
    ("compute", [], "compute must be a JSON object; got []"),
    ("compute.accelerator", "tpu", 'compute.accelerator must be "cpu" or "gpu"; got "tpu"'),
    ("compute.instanceType", None, "compute.instanceType must be a non-empty string; got null"),
    ("compute.instanceSize", "2", 'compute.instanceSize must be an instance size such as "x1", "x2", "x4"; got "2"'),
    ("compute.instanceSize", "x0", 'got "x0"'),
    ("compute.scaling", DELETE, "compute.scaling must be a JSON object; got nothing"),
    ("compute.scaling.minReplica", 3,
     "compute.scaling.minReplica must be an integer between 0 and maxReplica (1); got 3"),
    ("compute.scaling.minReplica", -1, "between 0 and maxReplica (1); got -1"),
    ("compute.scaling.minReplica", 1.0, "got 1.0"),
    ("compute.scaling.minReplica", True, "got true"),
    ("compute.scaling.minReplica", None, "got null"),
    ("compute.scaling.maxReplica", 0, "compute.scaling.maxReplica must be an integer between 1 and 1000; got 0"),
    ("compute.scaling.maxReplica", "2", 'got "2"'),
    ("compute.scaling.scaleToZeroTimeout", 15,
     "compute.scaling.scaleToZeroTimeout needs compute.scaling.minReplica 0 to scale to zero, but minReplica is 1"),
    ("compute.scaling.measure", {"pendingRequests": 1, "hardwareUsage": 80},
     'compute.scaling.measure must be an object with one key, "pendingRequests", "hardwareUsage" or "engineQueue"'),
    ("compute.scaling.measure", {"latency": 1}, 'got {"latency": 1}'),
    ("compute.scaling.measure", "pendingRequests", 'compute.scaling.measure must be an object'),
    ("compute.scaling.measure", {"pendingRequests": 0},
     "compute.scaling.measure.pendingRequests must be a number greater than 0 and at most 10000; got 0"),
    # A NaN or infinite threshold once broke every endpoint's scaling round.
    ("compute.scaling.measure", {"pendingRequests": float("nan")}, "pendingRequests must be a number greater than 0"),
    ("compute.scaling.measure", {"pendingRequests": float("inf")}, "pendingRequests must be a number greater than 0"),
    ("compute.scaling.measure", {"hardwareUsage": float("nan")}, "hardwareUsage must be a number greater than 0"),
    ("compute.scaling.measure", {"pendingRequests": 10**400}, "pendingRequests must be a number greater than 0"),
    ("compute.scaling.measure", {"pendingRequests": "2"}, 'got "2"'),
    ("compute.scaling.measure", {"hardwareUsage": 120},
     "compute.scaling.measure.hardwareUsage must be a number greater than 0 and at most 100 (percent); got 120"),
    ("compute.scaling.metric", "latency",
     'compute.scaling.metric must be "pendingRequests", "hardwareUsage" or "engineQueue"; got "latency"'),
    ("model", "gpt2", 'model must be a JSON object; got "gpt2"'),
    ("model.repository", "", 'model.repository must be a non-empty string of at most 1024 characters; got ""'),
    ("model.framework", None, "model.framework must be a non-empty string of at most 256 characters; got null"),
    ("model.revision", 3, "model.revision must be a non-empty string of at most 256 characters; got 3"),
    ("model.task", ["text-generation"], "model.task must be a non-empty string"),
    ("model.image", DELETE,
     "model.image must be an object with exactly one key among vLLM, sGLang, tgi, tei, llamacpp, hfServe, custom, "
     "huggingface; got nothing (the key is missing)"),
    ("model.image", {}, "exactly one key among"),
    ("model.image", {"tgi": {}, "tei": {}}, 'got {"tgi": {}, "tei": {}}'),
    ("model.image", {"docker": {"url": "x"}}, 'got {"docker": {"url": "x"}}'),
    ("model.image", {"url": "ghcr.io/x"}, 'got {"url": "ghcr.io/x"}'),  # flat: the client wraps it in custom, curl must
    ("model.image", {"tgi": "latest"}, 'model.image.tgi must be a JSON object; got "latest"'),
    ("model.image", {"custom": {}},
     'model.image.custom.url must be the image to run, a non-empty string such as "ghcr.io/acme/server:1.2"; got no'),
    ("model.image", {"custom": {"url": "x", "credentials": "u:p"}},
     'model.image.custom.credentials must be a JSON object; got "u:p"'),
    ("model.image", {"custom": {"url": "x", "credentials": {"password": "p"}}},
     "model.image.custom.credentials.username must be a non-empty string; got nothing"),
    ("model.image", {"vLLM": {"healthRoute": "health"}},
     "model.image.vLLM.healthRoute must be a path starting with '/', such as \"/health\"; got \"health\""),
    ("model.command", "python -m x", 'model.command must be a list of strings; got "python -m x"'),
    ("model.args", ["-m", 1], 'model.args must be a list of strings; got ["-m", 1]'),
    ("model.env", ["A=1"], 'model.env must be a JSON object; got ["A=1"]'),
    ("model.env", {"A": 1}, "model.env.A must be a string; got 1"),
    ("model.env", {"A=B": "1"},
     "model.env must be an object whose keys are variable names (non-empty, without '='); got \"A=B\""),
    ("route", "d.example", 'route must be a JSON object; got "d.example"'),
    ("route", {"path": "p"}, "route.path must be a path starting with '/'; got \"p\""),
    ("route", {"domain": 1}, "route.domain must be a DNS host name"),
    # A domain that is an address or not a host name once let a user take the server's own traffic.
    ("route", {"domain": "127.0.0.1"}, "route.domain must be a DNS host name"),
    ("route", {"domain": "127.1"}, "route.domain must be a DNS host name"),
    ("route", {"domain": "0x7f000001"}, "route.domain must be a DNS host name"),
    ("route", {"domain": "[::1]"}, "route.domain must be a DNS host name"),
    ("route", {"domain": "a..b"}, "route.domain must be a DNS host name"),
    ("route", {"domain": "-a.example"}, "route.domain must be a DNS host name"),
    ("route", {"domain": "x" * 64 + ".example"}, "route.domain must be a DNS host name"),
    ("route", {"domain": "e1.example\r\nHost: evil"}, "route.domain must be a DNS host name"),
    ("privateService", "123", 'privateService must be a JSON object; got "123"'),
    ("cacheHttpResponses", "yes", 'cacheHttpResponses must be true or false; got "yes"'),
    ("tags", "t", 'tags must be a list of strings; got "t"'),
])
def test_invalid_create_bodies(path, value, phrase):
    with pytest.raises(WireError) as caught:
        parse_create(with_(MINIMAL, path, value))
    assert phrase in str(caught.value)


MEASURED = with_(MINIMAL, "compute.scaling.measure", {"pendingRequests": 2})


@pytest.mark.parametrize("body, phrase", [
    (None, "the request body must be a JSON object; got null"),
    ([MINIMAL], "the request body must be a JSON object; got [{"),
    ("{}", 'the request body must be a JSON object; got "{}"'),
    (with_(with_(MINIMAL, "compute.scaling.minReplica", 0), "compute.scaling.scaleToZeroTimeout", 0),
     "compute.scaling.scaleToZeroTimeout must be an integer number of minutes between 1 and 2880; got 0"),
    (with_(with_(MINIMAL, "compute.scaling.minReplica", 0), "compute.scaling.scaleToZeroTimeout", 2881), "got 2881"),
    (with_(MINIMAL, "compute.scaling.measure", {"x" * 200: 1}), "..."),  # long values are cut short
    (with_(with_(MINIMAL, "model.env", {"A": "1"}), "model.secrets", {"A": "2"}),
     "model.env and model.secrets both set A; keep each name in one of them"),
    (with_(MEASURED, "compute.scaling.metric", "hardwareUsage"),
     'scaling.metric must be the key of compute.scaling.measure ("pendingRequests") or null; got "hardwareUsage"'),
])
def test_invalid_bodies_beyond_one_key(body, phrase):
    with pytest.raises(WireError) as caught:
        parse_create(body)
    assert phrase in str(caught.value)


def test_a_secret_is_never_echoed_in_an_error():
    for body in (with_(MINIMAL, "model.secrets", {"TOKEN": 12345}),
                 with_(FULL, "model.image.custom.credentials", {"username": "u", "password": 12345})):
        with pytest.raises(WireError) as caught:
            parse_create(body)
        assert "12345" not in str(caught.value)
        assert "a number (not shown: it is a secret)" in str(caught.value)


# --- updates ------------------------------------------------------------------------------------


def test_the_update_examples_of_section_6():
    spec = parse_create(MINIMAL)
    new, kind = apply_update(spec, {"compute": {"scaling": {"minReplica": 0}}})
    assert kind is ChangeKind.SCALING_ONLY
    assert new.compute.scaling == Scaling(0, 1, 15, spec.compute.scaling.measure)  # default idle timeout

    everything = {
        "compute": {"accelerator": "gpu", "instanceSize": "x1", "instanceType": "nvidia-l4",
                    "scaling": {"maxReplica": 4, "minReplica": 0, "scaleToZeroTimeout": 30,
                                "measure": {"hardwareUsage": 80}}},
        "model": {"repository": "org/m", "framework": "custom", "revision": "r2", "task": "feature-extraction",
                  "image": {"custom": {"url": "img"}}, "command": ["sh"], "args": ["-c", "x"],
                  "env": {"E": "1"}, "secrets": {"S": "2"}},
        "route": {"domain": "d", "path": "/q"}, "cacheHttpResponses": False, "tags": ["x"],
    }
    new, kind = apply_update(spec, everything)
    assert kind is ChangeKind.ROLL
    assert new.compute == Compute(
        "gpu", "nvidia-l4", "x1", Scaling(0, 4, 30, Measure(ScalingMetric.HARDWARE_USAGE, 80.0)))
    assert new.model == Model("org/m", "custom", "r2", "feature-extraction", {"custom": {"url": "img"}}, ("sh",),
                              ("-c", "x"), {"E": "1"}, {"S": "2"})
    assert (new.route, new.cache_http_responses, new.tags) == (Route("d", "/q"), False, ("x",))
    assert (new.name, new.type, new.provider) == (spec.name, spec.type, spec.provider)  # never sent by an update


@pytest.mark.parametrize("body, kind", [
    ({}, ChangeKind.NONE),
    ({"name": "e2"}, ChangeKind.NONE),  # its own name: allowed, changes nothing
    ({"model": {"env": {"A": "1"}}}, ChangeKind.NONE),  # the same value again
    ({"compute": {"scaling": {"maxReplica": 5}}}, ChangeKind.SCALING_ONLY),
    ({"compute": {"scaling": {"minReplica": 1}}}, ChangeKind.SCALING_ONLY),
    ({"compute": {"scaling": {"scaleToZeroTimeout": 60}}}, ChangeKind.SCALING_ONLY),
    ({"compute": {"scaling": {"measure": {"hardwareUsage": 70}}}}, ChangeKind.SCALING_ONLY),
    ({"type": "public"}, ChangeKind.SCALING_ONLY),
    ({"tags": ["a", "b"]}, ChangeKind.SCALING_ONLY),
    ({"route": {"path": "/other"}}, ChangeKind.SCALING_ONLY),
    ({"cacheHttpResponses": False}, ChangeKind.SCALING_ONLY),
    ({"provider": {"region": "eu-west-1"}}, ChangeKind.SCALING_ONLY),
    ({"privateService": None}, ChangeKind.SCALING_ONLY),
    ({"compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x4"}}, ChangeKind.ROLL),
    ({"compute": {"instanceSize": "x2"}}, ChangeKind.ROLL),
    ({"model": {"revision": "def"}}, ChangeKind.ROLL),
    ({"model": {"repository": "gpt2-large"}}, ChangeKind.ROLL),
    ({"model": {"task": None}}, ChangeKind.ROLL),
    ({"model": {"image": {"vLLM": {"tensorParallelSize": 2}}}}, ChangeKind.ROLL),
    ({"model": {"env": {}}}, ChangeKind.ROLL),
    ({"model": {"secrets": {"S": "rotated"}}}, ChangeKind.ROLL),
    ({"model": {"command": ["other"]}}, ChangeKind.ROLL),
    ({"model": {"args": None}}, ChangeKind.ROLL),
    ({"compute": {"scaling": {"maxReplica": 3}}, "model": {"revision": "def"}}, ChangeKind.ROLL),
])
def test_update_kinds(body, kind):
    assert apply_update(parse_create(FULL), body)[1] is kind


@pytest.mark.parametrize("body, check", [
    ({"model": {"env": {}, "secrets": {}}}, lambda s: (s.model.env, s.model.secrets) == ({}, {})),  # {} clears (§6)
    ({"model": {"env": None}}, lambda s: s.model.env == {}),  # null: the default
    ({"model": {"repository": "r2"}},
     lambda s: (s.model.env, s.model.secrets, s.model.revision) == ({"A": "1"}, {"S": "2"}, "abc")),
    ({"model": {"image": {"tgi": {}}}},  # replaced whole
     lambda s: s.model.image == {"tgi": {}} and s.health_route == "/health"),
    ({"route": {"path": "/q"}}, lambda s: s.route == Route("d.example", "/q")),  # objects merge key by key
    ({"route": None}, lambda s: s.route == Route()),
    ({"compute": {"scaling": {"minReplica": 1}}}, lambda s: s.compute.scaling.scale_to_zero_timeout_min is None),
    ({"compute": {"scaling": {"maxReplica": 3}}}, lambda s: s.compute.scaling.scale_to_zero_timeout_min == 15),
    ({"compute": {"scaling": {"scaleToZeroTimeout": None}}},
     lambda s: s.compute.scaling.scale_to_zero_timeout_min == 15),
    ({"compute": {"scaling": {"metric": "pendingRequests"}}},
     lambda s: s.compute.scaling.measure == Measure(ScalingMetric.PENDING_REQUESTS, 1.5)),
    ({"compute": {"scaling": {"metric": "hardwareUsage"}}},
     lambda s: s.compute.scaling.measure == Measure(ScalingMetric.HARDWARE_USAGE, 80.0)),
    ({"compute": {"scaling": {"measure": None}}}, lambda s: s.compute.scaling.measure.threshold == 1.5),
    ({"type": "protected"}, lambda s: s.type is AuthType.AUTHENTICATED),
    ({"tags": None}, lambda s: s.tags == ()),
])
def test_updates_change_only_what_they_send(body, check):
    assert check(apply_update(parse_create(FULL), body)[0])


def test_an_update_from_min_one_to_zero_gets_the_default_idle_timeout_and_back():
    spec = parse_create(MINIMAL)
    zero, _ = apply_update(spec, {"compute": {"scaling": {"minReplica": 0, "scaleToZeroTimeout": 5}}})
    assert zero.compute.scaling.scale_to_zero_timeout_min == 5
    one, _ = apply_update(zero, {"compute": {"scaling": {"minReplica": 1}}})
    assert one.compute.scaling.scale_to_zero_timeout_min is None


@pytest.mark.parametrize("body, phrase", [
    ({"name": "other"},
     'name must be "e2", the name of this endpoint (create a new endpoint to rename it); got "other"'),
    ({"compute": {"scaling": {"maxReplica": 0}}}, "compute.scaling.maxReplica must be an integer between 1 and 1000; got 0"),
    ({"compute": {"scaling": {"minReplica": 3}}},
     "compute.scaling.minReplica must be an integer between 0 and maxReplica (2); got 3"),
    ({"compute": {"scaling": {"minReplica": 1, "scaleToZeroTimeout": 15}}}, "but minReplica is 1"),
    ({"compute": {"scaling": None}}, "compute.scaling must be a JSON object; got null"),
    ({"compute": {"instanceType": None}}, "compute.instanceType must be a non-empty string; got null"),
    ({"model": {"repository": None}}, "model.repository must be a non-empty string of at most 1024 characters; got null"),
    ({"model": {"image": {"custom": {"url": 5}}}}, "model.image.custom.url must be the image to run"),
    ({"model": {"env": {"S": "x"}}}, "model.env and model.secrets both set S"),
    ({"provider": {"vendor": ""}}, 'provider.vendor must be a non-empty string; got ""'),
    ("[]", 'the request body must be a JSON object; got "[]"'),
])
def test_invalid_updates(body, phrase):
    with pytest.raises(WireError) as caught:
        apply_update(parse_create(FULL), body)
    assert phrase in str(caught.value)


def test_max_below_a_stored_min_names_max_replica():
    spec = parse_create(with_(with_(MINIMAL, "compute.scaling.maxReplica", 4), "compute.scaling.minReplica", 3))
    with pytest.raises(WireError, match=r"maxReplica must be an integer of at least minReplica \(3\); got 2"):
        apply_update(spec, {"compute": {"scaling": {"maxReplica": 2}}})


# --- storage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    MINIMAL, FULL,
    with_(FULL, "compute.scaling.measure", {"hardwareUsage": 72.5}),
    with_(MINIMAL, "model.image", {"llamacpp": {"ctxSize": 4096, "modelPath": "m.gguf", "nParallel": 2}}),
])
def test_the_stored_form_round_trips_with_its_secrets(body):
    spec = parse_create(body)
    stored = json.loads(json.dumps(spec_to_json(spec)))  # what SQLite holds is text
    assert spec_from_json(stored) == spec
    if spec.model.secrets:
        assert stored["model"]["secrets"] == {"S": "2"}
        assert stored["model"]["image"]["custom"]["credentials"]["password"] == "p"


# --- responses, read by the real client ---------------------------------------------------------


def test_the_client_reads_a_rendered_endpoint():
    raw = render_endpoint(parse_create(FULL), status(State.RUNNING, "http://h:8080/endpoints/acme/e2"))
    endpoint = InferenceEndpoint.from_raw(raw, namespace="acme", token="tok")
    assert (endpoint.name, endpoint.namespace, endpoint.status, endpoint.url) == (
        "e2", "acme", "running", "http://h:8080/endpoints/acme/e2")
    assert (endpoint.repository, endpoint.framework, endpoint.revision, endpoint.task) == (
        "gpt2", "pytorch", "abc", "text-generation")
    assert (endpoint.type, endpoint.health_route) == ("private", "/health")
    assert (endpoint.created_at, endpoint.updated_at) == (T0, T0 + timedelta(minutes=1))
    assert endpoint.client.model == "http://h:8080/endpoints/acme/e2"
    assert raw["status"]["createdAt"] == "2024-01-02T03:04:05.678Z"
    assert raw["compute"]["scaling"] == {"minReplica": 0, "maxReplica": 2, "scaleToZeroTimeout": 15,
                                         "measure": {"pendingRequests": 1.5}, "metric": "pendingRequests", "sleepAfter": None}
    assert raw["provider"] == {"vendor": "aws", "region": "us-east-1"} and raw["tags"] == ["t"]
    assert raw["route"] == {"domain": "d.example", "path": "/p"} and raw["cacheHttpResponses"] is True


def test_a_pending_endpoint_has_no_url_and_no_client():
    raw = render_endpoint(parse_create(MINIMAL), status(State.PENDING, None, ready_replica=0))
    endpoint = InferenceEndpoint.from_raw(raw, namespace="acme", token="tok")
    assert (endpoint.status, endpoint.url, endpoint.revision, endpoint.task) == ("pending", None, None, None)
    assert "url" not in raw["status"] and "errorMessage" not in raw["status"]
    with pytest.raises(InferenceEndpointError):
        _ = endpoint.client


def test_a_failure_carries_an_error_message():
    raw = render_endpoint(parse_create(MINIMAL), status(State.FAILED, None, message="exit 1", error_message="exit 1"))
    assert raw["status"]["errorMessage"] == raw["status"]["message"] == "exit 1"
    assert InferenceEndpoint.from_raw(raw, namespace="acme", token="tok").status == "failed"


@pytest.mark.parametrize("moment, text", [
    (datetime(2024, 1, 1, tzinfo=UTC), "2024-01-01T00:00:00.000Z"),
    (datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2))), "2024-01-01T00:00:00.000Z"),  # shown in UTC
    (datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), "2024-01-01T00:00:00.999Z"),
])
def test_times_are_utc_with_a_z(moment, text):
    raw = render_endpoint(parse_create(MINIMAL), status(created_at=moment, updated_at=moment))
    assert raw["status"]["createdAt"] == raw["status"]["updatedAt"] == text
    assert InferenceEndpoint.from_raw(raw, namespace="acme", token="tok").created_at == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000)


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        status(created_at=datetime(2024, 1, 1))


def test_every_state_renders_as_the_client_spells_it():
    assert {s.value for s in State} == {s.value for s in InferenceEndpointStatus}
    for state in State:
        raw = render_endpoint(parse_create(MINIMAL), status(state))
        assert InferenceEndpoint.from_raw(raw, namespace="acme", token="tok").status == state.value


def test_render_list():
    items = [render_endpoint(parse_create(b), status()) for b in (MINIMAL, FULL)]
    assert render_list(iter(items)) == {"items": items}


def test_a_rendered_endpoint_does_not_share_the_spec_dicts():
    spec = parse_create(FULL)
    raw = render_endpoint(spec, status())
    raw["model"]["image"]["custom"]["url"] = "changed"
    raw["model"]["env"]["A"] = "changed"
    raw["privateService"]["accountId"] = "changed"
    assert spec == parse_create(FULL)


# --- secrets ------------------------------------------------------------------------------------


def secret_body() -> dict:
    body = with_(FULL, "model.secrets", {"HF_TOKEN": SECRET})
    return with_(body, "model.image.custom.credentials", {"username": "robot", "password": SECRET})


def test_secrets_are_never_rendered():
    spec = parse_create(secret_body())
    raw = render_endpoint(spec, status())
    assert SECRET not in json.dumps(raw)
    assert "secrets" not in raw["model"]
    assert raw["model"]["image"]["custom"]["credentials"] == {"username": "robot"}  # the password is dropped
    assert spec.model.image["custom"]["credentials"]["password"] == SECRET  # still there for the image pull


def test_secrets_are_never_in_a_repr():
    spec = parse_create(secret_body())
    for text in (repr(spec), repr(spec.model), str(spec)):
        assert SECRET not in text
        assert "secrets=['HF_TOKEN']" in text and "'username': 'robot'" in text


def test_secrets_survive_an_update_that_does_not_name_them():
    spec, _ = apply_update(parse_create(secret_body()), {"compute": {"scaling": {"maxReplica": 3}}})
    assert spec.model.secrets == {"HF_TOKEN": SECRET}


# --- the whole round trip through the real client ------------------------------------------------


class FakeServer:
    """The management routes this module serves, in memory, behind the client's own HTTP stack."""

    def __init__(self):
        self.specs: dict[str, EndpointSpec] = {}
        self.bodies: list[dict] = []
        self.changes: list[ChangeKind] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        parts = request.url.path.split("/")[2:]  # /v2/endpoint/{ns}[/{name}]
        assert parts[:2] == ["endpoint", "acme"], request.url
        try:
            if request.method == "POST":
                self.bodies.append(json.loads(request.content))
                spec = parse_create(self.bodies[-1])
                self.specs[spec.name] = spec
            elif request.method == "PUT":
                self.bodies.append(json.loads(request.content))
                spec, change = apply_update(self.specs[parts[2]], self.bodies[-1])
                self.specs[spec.name] = spec
                self.changes.append(change)
            elif len(parts) == 2:
                return httpx2.Response(200, json=render_list(render_endpoint(s, status()) for s in self.specs.values()))
            else:
                spec = self.specs[parts[2]]
        except WireError as error:
            return httpx2.Response(400, json={"error": str(error)})
        return httpx2.Response(200, json=render_endpoint(spec, status()))


@pytest.fixture
def server():
    fake = FakeServer()
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake.handle)))
    yield fake
    set_client_factory(default_client_factory)


def test_the_real_client_creates_reads_and_updates(server):
    api = HfApi(token="tok")
    endpoint = api.create_inference_endpoint(
        "e3", repository="/models/m", framework="custom", accelerator="gpu", instance_size="x1",
        instance_type="nvidia-l4", region="us-east-1", vendor="aws", min_replica=0, max_replica=2,
        scale_to_zero_timeout=5, scaling_metric="hardwareUsage", scaling_threshold=None,
        custom_image={"url": "ghcr.io/acme/server:1", "healthRoute": "/ready"},
        container_registry_username="robot", container_registry_password=SECRET,
        secrets={"HF_TOKEN": SECRET}, env={"A": "1"}, task="text-generation", type="private",
        domain="e3.example", path="/", cache_http_responses=False, tags=["dev"], namespace="acme",
    )
    spec = server.specs["e3"]
    assert spec.compute.scaling == Scaling(0, 2, 5, Measure(ScalingMetric.HARDWARE_USAGE, 80.0))
    assert spec.model.image["custom"]["credentials"] == {"username": "robot", "password": SECRET}
    assert (endpoint.name, endpoint.status, endpoint.health_route) == ("e3", "running", "/ready")
    assert endpoint.type == "private"
    assert SECRET not in json.dumps(endpoint.raw)

    fetched = api.get_inference_endpoint("e3", namespace="acme")
    assert (fetched.repository, fetched.task, fetched.url) == ("/models/m", "text-generation", status().url)
    assert [e.name for e in api.list_inference_endpoints(namespace="acme")] == ["e3"]

    updated = fetched.update(min_replica=1, max_replica=3)
    assert server.bodies[-1] == {"compute": {"scaling": {"maxReplica": 3, "minReplica": 1}}}
    assert server.changes[-1] is ChangeKind.SCALING_ONLY
    assert updated.raw["compute"]["scaling"]["scaleToZeroTimeout"] is None

    api.update_inference_endpoint("e3", env={}, secrets={}, namespace="acme")  # {} clears (§6)
    assert server.changes[-1] is ChangeKind.ROLL
    assert (server.specs["e3"].model.env, server.specs["e3"].model.secrets) == ({}, {})


def test_the_real_client_resends_the_image_for_parallelism(server):
    api = HfApi(token="tok")
    api.create_inference_endpoint(
        "llm", repository="org/m", framework="pytorch", accelerator="gpu", instance_size="x2",
        instance_type="nvidia-l4", region="us-east-1", vendor="aws",
        custom_image={"vLLM": {"maxNumSeqs": 8}}, namespace="acme",
    )
    api.update_inference_endpoint("llm", tensor_parallel_size=2, namespace="acme")  # GET, then PUT of the whole image
    assert server.bodies[-1] == {"model": {"image": {"vLLM": {"maxNumSeqs": 8, "tensorParallelSize": 2}}}}
    assert server.changes[-1] is ChangeKind.ROLL


def test_the_client_raises_our_message(server):
    with pytest.raises(BadRequestError, match="compute.scaling.minReplica must be an integer between 0 and maxReplica"):
        HfApi(token="tok").create_inference_endpoint(
            "bad", repository="gpt2", framework="pytorch", accelerator="cpu", instance_size="x1",
            instance_type="intel-icl", region="r", vendor="v", min_replica=3, max_replica=2, namespace="acme",
        )


def _llamacpp_body(**scaling):
    body = copy.deepcopy(MINIMAL)
    body["model"]["image"] = {"llamacpp": {"modelPath": "m.gguf"}}
    body["compute"]["scaling"].update(scaling)
    return body


def test_sleep_after_is_kept_shown_and_bounded():
    spec = parse_create(_llamacpp_body(sleepAfter=30))
    assert spec.compute.scaling.sleep_after_s == 30
    assert spec_to_json(spec)["compute"]["scaling"]["sleepAfter"] == 30
    kept, _ = apply_update(spec, {"compute": {"scaling": {"maxReplica": 3}}})
    assert kept.compute.scaling.sleep_after_s == 30
    off, kind = apply_update(spec, {"compute": {"scaling": {"sleepAfter": None}}})
    assert off.compute.scaling.sleep_after_s is None
    assert kind is ChangeKind.ROLL  # llama.cpp takes it as an argument: new containers
    for bad in (0, -1, 86_401, 1.5, "30", True):
        with pytest.raises(WireError, match=r"compute\.scaling\.sleepAfter"):
            parse_create(_llamacpp_body(sleepAfter=bad))


def test_sleep_after_is_refused_for_an_engine_that_cannot_sleep():
    body = copy.deepcopy(MINIMAL)
    body["compute"]["scaling"]["sleepAfter"] = 30
    assert next(iter(body["model"]["image"])) not in ("vLLM", "sGLang", "llamacpp")
    with pytest.raises(WireError, match="cannot sleep: only llamacpp, sGLang, vLLM can"):
        parse_create(body)


def test_the_variants_that_may_sleep_are_the_ones_engines_know_how_to_sleep():
    from autoscaler.model.spec import SLEEPERS
    from engines.sleep import KINDS

    assert frozenset(KINDS) == SLEEPERS
