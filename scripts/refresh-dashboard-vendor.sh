#!/bin/sh
# Refresh the dashboard's vendored front-end libraries from the npm registry, by exact version.
# Each library lands in autoscaler/dashboard/vendor/NAME/ with its built files, its LICENSE, a
# VERSION file (name@version and the registry's integrity hash) and SHA256SUMS of the copied files. No build step runs at serve time:
# the dashboard imports these files as plain ES modules.
#
#   scripts/refresh-dashboard-vendor.sh          fetch the pinned versions below
#   UPLOT_VERSION=1.6.33 scripts/refresh-dashboard-vendor.sh   try another version
set -eu

UPLOT_VERSION="${UPLOT_VERSION:-1.6.32}"  # uPlot: small, fast canvas time-series charts (MIT)

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/autoscaler/dashboard/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME VERSION: the package tarball, checked against the registry's integrity hash
    name="$1" version="$2"
    integrity="$(npm view "$name@$version" dist.integrity)"
    [ -n "$integrity" ] || { echo "refresh: npm knows no $name@$version" >&2; exit 1; }
    tarball="$(cd "$work" && npm pack --silent "$name@$version")"
    actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
    if [ "$actual" != "$integrity" ]; then
        echo "refresh: $name@$version: integrity $actual is not the registry's $integrity" >&2
        exit 1
    fi
    mkdir -p "$work/$name"
    tar -xzf "$work/$tarball" -C "$work/$name"
    printf '%s@%s\n%s\n' "$name" "$version" "$integrity" > "$work/$name/VERSION"
}

fetch uplot "$UPLOT_VERSION"
rm -rf "$vendor/uplot"
mkdir -p "$vendor/uplot"
cp "$work/uplot/package/dist/uPlot.esm.js" "$work/uplot/package/dist/uPlot.min.css" \
   "$work/uplot/package/LICENSE" "$work/uplot/VERSION" "$vendor/uplot/"
# What was copied, so that a test notices a vendored file edited by hand.
(cd "$vendor/uplot" && sha256sum uPlot.esm.js uPlot.min.css LICENSE > SHA256SUMS)
echo "refresh: vendored uplot@$UPLOT_VERSION into $vendor/uplot"
