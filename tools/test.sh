#!/usr/bin/env bash
# Installs the Debian dependencies, builds everything (library, tests,
# benchmarks, tools) and runs every test suite. Used by the README and CI.
#   tools/test.sh            # build dir: ./build
#   BUILD_DIR=out tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-2}"

tools/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_BUILD_TESTS=ON \
  -DSTRATA_BUILD_BENCHMARKS=ON
cmake --build "$BUILD_DIR" -j "$JOBS"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$JOBS" --timeout 600
