"""The `endpointd` command line: the composition root that starts each part."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import settings


def _images_build(args: argparse.Namespace) -> int:
    from engines import images

    return images.main(force=args.force)


def _proxy(args: argparse.Namespace) -> int:
    from proxy import static_routes
    from proxy.app import make_app
    from proxy.config import ProxyConfig
    from proxy.server import run

    config = settings.load(
        ProxyConfig, "proxy",
        file_values=settings.read_file(args.config).get("proxy"),
        env=os.environ,
        flags=settings.flags_of(args, ProxyConfig),
    )
    control = static_routes.load(args.routes)
    logging.getLogger("endpointd").info(
        "proxying %d endpoint(s) on http://%s:%d/endpoints/...", len(control.entries), config.host, config.port
    )
    run(make_app(config, control), config.host, config.port, config.drain_timeout_s)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endpointd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from proxy.config import ProxyConfig

    proxy = sub.add_parser("proxy", help="run the edge proxy alone, in front of replicas listed in a routes file")
    proxy.add_argument("--routes", required=True, help="TOML file of users, tokens and endpoints (see proxy/static_routes.py)")
    proxy.add_argument("--config", help="TOML file; its [proxy] table sets any option below")
    settings.add_flags(proxy, ProxyConfig)
    proxy.set_defaults(func=_proxy)

    images = sub.add_parser("images", help="build the project's own engine images locally")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build endpointd/base:bookworm and endpointd/echo:latest")
    build.add_argument("--force", action="store_true", help="rebuild images that already exist")
    build.set_defaults(func=_images_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    from proxy.static_routes import RoutesError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (settings.SettingsError, RoutesError) as error:
        print(f"endpointd: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
