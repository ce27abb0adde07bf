#!/usr/bin/env bash
# Cluster benchmark: aggregate put/get throughput through the ClusterClient
# with 1, 2 and 4 stratad daemons on loopback (each registered in etcd,
# DRAM only), and p50/p99 of 128-key leading-hits lookups across the
# cluster. The load generator is `stratactl cluster bench` (closed loop, one
# request in flight per client thread, placement + R-way puts + replica
# fallback exactly as an engine's client does). Writes a markdown table to
# stdout (and to $OUT if set).
#
#   bench/cluster_bench.sh                       # NODES="1 2 4"
#   BUILD_DIR=build-x NODES="1 2" bench/cluster_bench.sh
#   REPEAT=3 bench/cluster_bench.sh              # best of 3 per row
#   DATA_PLANE=tcp bench/cluster_bench.sh        # blocks over the socket plane
#
# Honest limits: every daemon, etcd and the load generator share one
# machine; on a 2-core VM more daemons add no CPU, so the numbers show the
# cluster layer's overhead and scaling on loopback, not the scaling of real
# hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
NODES="${NODES:-1 2 4}"
CLIENTS="${CLIENTS:-4}"
REPEAT="${REPEAT:-1}"
# The clients' data plane (ClientOptions::data_plane): grpc, tcp (the socket
# plane; every daemon serves it), or auto.
DATA_PLANE="${DATA_PLANE:-grpc}"
DURATION="${DURATION:-5s}"
OUT="${OUT:-}"
STRATAD="$BUILD_DIR/cluster/stratad"
STRATACTL="$BUILD_DIR/cluster/stratactl"
[[ -x $STRATAD && -x $STRATACTL ]] || { echo "build $STRATAD and $STRATACTL first" >&2; exit 2; }
[[ -x /usr/bin/etcd ]] || { echo "needs /usr/bin/etcd" >&2; exit 2; }

WORK=$(mktemp -d /tmp/strata-cluster-bench.XXXXXX)
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; [[ ${KEEP_WORK:-0} == 1 ]] && echo "logs in $WORK" >&2 || rm -rf "$WORK"' EXIT

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_cluster() {  # start_cluster N
  local n=$1 dir="$WORK/c$n"
  mkdir -p "$dir"
  local cport peer
  cport=$(free_port); peer=$(free_port)
  ETCD="127.0.0.1:$cport"
  /usr/bin/etcd --name b --data-dir "$dir/etcd" \
    --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "b=http://127.0.0.1:$peer" >"$dir/etcd.log" 2>&1 &
  PIDS+=($!)
  for i in $(seq 1 "$n"); do
    "$STRATAD" --listen=127.0.0.1:0 --metrics_listen= --data_plane_listen= \
      --data_dir="$dir/n$i" --dram_capacity=1GiB --ssd_capacity=0 \
      --local_data_plane_path= --log_format=text --cluster_etcd="$ETCD" --cluster_node_id="n$i" \
      --cluster_lease_ttl_s=10 >"$dir/n$i.out" 2>"$dir/n$i.log" &
    PIDS+=($!)
  done
}

CTL() { "$STRATACTL" --etcd="$ETCD" --deadline=30s --data-plane="$DATA_PLANE" cluster bench "$@"; }

# "ops/s GB/s p50 p99" of one run's --json line.
fields() {
  python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%.0f %.3f %.0f %.0f %d" % (d["ops_per_s"], d["gb_per_s"], d["p50_us"], d["p99_us"], d["failed"]+d["wrong"]+d["not_found"]))'
}
best() {  # best "a b c d e" "a b c d e": the higher ops/s
  if [[ -z $1 ]]; then echo "$2"; return; fi
  python3 -c 'import sys; a,b=sys.argv[1].split(),sys.argv[2].split(); print(" ".join(b if float(b[0])>float(a[0]) else a))' "$1" "$2"
}

rows=()
seed=100
for n in $NODES; do
  start_cluster "$n"
  # Every member registered (the bench waits for --min-members).
  for size in 65536 1048576; do
    keys=$(( size == 65536 ? 4096 : 256 ))
    for r in 1 2; do
      (( r <= n )) || continue
      put="" get=""
      for _ in $(seq 1 "$REPEAT"); do
        seed=$((seed + 1))
        p=$(CTL --op=put --keys=$keys --size=$size --seed=$seed --replication=$r \
              --clients="$CLIENTS" --min-members="$n" --json | fields)
        put=$(best "$put" "$p")
        g=$(CTL --op=get --keys=$keys --size=$size --seed=$seed --replication=$r \
              --clients="$CLIENTS" --duration="$DURATION" --min-members="$n" --json | fields)
        get=$(best "$get" "$g")
      done
      rows+=("| $n | $r | $size | put | $CLIENTS | ${put// / | } |")
      rows+=("| $n | $r | $size | get | $CLIENTS | ${get// / | } |")
    done
  done
  # 128-key leading-hits lookups (R = min(2, n)), one client: latency.
  r=$(( n >= 2 ? 2 : 1 ))
  look=""
  for _ in $(seq 1 "$REPEAT"); do
    seed=$((seed + 1))
    l=$(CTL --op=lookup --keys=4096 --size=4096 --seed=$seed --replication=$r \
          --clients=1 --ops=2000 --preload --min-members="$n" --json | fields)
    look=$(best "$look" "$l")
  done
  rows+=("| $n | $r | 128 keys | lookup | 1 | ${look// / | } |")
  stop_all
done

{
  echo "| daemons | R | block bytes | op | clients | ops/s | GB/s | p50 us | p99 us | errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee ${OUT:+"$OUT"}
