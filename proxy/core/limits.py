"""Which rate limits apply to a request: the configured defaults (per token, per namespace) and an
admin's per-namespace overrides, in every process that admits requests. The counters that
enforce them are ratelimit.py's, in the main process only.

    limits = LimitTable.from_config(config)
    limits.set("acme", Override(rpm=600))        # an admin's override; listeners hear it
    limits.namespace("acme")                     # Limit(rpm=600, concurrent=<the default>)

A limit of 0 is no limit. `active` is False while nothing is limited anywhere, which the admission
path reads first: with no limit configured, a request pays nothing more than that attribute read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import ProxyConfig


@dataclass(frozen=True, slots=True)
class Limit:
    rpm: int = 0  # requests per minute; 0: unlimited
    concurrent: int = 0  # requests in flight at once (held ones included); 0: unlimited

    def __bool__(self) -> bool:
        return bool(self.rpm or self.concurrent)


@dataclass(frozen=True, slots=True)
class Override:
    """An admin's limits for one namespace; None keeps the configured default (0: unlimited)."""

    rpm: int | None = None
    concurrent: int | None = None

    def over(self, default: Limit) -> Limit:
        return Limit(default.rpm if self.rpm is None else self.rpm,
                     default.concurrent if self.concurrent is None else self.concurrent)


UNLIMITED = Limit()
LimitsListener = Callable[[str, "Override | None"], None]


class LimitTable:
    def __init__(self, token: Limit = UNLIMITED, namespace: Limit = UNLIMITED) -> None:
        self.token = token  # every token's, alike
        self.default = namespace  # a namespace's without an override
        self.overrides: dict[str, Override] = {}
        self._limited: dict[str, Limit] = {}  # namespace -> its limit, for those with an override
        self._listeners: list[LimitsListener] = []
        self.active = False
        self._refresh()

    @classmethod
    def from_config(cls, config: ProxyConfig) -> LimitTable:
        return cls(Limit(config.token_rpm, config.token_concurrent),
                   Limit(config.namespace_rpm, config.namespace_concurrent))

    def namespace(self, namespace: str) -> Limit:
        return self._limited.get(namespace, self.default)

    def applies(self, namespace: str, has_token: bool) -> bool:
        """Whether any limit counts a request for `namespace` (with a token: the token's too)."""
        return (has_token and bool(self.token)) or bool(self.namespace(namespace))

    def set(self, namespace: str, override: Override | None) -> None:
        """`namespace`'s override (None: back to the defaults); listeners hear of it."""
        if override is None:
            self.overrides.pop(namespace, None)
            self._limited.pop(namespace, None)
        else:
            self.overrides[namespace] = override
            self._limited[namespace] = override.over(self.default)
        self._refresh()
        for listener in list(self._listeners):
            listener(namespace, override)

    def subscribe(self, listener: LimitsListener) -> None:
        self._listeners.append(listener)

    def _refresh(self) -> None:
        self.active = bool(self.token) or bool(self.default) or any(self._limited.values())
