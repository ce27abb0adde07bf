#!/usr/bin/env bash
# Packs the service benchmark (bench/service_bench.sh) for a machine that
# cannot build it or install packages, e.g. the 16-vCPU GPU machine reached
# through the device tool, to ask whether a result is this 2-vCPU VM's or the
# software's.
#
#   tools/pack_service_bench.sh [BUILD_DIR]      (default: build)
#
# bundle-svc/ (git-ignored) receives payload.tar.xz (the binaries and
# libraries are about 48 MiB, the fixture that always travels 15 MiB, and
# the device tool carries 64 MiB in all) and run.sh, which unpacks it under
# /tmp. The payload holds, from BUILD_DIR and this machine:
#   cluster/stratad, cluster/stratactl, bench/ceilings   (stripped)
#   bin/redis-server, bin/redis-benchmark, bin/redis-cli (Debian's)
#   lib/       every shared library they need but glibc, libstdc++ and
#              libgcc, plus UCX's transport modules (lib/ucx, loaded at run
#              time, so not in ldd's list). The other machine's own glibc
#              and libstdc++ must be at least as new as this machine's
#              (Debian 12 here; the GPU machine has Ubuntu 24.04's).
#   run.sh     runs bench/service_bench.sh against these, with BUILD=0 and
#              INSTALL_DEPS=0, and copies the table to $OUT when set
#
# Then, from the repository root through the device tool:
#   run(command="bash bundle-svc/run.sh", carry=["bundle-svc"])
# Environment of run.sh: whatever service_bench.sh reads (REPEAT,
# BYTES_PER_RUN, TRANSPORTS, SIZES, CLIENTS).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
BUNDLE=$ROOT/bundle-svc
SYSTEM_LIBS='^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libutil|libresolv|libstdc\+\+|libgcc_s)[.-]'
UCX_MODULES=/usr/lib/x86_64-linux-gnu/ucx
# The device tool carries the working tree (tracked files and what `carry`
# names) up to 64 MiB in all.
CARRY_LIMIT_MIB=64

# Everything is checked before the old bundle goes.
for name in cluster/stratad cluster/stratactl bench/ceilings; do
  [[ -x "$BUILD/$name" ]] || { echo "missing $BUILD/$name (build it first)" >&2; exit 1; }
done
redis=()
for name in redis-server redis-benchmark redis-cli; do
  path=$(command -v "$name") || { echo "missing $name (apt-get install redis-server redis-tools)" >&2; exit 1; }
  redis+=("$path")
done
[[ -d "$UCX_MODULES" ]] || { echo "missing UCX's transport modules in $UCX_MODULES (tools/install-deps.sh)" >&2; exit 1; }

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/cluster" "$STAGE/bench" "$STAGE/bin" "$STAGE/lib/ucx"
binaries=()
for name in cluster/stratad cluster/stratactl bench/ceilings; do
  cp "$BUILD/$name" "$STAGE/$name"
  binaries+=("$STAGE/$name")
done
for path in "${redis[@]}"; do
  cp "$path" "$STAGE/bin/"
  binaries+=("$STAGE/bin/$(basename "$path")")
done
cp "$UCX_MODULES"/*.so.0 "$STAGE/lib/ucx/"
for b in "${binaries[@]}" "$STAGE"/lib/ucx/*.so.0; do
  strip --strip-unneeded "$b" 2> /dev/null || true
done
# shellcheck source=tools/bundle_libs.sh
source "$ROOT/tools/bundle_libs.sh"
bundle_shared_libs "$STAGE/lib" "$SYSTEM_LIBS" "${binaries[@]}" \
  "$STAGE"/lib/ucx/*.so.0
echo "payload: $(du -sm "$STAGE" | cut -f1) MiB," \
  "$(find "$STAGE/lib" -maxdepth 1 -type f | wc -l) libraries"
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
tar -C "$STAGE" -cJf "$BUNDLE/payload.tar.xz" .

cat > "$BUNDLE/run.sh" << 'EOF'
#!/usr/bin/env bash
# Runs bench/service_bench.sh against the binaries beside this script
# (tools/pack_service_bench.sh made them). From the repository root.
set -euo pipefail
here=$(mktemp -d /tmp/bundle-svc.XXXX)
trap 'rm -rf "$here"' EXIT
tar -C "$here" -xJf "$(dirname "${BASH_SOURCE[0]}")/payload.tar.xz"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export UCX_MODULE_DIR="$here/lib/ucx"
export PATH="$here/bin:$PATH"
echo "host: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "load before: $(cat /proc/loadavg)"
BUILD=0 INSTALL_DEPS=0 BUILD_DIR="$here" OUT="${OUT:+$OUT/service_bench.md}" \
  bash bench/service_bench.sh
echo "load after: $(cat /proc/loadavg)"
EOF
chmod +x "$BUNDLE/run.sh"
bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
tracked_bytes=$(git -C "$ROOT" ls-files -z | (cd "$ROOT" && du -cb --files0-from=- 2> /dev/null) | tail -n1 | cut -f1)
echo "bundle: $BUNDLE ($((bundle_bytes >> 20)) MiB; with the tracked files $(((bundle_bytes + tracked_bytes) >> 20)) MiB of the ${CARRY_LIMIT_MIB} MiB the device tool carries)"
if (( bundle_bytes + tracked_bytes > (CARRY_LIMIT_MIB << 20) )); then
  echo "too large to travel: leave something out of the payload" >&2
  exit 1
fi
echo 'next: run(command="bash bundle-svc/run.sh", carry=["bundle-svc"])  (device tool, repository root)'
