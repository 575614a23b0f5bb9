#!/usr/bin/env bash
# The whole SK test suite on a fresh Debian 12 machine, as root: installs the
# dependencies, builds, runs unit, BPF, fuzz and integration tests, and ends with
# one line "N passed, N failed" counting every test case that ran.
set -eu
cd "$(dirname "$0")/.."

BUILD=${SK_BUILD_DIR:-build}

./scripts/install-deps.sh
./scripts/build.sh "$BUILD"

set +e
meson test -C "$BUILD" --print-errorlogs --num-processes 2 "$@"
rc=$?
set -e

python3 scripts/test_summary.py "$BUILD/meson-logs/testlog.json"
sum_rc=$?
[ "$rc" -eq 0 ] && [ "$sum_rc" -eq 0 ]
