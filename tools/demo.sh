#!/usr/bin/env bash
# Installs the Debian dependencies, builds Strata and runs a single-node cache
# with embedded defaults (DRAM + SSD tier under ./strata-data), showing puts,
# prefix hits, eviction under pressure and the statistics it produced.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"

tools/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPython_EXECUTABLE=/usr/bin/python3 > /dev/null
cmake --build "$BUILD_DIR" -j 2 --target strata-kvstore-demo
"$BUILD_DIR"/tools/strata-kvstore-demo ./strata-data
