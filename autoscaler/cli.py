"""The `endpointd` command line: the composition root that starts each part."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from proxy.config import ProxyConfig

from . import settings
from .config import ScalingConfig, ServeConfig
from .store import SCOPES
from .wire import wire_time


def _load(args: argparse.Namespace) -> tuple[ProxyConfig, ServeConfig, ScalingConfig]:
    file = settings.read_file(args.config)
    return tuple(
        settings.load(cls, section, file_values=file.get(section), env=os.environ, flags=settings.flags_of(args, cls))
        for cls, section in ((ProxyConfig, "proxy"), (ServeConfig, "serve"), (ScalingConfig, "scaling"))
    )


def _serve(args: argparse.Namespace) -> int:
    from proxy.server import run

    from .serve import build_app

    proxy, serve, scaling = _load(args)
    run(build_app(proxy, serve, scaling), proxy)
    return 0


def _proxy(args: argparse.Namespace) -> int:
    from proxy import static_routes
    from proxy.app import make_app
    from proxy.server import run

    config = settings.load(ProxyConfig, "proxy", file_values=settings.read_file(args.config).get("proxy"),
                           env=os.environ, flags=settings.flags_of(args, ProxyConfig))
    control = static_routes.load(args.routes)
    logging.getLogger("endpointd").info(
        "proxying %d endpoint(s) on http://%s:%d/endpoints/...", len(control.entries), config.host, config.port
    )
    run(make_app(config, control), config)
    return 0


def _images_build(args: argparse.Namespace) -> int:
    from engines import images

    return images.main(force=args.force)


async def _with_store(args: argparse.Namespace, action):
    from .serve import STORE_FILE
    from .store import Store

    serve = settings.load(ServeConfig, "serve", env=os.environ, flags={"data_dir": args.data_dir})
    store = await Store.open(Path(serve.data_dir) / STORE_FILE)
    try:
        return await action(store)
    finally:
        await store.close()


def _users_add(args: argparse.Namespace) -> int:
    async def action(store):
        await store.add_user(args.name, args.org or ())
        orgs = await store.user_orgs(args.name)
        print(f"user {args.name}" + (f" (orgs: {', '.join(sorted(orgs))})" if orgs else ""))

    asyncio.run(_with_store(args, action))
    return 0


def _tokens_create(args: argparse.Namespace) -> int:
    async def action(store):
        token, info = await store.create_token(args.user, args.label, args.scope or ())
        print(f"token {info.id} for {info.user} (shown once; keep it secret):")
        print(token)

    asyncio.run(_with_store(args, action))
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    async def action(store):
        info = await store.revoke_token(args.token)
        print(f"revoked token {info.id} of {info.user}; it stops working within seconds")

    asyncio.run(_with_store(args, action))
    return 0


def _tokens_list(args: argparse.Namespace) -> int:
    async def action(store):
        for info in await store.list_tokens(args.user):
            state = f"revoked {wire_time(info.revoked_at)}" if info.revoked_at else "active"
            scopes = f"  scopes: {','.join(sorted(info.scopes))}" if info.scopes else ""
            print(f"{info.id}  ...{info.hint or '':<4}  {info.label or '-':<24} created {wire_time(info.created_at)}  {state}{scopes}")

    asyncio.run(_with_store(args, action))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endpointd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the management API, the proxy and the controller")
    serve.add_argument("--config", help="TOML file; its [proxy], [serve] and [scaling] tables set any option below")
    settings.add_flags(serve, ProxyConfig)
    settings.add_flags(serve, ServeConfig)
    settings.add_flags(serve, ScalingConfig)
    serve.set_defaults(func=_serve)

    proxy = sub.add_parser("proxy", help="run the edge proxy alone, in front of replicas listed in a routes file")
    proxy.add_argument("--routes", required=True, help="TOML file of users, tokens and endpoints (see proxy/static_routes.py)")
    proxy.add_argument("--config", help="TOML file; its [proxy] table sets any option below")
    settings.add_flags(proxy, ProxyConfig)
    proxy.set_defaults(func=_proxy)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", default=None, help=f"where the store is (default {ServeConfig().data_dir}; env ENDPOINTD_DATA_DIR)")
        return p

    users = sub.add_parser("users", help="manage users and their orgs").add_subparsers(dest="users_command", required=True)
    add = with_data_dir(users.add_parser("add", help="add a user (or add orgs to one)"))
    add.add_argument("name")
    add.add_argument("--org", action="append", help="an org the user is a member of (repeatable)")
    add.set_defaults(func=_users_add)

    tokens = sub.add_parser("tokens", help="manage bearer tokens").add_subparsers(dest="tokens_command", required=True)
    create = with_data_dir(tokens.add_parser("create", help="create a token; printed once, as the last line"))
    create.add_argument("user")
    create.add_argument("--label")
    create.add_argument("--scope", action="append", choices=sorted(SCOPES),
                        help="what the token may do beyond its user's rights: metrics = scrape /metrics (repeatable)")
    create.set_defaults(func=_tokens_create)
    revoke = with_data_dir(tokens.add_parser("revoke", help="revoke a token (by id or by the token itself)"))
    revoke.add_argument("token")
    revoke.set_defaults(func=_tokens_revoke)
    listing = with_data_dir(tokens.add_parser("list", help="list a user's tokens (never their values)"))
    listing.add_argument("user")
    listing.set_defaults(func=_tokens_list)

    images = sub.add_parser("images", help="build the project's own engine images locally")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build endpointd/base:bookworm and endpointd/echo:latest")
    build.add_argument("--force", action="store_true", help="rebuild images that already exist")
    build.set_defaults(func=_images_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engines.model_roots import RootsError
    from proxy.static_routes import RoutesError

    from .datadir import DataDirLocked
    from .sealing import SealingError
    from .store import StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (settings.SettingsError, RoutesError, StoreError, DataDirLocked, RootsError, SealingError) as error:
        print(f"endpointd: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
