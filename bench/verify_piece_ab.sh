#!/usr/bin/env bash
# Alternated A/B of stratad's tcp_data_plane_verify_piece (the piece a
# socket-plane PUT is received and hashed in) on this host: for each round,
# each row and each value, a fresh DRAM-only daemon started with that value
# and one `stratactl bench --op=put --data-plane=tcp` run against it.
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
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"; }
trap cleanup EXIT

# One run: daemon with piece $1, PUTs of $2 bytes from $3 clients.
run() {
  rm -rf "$work/data" "$work/ready"
  mkfifo "$work/ready"
  "$build/cluster/stratad" --listen=127.0.0.1:0 --metrics_listen= \
    --data_plane_listen= --ssd_capacity=0 --dram_capacity=3GiB \
    --data_dir="$work/data" --log_format=text --local_data_plane_path= \
    --tcp_data_plane_verify_piece="$1" > "$work/ready" 2> "$work/log" &
  pid=$!
  local line addr ops out
  read -r line < "$work/ready"
  addr=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<< "$line")
  ops=$((bytes / $2 / $3))
  [ "$ops" -lt 8 ] && ops=8
  out=$("$build/cluster/stratactl" --addr="$addr" bench --op=put \
        --size="$2" --clients="$3" --ops="$ops" --warmup=2 \
        --data-plane=tcp 2> /dev/null | grep "GB/s" || echo "failed")
  kill "$pid"
  wait "$pid" 2> /dev/null || true
  pid=""
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
