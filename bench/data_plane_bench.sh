#!/usr/bin/env bash
# Data-plane benchmark: stratad put and get over gRPC, UCX TCP and UCX shared
# memory, for 256 KiB .. 32 MiB blocks with 1 and 4 concurrent clients
# (bench/results/data_plane.md). Writes a markdown table to stdout.
#
#   BUILD_DIR=build bench/data_plane_bench.sh
#   SIZES="16384 65536" CLIENTS=1 bench/data_plane_bench.sh   # small blocks
#
# One daemon per transport, DRAM-only (--ssd_capacity=0), started with the
# UCX environment of that transport; stratactl bench (closed loop, one
# connection per client, GetInto a registered buffer for gets, the sync Put
# for puts) runs with the same environment and --ucx-min-bytes=0, so every
# block takes the data plane being measured. Each client does WARMUP untimed
# operations first.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
TRANSPORTS="${TRANSPORTS:-grpc ucx-tcp ucx-shm}"
SIZES="${SIZES:-262144 1048576 8388608 33554432}"
CLIENTS="${CLIENTS:-1 4}"
BYTES_PER_RUN="${BYTES_PER_RUN:-$((256 << 20))}"
WARMUP="${WARMUP:-2}"
stratad="$BUILD_DIR/cluster/stratad"
stratactl="$BUILD_DIR/cluster/stratactl"

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "| transport | op | block | clients | ops | GB/s | p50 µs | p99 µs | data plane |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
for transport in $TRANSPORTS; do
  # UCX with TCP only, or shared memory (sysv/posix messages, cma
  # rendezvous; UCX 1.13 needs tcp listed to connect by sockaddr).
  case "$transport" in
    grpc) env_vars=(UCX_NET_DEVICES=lo); plane=grpc ;;
    ucx-tcp) env_vars=(UCX_NET_DEVICES=lo UCX_TLS=tcp); plane=ucx ;;
    ucx-shm) env_vars=(UCX_NET_DEVICES=lo UCX_TLS=shm,tcp); plane=ucx ;;
    *) echo "unknown transport $transport" >&2; exit 2 ;;
  esac
  mkfifo "$work/ready.$transport"
  env "${env_vars[@]}" "$stratad" --listen=127.0.0.1:0 --metrics_listen= \
    --data_plane_listen=127.0.0.1:0 --ssd_capacity=0 --dram_capacity=3GiB \
    --data_dir="$work/data.$transport" --log_format=text \
    --local_data_plane_path= > "$work/ready.$transport" 2> "$work/stratad.$transport.log" &
  pid=$!
  read -r line < "$work/ready.$transport"
  addr=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<< "$line")
  for size in $SIZES; do
    for c in $CLIENTS; do
      ops=$(( BYTES_PER_RUN / size / c )); [ "$ops" -lt 8 ] && ops=8
      for op in put get; do
        out=$(env "${env_vars[@]}" "$stratactl" --addr="$addr" bench --op=$op \
              --size="$size" --clients="$c" --ops="$ops" --warmup="$WARMUP" \
              --data-plane="$plane" --ucx-min-bytes=0)
        gbps=$(sed -E 's/.*  ([0-9.]+) GB\/s.*/\1/' <<< "$out")
        p50=$(sed -E 's/.*p50=([0-9.]+) us.*/\1/' <<< "$out")
        p99=$(sed -E 's/.*p99=([0-9.]+) us.*/\1/' <<< "$out")
        dp=$(sed -E 's/.*data_plane=([^ ]+).*/\1/' <<< "$out")
        if [ "$size" -ge 1048576 ]; then label="$((size >> 20)) MiB"; else label="$((size >> 10)) KiB"; fi
        echo "| $transport | $op | $label | $c | $((ops * c)) | $gbps | ${p50%.*} | ${p99%.*} | $dp |"
      done
    done
  done
  kill "$pid"; wait "$pid" || true; pid=""
done
