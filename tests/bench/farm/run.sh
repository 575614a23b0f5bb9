#!/bin/sh
# Farm XDP benchmark: builds farm_bench in the given build dir and runs it (root).
# Usage: tests/bench/farm/run.sh BUILD_DIR [farm_bench args...]
set -eu
build=${1:?usage: $0 BUILD_DIR [--out FILE] [--repeat N] [--rounds N]}
shift
ninja -C "$build" -j2 tests/bpf/farm_bench
exec "$build/tests/bpf/farm_bench" "$@"
