"""The `endpointd` command line: the composition root that starts each part."""

from __future__ import annotations

import argparse
import sys


def _images_build(args: argparse.Namespace) -> int:
    from engines import images

    return images.main(force=args.force)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endpointd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    images = sub.add_parser("images", help="build the project's own engine images locally")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build endpointd/base:bookworm and endpointd/echo:latest")
    build.add_argument("--force", action="store_true", help="rebuild images that already exist")
    build.set_defaults(func=_images_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
