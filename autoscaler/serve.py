"""`endpointd serve`: the management API, the proxy and the controller on one uvloop event loop
and one listener, with SQLite as the store and the local Docker engine as the runtime. What it
runs is built as one object (parts.py); this is the aiohttp app around it."""

from __future__ import annotations

from aiohttp import web

from autoscaler.api.app import add_api
from autoscaler.api.dashboard import add_dashboard
from autoscaler.config import EnginesConfig, ScalingConfig, ServeConfig
from autoscaler.model.usage import Rates
from autoscaler.observe.analytics import AnalyticsConfig
from autoscaler.observe.logs import LogsConfig
from autoscaler.observe.usage import UsageConfig
from autoscaler.parts import build_parts
from proxy.core.config import ProxyConfig
from proxy.management.app import add_proxy


async def build_app(
    proxy_config: ProxyConfig, serve_config: ServeConfig, scaling_config: ScalingConfig,
    logs_config: LogsConfig, analytics_config: AnalyticsConfig, engines_config: EnginesConfig,
    usage_config: UsageConfig, rates: Rates,
) -> web.Application:
    """The whole of endpointd as one aiohttp app. What has a lifetime (the background loops, the
    connections to Docker and SQLite) is started and closed by the app's cleanup context."""
    parts = await build_parts(proxy_config, serve_config, scaling_config, logs_config, analytics_config, engines_config,
                              usage_config, rates)
    app = web.Application()
    add_dashboard(app)  # before the proxy's catch-all route
    add_proxy(app, parts.pipeline)
    add_api(app, parts.api, logs=parts.logs, analytics=parts.analytics, limits=parts.pipeline.limits,
            usage_meter=parts.usage)
    app.cleanup_ctx.append(parts.lifetime)
    return app
