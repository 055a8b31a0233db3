"""The proxy's view of the control plane in `endpointd serve`: the controller's route table,
tokens checked against the store, wakes handed to the controller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from engines.runtime import EndpointKey
from proxy.core.control import Identity, RouteTable


class ServeControlPlane(RouteTable):
    """The control plane the proxy of `endpointd serve` reads: the route table the controller fills,
    tokens verified by `verify` (the store), wakes passed to the controller once it is bound."""

    def __init__(self, verify: Callable[[str], Awaitable[Identity | None]]) -> None:
        super().__init__()
        self._verify = verify
        self._wake: Callable[[EndpointKey], None] = lambda key: None

    def bind_waker(self, wake: Callable[[EndpointKey], None]) -> None:
        self._wake = wake

    async def verify_token(self, token: str) -> Identity | None:
        return await self._verify(token)

    def wake(self, namespace: str, name: str) -> None:
        self._wake(EndpointKey(namespace, name))
