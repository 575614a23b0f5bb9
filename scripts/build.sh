#!/usr/bin/env bash
# Configures (once) and builds SK into the given build directory (default: build).
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" >/dev/null
fi
ninja -C "$BUILD" -j "$(nproc)"
