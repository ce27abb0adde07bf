#!/usr/bin/env bash
# UCX settings matrix: stratad + `stratactl bench` under several builds and
# UCX environments, next to redis-server and the raw ceilings, best of
# REPEAT per row. Used for bench/results/data_plane.md ("UCX settings") on a
# machine where service_bench.sh cannot build (binaries copied in).
#
#   bench/ucx_settings_matrix.sh CONFIGS
#
# CONFIGS: one line per daemon, "label variant transport ENV..." where
# variant picks $BIN_DIR/stratad.<variant> and stratactl.<variant>,
# transport is tcp or shm, and ENV is "-" or VAR=value pairs given to both
# ends, e.g.
#   base-t  base tcp -
#   new-e0  new  tcp STRATA_UCX_TCP_EAGER_MAX_BYTES=0
#
# BIN_DIR (default: bin next to this script) holds stratad.*, stratactl.*,
# ceilings, redis-server and redis-benchmark. LOADER runs each binary (e.g.
# "lib/ld-linux-x86-64.so.2 --library-path lib" for binaries bundled with
# their shared libraries). SIZES, CLIENTS, REPEAT, BYTES (per row), CEIL=0 /
# REDIS=0 skip the ceilings / redis.
set -uo pipefail
BIN_DIR=${BIN_DIR:-$(cd "$(dirname "$0")" && pwd)/bin}
LOADER=${LOADER:-}
SIZES=${SIZES:-"262144 1048576"}; CLIENTS=${CLIENTS:-"1 4"}
REPEAT=${REPEAT:-3}; BYTES=${BYTES:-$((128 << 20))}
# shellcheck disable=SC2086
run() { local exe=$1; shift; $LOADER "$BIN_DIR/$exe" "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# stdin: "gbps p50 p99 [...]" lines; stdout: the one with the highest GB/s.
best() { python3 -c "
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
print(' '.join(max(rows, key=lambda r: float(r[0]))) if rows else '0 - -')"; }
if [ "${CEIL:-1}" = 1 ]; then
  for _ in $(seq "$REPEAT"); do
    run ceilings | grep -E "loopback_tcp_1|memcpy_32MiB"
    run ceilings --streams=4 | grep loopback_tcp_4
  done | sort | awk '{print "ceiling", $0}'
fi
if [ "${REDIS:-1}" = 1 ]; then
  rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  run redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
    --proto-max-bulk-len 1gb --client-query-buffer-limit 1gb --daemonize no \
    > "$work/redis.log" 2>&1 &
  rpid=$!
  until run redis-cli -p "$rport" ping > /dev/null 2>&1; do :; done
  for size in $SIZES; do for c in $CLIENTS; do
    n=$(( BYTES / size )); [ "$n" -lt $((8 * c)) ] && n=$((8 * c))
    for _ in $(seq "$REPEAT"); do
      run redis-benchmark -p "$rport" -t set,get -d "$size" -c "$c" -n "$n" --csv 2> /dev/null | tail -n +2
    done > "$work/r.csv"
    for t in SET GET; do
      grep "\"$t\"" "$work/r.csv" | tr -d '"' |
        awk -F, -v s="$size" '{printf "%.3f %.0f %.0f\n", $2*s/1e9, $5*1000, $7*1000}' | best |
        awk -v t=$t -v s="$size" -v c="$c" '{printf "redis      %s %8d x%d  GB/s=%s p50=%s p99=%s\n", t, s, c, $1, $2, $3}'
    done
  done; done
  kill "$rpid"
fi
while read -r label variant transport envs; do
  [ -z "$label" ] && continue; [[ $label == \#* ]] && continue
  case $transport in
    tcp) base="UCX_NET_DEVICES=lo UCX_TLS=tcp" ;;
    shm) base="UCX_NET_DEVICES=lo UCX_TLS=posix,cma,tcp" ;;
    *) echo "unknown transport $transport" >&2; continue ;;
  esac
  [ "$envs" = "-" ] && envs=""
  rm -f "$work/ready"; mkfifo "$work/ready"
  # shellcheck disable=SC2086
  env $base $envs $LOADER "$BIN_DIR/stratad.$variant" --listen=127.0.0.1:0 \
    --metrics_listen= --data_plane_listen=127.0.0.1:0 --ssd_capacity=0 \
    --dram_capacity=6GiB --data_dir="$work/data.$label" --log_format=text \
    --local_data_plane_path= > "$work/ready" 2> "$work/stratad.$label.log" &
  dpid=$!
  exec 3< "$work/ready"; read -r line <&3
  addr=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<< "$line")
  for size in $SIZES; do for c in $CLIENTS; do
    ops=$(( BYTES / size / c )); [ "$ops" -lt 8 ] && ops=8
    for op in put get; do
      for _ in $(seq "$REPEAT"); do
        # shellcheck disable=SC2086
        out=$(env $base $envs $LOADER "$BIN_DIR/stratactl.$variant" --addr="$addr" bench \
              --op=$op --size="$size" --clients="$c" --ops="$ops" --warmup=2 \
              --data-plane=ucx 2>> "$work/stratactl.err")
        grep -q "GB/s" <<< "$out" || continue
        echo "$(sed -E 's/.*  ([0-9.]+) GB\/s.*/\1/' <<< "$out")" \
             "$(sed -E 's/.*p50=([0-9]+).*/\1/' <<< "$out")" \
             "$(sed -E 's/.*p99=([0-9]+).*/\1/' <<< "$out")" \
             "$(grep -o 'data_plane=[^ ]*' <<< "$out")"
      done | best |
        awk -v l="$label" -v t="$transport" -v o=$op -v s="$size" -v c="$c" \
          '{printf "%-10s %s %s %8d x%d  GB/s=%s p50=%s p99=%s %s\n", l, t, o, s, c, $1, $2, $3, $4}'
    done
  done; done
  exec 3<&-
  kill "$dpid"; wait "$dpid" 2> /dev/null
done < "$1"
