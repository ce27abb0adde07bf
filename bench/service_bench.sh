#!/usr/bin/env bash
# Service benchmark: stratad (over each transport: gRPC, the socket data
# plane "tcp", its local connections with the shared arena "local", UCX over
# TCP, UCX over shared memory) vs redis-server, put and
# get of 256 KiB, 1 MiB, 8 MiB and 32 MiB values with 1 and 4 concurrent
# clients, next to the raw ceilings measured in the same run (a plain TCP
# stream over loopback, single-thread memcpy, the closed-loop ceiling:
# plain sockets with one request in flight per client, and the stream at
# each value's size with the store's end in memory beyond the caches).
# Writes a markdown table to
# stdout (and to $OUT if set).
#
#   bench/service_bench.sh                  # all transports
#   TRANSPORTS="grpc" bench/service_bench.sh
#   BYTES_PER_RUN=$((256<<20)) bench/service_bench.sh   # shorter
#   REPEAT=3 bench/service_bench.sh          # best of 3 per row (shared box)
#   BUILD=0 BUILD_DIR=build-x bench/service_bench.sh   # use built binaries
#   DATA_PLANE_ENV="UCX_RNDV_THRESH=1M" bench/service_bench.sh  # UCX settings, both ends
#   INSTALL_DEPS=0 ...   # skip tools/install-deps.sh (binaries brought in:
#                        # tools/pack_service_bench.sh)
#
# REPEAT runs every measurement (ceilings, each redis-benchmark and each
# stratactl bench) that many times and keeps the run with the highest GB/s,
# with its own p50/p99: on a machine shared with other work, the best run is
# the one least disturbed.
#
# stratad runs DRAM-only (--ssd_capacity=0) so both systems serve from RAM.
# Each client is a separate connection; load is closed-loop (one request in
# flight per client), like redis-benchmark -P 1. All servers run for the
# whole benchmark and each row measures them back to back, so a row's
# systems share the VM's phase.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build-bench}"
TRANSPORTS="${TRANSPORTS:-grpc tcp local ucx-tcp ucx-shm}"
SIZES="${SIZES:-262144 1048576 8388608 33554432}"
CLIENTS="${CLIENTS:-1 4}"
BYTES_PER_RUN="${BYTES_PER_RUN:-$((768 << 20))}"
OUT="${OUT:-}"
REPEAT="${REPEAT:-1}"
BUILD="${BUILD:-1}"

# The larger of the current best "gbps p50 p99" ($1, may be empty) and a new
# one ($2), by GB/s.
best_of() {
  if [ -z "$1" ]; then echo "$2"; return; fi
  python3 -c "import sys; a, b = sys.argv[1].split(), sys.argv[2].split(); print(' '.join(b if float(b[0]) > float(a[0]) else a))" "$1" "$2"
}
max_of() { python3 -c "import sys; print(max(sys.argv[1:], key=float))" "$@"; }

if [ "${INSTALL_DEPS:-1}" = 1 ]; then
  tools/install-deps.sh > /dev/null
fi
if ! command -v redis-server > /dev/null || ! command -v redis-benchmark > /dev/null; then
  if [ "${INSTALL_DEPS:-1}" != 1 ]; then
    echo "redis-server and redis-benchmark must be on PATH (INSTALL_DEPS=0)" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get install -y -q --no-install-recommends redis-server redis-tools > /dev/null
