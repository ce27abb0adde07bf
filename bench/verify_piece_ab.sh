#!/usr/bin/env bash
# Alternated A/B of stratad's tcp_data_plane_verify_piece (the piece a
# socket-plane PUT is received and hashed in) on this host: for each round,
# each row and each value, a fresh DRAM-only daemon started with that value
# and one `stratactl bench --op=put --data-plane=tcp` run against it
# (bench/service_row.sh).
# Prints one line per run, sorted by value, then row: GB/s and p50.
#
#   bench/verify_piece_ab.sh                         # 64KiB 128KiB 256KiB
#   PIECES="64KiB 128KiB" ROUNDS=5 bench/verify_piece_ab.sh
#   ROWS="8388608:1 8388608:4" BYTES=$((1<<30)) bench/verify_piece_ab.sh
#
# BUILD_DIR (default build) holds cluster/stratad and cluster/stratactl.
# ROWS: "SIZE:CLIENTS" pairs; BYTES: bytes put per run. Docs:
# docs/stratad.md ("Socket plane: the PUT piece"); results of its first use:
# bench/results/service.md, session 17.
set -euo pipefail
build=${BUILD_DIR:-build}
pieces=${PIECES:-64KiB 128KiB 256KiB}
rows=${ROWS:-262144:1 1048576:1 8388608:1 33554432:1 8388608:4}
rounds=${ROUNDS:-3}
bytes=${BYTES:-$((512 << 20))}
for exe in cluster/stratad cluster/stratactl; do
  [ -x "$build/$exe" ] || { echo "missing $build/$exe (build it first)" >&2; exit 1; }
done

# One run (bench/service_row.sh: a fresh daemon, one stratactl bench):
# piece $1, PUTs of $2 bytes from $3 clients.
run() {
  local out
  out=$(BUILD_DIR="$build" BYTES="$bytes" PLANE=tcp \
        DAEMON_FLAGS="--tcp_data_plane_verify_piece=$1" \
        "$(dirname "$0")/service_row.sh" put "$2" "$3" 1 | grep "GB/s" ||
        echo "failed")
  printf 'piece=%-7s size=%-9s x%s  %s\n' "$1" "$2" "$3" \
    "$(grep -oE '[0-9.]+ GB/s|p50=[0-9.]+ us|failed' <<< "$out" | tr '\n' ' ')"
}

echo "host: $(nproc) CPUs, $(uname -r); pieces: $pieces; $rounds rounds"
for _ in $(seq "$rounds"); do
  for row in $rows; do
    for piece in $pieces; do
      run "$piece" "${row%%:*}" "${row##*:}"
    done
  done
done | sort -s -k1,1 -k2,2V
