"""The management API's one error-to-status table: an EndpointdError reaches the caller as its
`status` and its sentence; anything else (an EndpointdError of status 500 too) as a 500 that hides
the sentence and names the request id."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.api import base
from autoscaler.api.base import errors_middleware
from autoscaler.model.catalog import CatalogError
from autoscaler.model.wire import WireError
from autoscaler.observe.analytics import QueryError
from autoscaler.observe.log_follow import FollowersFull
from autoscaler.store import store
from autoscaler.store.sealing import SealingError
from engines.artifacts import ArtifactError, HubUnreachable
from engines.hardware import HardwareError
from engines.model_roots import RootsError
from engines.runtime import RuntimeFailure
from engines.spec_rules import PresetError
from engines.suggest import SuggestError
from proxy.core.config import ProxyConfig
from proxy.core.control import InMemoryControlPlane
from proxy.core.errors import ERROR_MESSAGE
from proxy.core.pipeline import Pipeline
from proxy.management.app import add_proxy

SHOWN = [  # what the caller gets: (the error, its status); the sentence is the error's own
    (WireError("model.repository is required"), 400),
    (HardwareError("instanceType must be one of cpu"), 400),
    (PresetError("env PORT is reserved"), 400),
    (RootsError("the path is outside the model roots"), 400),
    (SealingError("the sealing key is missing"), 400),
    (SuggestError("accelerator must be cpu or gpu"), 400),
    (QueryError("`step` is not a number of seconds"), 400),
    (ArtifactError("no such repository"), 400),
    (HubUnreachable("the Hub did not answer"), 502),
    (store.NotFound("no endpoint alice/x"), 404),
    (store.Conflict("the endpoint alice/x exists"), 409),
    (store.Stale("the endpoint changed meanwhile"), 409),
    (FollowersFull("uid", 2), 429),
    (base.Invalid("the body must be an object"), 400),
    (base.Unauthenticated("send a token"), 401),
    (base.Forbidden("not your namespace"), 403),
    (base.NotFound("no such endpoint"), 404),
    (base.Conflict("it exists"), 409),
]
HIDDEN = [  # an internal error: 500, the sentence logged and not shown
    store.StoreError("schema version 9"),
    CatalogError("no recipe x"),
    RuntimeFailure("start", "replica-1", "the daemon refused"),
    ValueError("a bug"),
]


@pytest.fixture
async def client():
    raised: list[BaseException] = []

    async def fail(request: web.Request) -> web.Response:
        raise raised[0]

    v2 = web.Application(middlewares=[errors_middleware])
    v2.router.add_get("/fail", fail)
    app = web.Application()
    add_proxy(app, Pipeline(ProxyConfig(), InMemoryControlPlane()))
    app.add_subapp("/v2", v2)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        c.raised = raised
        yield c


@pytest.mark.parametrize(("error", "status"), SHOWN, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
async def test_an_error_reaches_the_caller_as_its_status_and_sentence(client, error, status):
    client.raised[:] = [error]
    r = await client.get("/v2/fail")
    assert r.status == status
    assert await r.json() == {"error": str(error)}
    assert r.headers[ERROR_MESSAGE] == str(error)


@pytest.mark.parametrize("error", HIDDEN, ids=lambda e: type(e).__name__)
async def test_an_internal_error_is_a_500_that_hides_its_sentence(client, error):
    client.raised[:] = [error]
    r = await client.get("/v2/fail", headers={"X-Request-Id": "rid-1"})
    assert r.status == 500
    body = await r.json()
    assert str(error) not in body["error"]
    assert body["error"].startswith("internal error; quote request id ")