fi
if [ "$BUILD" = 1 ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRATA_BUILD_TESTS=OFF > /dev/null
  cmake --build "$BUILD_DIR" -j 1 --target stratad stratactl ceilings > /dev/null
fi

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- ceilings
tcp1=0; tcp4=0; memcpy=0
for _ in $(seq "$REPEAT"); do
  read -r _ t < <("$BUILD_DIR/bench/ceilings" | grep loopback_tcp_1); tcp1=$(max_of "$tcp1" "$t")
  read -r _ t < <("$BUILD_DIR/bench/ceilings" --streams=4 | grep loopback_tcp_4); tcp4=$(max_of "$tcp4" "$t")
  read -r _ t < <("$BUILD_DIR/bench/ceilings" | grep memcpy_32MiB); memcpy=$(max_of "$memcpy" "$t")
done
# --- the servers: redis and one stratad per transport, all up for the
# whole run, so that each row measures every system back to back (the VM's
# speed drifts over minutes; a row compares systems in the same phase).
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
  --proto-max-bulk-len 1gb --client-query-buffer-limit 1gb --daemonize no \
  > "$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$rport" ping > /dev/null 2>&1; do :; done  # startup poll

declare -A addr_of env_of plane_of
for transport in $TRANSPORTS; do
  env_vars=()
  # Local connections only where measured: a loopback daemon turns them on
  # by default, and their shared arena would change the other rows (a
  # remote client meets a daemon without them; docs/stratad.md).
  flags=(--local_data_plane_path=)
  plane=grpc
  case "$transport" in
    # The socket data plane (cluster/tcp_data_plane.h): plain TCP, no UCX.
    tcp) plane=tcp ;;
    # Its local connections: the client copies blocks straight into and out
    # of the daemon's shared arena (docs/protocol.md, "Local connections").
    local) plane=local; flags=(--local_data_plane_path="$work/local.sock") ;;
    ucx-tcp) env_vars=(UCX_NET_DEVICES=lo UCX_TLS=tcp); plane=ucx ;;
    # UCX 1.13 needs tcp listed to connect by sockaddr; the bytes then move
    # over posix (messages) and cma (blocks) only (docs/protocol.md).
    ucx-shm) env_vars=(UCX_NET_DEVICES=lo UCX_TLS=posix,cma,tcp); plane=ucx ;;
  esac
  # Extra settings for both ends (e.g. DATA_PLANE_ENV="UCX_RNDV_THRESH=1M").
  # shellcheck disable=SC2206
  [ -n "${DATA_PLANE_ENV:-}" ] && [ "$plane" = ucx ] && env_vars+=($DATA_PLANE_ENV)
  mkfifo "$work/ready.$transport"
  env "${env_vars[@]}" "$BUILD_DIR/cluster/stratad" --listen=127.0.0.1:0 \
    --metrics_listen= --data_plane_listen=127.0.0.1:0 --ssd_capacity=0 \
    --dram_capacity=2GiB --data_dir="$work/data.$transport" --log_format=text \
    "${flags[@]}" > "$work/ready.$transport" 2> "$work/stratad.$transport.log" &
  pids+=($!)
  exec 3< "$work/ready.$transport"
  read -r line <&3
  exec 3<&-
  addr_of[$transport]=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<< "$line")
  if [ "$transport" = local ]; then
    # A shared arena is mapped in by a thread after start-up (4 KiB pages:
    # seconds for 2 GiB): wait until the daemon has all of it mapped, so it
    # does not compete with the rows.
    pid=$(sed -E 's/.*pid=([0-9]+).*/\1/' <<< "$line")
    until [ "$(awk '/RssShmem/ {print $2}' "/proc/$pid/status")" -ge $((2 << 20)) ]; do
      sleep 0.2
    done
  fi
  env_of[$transport]="${env_vars[*]:-}"
  plane_of[$transport]=$plane
done

