#!/usr/bin/env bash
# Installs Strata's build and test dependencies from Debian 12 packages.
# Idempotent: skips apt entirely when every package is already present.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libucx-dev ucx-utils librocksdb-dev libabsl-dev libprotobuf-dev protobuf-compiler
  libgrpc++-dev protobuf-compiler-grpc libgtest-dev libgmock-dev libbenchmark-dev
  libxxhash-dev libcpp-httplib-dev etcd-server etcd-client
  pybind11-dev python3-dev python3-numpy python3-pytest
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
else
  echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# etcd's v3 API protos (for the C++ etcd client, docs/cluster.md): extracted
# from three Debian -dev packages without installing them (~2 MB), into a
# stable directory that proto/etcd/CMakeLists.txt looks in. Optional: without
# them the build skips the etcd-based membership targets.
if [ -n "${STRATA_ETCD_PROTO_DIR:-}" ]; then
  ETCD_PROTO_DIR="$STRATA_ETCD_PROTO_DIR"
elif [ "$(id -u)" -eq 0 ]; then
  ETCD_PROTO_DIR=/opt/strata/etcd-protos
else
  ETCD_PROTO_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/strata/etcd-protos"
fi
"$(dirname "$0")/fetch-etcd-protos.sh" "$ETCD_PROTO_DIR" ||
  echo "install-deps: etcd protos unavailable; etcd membership will not be built" >&2
