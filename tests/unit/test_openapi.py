"""The OpenAPI document describes exactly the routes the management API serves."""

from aiohttp import web

from autoscaler.api import openapi
from autoscaler.api.app import add_api
from autoscaler.api.endpoints import ManagementApi
from proxy.core.limits import LimitTable


def served_routes() -> set[tuple[str, str]]:
    app = web.Application()
    add_api(app, ManagementApi.__new__(ManagementApi), logs=None, analytics=None, limits=LimitTable())  # only the route table is read
    routes = set()
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)  # a sub-app: its routes' paths carry the prefix
        for route in sub.router.routes() if sub is not None else resource:
            if route.method != "HEAD":
                routes.add((route.method.lower(), route.resource.canonical))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {(method, path) for path, ops in openapi.document()["paths"].items() for method in ops}


def test_document_and_routes_agree():
    assert documented_routes() == served_routes()


def test_every_reference_resolves():
    doc = openapi.document()
    schemas = doc["components"]["schemas"]

    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    found = list(refs(doc))
    assert found
    for ref in found:
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