# --- the rows: per size and clients, REPEAT rounds of (closed-loop
# ceiling, redis, each stratad transport); the best round of each is kept.
declare -A closed_loop
declare -A store_stream  # key "op size clients" -> GB/s
declare -A phase   # key "size clients" -> the rounds' cross-CPU round trips
declare -A result   # key "transport op size clients" -> "gbps p50_us p99_us"
for size in $SIZES; do
  for c in $CLIENTS; do
    n=$(( BYTES_PER_RUN / size )); [ "$n" -lt $((8 * c)) ] && n=$((8 * c))
    ops=$(( BYTES_PER_RUN / size / c )); [ "$ops" -lt 8 ] && ops=8
    # The untimed warm-up: 2 calls per client, and for blocks of 2 MiB and
    # more at least 16 large copies in the client process, by which its
    # checksum helper's choice has settled (kvstore/checksum_helper.h,
    # CopyHelpChooser: a long-lived engine is past that after its first few
    # blocks).
    warmup=$(( size >= (2 << 20) ? (16 + c - 1) / c : 2 ))
    warmup=$(( warmup < 2 ? 2 : warmup ))
    for _ in $(seq "$REPEAT"); do
      # The machine's phase as the round starts (bench/ceilings --cpu_probe).
      read -r _ t < <("$BUILD_DIR/bench/ceilings" --cpu_probe)
      phase["$size $c"]="${phase["$size $c"]:+${phase["$size $c"]},}$t"
      # The closed-loop ceiling: plain sockets, one SIZE-byte request and a
      # 16-byte answer at a time per client, as the clients below work.
      read -r _ t < <("$BUILD_DIR/bench/ceilings" --request_bytes="$size" --clients="$c" --total_bytes="$BYTES_PER_RUN")
      closed_loop["$size $c"]=$(max_of "${closed_loop["$size $c"]:-0}" "$t")
      # The stream ceiling at this size, with the store's end in memory far
      # beyond the caches (bench/ceilings --store_stream).
      for op in put get; do
        read -r _ t < <("$BUILD_DIR/bench/ceilings" --store_stream="$op" --request_bytes="$size" --clients="$c" --total_bytes="$BYTES_PER_RUN")
        store_stream["$op $size $c"]=$(max_of "${store_stream["$op $size $c"]:-0}" "$t")
      done
      while IFS=, read -r test rps avg min p50 p95 p99 max; do
        test=${test//\"/}; rps=${rps//\"/}; p50=${p50//\"/}; p99=${p99//\"/}
        op=$([ "$test" = SET ] && echo put || echo get)
        gbps=$(python3 -c "print(f'{$rps*$size/1e9:.2f}')")
        row="$gbps $(python3 -c "print(f'{$p50*1000:.0f} {$p99*1000:.0f}')")"
        result["redis $op $size $c"]=$(best_of "${result["redis $op $size $c"]:-}" "$row")
      done < <(redis-benchmark -p "$rport" -t set,get -d "$size" -c "$c" -n "$n" --csv 2> /dev/null | tail -n +2)
      for transport in $TRANSPORTS; do
        for op in put get; do
          # A client that fails while exiting still printed its result.
          # shellcheck disable=SC2086
          out=$(env ${env_of[$transport]} "$BUILD_DIR/cluster/stratactl" --addr="${addr_of[$transport]}" bench \
                --op=$op --size="$size" --clients="$c" --ops="$ops" --warmup="$warmup" \
                --data-plane="${plane_of[$transport]}" 2> "$work/stratactl.err") || \
            echo "stratactl exited $? ($transport $op $size x$c): $(head -c 300 "$work/stratactl.err")" >&2
          if ! grep -q "GB/s" <<< "$out"; then echo "no result: $transport $op $size x$c" >&2; continue; fi
          gbps=$(sed -E 's/.*  ([0-9.]+) GB\/s.*/\1/' <<< "$out")
          p50=$(sed -E 's/.*p50=([0-9.]+) us.*/\1/' <<< "$out")
          p99=$(sed -E 's/.*p99=([0-9.]+) us.*/\1/' <<< "$out")
          result["$transport $op $size $c"]=$(best_of "${result["$transport $op $size $c"]:-}" "$gbps ${p50%.*} ${p99%.*}")
        done
      done
    done
  done
done

# --- table
# A title line, then " <size> KiB x<clients> <value>;" for every size and
# client count, the value printed by the function named $2 (size, clients).
per_size_line() {
  echo "$1"
  for size in $SIZES; do
    for c in $CLIENTS; do echo -n " $((size >> 10)) KiB x$c $("$2" "$size" "$c");"; done
  done
  echo
  echo
}
closed_loop_of() { echo "${closed_loop["$1 $2"]}"; }
phase_of() { echo "${phase["$1 $2"]}"; }
store_stream_of() { echo "put ${store_stream["put $1 $2"]} get ${store_stream["get $1 $2"]}"; }
{
  echo "Ceilings: loopback TCP 1 stream ${tcp1} GB/s, 4 streams ${tcp4} GB/s; memcpy (1 thread, 32 MiB) ${memcpy} GB/s."
  echo
  per_size_line "Closed loop (plain sockets, one request in flight per client, 16-byte answers), GB/s:" closed_loop_of
  per_size_line "Cross-CPU round trip at the start of each round, ns (bench/ceilings --cpu_probe; on the dev VM 55-90 while its vCPUs share caches, 250-500 while they sit on different dies, when every transfer between processes is slower):" phase_of
  per_size_line "Stream at the value's size into (put) or out of (get) 256 MiB of store memory (bench/ceilings --store_stream), GB/s:" store_stream_of
  echo "vs ceiling: TCP rows against the stream ceiling (1 or 4 streams), local and ucx-shm against memcpy. vs closed loop: TCP rows against the closed-loop ceiling of their size and clients. vs store stream: TCP rows against the stream of their size, op and clients with the store's end in memory beyond the caches."
  echo
  echo "| value | clients | op | system | GB/s | p50 µs | p99 µs | vs Redis | vs ceiling | vs closed loop | vs store stream |"
  echo "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for size in $SIZES; do
    for c in $CLIENTS; do
      ceiling_tcp=$([ "$c" = 1 ] && echo "$tcp1" || echo "$tcp4")
      loop=${closed_loop["$size $c"]}
      for op in put get; do
        stream=${store_stream["$op $size $c"]}
        read -r rg rp50 rp99 <<< "${result["redis $op $size $c"]:-0 - -}"
        echo "| $((size >> 10)) KiB | $c | $op | redis | $rg | $rp50 | $rp99 | 1.00 | $(python3 -c "print(f'{$rg/$ceiling_tcp:.2f}')") | $(python3 -c "print(f'{$rg/$loop:.2f}')") | $(python3 -c "print(f'{$rg/$stream:.2f}')") |"
        for transport in $TRANSPORTS; do
          read -r g p50 p99 <<< "${result["$transport $op $size $c"]:-0 - -}"
          shm=$([ "$transport" = ucx-shm ] || [ "$transport" = local ] && echo 1 || echo 0)
          ceiling=$([ "$shm" = 1 ] && echo "$memcpy" || echo "$ceiling_tcp")
          vs_loop=$([ "$shm" = 1 ] && echo "-" || python3 -c "print(f'{$g/$loop:.2f}')")
          vs_stream=$([ "$shm" = 1 ] && echo "-" || python3 -c "print(f'{$g/$stream:.2f}')")
          echo "| $((size >> 10)) KiB | $c | $op | stratad $transport | $g | $p50 | $p99 | $(python3 -c "print(f'{$g/$rg:.2f}')") | $(python3 -c "print(f'{$g/$ceiling:.2f}')") | $vs_loop | $vs_stream |"
        done
      done
    done
  done
} | tee ${OUT:+"$OUT"}
